"""Use a ragkit pipeline inside LangChain (langchain-core).

- :func:`as_retriever`: the retrieval part of a pipeline (every stage up to the first that makes
  answers) as a ``langchain_core.retrievers.BaseRetriever``: ``invoke("question")`` returns
  LangChain ``Document``s with ``page_content`` = hit text and ``metadata`` = doc_id, chunk_id,
  score, rank, title.
- :func:`as_runnable`: the whole pipeline as a ``Runnable``: ``invoke("question")`` (or a dict with
  ``question``/``query``/``input``, or a :class:`~ragkit.records.Query`) returns a dict with
  ``answer``, ``citations``, ``documents`` and ``timings`` for answer pipelines, or ``documents``
  for ranking pipelines; ``batch`` runs the pipeline once over the whole batch.

For the other direction (a LangChain model as ragkit's generator) see
:mod:`ragkit.generators.langchain`.
"""
from __future__ import annotations

from typing import Any, Optional

from ._deps import require
from .errors import PipelineError, StageInputError
from .records import Answer, Query, Ranking
from .stage import ANSWERS

require("langchain_core", "the LangChain adapters")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_core.runnables import Runnable, RunnableConfig  # noqa: E402
from pydantic import ConfigDict  # noqa: E402


def retrieval_part(pipeline: Any) -> Any:
    """The stages before the first answer-making stage, as a new pipeline."""
    from .pipeline import Pipeline

    stages = []
    for s in pipeline.stages:
        if s.output_kind == ANSWERS:
            break
        stages.append(s)
    if not stages:
        raise PipelineError("the pipeline has no retrieval stages before its generator")
    return Pipeline(stages, base_dir=pipeline.base_dir, name=pipeline.name)


def to_documents(r: Ranking) -> list[LCDocument]:
    return [LCDocument(page_content=h.text or "",
                       metadata={"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score, "rank": h.rank,
                                 "qid": h.qid, **({"title": h.title} if h.title else {})})
            for h in r.hits]


class RagkitRetriever(BaseRetriever):
    """A ragkit retrieval pipeline as a LangChain retriever."""

    pipeline: Any
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[LCDocument]:
        out = self.pipeline.run([Query("q0", query)])[0]
        if not isinstance(out, Ranking):
            raise PipelineError("RagkitRetriever needs a pipeline that returns rankings")
        return to_documents(out)


def as_retriever(pipeline: Any) -> RagkitRetriever:
    """The retrieval part of ``pipeline`` as a LangChain ``BaseRetriever``."""
    return RagkitRetriever(pipeline=retrieval_part(pipeline))


def _to_query(x: Any, i: int) -> Query:
    if isinstance(x, Query):
        return x
    if isinstance(x, str):
        return Query(f"q{i}", x)
    if isinstance(x, dict):
        for k in ("question", "query", "input"):
            if isinstance(x.get(k), str):
                return Query(str(x.get("qid", f"q{i}")), x[k])
    raise StageInputError(f"input #{i + 1}: expected a question string, a Query or a dict with 'question', "
                          f"'query' or 'input'; got {type(x).__name__}")


def _to_output(res: Any) -> dict:
    if isinstance(res, Answer):
        docs = to_documents(res.ranking) if res.ranking is not None else []
        return {"qid": res.qid, "answer": res.text, "citations": list(res.citations), "documents": docs,
                "timings": dict(res.timings)}
    return {"qid": res.qid, "documents": to_documents(res)}


class RagkitRunnable(Runnable):
    """A whole ragkit pipeline as a LangChain ``Runnable`` (question -> dict)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def invoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> dict:
        return self.batch([input], config, **kwargs)[0]

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[dict]:
        if not inputs:
            return []
        queries = [_to_query(x, i) for i, x in enumerate(inputs)]
        return [_to_output(r) for r in self.pipeline.run(queries)]


def as_runnable(pipeline: Any) -> RagkitRunnable:
    """The whole ``pipeline`` as a LangChain ``Runnable``."""
    return RagkitRunnable(pipeline)
