"""Reading a corpus into Documents: files, folders, named datasets; nothing skipped silently.

Entry points
------------
- :func:`read_corpus` (``corpus:`` section of a pipeline, a :class:`ragkit.config.CorpusSpec`)
  and :func:`read_documents` (Python use, the CLI's ``--corpus``) return a :class:`Corpus`: a
  list of :class:`~ragkit.records.Document` carrying ``.report`` (an :class:`IngestReport`) and
  ``.manifest`` (a :class:`Manifest`).
- :func:`read_corpus_incremental` reads only what changed since a previous manifest.

Sources (``format: auto`` picks by path)
----------------------------------------
- a folder, read recursively in sorted order: ``.txt``, ``.md`` (title from front matter or the
  first ``#`` heading), ``.html``/``.htm`` (visible text via the stdlib ``html.parser``, title from
  ``<title>``), ``.pdf`` (pypdf, title from the PDF metadata). The doc id is the file's path
  relative to the folder, with ``/`` separators. Hidden files and other suffixes are not read and
  are counted in the report (``ignored``).
- JSON lines (``.jsonl``/``.ndjson``, ``.json`` holding lines or one array, optionally ``.gz``) and
  CSV/TSV with a header: ``id_field``/``text_field``/``title_field`` name the fields. A record
  without an id gets ``f"{file stem}:{line}"``.
- a single ``.txt``/``.md``/``.html``/``.pdf`` file: one document, id = the file name.
- ``dataset: NAME``: ``ragkit.eval.datasets.load_dataset(NAME).corpus``.

Bad input
---------
Errors are :class:`~ragkit.errors.DataError` naming the file, line (or byte offset) and field.
``on_error: fail`` stops at the first unreadable file or record; ``on_error: skip`` drops it,
logs a warning, lists it in ``report.skipped`` as ``(where, reason)`` and warns once with the
count. Empty texts follow ``on_empty`` (``skip``: listed in the report; ``fail``). Duplicate doc
ids and an empty corpus always fail: both records are named.

Incremental re-indexing (the manifest)
--------------------------------------
A :class:`Manifest` describes what a corpus was made of when an index was built: ``kind`` is
``files`` for folders (entry per relative path: ``size``, ``mtime_ns``, ``sha256`` of the bytes,
the ``doc_ids`` it produced, and ``error`` if it was skipped) or ``records`` for every other
source (entry per doc id: ``sha256`` of id, title and text — see :func:`document_fingerprint`).
``options`` (format, field names, reader version) are part of it: when they change, everything
counts as changed. An indexer stores the manifest beside its index (:meth:`Manifest.save`,
``manifest.json``). On the next build :func:`read_corpus_incremental` stats the folder, hashes
only files whose size or mtime moved (a touched but identical file stays unchanged), parses only
added or changed files, and returns the documents to (re)process, the doc ids to drop
(``removed_ids``, plus ``stale_ids`` = removed + changed, whose old versions must go), the ids
that are unchanged (their cached per-document work — tokens, embeddings, extractions — can be
reused) and the new manifest to save with the rebuilt index. :func:`diff_manifest` gives the
underlying ``(added, changed, removed, unchanged)`` keys.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from ._extract import SUFFIXES, ExtractError, decode_utf8, extract
from .artifacts import atomic_write_text, content_hash, resolve_path
from .errors import DataError, did_you_mean
from .records import Document

log = logging.getLogger("ragkit.ingest")

READER_VERSION = 1
MANIFEST_FILE = "manifest.json"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
_MAX_LOGGED = 20

OnError = Literal["fail", "skip"]
OnEmpty = Literal["skip", "fail"]


# ---------------------------------------------------------------------------------------------
# report and result


@dataclass
class IngestReport:
    """What was read, and everything that was not: ``skipped`` is ``[(where, reason)]``."""

    source: str
    documents: int = 0
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0

    def summary(self) -> str:
        parts = [f"read {self.documents} document{'s' * (self.documents != 1)} from {self.source}"
                 + (f" ({self.files} file{'s' * (self.files != 1)})" if self.files else "")]
        if self.unchanged:
            parts.append(f"{self.unchanged} unchanged since the last build")
        if self.skipped:
            shown = "; ".join(f"{w}: {r}" for w, r in self.skipped[:10])
            more = f"; ... {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            parts.append(f"skipped {len(self.skipped)}: {shown}{more}")
        if self.ignored:
            n = sum(self.ignored.values())
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.ignored.items()))
            parts.append(f"ignored {n} file{'s' * (n != 1)} not in a readable format ({kinds})")
        return "; ".join(parts)

    __str__ = summary


class Corpus(list):
    """A list of Documents with the :class:`IngestReport` and :class:`Manifest` of its reading."""

    report: IngestReport
    manifest: "Manifest"

    def __init__(self, docs: Iterable[Document] = (), report: IngestReport | None = None,
                 manifest: "Manifest | None" = None) -> None:
        super().__init__(docs)
        self.report = report or IngestReport("<memory>", documents=len(self))
        self.manifest = manifest or Manifest("records", self.report.source, {}, {})


def document_fingerprint(doc: Document) -> str:
    """sha256 of a document's id, title and text: the key for caching per-document work."""
    return content_hash([(doc.doc_id, doc.meta.get("title") or "", doc.text)])


# ---------------------------------------------------------------------------------------------
# the reader


@dataclass
class _Options:
    format: str = "auto"
    id_field: str = "doc_id"
    text_field: str = "text"
    title_field: str = "title"
    on_error: str = "fail"
    on_empty: str = "skip"
    hints: bool = True      # end errors with how to skip such input (false where no such setting exists)

    def manifest_options(self, fmt: str) -> dict[str, Any]:
        return {"format": fmt, "id_field": self.id_field, "text_field": self.text_field,
                "title_field": self.title_field, "on_empty": self.on_empty, "reader_version": READER_VERSION}


def json_lines(path: Path, name: str | None = None) -> Iterator[tuple[int, str, Any, str | None]]:
    """The one JSON-lines reader: ``(line number, "file:line", record, None)`` per non-blank line, or
    ``(line number, where, None, reason)`` for a line that is not UTF-8 or not JSON (the caller fails
    or skips). Reads ``.gz`` transparently and drops a UTF-8 byte-order mark. A file whose first
    character is ``[`` is one JSON array: a single ``(0, name, bytes of the file, None)`` is yielded.
    ``OSError``/``EOFError`` propagate. Used by :class:`_Reader` (corpora) and by
    :mod:`ragkit.eval.datasets` (queries, answers, dataset files)."""
    name = str(path) if name is None else name
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4096)
        lead = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        f.seek(0)
        if lead == b"[":
            yield 0, name, f.read(), None
            return
        offset = 0
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, start = raw[3:], 3
            if not raw.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, where, None, (f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte offset "
                                            f"{start + exc.start} of the file cannot be decoded ({exc.reason})")
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                msg = getattr(exc, "msg", str(exc))
                col = getattr(exc, "colno", None)
                yield lineno, where, None, f"broken JSON line ({msg}{f' at column {col}' if col else ''})"
                continue
            yield lineno, where, rec, None


class _Reader:
    def __init__(self, opts: _Options, source: str, progress: bool | None) -> None:
        self.opts = opts
        self.report = IngestReport(source)
        self.progress = progress
        self.seen: dict[str, str] = {}  # doc id -> where it came from

    # -- problems ------------------------------------------------------------------------------
    def bad(self, where: str, reason: str) -> None:
        """An unreadable file or record: fail, or record it as skipped (never silently)."""
        if self.opts.on_error == "fail":
            hint = " (Set on_error: skip to skip such input and list it in the report.)" if self.opts.hints else ""
            raise DataError(f"{where}: {reason}.{hint}")
        self._skip(where, reason)

    def _skip(self, where: str, reason: str) -> None:
        if len(self.report.skipped) < _MAX_LOGGED:
            log.warning("skipped %s: %s", where, reason)
        elif len(self.report.skipped) == _MAX_LOGGED:
            log.warning("... more skipped input; see the ingest report")
        self.report.skipped.append((where, reason))

    def make(self, doc_id: str, text: str, title: str | None, where: str, meta: dict | None = None) -> Document | None:
        if not text.strip():
            if self.opts.on_empty == "fail":
                hint = (" (Set on_empty: skip to skip empty documents and list them in the report.)"
                        if self.opts.hints else "")
                raise DataError(f"{where}: empty text for doc id {doc_id!r}.{hint}")
            self._skip(where, f"empty text (doc id {doc_id!r})")
            return None
        first = self.seen.get(doc_id)
        if first is not None:
            raise DataError(f"duplicate doc id {doc_id!r}: {first} and {where}. Doc ids must be unique; fix the data"
                            + (f" or drop '{self.opts.id_field}' to number records by line." if self.opts.hints else "."))
        self.seen[doc_id] = where
        m = {"title": title} if title else {}
        m["source"] = where
        if meta:
            m.update(meta)
        return Document(doc_id, text, m)

    def bar(self, items: list, desc: str) -> Iterable:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or len(items) < 2:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit="file", leave=False)

    # -- single files --------------------------------------------------------------------------
    def read_bytes(self, path: Path, where: str) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError as exc:
            self.bad(where, f"cannot read ({exc.strerror or exc})")
            return None

    def file_document(self, path: Path, doc_id: str, where: str, data: bytes) -> Document | None:
        kind = SUFFIXES[path.suffix.lower()]
        try:
            text, title = extract(kind, data)
        except ExtractError as exc:
            self.bad(where, str(exc))
            return None
        self.report.files += 1
        return self.make(doc_id, text, title, where)

    # -- records -------------------------------------------------------------------------------
    def record(self, rec: Any, where: str, default_id: str) -> Document | None:
        o = self.opts
        if not isinstance(rec, dict):
            self.bad(where, f"expected an object with a '{o.text_field}' field, got {type(rec).__name__}")
            return None
        if o.text_field not in rec:
            fields = ", ".join(map(str, rec)) or "(none)"
            self.bad(where, f"no field '{o.text_field}' (the text field); fields here: {fields}."
                            f"{did_you_mean(o.text_field, map(str, rec))}"
                            + (" Set text_field to the field holding the text" if o.hints else ""))
            return None
        text = rec[o.text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            self.bad(where, f"field '{o.text_field}' is a {type(text).__name__}, expected a string")
            return None
        raw_id = rec.get(o.id_field)
        if raw_id is None or raw_id == "":
            doc_id = default_id
        elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
            doc_id = str(raw_id)
        else:
            self.bad(where, f"field '{o.id_field}' (the doc id) is a {type(raw_id).__name__}, expected a string or int")
            return None
        title = rec.get(o.title_field)
        title = str(title) if title not in (None, "") else None
        return self.make(doc_id, text, title, where)

    def jsonl(self, path: Path, name: str) -> Iterator[Document]:
        stem = _stem(path)
        try:
            for lineno, where, rec, err in json_lines(path, name):
                if lineno == 0:            # the file is one JSON array
                    yield from self._json_array(rec, name, stem)
                    return
                if err is not None:
                    self.bad(where, err)
                    continue
                doc = self.record(rec, where, f"{stem}:{lineno}")
                if doc is not None:
                    yield doc
        except (OSError, EOFError) as exc:
            self.bad(name, f"cannot read ({exc})")
            return
        self.report.files += 1

    def _json_array(self, data: bytes, name: str, stem: str) -> Iterator[Document]:
        try:
            recs = json.loads(decode_utf8(data))
        except ExtractError as exc:
            self.bad(name, str(exc))
            return
        except ValueError as exc:
            self.bad(f"{name}:{getattr(exc, 'lineno', '?')}", f"broken JSON ({getattr(exc, 'msg', exc)})")
            return
        if not isinstance(recs, list):
            self.bad(name, f"expected JSON lines or an array of objects, got a {type(recs).__name__}")
            return
        for i, rec in enumerate(recs):
            doc = self.record(rec, f"{name}[{i}]", f"{stem}:{i}")
            if doc is not None:
                yield doc
        self.report.files += 1

    def csv(self, path: Path, name: str) -> Iterator[Document]:
        data = self.read_bytes(path, name)
        if data is None:
            return
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        try:
            text = decode_utf8(data)
        except ExtractError as exc:
            self.bad(name, str(exc))
            return
        delimiter = "\t" if _inner_suffix(path) == ".tsv" else ","
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        # strict: a quote left open is an error at its row, not the rest of the file read as one field
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            self.bad(f"{name}:1", f"broken CSV header ({exc})")
            return
        if self.opts.text_field not in header:
            self.bad(f"{name}:1", f"no column '{self.opts.text_field}' (the text field); columns: "
                                  f"{', '.join(header)}.{did_you_mean(self.opts.text_field, header)} "
                                  f"Set text_field to the column holding the text")
            return
        stem, prev = _stem(path), reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if "end of data" in str(exc):  # EOF inside a quoted field
                    self.bad(f"{name}:{prev + 1}", "unclosed quote: the quoted field that starts on this row "
                                                   "runs to the end of the file (close it with \")")
                    break
                self.bad(f"{name}:{prev + 1}", f"broken CSV row ({exc})")
                prev = reader.line_num
                continue
            line, prev = prev + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                self.bad(f"{name}:{line}", f"{len(row)} fields but the header has {len(header)} "
                                           f"({', '.join(header)})")
                continue
            doc = self.record(dict(zip(header, row)), f"{name}:{line}", f"{stem}:{line}")
            if doc is not None:
                yield doc
        self.report.files += 1


def _inner_suffix(path: Path) -> str:
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name
    for s in (".gz",) + JSONL_SUFFIXES + CSV_SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
    return name


def _detect(path: Path, fmt: str) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (corpus path).")
    if fmt != "auto":
        if fmt == "folder" and not path.is_dir():
            raise DataError(f"{path}: format 'folder' needs a folder; this is a file.")
        if fmt != "folder" and path.is_dir():
            raise DataError(f"{path}: format '{fmt}' needs a file; this is a folder (use format: folder).")
        return fmt
    if path.is_dir():
        return "folder"
    suffix = _inner_suffix(path)
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in SUFFIXES:
        return "file"
    raise DataError(f"{path}: cannot tell the corpus format from the suffix '{suffix}'. Readable: a folder, "
                    f"{', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)} (optionally .gz), or one "
                    f"{', '.join(sorted(SUFFIXES))} file; or set format: jsonl|csv.")


# ---------------------------------------------------------------------------------------------
# the manifest


@dataclass
class Manifest:
    """What a corpus consisted of: ``entries`` maps a relative path (``files``) or a doc id
    (``records``) to ``{size, mtime_ns, sha256, doc_ids[, error]}`` or ``{sha256}``."""

    kind: str
    source: str
    options: dict[str, Any]
    entries: dict[str, dict[str, Any]]

    def doc_ids(self, keys: Iterable[str] | None = None) -> list[str]:
        keys = self.entries if keys is None else keys
        if self.kind == "records":
            return [k for k in keys if k in self.entries]
        return [d for k in keys for d in self.entries.get(k, {}).get("doc_ids", [])]

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "kind": self.kind, "source": self.source, "options": self.options,
                "entries": self.entries}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        return cls(data["kind"], data.get("source", ""), data.get("options", {}), data.get("entries", {}))

    def save(self, folder: str | Path) -> Path:
        """Write ``manifest.json`` into an index folder (or to a path ending in .json)."""
        p = Path(folder)
        p = p if p.suffix == ".json" else p / MANIFEST_FILE
        atomic_write_text(p, json.dumps(self.to_dict(), sort_keys=True))
        return p

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest | None":
        """The manifest stored with an index, or None when there is none (first build)."""
        p = Path(folder)
        p = p if p.suffix == ".json" else p / MANIFEST_FILE
        if not p.exists():
            return None
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable corpus manifest (%s); everything will be re-read", p, exc)
            return None


def _entries(m: "Manifest | dict | None") -> dict[str, dict[str, Any]]:
    if m is None:
        return {}
    if isinstance(m, Manifest):
        return m.entries
    if "entries" in m and "kind" in m:
        return m["entries"]
    return m


def diff_manifest(old: "Manifest | dict | None", new: "Manifest | dict") -> tuple[list[str], list[str], list[str], list[str]]:
    """``(added, changed, removed, unchanged)`` keys. An entry changed when its content hash (or
    size) differs; a new mtime alone is no change. Different reader options change everything."""
    oe, ne = _entries(old), _entries(new)
    same_options = True
    if isinstance(old, Manifest) and isinstance(new, Manifest):
        same_options = old.kind == new.kind and old.options == new.options
    added, changed, unchanged = [], [], []
    for k, e in ne.items():
        o = oe.get(k)
        if o is None:
            added.append(k)
        elif same_options and o.get("sha256") == e.get("sha256") and o.get("size") == e.get("size"):
            unchanged.append(k)
        else:
            changed.append(k)
    removed = [k for k in oe if k not in ne]
    return added, changed, removed, unchanged


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# reading


def _list_folder(root: Path, reader: _Reader) -> list[tuple[str, Path, os.stat_result]]:
    out = []
    ignored = reader.report.ignored
    for dirpath, dirnames, filenames in os.walk(root):
        hidden = [d for d in dirnames if d.startswith(".")]
        if hidden:
            ignored["hidden folders"] = ignored.get("hidden folders", 0) + len(hidden)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            p = Path(dirpath) / fn
            suffix = p.suffix.lower()
            if fn.startswith("."):
                ignored["hidden"] = ignored.get("hidden", 0) + 1
            elif suffix not in SUFFIXES:
                key = suffix or "(no suffix)"
                ignored[key] = ignored.get(key, 0) + 1
            else:
                try:
                    st = p.stat()
                except OSError as exc:
                    reader.bad(str(p), f"cannot read ({exc.strerror or exc})")
                    continue
                out.append((p.relative_to(root).as_posix(), p, st))
    if ignored:
        log.info("%s: not read: %s", root, ", ".join(f"{k}: {v}" for k, v in sorted(ignored.items())))
    return sorted(out, key=lambda t: t[0])


def _read_folder(root: Path, reader: _Reader, previous: Manifest | None) -> tuple[list[Document], Manifest]:
    prev = previous.entries if previous is not None else {}
    entries: dict[str, dict[str, Any]] = {}
    docs: list[Document] = []
    for rel, p, st in reader.bar(_list_folder(root, reader), f"reading {root.name or root}"):
        old = prev.get(rel)
        if old is not None and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            entries[rel] = old  # untouched since the last build: not even read
            continue
        data = reader.read_bytes(p, str(p))
        if data is None:
            entries[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "", "doc_ids": [],
                            "error": reader.report.skipped[-1][1]}
            continue
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(data), "doc_ids": []}
        if old is not None and old.get("sha256") == entry["sha256"]:  # touched, same bytes
            entries[rel] = {**old, "mtime_ns": st.st_mtime_ns}
            continue
        n_skipped = len(reader.report.skipped)
        doc = reader.file_document(p, rel, str(p), data)
        if doc is not None:
            docs.append(doc)
            entry["doc_ids"] = [doc.doc_id]
        elif len(reader.report.skipped) > n_skipped:
            entry["error"] = reader.report.skipped[-1][1]
        entries[rel] = entry
    return docs, Manifest("files", str(root), {}, entries)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        from .errors import ConfigError

        raise ConfigError(f"{name}={value!r}; valid: {', '.join(choices)}.{did_you_mean(value, choices)}")


def _read(path: Path | None, dataset: str | None, opts: _Options, progress: bool | None,
          previous: Manifest | None, base_dir: str | Path | None = None) -> tuple[list[Document], Manifest, _Reader]:
    _check_choice("on_error", opts.on_error, ("fail", "skip"))
    _check_choice("on_empty", opts.on_empty, ("skip", "fail"))
    _check_choice("format", opts.format, ("auto", "jsonl", "csv", "folder"))
    if dataset is not None:
        reader = _Reader(opts, f"dataset '{dataset}'", progress)
        from .eval.datasets import load_dataset  # another family: imported only when used

        local = resolve_path(dataset, base_dir)
        ds = load_dataset(str(local) if local.exists() else dataset)
        docs = []
        for i, d in enumerate(ds.corpus):
            meta = {k: v for k, v in d.meta.items() if k not in ("title", "source")}
            doc = reader.make(d.doc_id, d.text, d.meta.get("title"), f"dataset '{dataset}' record #{i + 1}", meta)
            if doc is not None:
                docs.append(doc)
        fmt = "dataset"
    else:
        assert path is not None
        fmt = _detect(path, opts.format)
        reader = _Reader(opts, str(path), progress)
        if fmt == "folder":
            docs, manifest = _read_folder(path, reader, previous if _usable(previous, "files", opts, fmt) else None)
            manifest.options = {**opts.manifest_options(fmt), "on_error": opts.on_error}
            return docs, manifest, reader
        if fmt == "jsonl":
            docs = list(reader.jsonl(path, str(path)))
        elif fmt == "csv":
            docs = list(reader.csv(path, str(path)))
        else:  # one text/markdown/html/pdf file
            data = reader.read_bytes(path, str(path))
            doc = reader.file_document(path, path.name, str(path), data) if data is not None else None
            docs = [doc] if doc is not None else []
    manifest = Manifest("records", str(path) if path is not None else f"dataset:{dataset}",
                        {**opts.manifest_options(fmt), "on_error": opts.on_error},
                        {d.doc_id: {"sha256": document_fingerprint(d)} for d in docs})
    return docs, manifest, reader


def _usable(previous: Manifest | None, kind: str, opts: _Options, fmt: str) -> bool:
    return (previous is not None and previous.kind == kind
            and previous.options == {**opts.manifest_options(fmt), "on_error": opts.on_error})


def _finish(reader: _Reader, manifest: Manifest, n_read: int) -> None:
    rep = reader.report
    rep.documents = n_read
    if not manifest.doc_ids():
        raise DataError(f"{rep.source}: the corpus is empty: no documents could be read. {rep.summary()}."
                        + (" Give the file itself, not its folder." if any(k in rep.ignored for k in
                                                                           JSONL_SUFFIXES + CSV_SUFFIXES) else ""))
    log.info("%s", rep.summary())
    if rep.skipped:
        where, reason = rep.skipped[0]
        warnings.warn(f"ragkit: skipped {len(rep.skipped)} input item(s) while reading {rep.source} "
                      f"(first: {where}: {reason}); the list is in the corpus report (.report.skipped).",
                      stacklevel=3)


def read_documents(path: str | Path, *, format: str = "auto", id_field: str = "doc_id", text_field: str = "text",
                   title_field: str = "title", on_error: OnError = "fail", on_empty: OnEmpty = "skip",
                   progress: bool | None = None, base_dir: str | Path | None = None) -> Corpus:
    """Read a folder, a JSON lines/CSV file or one text/HTML/PDF file into a :class:`Corpus`."""
    opts = _Options(format, id_field, text_field, title_field, on_error, on_empty)
    p = resolve_path(path, base_dir)
    docs, manifest, reader = _read(p, None, opts, progress, None)
    _finish(reader, manifest, len(docs))
    return Corpus(docs, reader.report, manifest)


def _spec_options(spec: Any) -> _Options:
    return _Options(spec.format, spec.id_field, spec.text_field, spec.title_field, spec.on_error,
                    getattr(spec, "on_empty", "skip"))


def read_corpus(spec: Any, base_dir: str | Path | None = None, progress: bool | None = None) -> Corpus:
    """The documents of a pipeline's ``corpus:`` section (:class:`ragkit.config.CorpusSpec`)."""
    path = resolve_path(spec.path, base_dir) if spec.path is not None else None
    docs, manifest, reader = _read(path, spec.dataset, _spec_options(spec), progress, None, base_dir)
    _finish(reader, manifest, len(docs))
    return Corpus(docs, reader.report, manifest)


@dataclass
class IncrementalCorpus:
    """What changed since ``previous``: re-process ``documents``, drop ``stale_ids`` first."""

    documents: Corpus
    removed_ids: list[str]
    changed_ids: list[str]
    unchanged_ids: list[str]
    manifest: Manifest
    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]

    @property
    def stale_ids(self) -> list[str]:
        """Ids whose indexed version must go: removed documents and old versions of changed ones."""
        return self.removed_ids + self.changed_ids

    @property
    def report(self) -> IngestReport:
        return self.documents.report

    @property
    def full_rebuild(self) -> bool:
        return not self.unchanged


def read_corpus_incremental(spec: Any, base_dir: str | Path | None = None,
                            previous_manifest: "Manifest | dict | None" = None,
                            progress: bool | None = None) -> IncrementalCorpus:
    """Read only what changed since ``previous_manifest`` (None: everything is new)."""
    prev = Manifest.from_dict(previous_manifest) if isinstance(previous_manifest, dict) else previous_manifest
    path = resolve_path(spec.path, base_dir) if spec.path is not None else None
    docs, manifest, reader = _read(path, spec.dataset, _spec_options(spec), progress, prev, base_dir)
    added, changed, removed, unchanged = diff_manifest(prev, manifest)
    for k in unchanged:  # unchanged files that could not be read last time are still skipped
        err = manifest.entries[k].get("error")
        if err:
            reader.report.skipped.append((k, f"{err} (unchanged since the last build)"))
    _finish(reader, manifest, len(docs))
    if manifest.kind == "records":
        wanted = set(added) | set(changed)
        docs = [d for d in docs if d.doc_id in wanted]
    old = prev if prev is not None else Manifest(manifest.kind, manifest.source, {}, {})
    new_ids = set(manifest.doc_ids())
    changed_ids = old.doc_ids(changed) if old.kind == manifest.kind else []
    removed_ids = [i for i in old.doc_ids(removed) if i not in new_ids] if old.kind == manifest.kind else \
        [i for i in old.doc_ids() if i not in new_ids]
    if old.kind != manifest.kind:  # different kind of source: every old id is stale
        changed_ids = [i for i in old.doc_ids() if i in new_ids]
    unchanged_ids = manifest.doc_ids(unchanged)
    reader.report.documents = len(docs)
    reader.report.unchanged = len(unchanged_ids)
    return IncrementalCorpus(Corpus(docs, reader.report, manifest), removed_ids, changed_ids, unchanged_ids,
                             manifest, added, changed, removed, unchanged)


__all__ = ["read_corpus", "read_documents", "read_corpus_incremental", "diff_manifest", "document_fingerprint",
           "Corpus", "IngestReport", "Manifest", "IncrementalCorpus", "MANIFEST_FILE"]
