"""Pipelines: a chain of stages built with ``>>`` and ``%`` or read from YAML.

``Pipeline.from_yaml(p.to_yaml()) == p`` for every pipeline; the CLI and the library share
this one code path.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .config import (CONFIG_VERSION, CorpusSpec, EvalSpec, ExecutorSpec, load_yaml, parse_pipeline_dict, read_text,
                     stage_to_item)
from .errors import ConfigError, PipelineError, StageInputError, where
from .records import Document, Query, as_chunks
from .stage import ANSWERS, CHUNKS, DOCUMENTS, QUERIES, RANKINGS, Stage

QUERY_FIELDS = frozenset({"qid", "query"})
HIT_FIELDS = frozenset({"qid", "query", "doc_id", "score", "rank"})


class Pipeline:
    """An ordered list of query stages, plus optional corpus, index stages and eval defaults."""

    _indexes_checked = False   # set by setup() once the retrievers' indexes were found to agree

    def __init__(self, stages: Sequence[Stage] = (), *, index: Sequence[Stage] = (),
                 corpus: CorpusSpec | None = None, evaluation: EvalSpec | None = None,
                 name: str = "", description: str = "", base_dir: str | Path | None = None,
                 executor: ExecutorSpec | None = None) -> None:
        self.stages: list[Stage] = _flatten(stages)
        self.index_stages: list[Stage] = _flatten(index)
        self.corpus = corpus
        self.evaluation = evaluation
        self.name = name
        self.description = description
        self.base_dir = Path(base_dir) if base_dir is not None else None
        for label, text in (("name", name), ("description", description)):
            if not isinstance(text, str) or "\x00" in text:
                raise ConfigError(f"pipeline {label} must be a string without NUL characters, got {text!r:.60}")
        self.executor = executor
        self.check()

    # -- composition ---------------------------------------------------------------------------
    def _with(self, stages: list[Stage]) -> "Pipeline":
        return Pipeline(stages, index=self.index_stages, corpus=self.corpus, evaluation=self.evaluation,
                        name=self.name, description=self.description, base_dir=self.base_dir,
                        executor=self.executor)

    def __rshift__(self, other: Any) -> "Pipeline":
        if isinstance(other, Pipeline):
            return self._with(self.stages + other.stages)
        if isinstance(other, Stage):
            return self._with(self.stages + [other])
        raise PipelineError(f"cannot compose a pipeline with {type(other).__name__}; use a Stage or Pipeline")

    def __mod__(self, k: int) -> "Pipeline":
        from .stages_core import Cutoff

        if not isinstance(k, int) or isinstance(k, bool):
            raise PipelineError(f"`% k` needs an int number of hits, got {k!r}")
        return self >> Cutoff(k=k)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self._key() == other._key()

    def _key(self) -> tuple:
        return (self.stages, self.index_stages, self.corpus, self.evaluation, self.name, self.description,
                self.executor)

    def __repr__(self) -> str:
        body = " >> ".join(map(repr, self.stages)) or "(empty)"
        return f"Pipeline({self.name + ': ' if self.name else ''}{body})"

    def __len__(self) -> int:
        return len(self.stages)

    # -- checking ------------------------------------------------------------------------------
    def check(self, complete: bool = False) -> None:
        """Check kinds and needs/provides of adjacent stages, before anything loads.

        With ``complete`` the chains must also start right: the query stages from queries (a
        retriever first) and the index stages from documents or chunks. A fragment such as
        ``OverlapReranker() % 2``, composed later behind a retriever, is not complete; a pipeline
        read from a file, run or indexed must be.
        """
        _check_chain(self.stages, QUERIES, "pipeline", complete)
        _check_chain(self.index_stages, DOCUMENTS, "index", complete)

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> "Pipeline":
        for s in self.index_stages + self.stages:
            s.bind_context(base_dir=self.base_dir)
        if not self._indexes_checked:
            check_indexes_agree(self.stages, self.base_dir)
            self._indexes_checked = True
        for s in self.stages:
            s.setup()
        return self

    @property
    def output_kind(self) -> str:
        return self.stages[-1].output_kind if self.stages else QUERIES

    def run(self, queries: str | Query | Iterable[str | Query]) -> list[Any]:
        """Run the query stages over a batch of queries; returns rankings or answers."""
        return self.run_timed(queries)[0]

    __call__ = run

    def search(self, text: str) -> Any:
        """Run one query given as text; returns its ranking or answer."""
        if not isinstance(text, str):
            raise StageInputError(f"search() takes the query text as a str, got {_type_hint(text)}")
        return self.run([Query("q0", text)])[0]

    def run_timed(self, queries: Any) -> tuple[list[Any], dict[str, float]]:
        """Like :meth:`run`, also returning the seconds spent in each stage (keyed ``#i key``)."""
        if not self.stages:
            raise PipelineError("the pipeline has no query stages")
        self.check(complete=True)
        batch: list[Any] = to_queries(queries)
        self.setup()
        times: dict[str, float] = {}
        n = len(batch)
        for i, s in enumerate(self.stages):
            t0 = time.perf_counter()
            if s.output_kind == ANSWERS and i > 0:  # the generator's answers carry the upstream time
                upstream = sum(times.values()) / n
                batch = [replace(a, timings={"retrieval_s": upstream, **a.timings}) for a in s(batch)]
            else:
                batch = s(batch)
            times[f"#{i + 1} {s.key}"] = time.perf_counter() - t0
        return batch, times

    # -- LangChain -----------------------------------------------------------------------------
    def as_langchain_retriever(self) -> Any:
        """This pipeline's retrieval part as a langchain-core ``BaseRetriever``."""
        from .langchain import as_retriever

        return as_retriever(self)

    def as_langchain_runnable(self) -> Any:
        """The whole pipeline as a langchain-core ``Runnable`` (str or dict in, answer out)."""
        from .langchain import as_runnable

        return as_runnable(self)

    def build_index(self, documents: Iterable[Document] | None = None, *, progress: bool | None = None,
                    incremental: bool = True, executor: Any = None, partitions: int | None = None) -> dict:
        """Run the index stages over ``documents`` (default: the corpus section). Returns stats.

        With the corpus section as input and ``incremental`` on, a rebuild reads, chunks and
        indexes only the files/records that changed since the last build (a manifest is kept in
        each index folder), provided every indexer supports ``update_index(chunks, removed_doc_ids)``;
        otherwise everything is rebuilt.

        Before any work, every indexer's folder is checked (:func:`ragkit.artifacts.check_target`):
        only a new or empty folder or a ragkit index of the same kind is replaced, never the
        pipeline file's folder, the corpus or a folder above them. Each index records the corpus
        it was built from, so that :meth:`setup` can refuse indexes built from different corpora.

        ``executor`` (or the pipeline's ``executor:`` section): build sharded indexes in partitions,
        on a Dask cluster (``"local:2"``, ``"tcp://host:8786"``, a ``distributed.Client``) or in this
        process (``"serial"``); see :mod:`ragkit.distributed`. ``partitions`` overrides the number of
        partitions (= shards). A sharded build always re-indexes the whole corpus.
        """
        if not self.index_stages:
            raise PipelineError("the pipeline has no 'index:' stages")
        from .artifacts import build_context, check_target, corpus_record

        self.check(complete=True)
        self._indexes_checked = False
        for s in self.index_stages:
            s.bind_context(base_dir=self.base_dir, progress=progress)
        indexers = [s for s in self.index_stages if hasattr(s, "index_folder")]
        protect = self._protected_paths()
        with build_context(protect=protect):
            for s in indexers:  # refuse a bad index path before any work is done
                check_target(s.index_folder(), s.key, what=f"index folder of '{s.key}'")
        executor = executor if executor is not None else self.executor
        if executor is not None:
            with build_context(protect=protect):
                return self._build_sharded(documents, executor, partitions, progress)
        previous = None
        if documents is None:
            if self.corpus is None:
                raise PipelineError("no documents given and the pipeline has no 'corpus:' section")
            from .ingest import Manifest, read_corpus, read_corpus_incremental

            if incremental and indexers and all(callable(getattr(s, "update_index", None)) for s in indexers):
                manifests = [Manifest.load(s.index_folder()) for s in indexers]
                if manifests[0] is not None and all(m is not None and m.to_dict() == manifests[0].to_dict()
                                                    for m in manifests):
                    previous = manifests[0]
            if previous is not None:
                inc = read_corpus_incremental(self.corpus, base_dir=self.base_dir, previous_manifest=previous,
                                              progress=progress)
                with build_context(protect=protect, corpus=corpus_record(inc.manifest)):
                    return self._update_index(inc, indexers)
            documents = read_corpus(self.corpus, base_dir=self.base_dir, progress=progress)
        manifest = getattr(documents, "manifest", None)
        if manifest is None:
            documents = list(documents)
        corpus = corpus_record(manifest, None if manifest is not None else documents)
        with build_context(protect=protect, corpus=corpus):
            return self._run_index_stages(documents, self.index_stages)

    def _protected_paths(self) -> list[tuple[Path, str]]:
        """Folders an index may never replace: the pipeline file's folder and the corpus."""
        out = []
        if self.base_dir is not None:
            out.append((Path(self.base_dir), "the folder holding the pipeline file"))
        if self.corpus is not None and self.corpus.path:
            from .artifacts import resolve_path

            out.append((resolve_path(self.corpus.path, self.base_dir), "the corpus (corpus: path)"))
        return out

    def _build_sharded(self, documents: Iterable[Document] | None, executor: Any, partitions: int | None,
                       progress: bool | None) -> dict:
        from . import distributed

        distributed.shardable(self.index_stages)  # fail before reading the corpus
        for s in self.index_stages:
            s.bind_context(base_dir=self.base_dir, progress=progress)
        indexers = [s for s in self.index_stages if hasattr(s, "index_folder")]
        if documents is None and self.corpus is None:
            raise PipelineError("no documents given and the pipeline has no 'corpus:' section")
        # connect first: an unreachable scheduler is reported within its connect_timeout, before the
        # corpus is read (which can take minutes)
        with distributed.open_executor(executor, partitions=partitions) as ex:
            if documents is None:
                from .ingest import read_corpus

                documents = read_corpus(self.corpus, base_dir=self.base_dir, progress=progress)
            report = getattr(documents, "report", None)
            manifest = getattr(documents, "manifest", None)
            docs = list(documents)
            stats = distributed.build_index(self.index_stages, docs, ex, base_dir=self.base_dir, progress=progress)
        if report is not None:
            stats["skipped"] = len(report.skipped)
            stats["report"] = report.summary()
        if manifest is not None:
            for s in indexers:
                manifest.save(s.index_folder())
        return stats

    def _run_index_stages(self, documents: Iterable[Any], stages: list[Stage]) -> dict:
        report = getattr(documents, "report", None)
        batch: list[Any] = list(documents)
        if not batch:
            from .errors import StageInputError

            raise StageInputError("empty corpus: no documents to index (nothing was written)")
        stats: dict[str, Any] = {"documents": len(batch)}
        if report is not None:
            stats["skipped"] = len(report.skipped)
            stats["report"] = report.summary()
        for i, s in enumerate(stages):
            t0 = time.perf_counter()
            batch = s(batch)
            stats[f"#{i + 1} {s.key} s"] = round(time.perf_counter() - t0, 4)
        stats["chunks"] = len(batch)
        return stats

    def _update_index(self, inc: Any, indexers: list[Stage]) -> dict:
        """Chunk only the changed documents and hand them, with the stale ids, to each indexer."""
        stats: dict[str, Any] = {"mode": "incremental", "added": len(inc.added), "changed": len(inc.changed),
                                 "removed": len(inc.removed), "unchanged": len(inc.unchanged),
                                 "skipped": len(inc.report.skipped), "report": inc.report.summary()}
        if inc.added or inc.changed or inc.removed:
            batch: list[Any] = list(inc.documents)
            for i, s in enumerate(self.index_stages):
                t0 = time.perf_counter()
                if s.input_kind == CHUNKS:
                    batch = as_chunks(batch)
                if s in indexers:
                    s.setup()
                    s.update_index(batch, inc.stale_ids)
                else:
                    batch = s(batch)
                stats[f"#{i + 1} {s.key} s"] = round(time.perf_counter() - t0, 4)
            stats["chunks"] = len(batch)
        else:  # nothing changed: the indexes stay; only the manifest's file times are refreshed
            for s in indexers:
                inc.manifest.save(s.index_folder())
        return stats

    # -- YAML ----------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": CONFIG_VERSION}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        if self.corpus is not None:
            out["corpus"] = self.corpus.changed_config()
        if self.index_stages:
            out["index"] = [stage_to_item(s) for s in self.index_stages]
        out["pipeline"] = [stage_to_item(s) for s in self.stages]
        if self.evaluation is not None:
            out["eval"] = self.evaluation.changed_config()
        if self.executor is not None:
            out["executor"] = self.executor.changed_config()
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        cfg = self.to_config()
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=None)
        if yaml.safe_load(text) != cfg:  # PyYAML writes some line-break characters (NEL, LS) raw
            text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=False, default_flow_style=None)
        if path is not None:
            from .artifacts import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> "Pipeline":
        """Load from a YAML file path or from YAML text."""
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and source.endswith((".yaml", ".yml"))):
            file = str(source)
            text = read_text(source)
            base_dir = Path(source).resolve().parent
        elif isinstance(source, str):
            file, text, base_dir = "<string>", source, None
        else:
            raise ConfigError(f"from_yaml() takes a file path (str or Path) or YAML text, got {_type_hint(source)}")
        loc = load_yaml(text, file)
        return cls._from_parts(parse_pipeline_dict(loc.value, file, loc), file, loc, base_dir)

    @classmethod
    def _from_parts(cls, parts: dict, file: str, loc: Any, base_dir: Any) -> "Pipeline":
        """Build and check a whole pipeline; a chain that cannot run is a ConfigError at file:line."""
        try:
            _check_chain(parts["pipeline"], QUERIES, "pipeline", True)  # the first problem in file order
            _check_chain(parts["index"], DOCUMENTS, "index", True)
            p = cls(parts["pipeline"], index=parts["index"], corpus=parts["corpus"],
                    evaluation=parts["eval"], name=parts["name"], description=parts["description"],
                    base_dir=base_dir, executor=parts.get("executor"))
            p.check(complete=True)
            return p
        except PipelineError as exc:
            at = getattr(exc, "at", None)
            line = loc.line(*at) if at else None
            raise ConfigError(f"{where(file, line or None)}{exc}") from None

    @classmethod
    def from_config(cls, data: dict, base_dir: str | Path | None = None) -> "Pipeline":
        from .config import Located

        loc = Located(data)
        return cls._from_parts(parse_pipeline_dict(data, "<dict>", loc), "<dict>", loc, base_dir)


def _walk(stages: Iterable[Any]) -> Iterable[Stage]:
    """Every stage, and every stage nested in a stage's parameters (fusion's retrievers)."""
    for s in stages:
        if isinstance(s, Stage):
            yield s
            for name in s.param_names():
                v = getattr(s, name)
                yield from _walk(v if isinstance(v, (list, tuple)) else [v])


def check_indexes_agree(stages: Sequence[Stage], base_dir: Path | None) -> None:
    """Raise IndexArtifactError when the retrievers' indexes were built from different corpora.

    Each index built by ``Pipeline.build_index`` records the corpus it came from (``corpus`` in
    its params.json: a hash of the corpus manifest and the document count). Indexes built
    another way carry no record and are not compared. Reads only the params files (cheap).
    """
    import json

    from .artifacts import PARAMS_FILE, recover, resolve_path
    from .errors import IndexArtifactError

    seen: dict[str, tuple[Path, dict]] = {}
    for s in _walk(stages):
        index = getattr(s, "index", None)
        if not isinstance(index, str) or not index or not s.key.startswith("retriever."):
            continue
        folder = resolve_path(index, getattr(s, "_base_dir", None) or base_dir)
        recover(folder)  # a build killed while swapping this index in: roll back, clean up first
        try:
            corpus = json.loads((folder / PARAMS_FILE).read_text(encoding="utf-8")).get("corpus")
        except (OSError, ValueError, AttributeError):
            continue  # missing or corrupt: the retriever's own load reports it
        if isinstance(corpus, dict) and isinstance(corpus.get("id"), str):
            seen.setdefault(corpus["id"], (folder, corpus))
    if len(seen) > 1:
        parts = [f"{folder} from a corpus of {c.get('documents', '?')} documents (id {cid[:12]})"
                 for cid, (folder, c) in seen.items()]
        raise IndexArtifactError("the pipeline's indexes were built from different corpora: " + "; ".join(parts)
                                 + ". A build was interrupted between its indexers, or the indexes come from "
                                 "different builds; rebuild them together (`ragkit index PIPELINE.yaml`).")


def _flatten(stages: Sequence[Any]) -> list[Stage]:
    out: list[Stage] = []
    for s in stages:
        if isinstance(s, Pipeline):
            out.extend(s.stages)
        elif isinstance(s, Stage):
            out.append(s)
        else:
            raise PipelineError(f"not a stage: {s!r}")
    return out


def _chain_error(msg: str, section: str, i: int) -> PipelineError:
    exc = PipelineError(msg)
    exc.at = (section, i)  # type: ignore[attr-defined]  # where in a pipeline file (for file:line)
    return exc


def _check_chain(stages: list[Stage], first_kind: str, section: str, complete: bool = False) -> None:
    fields: frozenset[str] | None = None
    prev_kind = first_kind if complete else None
    for i, s in enumerate(stages):
        label = f"{section} stage #{i + 1} '{s.key or type(s).__name__}'"
        fits = s.input_kind == prev_kind or (s.input_kind == CHUNKS and prev_kind == DOCUMENTS)
        if prev_kind is not None and not fits:
            if i > 0:
                raise _chain_error(f"{label} takes {s.input_kind} but the stage before it gives {prev_kind}.",
                                   section, i)
            fix = ("list chunkers and indexers under 'index:' and retrievers under 'pipeline:'"
                   if section == "index" else
                   "start with a retriever (or a stage that takes queries); 'index:' builds the indexes")
            raise _chain_error(f"{label} takes {s.input_kind} but the {section} stages start from {first_kind}: "
                               f"{fix}.", section, i)
        if s.input_kind == QUERIES:
            fields = QUERY_FIELDS
        if fields is not None:
            missing = s.needs() - fields
            if missing:
                need = ", ".join(f"`{m}`" for m in sorted(missing))
                hint = (" Add `text: true` to the retriever." if "text" in missing else "")
                raise _chain_error(f"{label} needs {need} on hits; upstream provides "
                                   f"{', '.join(sorted(fields))}.{hint}", section, i)
            fields = fields | s.provides()
        prev_kind = s.output_kind


def _type_hint(x: Any) -> str:
    if isinstance(x, (bytes, bytearray)):
        return f"{type(x).__name__} {bytes(x[:30])!r}; decode it first, e.g. text.decode('utf-8')"
    return f"{type(x).__name__} {x!r:.60}"


def to_queries(queries: Any) -> list[Query]:
    """A str, a Query, or an iterable of them (a list, tuple, generator) as a list of Queries."""
    if isinstance(queries, (str, Query)):
        queries = [queries]
    elif isinstance(queries, (bytes, bytearray, dict)) or not isinstance(queries, Iterable):
        raise StageInputError(f"queries must be a str, a Query or a list of them, got {_type_hint(queries)}"
                              + (" (a dict's keys are not queries)" if isinstance(queries, dict) else ""))
    out = []
    for i, q in enumerate(queries):
        if isinstance(q, str):
            q = Query(f"q{i}", q)
        if not isinstance(q, Query):
            raise StageInputError(f"query #{i + 1}: expected str or Query, got {_type_hint(q)}")
        if not isinstance(q.text, str):
            raise StageInputError(f"query #{i + 1} (qid {q.qid!r}): text must be a str, got {_type_hint(q.text)}")
        if not q.text or not q.text.strip():
            raise StageInputError(f"query #{i + 1} (qid {q.qid!r}): empty query text")
        out.append(q)
    return out


documents_as_chunks = as_chunks  # older name, used by the benchmarks


__all__ = ["Pipeline", "to_queries", "documents_as_chunks", "RANKINGS", "ANSWERS"]
