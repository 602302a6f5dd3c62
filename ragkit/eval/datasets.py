"""Evaluation datasets: one :class:`Dataset` shape, built-in loaders, and a generic folder format.

A dataset is a corpus of documents, a list of queries, graded relevance judgements (``qrels``)
and gold answers. ``load_dataset(name)`` reads a built-in collection from the shared data folder
(``$RAGKIT_DATA``, else a ``shared/data`` folder found above the working directory or the
package), ``load_dataset("path/to/folder")`` reads the generic format (docs/datasets.md)::

    corpus.jsonl    {"doc_id": "d1", "text": "...", "title": "..."}     (optional)
    queries.jsonl   {"qid": "q1", "text": "..."}
    qrels.tsv|.txt  TREC lines "q1 0 d1 2" (or "q1 d1 2")               (optional)
    answers.jsonl   {"qid": "q1", "answers": ["..."]}                    (optional)

Bad input raises :class:`~ragkit.errors.DataError` naming the file, line and field.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DataError, did_you_mean
from ..records import Document, Query

GENERIC_FILES = ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "qrels.txt", "answers.jsonl")


@dataclass
class Dataset:
    """Corpus, queries, graded qrels ``{qid: {doc_id: grade}}`` and gold answers ``{qid: [str]}``."""

    name: str
    corpus: list[Document] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}: {len(self.corpus)} docs, {len(self.queries)} queries, "
                f"{len(self.judged_qids())} with relevant docs, {len(self.answers)} with answers)")

    # -- which queries can be evaluated ----------------------------------------------------------
    def judged_qids(self) -> list[str]:
        """Queries with at least one relevant document (grade > 0), in query order."""
        return [q.qid for q in self.queries if any(g > 0 for g in self.qrels.get(q.qid, {}).values())]

    def answered_qids(self) -> list[str]:
        """Queries with at least one gold answer, in query order."""
        return [q.qid for q in self.queries if self.answers.get(q.qid)]

    def query(self, qid: str) -> Query:
        for q in self.queries:
            if q.qid == qid:
                return q
        raise KeyError(qid)

    def stats(self) -> dict[str, int]:
        return {"documents": len(self.corpus), "queries": len(self.queries),
                "judged_queries": len(self.judged_qids()),
                "qrels": sum(len(v) for v in self.qrels.values()),
                "answered_queries": len(self.answered_qids())}

    # -- subsets and saving ------------------------------------------------------------------------
    def sample(self, n: int | None = None, *, qids: list[str] | None = None, seed: int | None = None,
               corpus: str = "all", name: str | None = None) -> "Dataset":
        """A smaller dataset: the given ``qids``, else the first ``n`` queries (random ``n`` with
        ``seed``). ``corpus="relevant"`` keeps only documents judged for the kept queries."""
        if corpus not in ("all", "relevant"):
            raise DataError(f"sample(corpus={corpus!r}): valid: all, relevant")
        if qids is None:
            pool = [q.qid for q in self.queries]
            if seed is not None:
                pool = random.Random(seed).sample(pool, min(n or len(pool), len(pool)))
            qids = pool[:n] if n is not None else pool
        keep = set(qids)
        unknown = keep - {q.qid for q in self.queries}
        if unknown:
            raise DataError(f"dataset {self.name!r}: unknown query ids {sorted(unknown)[:5]}")
        queries = [q for q in self.queries if q.qid in keep]
        qrels = {q: dict(d) for q, d in self.qrels.items() if q in keep}
        docs = self.corpus
        if corpus == "relevant":
            wanted = {d for rel in qrels.values() for d in rel}
            docs = [d for d in self.corpus if d.doc_id in wanted]
        return Dataset(name or f"{self.name}-sample", list(docs), queries, qrels,
                       {q: list(a) for q, a in self.answers.items() if q in keep},
                       {**self.meta, "sampled_from": self.name})

    def save(self, folder: str | Path) -> Path:
        """Write the generic folder format (corpus.jsonl, queries.jsonl, qrels.tsv, answers.jsonl)."""
        from ..artifacts import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def jl(rows: Iterator[dict]) -> str:
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

        def doc_row(d: Document) -> dict:
            row: dict[str, Any] = {"doc_id": d.doc_id, "text": d.text}
            if d.meta.get("title") is not None:
                row["title"] = d.meta["title"]
            return row

        atomic_write_text(folder / "corpus.jsonl", jl(doc_row(d) for d in self.corpus))
        atomic_write_text(folder / "queries.jsonl", jl({"qid": q.qid, "text": q.text} for q in self.queries))
        if self.qrels:
            atomic_write_text(folder / "qrels.tsv", "".join(
                f"{q}\t0\t{d}\t{g}\n" for q, rel in self.qrels.items() for d, g in rel.items()))
        if self.answers:
            atomic_write_text(folder / "answers.jsonl", jl({"qid": q, "answers": a} for q, a in self.answers.items()))
        return folder


# -------------------------------------------------------------------------------------------------
# where the shared data lives


def find_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The shared data folder: ``explicit``, ``$RAGKIT_DATA``, else ``shared/data`` found by walking
    up from the working directory and from the package folder. None when nothing is found."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("RAGKIT_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for start in (Path.cwd().resolve(), here):
        for d in (start, *start.parents):
            cand = d / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def bundled_dir() -> Path:
    import ragkit

    return Path(ragkit.__file__).resolve().parents[1] / "data"


# -------------------------------------------------------------------------------------------------
# the built-in names


@dataclass(frozen=True)
class _Builtin:
    description: str
    loader: Callable[[Path], Dataset]
    folder: str  # relative to the shared data folder ("" for bundled)
    bundled: bool = False


def _builtins() -> dict[str, _Builtin]:
    from . import _loaders as L

    return {
        "cranfield": _Builtin("Cranfield aeronautics abstracts: 1,400 records (1,398 with text), 225 queries, graded qrels (4 = best)",
                              L.load_cranfield, "cranfield"),
        "cisi": _Builtin("CISI library-science abstracts: 1,460 docs, the 76 judged of 112 queries, binary qrels",
                         L.load_cisi, "cisi"),
        "squad": _Builtin("SQuAD v1.1 dev part A: 1,023 paragraphs as corpus, 5,397 questions, answer spans",
                          L.load_squad, "squad_v1.1"),
        "hotpotqa": _Builtin("HotpotQA dev distractor (103 questions): paragraphs by title, supporting titles, answers",
                             L.load_hotpotqa, "hotpotqa"),
        "2wikimultihopqa": _Builtin("2WikiMultihopQA dev (100 questions, FlashRAG rows): paragraphs by title, "
                                    "supporting titles, answers", L.load_2wiki, "2wikimultihopqa"),
        "nq-open": _Builtin("NQ-open with gold passages ('lost in the middle' oracle, 1,300 questions): "
                            "gold passages as corpus, answers", L.load_nq_open, "lost_in_the_middle"),
        "squad-sample": _Builtin("small SQuAD sample bundled with ragkit (generic format, no shared data needed)",
                                 lambda root: load_generic(root, name="squad-sample"), "squad_sample", bundled=True),
    }


def list_datasets() -> dict[str, str]:
    """Built-in dataset names with a one-line description each."""
    return {name: b.description for name, b in _builtins().items()}


def load_dataset(name_or_path: "str | Path | Dataset", *, data_dir: str | Path | None = None) -> Dataset:
    """Load a built-in dataset by name (see :func:`list_datasets`) or a generic-format folder by path."""
    if isinstance(name_or_path, Dataset):
        return name_or_path
    s = str(name_or_path)
    p = Path(os.path.expanduser(s))
    builtins = _builtins()
    key = s.strip().lower().replace("_", "-")
    if key in builtins and not (p.is_dir() and isinstance(name_or_path, Path)):
        b = builtins[key]
        if b.bundled:
            root = bundled_dir() / b.folder
            if not root.is_dir():
                raise DataError(f"dataset {key!r}: the bundled sample folder {root} is missing; "
                                f"reinstall ragkit or load another dataset.")
        else:
            base = find_data_dir(data_dir)
            if base is None:
                raise DataError(f"dataset {key!r}: no shared data folder found. Set RAGKIT_DATA to the folder "
                                f"holding {b.folder}/ (looked for shared/data above {Path.cwd()}).")
            root = base / b.folder
            if not root.is_dir():
                raise DataError(f"dataset {key!r}: folder {root} not found. Set RAGKIT_DATA to the folder "
                                f"holding {b.folder}/.")
        ds = b.loader(root)
        ds.name = key
        ds.meta.setdefault("source", str(root))
        return ds
    if p.is_dir():
        return load_generic(p)
    if p.exists():
        raise DataError(f"{p}: a dataset path must be a folder holding {', '.join(GENERIC_FILES)}.")
    if "/" in s or os.sep in s or s.startswith("."):
        raise DataError(f"{p}: no such dataset folder.")
    raise DataError(f"unknown dataset {s!r}. Valid: {', '.join(builtins)}, or a folder path in the generic "
                    f"format (docs/datasets.md).{did_you_mean(key, builtins)}")


# -------------------------------------------------------------------------------------------------
# the generic folder format


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) per line of a JSON-lines file, through the one line reader
    :func:`ragkit.ingest.json_lines`; any bad line is a DataError naming file and line."""
    from ..ingest import json_lines

    try:
        for lineno, where, row, err in json_lines(path):
            if lineno == 0:
                raise DataError(f"{path}:1: expected JSON lines (one object per line), got one JSON array.")
            if err is not None:
                raise DataError(f"{where}: {err}.")
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
            yield lineno, row
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc}).") from None


def _str_field(path: Path, lineno: int, row: dict, name: str, *, ids: bool = False, optional: bool = False) -> Any:
    if name not in row:
        if optional:
            return None
        raise DataError(f"{path}:{lineno}: missing field '{name}' (fields: {', '.join(row) or 'none'}).")
    v = row[name]
    if ids and isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if optional and v is None:
        return None
    if not isinstance(v, str):
        raise DataError(f"{path}:{lineno}: field '{name}' must be a string, got {type(v).__name__} {v!r:.40}.")
    if (ids or name == "text") and not v.strip():
        raise DataError(f"{path}:{lineno}: field '{name}' is empty.")
    return v


def read_corpus_jsonl(path: Path) -> list[Document]:
    """corpus.jsonl (``doc_id``, ``text``, optional ``title``) through ragkit's one corpus reader,
    :class:`ragkit.ingest._Reader` (what :func:`ragkit.ingest.read_documents` uses), failing on the first bad record or empty text."""
    from ..ingest import _Options, _Reader

    reader = _Reader(_Options("jsonl", "doc_id", "text", "title", on_error="fail", on_empty="fail", hints=False),
                     str(path), False)
    return list(reader.jsonl(path, str(path)))


def read_queries_jsonl(path: Path) -> list[Query]:
    out, seen = [], {}
    for lineno, row in _jsonl(path):
        qid = _str_field(path, lineno, row, "qid", ids=True)
        text = _str_field(path, lineno, row, "text")
        if qid in seen:
            raise DataError(f"{path}:{lineno}: field 'qid': duplicate id {qid!r} (first on line {seen[qid]}).")
        seen[qid] = lineno
        out.append(Query(qid, text))
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid iter docid grade`` (also ``qid docid grade``; a header line is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}).") from None
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 4:
            qid, _, did, grade = parts
        elif len(parts) == 3:
            qid, did, grade = parts
        else:
            raise DataError(f"{path}:{lineno}: expected 4 columns 'qid 0 doc_id grade' (or 3: 'qid doc_id grade'), "
                            f"got {len(parts)}: {line.strip()!r:.80}")
        g = _grade(grade)
        if g is None:
            if lineno == 1:  # a header such as "query-id corpus-id score"
                continue
            raise DataError(f"{path}:{lineno}: field 'grade' must be an integer, got {grade!r}.")
        qrels.setdefault(qid, {})[did] = g
    return qrels


def _grade(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def read_answers_jsonl(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lineno, row in _jsonl(path):
        qid = _str_field(path, lineno, row, "qid", ids=True)
        if "answers" not in row:
            raise DataError(f"{path}:{lineno}: missing field 'answers' (a list of strings).")
        ans = row["answers"]
        if isinstance(ans, str):
            ans = [ans]
        if not isinstance(ans, list) or not all(isinstance(a, str) for a in ans):
            raise DataError(f"{path}:{lineno}: field 'answers' must be a list of strings, got {ans!r:.60}.")
        out.setdefault(qid, []).extend(ans)
    return out


def load_generic(folder: str | Path, *, name: str | None = None) -> Dataset:
    """Read the generic folder format; only ``queries.jsonl`` is required."""
    folder = Path(folder)
    qfile = folder / "queries.jsonl"
    if not qfile.exists():
        present = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "nothing"
        raise DataError(f"{folder}: not a dataset folder: queries.jsonl is missing (found: {present or 'nothing'}). "
                        f"Expected {', '.join(GENERIC_FILES)} (see docs/datasets.md).")
    queries = read_queries_jsonl(qfile)
    corpus = read_corpus_jsonl(folder / "corpus.jsonl") if (folder / "corpus.jsonl").exists() else []
    qrels: dict[str, dict[str, int]] = {}
    qrel_files = [folder / f for f in ("qrels.tsv", "qrels.txt") if (folder / f).exists()]
    if len(qrel_files) > 1:
        raise DataError(f"{folder}: both qrels.tsv and qrels.txt exist; keep one.")
    if qrel_files:
        qrels = read_qrels(qrel_files[0])
    answers = read_answers_jsonl(folder / "answers.jsonl") if (folder / "answers.jsonl").exists() else {}
    known = {q.qid for q in queries}
    warnings = []
    extra = sorted(set(qrels) - known)
    if extra:
        warnings.append(f"{len(extra)} qrels query ids not in queries.jsonl were ignored (e.g. {extra[0]!r})")
        qrels = {q: r for q, r in qrels.items() if q in known}
    extra = sorted(set(answers) - known)
    if extra:
        warnings.append(f"{len(extra)} answers.jsonl query ids not in queries.jsonl were ignored (e.g. {extra[0]!r})")
        answers = {q: a for q, a in answers.items() if q in known}
    if corpus:
        ids = {d.doc_id for d in corpus}
        missing = {d for rel in qrels.values() for d, g in rel.items() if g > 0 and d not in ids}
        if missing:
            warnings.append(f"{len(missing)} relevant doc ids in qrels are not in corpus.jsonl "
                            f"(e.g. {sorted(missing)[0]!r}); they count as never retrieved")
    meta: dict[str, Any] = {"format": "generic", "source": str(folder)}
    if warnings:
        meta["warnings"] = warnings
    return Dataset(name or folder.resolve().name, corpus, queries, qrels, answers, meta)


__all__ = ["Dataset", "load_dataset", "list_datasets", "load_generic", "find_data_dir", "read_qrels",
           "read_corpus_jsonl", "read_queries_jsonl", "read_answers_jsonl"]
