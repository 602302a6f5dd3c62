"""Dataset loaders: the real shared files, the generic folder format, and bad input."""
from __future__ import annotations

import pytest

from ragkit.errors import DataError
from ragkit.eval import Dataset, list_datasets, load_dataset
from ragkit.eval._loaders import parse_smart
from ragkit.records import Document, Query


@pytest.fixture
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("RAGKIT_DATA", str(shared_data))
    return shared_data


# -- real files ---------------------------------------------------------------------------------


def test_cranfield(data_env):
    ds = load_dataset("cranfield")
    # 1,400 records; 471 and 995 have no title and no text and are left out
    assert len(ds.corpus) == 1398 and ds.meta["documents_without_text"] == ["471", "995"]
    assert len(ds.queries) == 225 and len(ds.judged_qids()) == 225
    assert sum(len(r) for r in ds.qrels.values()) == 1837
    # qids follow cranqrel's numbering (order in cran.qry), not cran.qry's own numbers
    assert ds.meta["qid_to_cran_qry"]["3"] == "004"
    assert ds.query("3").text.startswith("what problems of heat conduction in composite slabs")
    # grade = 5 - code: "1 184 2" -> 3; "1 13 4" -> 1; code -1 -> 0
    assert ds.qrels["1"]["184"] == 3 and ds.qrels["1"]["13"] == 1 and ds.qrels["1"]["486"] == 0
    assert max(g for r in ds.qrels.values() for g in r.values()) == 4
    # a record with a repeated .W keeps both parts
    doc = {d.doc_id: d for d in ds.corpus}["576"]
    assert "blades is included" in doc.text and doc.meta["title"].startswith("viscous and inviscid")


def test_cisi(data_env):
    ds = load_dataset("cisi")
    assert len(ds.corpus) == 1460
    assert len(ds.queries) == 76 and ds.meta["unjudged_queries_dropped"] == 36
    assert sum(len(r) for r in ds.qrels.values()) == 3114
    assert set(ds.qrels) == {q.qid for q in ds.queries}
    d1 = ds.corpus[0]
    assert d1.doc_id == "1" and d1.meta["title"] == "18 Editions of the Dewey Decimal Classifications"
    assert d1.text.startswith("The present study is a history of the DEWEY")


def test_squad(data_env):
    ds = load_dataset("squad")
    assert len(ds.corpus) == 1023 and len(ds.queries) == 5397
    d = ds.corpus[0]
    assert d.doc_id == "0-0" and d.meta["title"] == "Super Bowl 50"
    q = ds.queries[0]
    assert ds.qrels[q.qid] == {"0-0": 1}
    assert ds.answers[q.qid] == ["Denver Broncos"]  # three identical spans, deduplicated
    assert all(ds.answers[q.qid] for q in ds.queries)


def test_hotpotqa(data_env):
    ds = load_dataset("hotpotqa")
    assert len(ds.queries) == 103 and len(ds.corpus) == 1021
    q = ds.queries[0]
    assert ds.qrels[q.qid] == {"Scott Derrickson": 1, "Ed Wood": 1} and ds.answers[q.qid] == ["yes"]
    ids = {d.doc_id for d in ds.corpus}
    assert all(d in ids for r in ds.qrels.values() for d in r)
    assert len(ids) == len(ds.corpus)


def test_2wikimultihopqa(data_env):
    ds = load_dataset("2wikimultihopqa")
    assert len(ds.queries) == 100 and len(ds.corpus) == 835
    q = ds.query("dev_0")
    assert set(ds.qrels["dev_0"]) == {"Polish-Russian War (film)", "Xawery Żuławski"}
    assert ds.answers["dev_0"] == ["Małgorzata Braunek"] and q.text.startswith("Who is the mother")
    ids = {d.doc_id for d in ds.corpus}
    assert all(d in ids for r in ds.qrels.values() for d in r)


def test_nq_open(data_env):
    ds = load_dataset("nq-open")
    assert len(ds.queries) == 1300 and len(ds.corpus) == 1286  # a few questions share a gold passage
    assert ds.queries[0].text == "who got the first nobel prize in physics"
    assert ds.answers["0"] == ["Wilhelm Conrad Röntgen"]
    (gold,) = ds.qrels["0"]
    assert {d.doc_id: d for d in ds.corpus}[gold].meta["title"] == "List of Nobel laureates in Physics"


def test_bundled_squad_sample_needs_no_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGKIT_DATA", str(tmp_path / "nowhere"))
    ds = load_dataset("squad-sample")
    assert ds.name == "squad-sample" and ds.corpus and ds.queries
    assert set(ds.qrels) == {q.qid for q in ds.queries} and set(ds.answers) == set(ds.qrels)
    ids = {d.doc_id for d in ds.corpus}
    assert all(d in ids for r in ds.qrels.values() for d in r)


def test_list_datasets_names_and_descriptions():
    names = list_datasets()
    assert set(names) >= {"cranfield", "cisi", "squad", "hotpotqa", "2wikimultihopqa", "nq-open", "squad-sample"}
    assert all(isinstance(v, str) and v and "\n" not in v for v in names.values())


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(DataError) as e:
        load_dataset("cranfeld")
    msg = str(e.value)
    assert "Valid: cranfield, cisi" in msg and "Did you mean 'cranfield'?" in msg


def test_missing_shared_data_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="RAGKIT_DATA"):
        load_dataset("cranfield")


def test_smart_parser_reports_text_before_first_record(tmp_path):
    f = tmp_path / "x.all"
    f.write_text("stray\n.I 1\n.W\nhello\n")
    with pytest.raises(DataError, match=r"x.all:1: text before the first '.I'"):
        parse_smart(f)
    f.write_text(".I 1\n.T\nTitle\n.W\nline one\nline two\n.W\nmore\n.I 2\n.W\nx\n")
    assert parse_smart(f) == [("1", 1, {"T": "Title", "W": "line one line two more"}), ("2", 9, {"W": "x"})]


# -- generic format ------------------------------------------------------------------------------


def _toy() -> Dataset:
    corpus = [Document("d1", "Paris is the capital of France.", {"title": "Paris"}),
              Document("d2", "Berlin is the capital of Germany.", {"title": "Berlin"}),
              Document("d3", "Bananas are yellow.")]
    queries = [Query("q1", "capital of France"), Query("q2", "what colour are bananas"), Query("q3", "unjudged")]
    return Dataset("toy", corpus, queries, {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}},
                   {"q1": ["Paris"], "q2": ["yellow", "Yellow."]})


def test_generic_round_trip(tmp_path):
    ds = _toy()
    folder = ds.save(tmp_path / "toy")
    back = load_dataset(str(folder))
    assert back.name == "toy"
    assert back.corpus == ds.corpus and [d.meta.get("title") for d in back.corpus] == ["Paris", "Berlin", None]
    assert back.queries == ds.queries and back.qrels == ds.qrels and back.answers == ds.answers
    assert back.judged_qids() == ["q1", "q2"] and back.answered_qids() == ["q1", "q2"]
    assert load_dataset(folder).queries == ds.queries  # a Path works too


def test_generic_optional_parts_and_qrels_variants(tmp_path):
    (tmp_path / "queries.jsonl").write_text('{"qid": 1, "text": "a"}\n\n{"qid": "2", "text": "b"}\n')
    (tmp_path / "qrels.txt").write_text("query-id corpus-id score\n1 d1 1\n2 0 d9 2\n9 0 d1 1\n")
    ds = load_dataset(tmp_path)
    assert [q.qid for q in ds.queries] == ["1", "2"] and ds.corpus == [] and ds.answers == {}
    assert ds.qrels == {"1": {"d1": 1}, "2": {"d9": 2}}  # header skipped, 3 and 4 columns, unknown qid dropped
    assert any("not in queries.jsonl" in w for w in ds.meta["warnings"])


def _write(folder, name, text):
    (folder / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("name, text, match", [
    ("corpus.jsonl", '{"doc_id": "d1", "text": "x"}\n{"doc_id": "d2", "text": \n', r"corpus.jsonl:2: broken JSON line"),
    ("corpus.jsonl", '{"doc_id": "d1", "text": "x"}\n{"doc_id": "d2"}\n', r"corpus.jsonl:2: no field 'text'"),
    ("corpus.jsonl", '{"doc_id": "d1", "text": 5}\n', r"corpus.jsonl:1: field 'text' is a int, expected a string"),
    ("corpus.jsonl", '{"doc_id": "d1", "text": "x"}\n{"doc_id": "d1", "text": "y"}\n',
     r"duplicate doc id 'd1': \S*corpus.jsonl:1 and \S*corpus.jsonl:2"),
    ("corpus.jsonl", '["d1", "x"]\n', r"corpus.jsonl\[0\]: expected an object"),
    ("queries.jsonl", '{"qid": "q1", "text": "  "}\n', r"queries.jsonl:1: field 'text' is empty"),
    ("qrels.tsv", "q1 0 d1 1\nq1 0 d2 high\n", r"qrels.tsv:2: field 'grade' must be an integer"),
    ("qrels.tsv", "q1 0 d1 1\nq1 d2\n", r"qrels.tsv:2: expected 4 columns"),
    ("answers.jsonl", '{"qid": "q1", "answers": [1, 2]}\n', r"answers.jsonl:1: field 'answers' must be a list of strings"),
    ("answers.jsonl", '{"qid": "q1"}\n', r"answers.jsonl:1: missing field 'answers'"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, name, text, match):
    _write(tmp_path, "queries.jsonl", '{"qid": "q1", "text": "hello"}\n')
    _write(tmp_path, name, text)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path)


def test_not_a_dataset_folder(tmp_path):
    _write(tmp_path, "corpus.jsonl", '{"doc_id": "d1", "text": "x"}\n')
    with pytest.raises(DataError, match="queries.jsonl is missing"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such dataset folder"):
        load_dataset(str(tmp_path / "nope"))


def test_sample_keeps_queries_and_optionally_only_relevant_docs():
    ds = _toy()
    s = ds.sample(1, corpus="relevant")
    assert [q.qid for q in s.queries] == ["q1"] and s.qrels == {"q1": {"d1": 2, "d2": 0}}
    assert [d.doc_id for d in s.corpus] == ["d1", "d2"] and s.answers == {"q1": ["Paris"]}
    r = ds.sample(2, seed=0)
    assert len(r.queries) == 2 and len(r.corpus) == 3
    with pytest.raises(DataError):
        ds.sample(qids=["zz"])
