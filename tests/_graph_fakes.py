"""Deterministic fake chat models for the graph index tests (langchain-core fakes and one rule-based).

``RecordsChatModel`` answers an extraction prompt with LightRAG records computed from the chunk text
(capitalised words are entities, consecutive ones in a sentence are related), a gleaning prompt
with one extra record, and a summary prompt with ``SUMMARY(<n> descriptions)``; it counts its calls
per kind in ``CALLS``, so tests can assert that the cache spared the model.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

T = "<|#|>"
DONE = "<|COMPLETE|>"
CALLS: Counter = Counter()


def records_for(text: str) -> str:
    lines = []
    for sent in re.split(r"(?<=[.!?])\s+", text.strip()):
        caps = list(dict.fromkeys(w.strip(".,;:!?\"'()") for w in sent.split() if w[:1].isupper()))
        caps = [c for c in caps if c]
        for c in caps:
            lines.append(f"entity{T}{c}{T}{'person' if c in ('Alice', 'Bob', 'Carol') else 'concept'}{T}{c} is "
                         f"mentioned in: {sent}")
        for a, b in zip(caps, caps[1:]):
            lines.append(f"relation{T}{a}{T}{b}{T}co-occurrence, {a.lower()}{T}{a} and {b} appear together: {sent}")
    return "\n".join(lines + [DONE])


class RecordsChatModel(BaseChatModel):
    tag: str = "rules-v1"

    @property
    def _llm_type(self) -> str:
        return "records-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tag": self.tag}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        last = str(messages[-1].content)
        if "Descriptions:" in last and "Summary:" in last:
            CALLS["summary"] += 1
            n = sum(1 for line in last.splitlines() if line.startswith("- "))
            name = re.search(r'"(.*?)"', last).group(1)
            out = f"SUMMARY of {name} ({n} descriptions)"
        elif "missed" in last:
            CALLS["glean"] += 1
            out = f"entity{T}Gleaned Thing{T}concept{T}Found on the second pass.\n{DONE}"
        else:
            CALLS["extract"] += 1
            m = re.search(r"```\n(.*?)\n```", last, re.S)
            text = m.group(1) if m else last
            if "FAIL-NOW" in text:
                raise RuntimeError("the model is down")
            out = records_for(text)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=out))])


class ReplayChatModel(BaseChatModel):
    """Answers an extraction prompt with a stored reply: the one whose chunk text occurs in the prompt
    (recorded LLM outputs replayed, so two graph builders can be fed the very same extraction)."""

    replies: dict = {}
    tag: str = "replay"

    @property
    def _llm_type(self) -> str:
        return "replay-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tag": self.tag}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        prompt = "\n".join(str(m.content) for m in messages)
        out = next((r for t, r in self.replies.items() if t in prompt), DONE)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=out))])
