"""GPU checks (marker ``gpu``; run by ``benchmarks/gpu_check.sh`` on a CUDA machine).

Each compares a CUDA result with the CPU float32 reference computed in the same test: faiss-gpu
search, fp16/bf16 sentence encoding, the cross-encoder and LLM rerankers, the generator, and
passage-KV reuse exactness (single prompts and batches). Without CUDA every test skips; they are
not part of the CPU suite's strictness (no ragkit test depends on them).

``RAGKIT_TEST_GPU_DEVICE=cpu pytest -m gpu tests/test_gpu.py`` runs the same code with the "GPU"
side on the CPU: it checks the tests' own logic on a machine without a GPU (faiss-gpu skips then).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

DEV = os.environ.get("RAGKIT_TEST_GPU_DEVICE", "cuda")
HAVE = (not DEV.startswith("cuda")) or torch.cuda.is_available()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not HAVE, reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on one)")]


def _installed(short: str) -> None:
    from ragkit.models import installed_models

    if not installed_models().get(short):
        pytest.skip(f"{short} weights are not installed (gpu_check.sh installs them)")


def ranking_with_texts():
    from ragkit.records import Hit, Query, Ranking

    texts = ["Paris is the capital of France.", "George Orwell wrote Animal Farm.", "The Rhine is a river.",
             "Berlin is the capital of Germany."]
    return [Ranking(Query(f"q{i}", q), tuple(Hit(f"q{i}", f"d{j}", 4.0 - j, 0, t) for j, t in enumerate(texts)))
            for i, q in enumerate(["who wrote animal farm", "capital of france"])]


def test_faiss_gpu_search_equals_cpu():
    faiss = pytest.importorskip("faiss")
    if not DEV.startswith("cuda") or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss without GPU support (install faiss-gpu-cu12)")
    from ragkit.indexers._faiss import DenseIndex

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5000, 64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    q = vecs[rng.choice(5000, 50, replace=False)] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    for kind, extra in (("flat", {}), ("ivf", {"nlist": 64, "nprobe": 64})):
        params = {"index_type": kind, "train_size": 5000, "hnsw_m": 32, "ef_construction": 200, "ef_search": 64,
                  "pq_m": 16, "pq_bits": 8, **extra}
        ids = [str(i) for i in range(len(vecs))]
        cpu = DenseIndex.build(vecs, ids, ids, ids, None, params)
        gpu = DenseIndex.build(vecs, ids, ids, ids, None, params)
        gpu.to_gpu()
        s_c, r_c = cpu.search(q, 10, nprobe=64)
        s_g, r_g = gpu.search(q, 10, nprobe=64)
        np.testing.assert_allclose(s_g, s_c, atol=1e-4)
        # ids agree wherever the score is not tied with a neighbour (ties may come in either order)
        gap = np.minimum(np.abs(np.diff(s_c, axis=1, prepend=np.inf)), np.abs(np.diff(s_c, axis=1, append=-np.inf)))
        assert (r_g[gap > 1e-4] == r_c[gap > 1e-4]).all(), kind


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_encoding_is_close_to_fp32(dtype):
    pytest.importorskip("sentence_transformers")
    _installed("minilm")
    from sentence_transformers import SentenceTransformer

    from ragkit.models import resolve_model

    texts = ["Paris is the capital of France.", "George Orwell wrote Animal Farm in 1945.",
             "The mitochondrion is the powerhouse of the cell."] * 4
    path = str(resolve_model("minilm").path)
    ref = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
    m = SentenceTransformer(path, device=DEV)
    m.to(getattr(torch, dtype))
    got = m.encode(texts, normalize_embeddings=True, convert_to_numpy=False)
    got = torch.stack(list(got)).float().cpu().numpy()
    cos = (got * ref).sum(axis=1)
    assert cos.min() > (0.999 if dtype == "float16" else 0.99), cos


def test_dense_encoder_on_cuda_matches_cpu():
    """ragkit's Encoder (fp16 on CUDA by default) against float32 on the CPU."""
    _installed("minilm")
    from ragkit.indexers._encoder import Encoder

    texts = ["what is the capital of france", "who wrote animal farm", "largest river in europe"]
    ref = Encoder("minilm", device="cpu", cache=False).encode_documents(texts)
    got = Encoder("minilm", device=DEV, cache=False).encode_documents(texts)
    assert ((got * ref).sum(axis=1) > 0.999).all()


def test_cross_encoder_reranker_on_cuda_matches_cpu(tmp_path):
    pytest.importorskip("transformers")
    from ragkit.rerankers import CrossEncoderReranker

    from ._tiny_models import tiny_bert
    folder = tiny_bert(tmp_path / "ce")
    rs = ranking_with_texts()
    cpu = CrossEncoderReranker(model=str(folder), device="cpu", dtype="float32")(rs)
    gpu = CrossEncoderReranker(model=str(folder), device=DEV, dtype="float32")(rs)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose([h.score for h in sorted(b.hits, key=lambda h: h.doc_id)],
                                   [h.score for h in sorted(a.hits, key=lambda h: h.doc_id)], atol=1e-4)


def test_llm_reranker_and_generator_on_cuda():
    _installed("smollm2-135m-instruct")
    from ragkit.generators.hf import HFGenerator
    from ragkit.rerankers.llm import LLMReranker

    rs = ranking_with_texts()
    cpu = LLMReranker(device="cpu", dtype="float32")(rs)
    gpu = LLMReranker(device=DEV, dtype="float32")(rs)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose([h.score for h in sorted(b.hits, key=lambda h: h.doc_id)],
                                   [h.score for h in sorted(a.hits, key=lambda h: h.doc_id)], atol=2e-3)
    half = LLMReranker(device=DEV, dtype="bfloat16" if DEV.startswith("cuda") else "float32")(rs)
    assert all(np.isfinite(h.score) for r in half for h in r.hits)
    for dtype in ("float32", "bfloat16" if DEV.startswith("cuda") else "float32"):
        a = HFGenerator(device=DEV, dtype=dtype, max_new_tokens=12)(rs)
        assert all(x.text for x in a) and all(x.timings["ttft_s"] > 0 for x in a)


def test_kv_reuse_exact_on_cuda():
    """Reuse with one passage equals full prefill; a batch equals its single prompts (float32)."""
    _installed("smollm2-135m-instruct")
    from ragkit.kv import KVReuseEngine, PromptTemplate, build_segments, prefix_ids
    from ragkit.models import load_causal_lm

    tok, model, _ = load_causal_lm("smollm2-135m-instruct", DEV, "float32", "sdpa")
    tmpl = PromptTemplate()
    pre = prefix_ids(tok, tmpl)
    eng = KVReuseEngine(model, None, pre)
    passages = [("Paris is the capital and largest city of France.", "Paris"),
                ("Animal Farm is a novella by George Orwell, first published in 1945.", "Animal Farm"),
                ("The Rhine flows from the Swiss Alps to the North Sea.", "Rhine")]
    seg = build_segments(tok, tmpl, "Who wrote Animal Farm?", passages[1:2], 0, prefix=pre)
    got = eng.prefill(eng.encode_blocks(seg.glues), eng.encode_blocks(seg.blocks), seg.final)
    ref = eng.full_prefill(seg.ids())
    torch.testing.assert_close(got.logits.float(), ref.logits.float(), atol=2e-3, rtol=1e-3)
    prompts = []
    for q, ps in (("Who wrote Animal Farm?", passages), ("Capital of France?", passages[:1]),
                  ("Where does the Rhine flow?", passages[::-1])):
        s = build_segments(tok, tmpl, q, ps, 0, prefix=pre)
        prompts.append((eng.encode_blocks(s.glues), eng.encode_blocks(s.blocks), s.final))
    singles = [eng.prefill(*p) for p in prompts]
    batch = eng.prefill_batch(prompts)
    for b, s in enumerate(singles):
        torch.testing.assert_close(batch.logits[b].float(), s.logits[0].float(), atol=2e-3, rtol=1e-3)


def test_attention_methods_on_cuda():
    """The attention hook on CUDA: with no method active the logits equal the unhooked model's on the same
    device; found-in-the-middle's calibrated relevance matches the CPU's; ACT, sorting, the guard and the
    parallel-encoding fixes run there (float32)."""
    _installed("smollm2-135m-instruct")
    from ragkit.generators import _attnrun
    from ragkit.generators._attention import AttentionContext, Reader, active, install_hook
    from ragkit.generators.hf import HFGenerator
    from ragkit.models import load_causal_lm

    tok, ref, _ = load_causal_lm("smollm2-135m-instruct", DEV, "float32", "sdpa")
    _, hooked, _ = load_causal_lm("smollm2-135m-instruct", DEV, "float32", "sdpa")
    install_hook(hooked)
    x = torch.tensor([tok("The capital of France is Paris. The capital of Germany is")["input_ids"]], device=DEV)
    with torch.no_grad():
        a = ref(x).logits
        rd = Reader("last")
        with active(AttentionContext(x.shape[1] - 3, readers=[rd])):
            b = hooked(x).logits
    assert torch.equal(a, b) and len(rd.record) == ref.config.num_hidden_layers
    r = ranking_with_texts()[0]
    rel = {}
    for dev in ("cpu", DEV):
        g = HFGenerator(device=dev, dtype="float32", fim=True).setup()
        rel[dev], _ = _attnrun.attention_relevance(g, r.query.text, list(r.hits))
    np.testing.assert_allclose(rel[DEV], rel["cpu"], atol=1e-4)
    for kw in ({"fim": True}, {"act_heads": ["15:*", "16:*", "17:*"]}, {"attention_sort_rounds": 2},
               {"guard": "flag", "guard_heads": ["13:6", "15:3"], "guard_threshold": 0.4},
               {"kv_reuse": "plain", "kv_temperature": 0.8}):
        out = HFGenerator(device=DEV, dtype="float32", max_new_tokens=8, **kw)([r])[0]
        assert isinstance(out.text, str) and out.meta["attention_hook"], kw


def test_train_generator_on_cuda(tmp_path):
    """``ragkit train-generator --device cuda``: two block-pattern and full-attention steps of SmolLM2 on a
    small generated dataset; the first step's loss (before any update) equals the CPU run's."""
    _installed("smollm2-135m-instruct")
    import json

    from ragkit.generators.train import train_generator

    data = tmp_path / "data"
    data.mkdir()
    facts = [("Paris", "France"), ("Berlin", "Germany"), ("Madrid", "Spain"), ("Rome", "Italy"),
             ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Athens", "Greece"), ("Oslo", "Norway"),
             ("Dublin", "Ireland"), ("Warsaw", "Poland"), ("Prague", "Czechia"), ("Bern", "Switzerland")]
    (data / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": f"d{i}", "title": c, "text": f"{a} is the capital of {c}."}) + "\n"
                                               for i, (a, c) in enumerate(facts)))
    (data / "queries.jsonl").write_text("".join(json.dumps({"qid": f"q{i}", "text": f"What is the capital of {c}?"}) + "\n"
                                                for i, (_, c) in enumerate(facts)))
    (data / "qrels.tsv").write_text("".join(f"q{i}\t0\td{i}\t1\n" for i in range(len(facts))))
    (data / "answers.jsonl").write_text("".join(json.dumps({"qid": f"q{i}", "answers": [a]}) + "\n"
                                                for i, (a, _) in enumerate(facts)))
    runs = {}
    for dev in ("cpu", DEV):
        runs[dev] = train_generator(str(tmp_path / f"out-{dev.replace(':', '')}"), datasets=[str(data)], examples=4,
                                    passages="2-3", batch_size=2, max_steps=2, holdout_every=4, dev_examples=1,
                                    progress=False, seed=3, device=dev)
        assert runs[dev]["step"] == 2 and runs[dev]["device"].startswith(dev.split(":")[0])

    def first_loss(dev):
        log = (tmp_path / f"out-{dev.replace(':', '')}" / "train_log.jsonl").read_text().splitlines()
        return json.loads(log[0])["loss"]
    assert abs(first_loss(DEV) - first_loss("cpu")) <= 1e-3 * max(1.0, abs(first_loss("cpu")))
