"""``generator.langchain``: answer with any langchain-core chat model or LLM passed from Python.

The model object cannot live in a YAML file, so it is registered under a name and the stage's
configuration holds that name::

    from ragkit.generators.langchain import LangChainGenerator, register_model
    register_model("my-chat", ChatSomething(...))          # once, in Python
    pipe = BM25Retriever(index="idx", text=True) % 5 >> LangChainGenerator(model="my-chat")
    # or: LangChainGenerator.wrap(ChatSomething(...), name="my-chat")

YAML then says ``generator.langchain: {model: my-chat}``. The prompt is the same numbered-passages
prompt as ``generator.hf`` (system message + one user message); citations ``[n]`` map to doc ids.
Chat models (``BaseChatModel``) get messages, plain LLMs (``BaseLLM``) get one string. The
other direction (a ragkit pipeline as a LangChain retriever or runnable) is in
:mod:`ragkit.langchain`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ragkit._deps import require
from ragkit._named import NamedObjects
from ragkit.errors import ConfigError, StageInputError
from ragkit.records import Answer, Ranking
from ragkit.registry import register
from ragkit.stage import Generator, param

from ragkit.kv.prompt import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, block_text, glue_text, parse_citations

_MODELS = NamedObjects("LangChain model", "ragkit.generators.langchain.register_model(name, model)")


def register_model(name: str, model: Any) -> Any:
    """Make a langchain-core chat model / LLM available to ``generator.langchain`` as ``name``."""
    lc = require("langchain_core.language_models", "generator.langchain")
    if not isinstance(model, (lc.BaseChatModel, lc.BaseLLM)):
        raise ConfigError(f"register_model('{name}'): expected a langchain-core BaseChatModel or BaseLLM, "
                          f"got {type(model).__name__}")
    return _MODELS.add(name, model)


def registered_models() -> list[str]:
    return _MODELS.names()


def user_message(question: str, passages: list[tuple[str, str | None]], header: str = "Passages:",
                 instruction: str = DEFAULT_INSTRUCTION, context: str = "") -> str:
    """The user message: numbered passages with titles, the graph context (if any), then the question
    and the instruction."""
    body = header + "".join(glue_text(i) + block_text(t, ti) for i, (t, ti) in enumerate(passages, 1))
    if context.strip():
        body += f"\n\nKnowledge graph:\n{context.strip()}"
    return f"{body}\n\nQuestion: {question.strip()}" + (f"\n{instruction}" if instruction else "")


@register("generator.langchain")
class LangChainGenerator(Generator):
    """Generate answers with a langchain-core chat model or LLM registered from Python."""

    model: str = param(help="name given to register_model() for the LangChain model")
    max_passages: int = param(10, ge=0, help="use at most this many top hits as passages")
    system_prompt: str = param("", help="system message (empty = the built-in instructions)")
    instruction: str = param("", help="instruction after the question (empty = built-in)")
    stop: list[str] = param([], help="stop sequences passed to the model")
    stream: bool = param(False, help="stream tokens (to the callback, else stdout) and time the first one")
    max_concurrency: int = param(4, ge=1, help="parallel model calls in a batch")

    _callback = None    # set_stream_callback(); kept across setup()




    @classmethod
    def wrap(cls, llm: Any, name: str | None = None, **kw: Any) -> "LangChainGenerator":
        """Register ``llm`` (under ``name`` or a name derived from its class) and build the stage."""
        name = name or f"{type(llm).__name__}-{id(llm):x}"
        register_model(name, llm)
        return cls(model=name, **kw)

    def _setup(self) -> None:
        require("langchain_core", "generator.langchain")
        self._llm = _MODELS.lookup(self.model, self.key, "model")

    def set_stream_callback(self, fn: Callable[[str, str], None] | None) -> "LangChainGenerator":
        """Call ``fn(qid, piece)`` with each streamed piece of text (implies streaming)."""
        self._callback = fn
        return self

    def _input(self, r: Ranking) -> Any:
        from langchain_core.language_models import BaseChatModel
        from langchain_core.messages import HumanMessage, SystemMessage

        hits = list(r.hits[: self.max_passages])
        for h in hits:
            if h.text is None:
                raise StageInputError(f"'{self.key}': hit {h.key!r} of query {r.qid!r} has no text. Add "
                                      "`text: true` to the retriever.")
        from ragkit.retrievers._graph import contexts_of, render_graph_context

        ctx = "\n".join(t for t in (render_graph_context(c) for c in contexts_of(hits)) if t)
        user = user_message(r.query.text, [(h.text, (h.meta or {}).get("title")) for h in hits],
                            instruction=self.instruction or DEFAULT_INSTRUCTION, context=ctx)
        system = self.system_prompt or DEFAULT_SYSTEM
        if isinstance(self._llm, BaseChatModel):
            return [SystemMessage(system), HumanMessage(user)], hits
        return f"{system}\n\n{user}\nAnswer:", hits

    @staticmethod
    def _text(out: Any) -> str:
        content = getattr(out, "content", out)
        if isinstance(content, list):   # content blocks
            content = "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
        return str(content)

    def run(self, batch: list[Ranking]) -> list[Answer]:
        llm = self._llm
        prepared = [self._input(r) for r in batch]
        kw = {"stop": list(self.stop)} if self.stop else {}
        cb = self._callback
        timings: list[dict] = []
        if self.stream or cb is not None:
            texts = []
            for r, (inp, _) in zip(batch, prepared):
                t0 = time.perf_counter()
                first, parts = None, []
                for chunk in llm.stream(inp, **kw):
                    piece = self._text(chunk)
                    if first is None:
                        first = time.perf_counter() - t0
                    parts.append(piece)
                    if cb is not None:
                        cb(r.qid, piece)
                    else:
                        print(piece, end="", flush=True)
                total = time.perf_counter() - t0
                texts.append("".join(parts))
                timings.append({"ttft_s": first if first is not None else total, "generate_s": total})
        else:
            t0 = time.perf_counter()
            outs = llm.batch([inp for inp, _ in prepared], config={"max_concurrency": self.max_concurrency}, **kw)
            total = time.perf_counter() - t0
            texts = [self._text(o) for o in outs]
            timings = [{"generate_s": total / len(batch), "batch_s": total} for _ in batch]
        answers = []
        for r, (_, hits), text, tm in zip(batch, prepared, texts, timings):
            nums, bad = parse_citations(text, len(hits))
            cites = tuple(dict.fromkeys(hits[n - 1].doc_id for n in nums))
            meta = {"model": self.model, "llm_class": type(llm).__name__, "cited_numbers": nums}
            if bad:
                meta["invalid_citations"] = bad
            answers.append(Answer(r.qid, text.strip(), cites, tm, meta, ranking=r, query=r.query))
        return answers
