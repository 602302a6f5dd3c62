"""Corpus ingestion: folders (txt/md/html/pdf), JSON lines, CSV, datasets, bad input, manifests."""
from __future__ import annotations

import io
import os
import time

import pytest

from ragkit import Pipeline
from ragkit.config import CorpusSpec
from ragkit.errors import ConfigError, DataError
from ragkit.ingest import (Corpus, Manifest, diff_manifest, document_fingerprint, read_corpus,
                           read_corpus_incremental, read_documents)


def make_pdf(text: str, title: str | None = None) -> bytes:
    """A minimal one-page PDF with a text stream (Helvetica), written by hand."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    if title:
        objs.append(f"<< /Title ({title}) >>".encode())
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    info = b" /Info %d 0 R" % len(objs) if title else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, info, xref)
    return out


def blank_pdf() -> bytes:
    import pypdf

    w = pypdf.PdfWriter()
    w.add_blank_page(200, 200)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


HTML = b"""<!doctype html><html><head><title>The  Page</title><style>p {color: red}</style>
<script>var x = "<p>not text</p>";</script></head>
<body><h1>Heading</h1><p>Hello &amp; <b>bold</b>
   world.</p><ul><li>one</li><li>two</li></ul></body></html>"""


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("Plain text document.\n", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# Markdown Title\n\nSome *markdown* body.", encoding="utf-8")
    (root / "c.html").write_bytes(HTML)
    (root / "d.pdf").write_bytes(make_pdf("Portable text inside", "PDF Title"))
    (root / "blank.pdf").write_bytes(blank_pdf())
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".hidden.txt").write_text("secret", encoding="utf-8")
    return root


def test_folder_reads_every_format_sorted_with_titles(folder):
    with pytest.warns(UserWarning, match="skipped 1"):
        docs = read_documents(folder, progress=False)
    assert isinstance(docs, Corpus)
    assert [d.doc_id for d in docs] == ["a.txt", "c.html", "d.pdf", "sub/b.md"]
    by = {d.doc_id: d for d in docs}
    assert by["a.txt"].text == "Plain text document.\n" and by["a.txt"].title is None
    assert by["sub/b.md"].title == "Markdown Title"
    assert by["c.html"].title == "The Page"
    assert by["c.html"].text == "Heading\nHello & bold world.\none\ntwo"
    assert "not text" not in by["c.html"].text and "color" not in by["c.html"].text
    assert by["d.pdf"].text == "Portable text inside" and by["d.pdf"].title == "PDF Title"
    rep = docs.report
    assert rep.documents == 4
    assert [(os.path.basename(w), r) for w, r in rep.skipped] == [("blank.pdf", "empty text (doc id 'blank.pdf')")]
    assert rep.ignored == {".png": 1, "hidden": 1}
    assert "ignored 2 files" in rep.summary() and "blank.pdf" in rep.summary()


def test_progress_bar_only_when_asked(folder, capsys):
    with pytest.warns(UserWarning):
        read_documents(folder, progress=False, on_empty="skip")
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning):
        read_documents(folder, progress=True)
    assert "reading docs" in capsys.readouterr().err


def test_empty_text_can_fail(folder):
    with pytest.raises(DataError, match=r"blank\.pdf: empty text"):
        read_documents(folder, on_empty="fail", progress=False)


def test_non_utf8_file_fails_or_is_skipped_and_listed(folder):
    (folder / "latin.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"latin\.txt: not UTF-8: byte 0xe9 at byte offset 3 \(line 1\)"):
        read_documents(folder, progress=False)
    with pytest.warns(UserWarning, match="skipped 2"):
        docs = read_documents(folder, on_error="skip", progress=False)
    assert "latin.txt" not in [d.doc_id for d in docs]
    assert any(w.endswith("latin.txt") and "byte offset 3" in r for w, r in docs.report.skipped)


def test_broken_pdf_is_named(tmp_path):
    (tmp_path / "x.pdf").write_bytes(b"%PDF-1.4 truncated")
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.pdf: unreadable PDF"):
        read_documents(tmp_path, progress=False)


def test_empty_corpus_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*corpus is empty"):
        read_documents(tmp_path / "empty")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "corpus.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="Give the file itself"):
        read_documents(tmp_path / "only")
    with pytest.raises(DataError, match="no such file or folder"):
        read_documents(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# JSON lines and CSV


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_fields_ids_titles(tmp_path):
    f = write(tmp_path / "corpus.jsonl",
              '{"doc_id": "d1", "title": "One", "text": "first"}\n\n{"doc_id": 7, "text": "second"}\n'
              '{"text": "third, no id"}\n')
    docs = read_documents(f)
    assert [(d.doc_id, d.text, d.title) for d in docs] == [("d1", "first", "One"), ("7", "second", None),
                                                           ("corpus:4", "third, no id", None)]
    assert docs[0].meta["source"].endswith("corpus.jsonl:1")
    g = write(tmp_path / "other.jsonl", '{"_id": "a", "name": "T", "body": "x"}\n')
    d = read_documents(g, id_field="_id", text_field="body", title_field="name")[0]
    assert (d.doc_id, d.text, d.title) == ("a", "x", "T")


def test_json_array_file(tmp_path):
    f = write(tmp_path / "c.json", '[{"doc_id": "a", "text": "x"}, {"doc_id": "b", "text": "y"}]')
    assert [d.doc_id for d in read_documents(f)] == ["a", "b"]


def test_jsonl_errors_name_file_line_and_fields(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": \n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: broken JSON line"):
        read_documents(f)
    f = write(tmp_path / "c.jsonl", '{"doc_id": "a", "txt": "x", "title": "t"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:1: no field 'text'.*fields here: doc_id, txt, title"):
        read_documents(f)
    f = write(tmp_path / "c.jsonl", '{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": "y"}\n'
                                    '{"doc_id": "a", "text": "z"}\n')
    with pytest.raises(DataError, match=r"duplicate doc id 'a': .*c\.jsonl:1 and .*c\.jsonl:3"):
        read_documents(f)
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"doc_id": "a", "text": "ok"}\n{"doc_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8: byte 0xe9 at byte offset 58"):
        read_documents(f)


def test_jsonl_skip_mode_keeps_good_records_and_lists_bad_ones(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"doc_id": "a", "text": "x"}\nnot json\n{"doc_id": "b"}\n'
                                    '{"doc_id": "c", "text": "  "}\n{"doc_id": "d", "text": "y"}\n')
    with pytest.warns(UserWarning, match="skipped 3"):
        docs = read_documents(f, on_error="skip")
    assert [d.doc_id for d in docs] == ["a", "d"]
    reasons = {w.rsplit(":", 1)[1]: r for w, r in docs.report.skipped}
    assert set(reasons) == {"2", "3", "4"}
    assert "broken JSON" in reasons["2"] and "no field 'text'" in reasons["3"] and "empty text" in reasons["4"]


def test_csv_and_tsv(tmp_path):
    f = write(tmp_path / "c.csv", 'doc_id,title,text\nx1,T1,"multi\nline text"\n,T2,plain\n')
    docs = read_documents(f)
    assert [(d.doc_id, d.title, d.text) for d in docs] == [("x1", "T1", "multi\nline text"), ("c:4", "T2", "plain")]
    t = write(tmp_path / "c.tsv", "doc_id\ttext\na\thello\nb\tworld\n")
    assert [d.text for d in read_documents(t)] == ["hello", "world"]
    bad = write(tmp_path / "bad.csv", "id,body\n1,x\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: no column 'text'.*columns: id, body"):
        read_documents(bad)
    ragged = write(tmp_path / "r.csv", "doc_id,text\na,x\nb,y,extra\n")
    with pytest.raises(DataError, match=r"r\.csv:3: 3 fields but the header has 2"):
        read_documents(ragged)


def test_single_file_and_format_checks(tmp_path):
    f = tmp_path / "page.html"
    f.write_bytes(HTML)
    (d,) = read_documents(f)
    assert d.doc_id == "page.html" and d.title == "The Page"
    with pytest.raises(DataError, match="format 'folder' needs a folder"):
        read_documents(f, format="folder")
    with pytest.raises(DataError, match="cannot tell the corpus format"):
        read_documents(write(tmp_path / "x.xml", "<a/>"))
    with pytest.raises(ConfigError, match="on_error='ignore'; valid: fail, skip"):
        read_documents(f, on_error="ignore")


# ---------------------------------------------------------------------------------------------
# corpus specs, datasets, pipelines


def test_read_corpus_resolves_relative_paths_against_base_dir(folder):
    with pytest.warns(UserWarning, match="blank.pdf"):
        docs = read_corpus(CorpusSpec(path="docs", on_error="skip"), base_dir=folder.parent, progress=False)
    assert len(docs) == 4


def test_read_corpus_from_dataset(monkeypatch):
    import types

    from ragkit.eval import datasets
    from ragkit.records import Document

    fake = types.SimpleNamespace(corpus=[Document("a", "alpha", {"title": "A"}), Document("b", "")])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: fake)
    with pytest.warns(UserWarning, match="empty text"):
        docs = read_corpus(CorpusSpec(dataset="tiny"))
    assert [(d.doc_id, d.title) for d in docs] == [("a", "A")]
    assert docs.report.skipped == [("dataset 'tiny' record #2", "empty text (doc id 'b')")]


def test_pipeline_build_index_reads_the_corpus_section(folder):
    y = folder.parent / "p.yaml"
    y.write_text("version: 1\ncorpus: {path: docs, on_error: skip}\n"
                 "index:\n  - chunker.sentence: {max_tokens: 50}\npipeline: []\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="blank.pdf"):
        stats = Pipeline.from_yaml(y).build_index(progress=False)
    assert stats["documents"] == 4 and stats["chunks"] >= 4


# ---------------------------------------------------------------------------------------------
# manifests and incremental reading


def test_diff_manifest_on_plain_entries():
    old = {"a": {"sha256": "1"}, "b": {"sha256": "2"}, "c": {"sha256": "3"}}
    new = {"a": {"sha256": "1"}, "b": {"sha256": "9"}, "d": {"sha256": "4"}}
    assert diff_manifest(old, new) == (["d"], ["b"], ["c"], ["a"])
    assert diff_manifest(None, new) == (["a", "b", "d"], [], [], [])


def test_incremental_folder_reads_only_what_changed(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    root.mkdir()
    for name in ("keep", "touch", "edit", "gone"):
        write(root / f"{name}.txt", f"text of {name}")
    spec = CorpusSpec(path=str(root))
    first = read_corpus_incremental(spec, previous_manifest=None, progress=False)
    assert sorted(first.added) == ["edit.txt", "gone.txt", "keep.txt", "touch.txt"] and first.full_rebuild
    assert [d.doc_id for d in first.documents] == ["edit.txt", "gone.txt", "keep.txt", "touch.txt"]
    index = tmp_path / "index"
    index.mkdir()
    first.manifest.save(index)

    later = time.time() + 10
    os.utime(root / "touch.txt", (later, later))  # new mtime, same bytes
    write(root / "edit.txt", "edited text, longer")
    (root / "gone.txt").unlink()
    write(root / "new.txt", "a new document")

    import ragkit.ingest as ingest

    calls = []
    real = ingest.extract
    monkeypatch.setattr(ingest, "extract", lambda kind, data: calls.append(data) or real(kind, data))
    inc = read_corpus_incremental(spec, previous_manifest=Manifest.load(index), progress=False)
    assert (inc.added, inc.changed, inc.removed) == (["new.txt"], ["edit.txt"], ["gone.txt"])
    assert sorted(inc.unchanged) == ["keep.txt", "touch.txt"]
    assert [d.doc_id for d in inc.documents] == ["edit.txt", "new.txt"]
    assert inc.removed_ids == ["gone.txt"] and inc.stale_ids == ["gone.txt", "edit.txt"]
    assert sorted(inc.unchanged_ids) == ["keep.txt", "touch.txt"]
    assert len(calls) == 2  # only the edited and the new file were parsed
    assert inc.manifest.entries["touch.txt"]["mtime_ns"] == os.stat(root / "touch.txt").st_mtime_ns
    assert inc.report.unchanged == 2 and inc.report.documents == 2

    # nothing changed since: nothing to do
    again = read_corpus_incremental(spec, previous_manifest=inc.manifest.to_dict(), progress=False)
    assert again.documents == [] and again.stale_ids == [] and len(again.unchanged) == 4


def test_incremental_records_and_option_changes(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": "y"}\n')
    first = read_corpus_incremental(CorpusSpec(path=str(f)))
    assert first.manifest.kind == "records"
    assert first.manifest.entries["a"]["sha256"] == document_fingerprint(first.documents[0])
    write(f, '{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": "changed"}\n{"doc_id": "c", "text": "z"}\n')
    inc = read_corpus_incremental(CorpusSpec(path=str(f)), previous_manifest=first.manifest)
    assert [d.doc_id for d in inc.documents] == ["b", "c"] and inc.changed_ids == ["b"] and inc.unchanged_ids == ["a"]
    other = read_corpus_incremental(CorpusSpec(path=str(f), title_field="name"), previous_manifest=inc.manifest)
    assert [d.doc_id for d in other.documents] == ["a", "b", "c"] and other.unchanged == []


def test_incremental_keeps_reporting_unreadable_unchanged_files(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    write(root / "ok.txt", "fine")
    (root / "bad.txt").write_bytes(b"\xff\xfe")
    spec = CorpusSpec(path=str(root), on_error="skip")
    with pytest.warns(UserWarning):
        first = read_corpus_incremental(spec)
    with pytest.warns(UserWarning, match="unchanged since the last build"):
        again = read_corpus_incremental(spec, previous_manifest=first.manifest)
    assert again.documents == [] and again.report.skipped[0][0] == "bad.txt"


def test_corrupt_manifest_means_full_read(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    assert Manifest.load(tmp_path) is None
    assert Manifest.load(tmp_path / "nothing-here") is None


def test_markdown_title_from_front_matter_or_heading(tmp_path):
    write(tmp_path / "a.md", '---\ntitle: "Front Title"\ndate: 2024\n---\n# Heading\nbody')
    write(tmp_path / "b.md", "intro\n\n## Sub\n# Main Heading #\nbody")
    write(tmp_path / "c.md", "no heading at all")
    docs = read_documents(tmp_path)
    assert [d.title for d in docs] == ["Front Title", "Main Heading", None]
