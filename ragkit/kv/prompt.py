"""Prompt building for the generators and for the passage-KV store, and citation parsing.

A prompt is a list of *segments* so that the same token sequence serves both full prefill and
passage-KV reuse:

    prefix | glue(1) block(1) | glue(2) block(2) | ... | final

- ``prefix``: the chat template up to the user message plus the task instructions; the same for
  every query (the shared prefix / attention sink every cached passage block is computed after).
- ``glue(i)``: the passage number, ``"\\n[i]"``; it depends on the rank, so it is never cached.
- ``block(i)``: ``" Title: <title>\\n<text>"`` (or ``" <text>"``): independent of rank, query and
  the other passages, so its key/value states can be computed once and reused.
- ``final``: the graph context when the hits carry one (entities, relations, paths: see
  ``ragkit.retrievers._graph``), the question, a short instruction and the end of the chat
  template (generation prompt). The graph context depends on the query, so it is never cached.

Each segment is tokenised on its own (``add_special_tokens=False``) and the ids are concatenated;
full prefill uses exactly that concatenation, so both paths see identical tokens.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

DEFAULT_SYSTEM = ("You are a helpful assistant that answers questions using the numbered passages you are "
                  "given. Answer briefly, in a few words, and cite the passages you used by their numbers "
                  "in square brackets, like [1].")
DEFAULT_INSTRUCTION = "Answer briefly and cite the passages you used, like [1]."
_MARK = "\x00RAGKIT_BODY\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """How prompts look; its :meth:`prefix_text` is hashed into passage-KV cache keys."""

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    use_chat_template: bool = True
    passages_header: str = "Passages:"
    graph_header: str = "Knowledge graph:"

    def shell(self, tokenizer: Any) -> tuple[str, str]:
        """(text before the user message body, text after it up to the generation prompt)."""
        tmpl = getattr(tokenizer, "chat_template", None)
        if self.use_chat_template and tmpl:
            msgs = ([{"role": "system", "content": self.system}] if self.system else []) + \
                [{"role": "user", "content": _MARK}]
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            if not isinstance(text, str) or text.count(_MARK) != 1:
                raise ValueError("the tokenizer's chat template did not render the user message verbatim")
            pre, post = text.split(_MARK)
            return pre, post
        pre = (self.system + "\n\n") if self.system else ""
        return pre, "\nAnswer:"

    def prefix_text(self, tokenizer: Any) -> str:
        return self.shell(tokenizer)[0] + self.passages_header

    def final_text(self, tokenizer: Any, question: str, context: str = "") -> str:
        post = self.shell(tokenizer)[1]
        instr = f"\n{self.instruction}" if self.instruction else ""
        ctx = f"\n\n{self.graph_header}\n{context.strip()}" if context and context.strip() else ""
        return f"{ctx}\n\nQuestion: {question.strip()}{instr}" + post


def block_text(text: str, title: str | None = None) -> str:
    """The cacheable text of one passage (rank-independent)."""
    text = (text or "").strip()
    if title and title.strip():
        return f" Title: {title.strip()}\n{text}"
    return f" {text}" if text else ""


def glue_text(number: int) -> str:
    return f"\n[{number}]"


@dataclass
class Segments:
    """Token ids of every prompt segment (see the module docstring)."""

    prefix: list[int]
    glues: list[list[int]] = field(default_factory=list)
    blocks: list[list[int]] = field(default_factory=list)
    block_texts: list[str] = field(default_factory=list)
    final: list[int] = field(default_factory=list)

    def ids(self) -> list[int]:
        out = list(self.prefix)
        for g, b in zip(self.glues, self.blocks):
            out += g + b
        return out + self.final

    def __len__(self) -> int:
        return len(self.prefix) + sum(len(g) + len(b) for g, b in zip(self.glues, self.blocks)) + len(self.final)


def tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def bos_ids(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer adds a BOS token to plain text, else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def prefix_ids(tokenizer: Any, template: PromptTemplate) -> list[int]:
    ids = bos_ids(tokenizer) + tokenize(tokenizer, template.prefix_text(tokenizer))
    return ids


def build_segments(tokenizer: Any, template: PromptTemplate, question: str,
                   passages: Sequence[tuple[str, str | None]], max_block_tokens: int = 0,
                   prefix: list[int] | None = None, context: str = "") -> Segments:
    """Segments for ``question`` over ``passages`` [(text, title)] in ranked order (numbered from 1);
    ``context`` (graph context text) goes between the passages and the question."""
    seg = Segments(prefix=list(prefix) if prefix is not None else prefix_ids(tokenizer, template))
    for i, (text, title) in enumerate(passages, 1):
        bt = block_text(text, title)
        ids = tokenize(tokenizer, bt)
        if max_block_tokens and len(ids) > max_block_tokens:
            ids = ids[:max_block_tokens]
        seg.glues.append(tokenize(tokenizer, glue_text(i)))
        seg.blocks.append(ids)
        seg.block_texts.append(bt)
    seg.final = tokenize(tokenizer, template.final_text(tokenizer, question, context))
    return seg


def ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


_CITE = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


def strip_citations(text: str) -> str:
    """``text`` without passage citations (``[1]``, ``[1, 2]``, ``[1][3]``): what answer metrics score."""
    return " ".join(_CITE.sub(" ", text or "").split())


def parse_citations(text: str, n_passages: int) -> tuple[list[int], list[int]]:
    """Passage numbers cited as ``[1]``, ``[1, 2]`` or ``[1][3]``: (valid 1-based numbers in order of
    first appearance, numbers out of range)."""
    valid: list[int] = []
    bad: list[int] = []
    for m in _CITE.finditer(text or ""):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part.strip())
            if 1 <= n <= n_passages:
                if n not in valid:
                    valid.append(n)
            elif n not in bad:
                bad.append(n)
    return valid, bad
