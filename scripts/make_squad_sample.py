"""Build data/squad_sample/ (the README demo set) from ../shared/data/squad_v1.1/dev-v1.1.part-a.json.

Takes the first 13 paragraphs of each of the 24 articles and the first 2 questions of each
paragraph, and writes ragkit's generic dataset format (see docs/datasets.md). Doc ids are
"<article index>-<paragraph index>" as in the full `squad` loader, so results are comparable.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/squad_v1.1/dev-v1.1.part-a.json")
OUT = Path(__file__).resolve().parents[1] / "data" / "squad_sample"
PARAS_PER_ARTICLE, QUESTIONS_PER_PARA = 13, 2

data = json.loads(SRC.read_text(encoding="utf-8"))["data"]
OUT.mkdir(parents=True, exist_ok=True)
with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as corpus, \
        open(OUT / "queries.jsonl", "w", encoding="utf-8") as queries, \
        open(OUT / "answers.jsonl", "w", encoding="utf-8") as answers, \
        open(OUT / "qrels.tsv", "w", encoding="utf-8") as qrels:
    for ai, art in enumerate(data):
        title = art["title"].replace("_", " ")
        for pi, para in enumerate(art["paragraphs"][:PARAS_PER_ARTICLE]):
            doc_id = f"{ai}-{pi}"
            corpus.write(json.dumps({"doc_id": doc_id, "title": title, "text": para["context"]}, ensure_ascii=False) + "\n")
            for qa in para["qas"][:QUESTIONS_PER_PARA]:
                queries.write(json.dumps({"qid": qa["id"], "text": qa["question"].strip()}, ensure_ascii=False) + "\n")
                golds = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                answers.write(json.dumps({"qid": qa["id"], "answers": golds}, ensure_ascii=False) + "\n")
                qrels.write(f"{qa['id']}\t0\t{doc_id}\t1\n")
print("wrote", OUT)
