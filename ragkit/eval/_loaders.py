"""Readers for the built-in collections, each in its original file format, read in place."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from ..records import Document, Query
from .datasets import Dataset


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found (expected by the loader of {path.parent.name}/).")
    return path


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        return _need(path).read_text(encoding=encoding)
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")


# -------------------------------------------------------------------------------------------------
# SMART format (.I id, then .T/.A/.B/.W/... fields)


def parse_smart(path: Path) -> list[tuple[str, int, dict[str, str]]]:
    """Records of a SMART file as ``(id, line, {field: text})``. A field given twice is joined
    (Cranfield has a few such records); lines of a field are joined with single spaces."""
    records: list[tuple[str, int, dict[str, list[str]]]] = []
    current: dict[str, list[str]] | None = None
    fld = None
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if line.startswith(".") and len(line) >= 2 and line[1].isalpha() and line[1].isupper() \
                and (len(line) == 2 or line[2] in " \t"):
            tag, rest = line[1], line[2:].strip()
            if tag == "I":
                if not rest:
                    raise DataError(f"{path}:{lineno}: field '.I' has no record id.")
                current = {}
                records.append((rest, lineno, current))
                fld = None
                continue
            if current is None:
                raise DataError(f"{path}:{lineno}: field '.{tag}' before the first '.I' record.")
            fld = tag
            current.setdefault(fld, [])
            if rest:
                current[fld].append(rest)
            continue
        if current is None:
            if line.strip():
                raise DataError(f"{path}:{lineno}: text before the first '.I' record.")
            continue
        if fld is not None and line.strip():
            current[fld].append(line.strip())
    return [(rid, ln, {k: " ".join(v) for k, v in f.items()}) for rid, ln, f in records]


def _smart_docs(path: Path) -> tuple[list[Document], list[str]]:
    docs, empty, seen = [], [], set()
    for rid, lineno, f in parse_smart(path):
        did = str(int(rid)) if rid.isdigit() else rid
        if did in seen:
            raise DataError(f"{path}:{lineno}: duplicate document id {did!r}.")
        seen.add(did)
        text = f.get("W", "").strip()
        if not text:
            empty.append(did)
            continue
        meta = {"title": f.get("T", "").strip() or None, "author": f.get("A", "").strip() or None,
                "source": f.get("B", "").strip() or None}
        docs.append(Document(did, text, {k: v for k, v in meta.items() if v}))
    return docs, empty


def load_cranfield(root: Path) -> Dataset:
    """Cranfield: text = the .W field (it repeats the title); qids are 1-225 in file order, as
    numbered in ``cranqrel``; grade = 5 - code for codes 1-4 (4 = complete answer), -1 -> 0."""
    docs, empty = _smart_docs(root / "cran.all.1400")
    qpath = root / "cran.qry"
    raw = parse_smart(qpath)
    queries, qid_map = [], {}
    for order, (rid, lineno, f) in enumerate(raw, 1):
        text = f.get("W", "").strip()
        if not text:
            raise DataError(f"{qpath}:{lineno}: query {rid} has no '.W' text.")
        queries.append(Query(str(order), text))
        qid_map[str(order)] = rid
    rpath = _need(root / "cranqrel")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(_read_text(rpath).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"{rpath}:{lineno}: expected 'qid doc_id code', got {line.strip()!r}.")
        try:
            qid, did, code = str(int(parts[0])), str(int(parts[1])), int(parts[2])
        except ValueError:
            raise DataError(f"{rpath}:{lineno}: fields must be integers, got {line.strip()!r}.") from None
        if qid not in qid_map:
            raise DataError(f"{rpath}:{lineno}: field 'qid' {qid} beyond the {len(queries)} queries of {qpath.name}.")
        if code not in (-1, 1, 2, 3, 4):
            raise DataError(f"{rpath}:{lineno}: field 'code' must be 1-4 or -1, got {code}.")
        grade = 5 - code if code > 0 else 0
        rel = qrels.setdefault(qid, {})
        rel[did] = max(grade, rel.get(did, 0))
    meta = {"qid_to_cran_qry": qid_map, "relevance": "grade = 5 - Cleverdon code (4 complete answer .. 1 minimum "
            "interest); code -1 -> 0", "documents_without_text": empty}
    return Dataset("cranfield", docs, queries, qrels, {}, meta)


def load_cisi(root: Path) -> Dataset:
    """CISI: text = the .W abstract (title in meta); only the 76 judged queries are kept."""
    docs, empty = _smart_docs(root / "CISI.ALL")
    qpath = root / "CISI.QRY"
    all_queries = []
    for rid, lineno, f in parse_smart(qpath):
        text = f.get("W", "").strip()
        if not text:
            raise DataError(f"{qpath}:{lineno}: query {rid} has no '.W' text.")
        all_queries.append(Query(str(int(rid)) if rid.isdigit() else rid, text))
    rpath = _need(root / "CISI.REL")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(_read_text(rpath).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{rpath}:{lineno}: expected 'qid doc_id 0 0.0', got {line.strip()!r}.")
        try:
            qid, did = str(int(parts[0])), str(int(parts[1]))
        except ValueError:
            raise DataError(f"{rpath}:{lineno}: fields 'qid' and 'doc_id' must be integers.") from None
        qrels.setdefault(qid, {})[did] = 1
    queries = [q for q in all_queries if q.qid in qrels]
    meta = {"unjudged_queries_dropped": len(all_queries) - len(queries), "documents_without_text": empty,
            "relevance": "binary (1 = relevant)"}
    return Dataset("cisi", docs, queries, qrels, {}, meta)


# -------------------------------------------------------------------------------------------------
# JSON question-answering sets


def _load_json(path: Path) -> Any:
    try:
        with _need(path).open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}).") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    from .datasets import _jsonl

    return _jsonl(_need(path))


def _field(path: Path, where: str, row: dict, name: str) -> Any:
    if not isinstance(row, dict) or name not in row:
        raise DataError(f"{path}: {where}: missing field '{name}'.")
    return row[name]


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(a for a in items if isinstance(a, str)))


def load_squad(root: Path) -> Dataset:
    """SQuAD v1.1: every paragraph is a document ``{article}-{paragraph}`` (title = article title with
    underscores as spaces); a question's one relevant document is its paragraph."""
    path = root / "dev-v1.1.part-a.json"
    data = _field(path, "top level", _load_json(path), "data")
    docs, queries, qrels, answers = [], [], {}, {}
    for ai, art in enumerate(data):
        title = str(_field(path, f"article {ai}", art, "title")).replace("_", " ")
        for pi, para in enumerate(_field(path, f"article {ai}", art, "paragraphs")):
            did = f"{ai}-{pi}"
            docs.append(Document(did, _field(path, f"paragraph {did}", para, "context"), {"title": title}))
            for qa in _field(path, f"paragraph {did}", para, "qas"):
                qid = str(_field(path, f"paragraph {did}", qa, "id"))
                queries.append(Query(qid, _field(path, f"question {qid}", qa, "question")))
                qrels[qid] = {did: 1}
                answers[qid] = _dedupe([a.get("text") for a in _field(path, f"question {qid}", qa, "answers")])
    return Dataset("squad", docs, queries, qrels, answers, {"relevance": "the question's paragraph"})


def _title_corpus(path: Path, records: list[tuple[str, list[tuple[str, str]]]]) -> list[Document]:
    docs: dict[str, Document] = {}
    for where, paras in records:
        for title, text in paras:
            if title in docs:
                continue
            docs[title] = Document(title, text.strip(), {"title": title})
    return [d for d in docs.values() if d.text]


def load_hotpotqa(root: Path) -> Dataset:
    """HotpotQA distractor: the corpus is every context paragraph of every question, one document per
    title (doc id = title); relevant = the supporting-fact titles."""
    path = root / "hotpot_dev_distractor_v1_100.json"
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of questions.")
    queries, qrels, answers, info, paras = [], {}, {}, {}, []
    for i, r in enumerate(rows):
        qid = str(_field(path, f"record {i}", r, "_id"))
        queries.append(Query(qid, _field(path, f"record {i} ({qid})", r, "question")))
        ctx = [(str(t), "".join(s)) for t, s in _field(path, f"record {i} ({qid})", r, "context")]
        paras.append((qid, ctx))
        qrels[qid] = {str(t): 1 for t, _ in _field(path, f"record {i} ({qid})", r, "supporting_facts")}
        answers[qid] = [str(_field(path, f"record {i} ({qid})", r, "answer"))]
        info[qid] = {"type": r.get("type"), "level": r.get("level")}
    return Dataset("hotpotqa", _title_corpus(path, paras), queries, qrels, answers,
                   {"query_info": info, "relevance": "supporting-fact paragraphs (by title)"})


def load_2wiki(root: Path) -> Dataset:
    """2WikiMultihopQA (FlashRAG rows): corpus = context paragraphs by title; relevant = supporting titles."""
    path = root / "2wikimultihopqa_dev_first100.jsonl"
    queries, qrels, answers, info, paras = [], {}, {}, {}, []
    for lineno, r in _jsonl_rows(path):
        where = f"line {lineno}"
        qid = str(_field(path, where, r, "id"))
        queries.append(Query(qid, _field(path, where, r, "question")))
        answers[qid] = _dedupe(_field(path, where, r, "golden_answers"))
        meta = _field(path, where, r, "metadata")
        ctx = _field(path, where, meta, "context")
        titles, contents = _field(path, where, ctx, "title"), _field(path, where, ctx, "content")
        paras.append((qid, [(str(t), " ".join(s.strip() for s in c)) for t, c in zip(titles, contents)]))
        qrels[qid] = {str(t): 1 for t in _field(path, where, _field(path, where, meta, "supporting_facts"), "title")}
        info[qid] = {"type": meta.get("type")}
    return Dataset("2wikimultihopqa", _title_corpus(path, paras), queries, qrels, answers,
                   {"query_info": info, "relevance": "supporting-fact paragraphs (by title)"})


def load_nq_open(root: Path) -> Dataset:
    """NQ-open oracle ('lost in the middle'): corpus = the distinct gold passages (``d0``, ``d1``, ...),
    one relevant passage per question, answers = the NQ-open answer strings."""
    path = root / "nq-open-oracle.part-a.jsonl.gz"
    docs: dict[tuple[str, str], Document] = {}
    queries, qrels, answers = [], {}, {}
    for lineno, r in _jsonl_rows(path):
        where = f"line {lineno}"
        qid = str(lineno - 1)
        queries.append(Query(qid, _field(path, where, r, "question")))
        answers[qid] = _dedupe(_field(path, where, r, "answers"))
        rel = {}
        for c in _field(path, where, r, "ctxs"):
            if not c.get("isgold", True):
                continue
            key = (str(_field(path, where, c, "title")), str(_field(path, where, c, "text")))
            if key not in docs:
                docs[key] = Document(f"d{len(docs)}", key[1], {"title": key[0]})
            rel[docs[key].doc_id] = 1
        qrels[qid] = rel
    return Dataset("nq-open", list(docs.values()), queries, qrels, answers,
                   {"relevance": "the gold passage of each question"})
