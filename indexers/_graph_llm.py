"""LLM access for ``indexer.graph``: chat backends, the extraction cache, record extraction and summaries.

Two backends answer a list of chat messages ``[(role, text), ...]`` with text:

- :class:`HFChat`: a transformers causal LM loaded like ``generator.hf``'s (offline short names such
  as ``smollm2-135m-instruct``, local folders, cached hub ids), chat template applied, greedy.
- :class:`LangChainChat`: any langchain-core chat model / LLM registered with
  :func:`ragkit.generators.langchain.register_model` (a deterministic fake in the tests).

Every reply is cached in one SQLite file under ``ragkit.artifacts.cache_dir()/graph/llm.sqlite``,
keyed by sha256 of (model identity, prompt hash, the chunk text's hash, the call's role), so a
rebuild or an insert never calls the model twice for the same chunk; raw replies are stored, so a
better parser applies to old replies without new calls.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ragkit.artifacts import cache_dir
from ragkit.errors import ConfigError, StageInputError

from ._graph_records import (COMPLETE, TUPLE, Extraction, format_fewshot, format_glean, format_summary, format_system,
                              format_user, parse_records)

Messages = list[tuple[str, str]]


class HFChat:
    """Greedy chat completion with a transformers causal LM (the ``generator.hf`` loader)."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 512,
                 base_dir: Any = None, no_repeat_ngram: int = 0) -> None:
        from ragkit.models import load_causal_lm

        self.tok, self.model, res = load_causal_lm(model, device, dtype, "auto", base_dir=base_dir)
        self.max_new_tokens = max_new_tokens
        self.no_repeat_ngram = no_repeat_ngram
        self.identity = f"hf:{res.id}@{res.revision}:greedy:{max_new_tokens}" + \
            (f":no_repeat_ngram={no_repeat_ngram}" if no_repeat_ngram else "")
        self.stop: list[str] | None = [COMPLETE]   # generation ends at the completion marker (greedy: same text, fewer steps)
        try:
            from transformers import StopStringCriteria

            StopStringCriteria(self.tok, self.stop)
        except Exception:   # noqa: BLE001 - a tokenizer the criterion cannot map: generate to max_new_tokens
            self.stop = None
        self.supports_prefill = True
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def __call__(self, messages: Messages) -> str:
        import torch

        msgs = [{"role": r, "content": c} for r, c in messages]
        prefill = messages[-1][1] if messages and messages[-1][0] == "assistant" else ""   # the reply's forced start
        if prefill:   # the assistant turn is opened as usual and starts with the forced text
            msgs = msgs[:-1]
        if getattr(self.tok, "chat_template", None):
            prompt = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + prefill
        else:
            prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:" + \
                (" " + prefill if prefill else "")
        enc = self.tok(prompt, return_tensors="pt", add_special_tokens=False)
        dev = next(self.model.parameters()).device
        with self._lock, torch.no_grad():
            out = self.model.generate(**{k: v.to(dev) for k, v in enc.items()}, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
                                      **({"stop_strings": self.stop, "tokenizer": self.tok} if self.stop else {}),
                                      **({"no_repeat_ngram_size": self.no_repeat_ngram} if self.no_repeat_ngram else {}))
        return prefill + self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


class LangChainChat:
    """A langchain-core chat model or LLM registered under ``name`` (generator.langchain's registry)."""

    def __init__(self, name: str, key: str = "indexer.graph") -> None:
        from ragkit.generators.langchain import _MODELS

        self.llm = llm = _MODELS.lookup(name, key, "llm_model")
        try:
            ident = json.dumps(getattr(llm, "_identifying_params", {}), sort_keys=True, default=str)
        except Exception:  # pragma: no cover - exotic models
            ident = repr(llm)
        kind = getattr(llm, "_llm_type", type(llm).__name__)
        self.identity = f"langchain:{name}:{kind}:{hashlib.sha256(ident.encode()).hexdigest()[:16]}"

    @staticmethod
    def count_tokens(text: str) -> int:
        return len(text.split())

    def __call__(self, messages: Messages) -> str:
        from langchain_core.language_models import BaseChatModel
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        if isinstance(self.llm, BaseChatModel):
            kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
            out = self.llm.invoke([kinds[r](c) for r, c in messages])
        else:
            out = self.llm.invoke("\n\n".join(c for _, c in messages))
        content = getattr(out, "content", out)
        if isinstance(content, list):
            content = "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
        return str(content)


class ReplyCache:
    """Raw LLM replies in one SQLite file, keyed by a sha256 string (safe across processes)."""

    def __init__(self, path: Path | None = None, enabled: bool = True) -> None:
        self.path = Path(path) if path else cache_dir() / "graph" / "llm.sqlite"
        self.enabled = enabled
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            con.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, created REAL)")
            con.commit()
            self._con = con
        return self._con

    def get(self, key: str) -> str | None:
        if not self.enabled:
            return None
        with self._lock:
            row = self._db().execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, reply: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, reply, time.time()))
            db.commit()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class LLMExtractor:
    """LightRAG-style extraction of one chunk (optional gleaning pass) and description summaries."""

    def __init__(self, chat: Any, *, entity_types: Sequence[str], language: str, gleaning: int,
                 cache: ReplyCache, max_input_chars: int, prompt: str = "lightrag", prefill: bool = False) -> None:
        self.chat = chat
        self.entity_types = list(entity_types)
        self.system = format_system(self.entity_types, language)
        self.language = language
        self.gleaning = gleaning
        self.cache = cache
        self.max_input_chars = max_input_chars
        self.prompt = prompt
        self.prefill = f"entity{TUPLE}" if prefill else ""
        template = (self.system + format_user("") if prompt == "lightrag"
                    else "\x1e".join(c for _, c in format_fewshot("", self.entity_types, language)))
        ident = template + format_glean() + (f"\x1fprefill={self.prefill}" if self.prefill else "")
        self.prompt_id = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.stats = {"llm_calls": 0, "llm_cached": 0, "llm_s": 0.0}

    @property
    def identity(self) -> str:
        return self.chat.identity

    def _ask(self, role: str, content_hash: str, messages: Messages) -> str:
        key = hashlib.sha256(f"{self.chat.identity}\x1f{self.prompt_id}\x1f{role}\x1f{content_hash}".encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["llm_cached"] += 1
            return hit
        t0 = time.perf_counter()
        reply = self.chat(messages)
        self.stats["llm_s"] += time.perf_counter() - t0
        self.stats["llm_calls"] += 1
        self.cache.put(key, reply)
        return reply

    def windows(self, text: str) -> list[str]:
        """A chunk longer than ``max_input_chars`` is extracted in windows cut at white space."""
        if len(text) <= self.max_input_chars:
            return [text]
        out, i = [], 0
        while i < len(text):
            j = min(len(text), i + self.max_input_chars)
            if j < len(text):
                cut = text.rfind(" ", i + self.max_input_chars // 2, j)
                j = cut if cut > i else j
            out.append(text[i:j])
            i = j
        return out

    def extract(self, text: str, chunk_ref: str = "") -> tuple[Extraction, list[str]]:
        """(parsed records, raw replies) for one chunk text."""
        ex = Extraction()
        raws: list[str] = []
        for w in self.windows(text):
            h = text_hash(w)
            msgs: Messages = ([("system", self.system), ("user", format_user(w))] if self.prompt == "lightrag"
                              else format_fewshot(w, self.entity_types, self.language))
            try:
                if self.prefill:   # the reply is forced to start as an entity record (hf backend)
                    reply = self._ask("extract", h, msgs + [("assistant", self.prefill)])
                else:
                    reply = self._ask("extract", h, msgs)
                part = parse_records(reply)
                raws.append(reply)
                for g in range(self.gleaning):
                    msgs = msgs + [("assistant", reply), ("user", format_glean())]
                    reply = self._ask(f"glean{g + 1}", h, msgs)
                    raws.append(reply)
                    part.absorb(parse_records(reply))
            except Exception as exc:
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise StageInputError(f"'indexer.graph': the extraction LLM ({self.chat.identity}) failed on chunk "
                                      f"{chunk_ref!r}: {type(exc).__name__}: {exc}. Replies obtained so far are "
                                      "cached; the previous index (if any) is untouched.") from exc
            ex.extend(part)
        return ex, raws

    def summarize(self, kind: str, name: str, descriptions: list[str], max_words: int) -> str:
        h = text_hash("\x1e".join(descriptions) + f"\x1f{kind}\x1f{name}\x1f{max_words}")
        prompt = format_summary(kind, name, descriptions, self.language, max_words)
        return self._ask("summary", h, [("user", prompt)]).strip()
