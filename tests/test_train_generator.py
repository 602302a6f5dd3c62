"""``ragkit train-generator``: the Block-Attention training forward against passage-KV reuse, the
training loop (resume, determinism, atomic checkpoints, bad input) and adapters in ``generator.hf``.

Fast tier: tiny random Llama models saved to folders (tests/_tinylm.py). Model tier: SmolLM2 in fp32,
the training forward with the block pattern against ``kv_reuse: plain`` assembly on a real prompt.
"""
from __future__ import annotations

import json

import pytest

from ragkit.errors import ConfigError, DataError, ModelNotFoundError

from ._integration import import_or_unavailable

torch = import_or_unavailable("torch", "llm")
transformers = import_or_unavailable("transformers", "llm")
peft = import_or_unavailable("peft", "lora")

from ragkit._hfcompat import cache_kw  # noqa: E402
from ragkit.generators._block import FINAL, PREFIX, block_forward, block_layout  # noqa: E402
from ragkit.kv.reuse import KVReuseEngine  # noqa: E402

from ._tinylm import WORDS, make_tiny_lm, rand_ids, tiny_llama  # noqa: E402

ATOL = 1e-4      # as tests/test_kv_reuse.py


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama()


def test_block_layout_mask_and_positions():
    lay = block_layout([1, 2], [[3], [4]], [[5, 6], [7]], [8], [9])
    assert lay.ids == [1, 2, 3, 5, 6, 4, 7, 8, 9]
    assert lay.block == [PREFIX, PREFIX, 0, 1, 1, 2, 3, FINAL, FINAL]
    assert lay.real == list(range(9))
    # every glue and passage is computed right after the prefix; prefix and final at their real places
    assert lay.compute == [0, 1, 2, 2, 3, 2, 2, 7, 8]
    m = lay.mask()
    assert m[4].tolist() == [1, 1, 0, 1, 1, 0, 0, 0, 0]      # passage 1: prefix + itself
    assert m[6].tolist() == [1, 1, 0, 0, 0, 0, 1, 0, 0]      # passage 2 does not see passage 1 or the glues
    assert m[7].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0]      # the final block sees everything before it
    assert m[8].all()


def test_block_forward_equals_plain_reuse_with_shared_prefix(tiny_model):
    """The training forward gives the logits kv_reuse: plain (cached glue) serves, answer tokens included."""
    prefix, fin, ans = rand_ids(7, 1), rand_ids(6, 2), rand_ids(4, 3)
    glues = [rand_ids(3, 10 + i) for i in range(3)]
    blocks = [rand_ids(n, 20 + n) for n in (11, 17, 5)]
    eng = KVReuseEngine(tiny_model, None, prefix)
    got = eng.prefill(eng.encode_blocks(glues), eng.encode_blocks(blocks), fin)
    with torch.no_grad():
        logits = block_forward(tiny_model, prefix, glues, blocks, fin, ans)[0]
        assert torch.allclose(logits[len(fin) - 1], got.logits[0], atol=ATOL, rtol=0)
        # teacher-forced answer tokens over the served cache
        out = tiny_model(input_ids=torch.tensor([ans]), position_ids=torch.arange(got.length, got.length + len(ans))[None],
                         **cache_kw(got.cache), use_cache=True)
    assert torch.allclose(logits[len(fin):], out.logits[0], atol=ATOL, rtol=0)
    # and it is not simply full attention
    full = eng.full_prefill(block_layout(prefix, glues, blocks, fin).ids)
    assert not torch.allclose(got.logits, full.logits, atol=ATOL, rtol=0)


def test_block_forward_without_prefix_equals_one_masked_forward(tiny_model):
    """Without a shared prefix the pattern is one forward pass under BlockLayout.mask() (real positions)."""
    glues = [rand_ids(3, 40 + i) for i in range(2)]
    blocks = [rand_ids(n, 50 + n) for n in (9, 13)]
    fin, ans = rand_ids(5, 60), rand_ids(3, 61)
    lay = block_layout([], glues, blocks, fin, ans)
    mask = torch.zeros(1, 1, len(lay.ids), len(lay.ids)).masked_fill_(~lay.mask(), torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = tiny_model(input_ids=torch.tensor([lay.ids]), attention_mask=mask,
                         position_ids=torch.tensor([lay.real])).logits[0]
        got = block_forward(tiny_model, [], glues, blocks, fin, ans)[0]
    n = len(fin) + len(ans)
    assert torch.allclose(got, ref[-n:], atol=ATOL, rtol=0)


def test_block_forward_trains_lora_weights_through_the_blocks(tiny_model):
    import copy

    from ragkit.generators.train import example_loss

    net = peft.get_peft_model(copy.deepcopy(tiny_model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"]))
    enc = {"prefix": rand_ids(4, 1), "glues": [rand_ids(2, 2)], "blocks": [rand_ids(6, 3)], "final": rand_ids(3, 4),
           "answer": rand_ids(2, 5)}
    loss = example_loss(net.get_base_model(), enc, block=True)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)


# -- the training loop on a tiny model and a tiny generic dataset -------------------------------------------
def _dataset(folder, answers=True, n=14):
    import random

    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    folder.mkdir(parents=True, exist_ok=True)
    docs, qs, qrels, ans = [], [], [], []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(12))
        docs.append({"doc_id": f"d{i}", "title": f"{rng.choice(words)} {i}", "text": text})
        qs.append({"qid": f"q{i}", "text": " ".join(text.split()[:4]) + " ?"})
        qrels.append(f"q{i}\t0\td{i}\t1")
        ans.append({"qid": f"q{i}", "answers": [text.split()[5]]})
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    (folder / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    if answers:
        (folder / "answers.jsonl").write_text("\n".join(json.dumps(a) for a in ans) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tgen")
    return {"model": make_tiny_lm(root / "lm", layers=2, seed=0), "other": make_tiny_lm(root / "lm2", layers=2, seed=1),
            "data": _dataset(root / "data"), "root": root}


def _train(ts, out, **kw):
    from ragkit.generators.train import train_generator

    args = dict(datasets=[str(ts["data"])], model=str(ts["model"]), examples=8, passages="2-3", batch_size=2,
                holdout_every=3, dev_examples=2, save_every=1, progress=False, lora_rank=2, lora_alpha=4,
                lr=1e-2, seed=3)
    args.update(kw)
    return train_generator(str(out), **args)


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_train_resume_is_deterministic_and_outputs_are_complete(tiny_setup, tmp_path):
    a = _train(tiny_setup, tmp_path / "a")
    assert a["finished"] and a["step"] == 4 and a["train_examples"] == 8
    stopped = _train(tiny_setup, tmp_path / "b", max_steps=2)
    assert not stopped["finished"] and (tmp_path / "b" / "checkpoint" / "params.json").exists()
    b = _train(tiny_setup, tmp_path / "b")
    assert b["finished"] and b["step"] == 4
    ta, tb = _adapter_tensors(tmp_path / "a"), _adapter_tensors(tmp_path / "b")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    rec = json.loads((tmp_path / "a" / "ragkit_train.json").read_text())
    split = next(iter(rec["splits"].values()))
    assert split["heldout_qids"] and not set(split["heldout_qids"]) & set(split["train_qids"])
    assert not set(split["dev_qids"]) & set(split["train_qids"])
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "a" / "ragkit_adapter.json").read_text())
    assert meta["base_weights"] and meta["train"]["block_ratio"] == 0.5
    assert not (tmp_path / "a" / "checkpoint").exists()


def test_resume_with_other_settings_is_refused(tiny_setup, tmp_path):
    _train(tiny_setup, tmp_path / "r", max_steps=1)
    with pytest.raises(ConfigError, match=r"other settings.*lr.*--no-resume"):
        _train(tiny_setup, tmp_path / "r", lr=5e-3)
    assert _train(tiny_setup, tmp_path / "r", lr=5e-3, resume=False)["finished"]


def test_crash_while_checkpointing_keeps_the_last_checkpoint(tiny_setup, tmp_path, monkeypatch):
    import ragkit.artifacts as A

    _train(tiny_setup, tmp_path / "c", max_steps=1)
    before = (tmp_path / "c" / "checkpoint" / "trainable.pt").read_bytes()

    def crash(where):
        raise KeyboardInterrupt("simulated crash " + where)

    monkeypatch.setattr(A, "_crash_point", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_setup, tmp_path / "c", max_steps=2)
    monkeypatch.setattr(A, "_crash_point", None)
    assert (tmp_path / "c" / "checkpoint" / "trainable.pt").read_bytes() == before
    assert _train(tiny_setup, tmp_path / "c")["finished"]        # resumes from step 1


def test_bad_input_is_a_clear_error(tiny_setup, tmp_path):
    no_answers = _dataset(tmp_path / "noans", answers=False)
    with pytest.raises(DataError, match="no gold answers.*answers.jsonl"):
        _train(tiny_setup, tmp_path / "x", datasets=[str(no_answers)])
    gpt2 = make_tiny_lm(tmp_path / "gpt2", arch="gpt2")
    with pytest.raises(ConfigError, match="--block-ratio 0"):
        _train(tiny_setup, tmp_path / "y", model=str(gpt2))
    with pytest.raises(DataError, match="range like 3-5"):
        _train(tiny_setup, tmp_path / "z", passages="three")


def test_adapter_merges_refuses_other_base_and_keys_the_kv_store(tiny_setup, tmp_path):
    from ragkit.generators.hf import HFGenerator
    from ragkit.records import Hit, Query, Ranking

    _train(tiny_setup, tmp_path / "ad")
    base = str(tiny_setup["model"])
    store = str(tmp_path / "kv")
    kw = dict(model=base, device="cpu", dtype="float32", max_new_tokens=3, kv_store=store, kv_reuse="plain")
    tuned = HFGenerator(adapter=str(tmp_path / "ad"), **kw).setup()
    plain = HFGenerator(**kw).setup()
    # merged: the LoRA update is in the weights, no peft layers remain
    assert not any("lora" in n for n, _ in tuned._model.named_parameters())
    assert not torch.equal(tuned._model.model.layers[0].self_attn.v_proj.weight,
                           plain._model.model.layers[0].self_attn.v_proj.weight)
    assert tuned._resolved.revision != plain._resolved.revision
    r = Ranking(Query("q", "who wrote the book"), (Hit("q", "d1", 1.0, 0, "george orwell wrote animal farm"),
                                                    Hit("q", "d2", 0.5, 1, "paris is the capital of france")))
    plain([r])
    a = tuned([r])[0]
    assert a.meta["kv_blocks_computed"] == 4      # nothing reused from the base model's store entries
    assert plain._engine.store.folder != tuned._engine.store.folder      # same store root, other namespace
    with pytest.raises(ConfigError, match="trained for base model.*other weights.*train-generator --model"):
        HFGenerator(adapter=str(tmp_path / "ad"), **{**kw, "model": str(tiny_setup["other"])}).setup()


def test_adapter_names_resolve_offline(tmp_path):
    from ragkit.adapters import resolve_adapter, shipped_adapters

    for name, folder in shipped_adapters().items():
        assert resolve_adapter(name) == folder and (folder / "adapter_model.safetensors").exists()
    with pytest.raises(ModelNotFoundError, match="does not resolve offline"):
        resolve_adapter("no-such-adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        resolve_adapter(str(tmp_path / "empty"))


def test_cli_help_lists_the_recipe(capsys):
    from ragkit.cli import main

    with pytest.raises(SystemExit):
        main(["train-generator", "--help"])
    out = capsys.readouterr().out
    assert "--block-ratio" in out and "--lora-rank" in out and "adapter:" in out


# -- real SmolLM2 -------------------------------------------------------------------------------------------
@pytest.mark.model
def test_smollm2_block_training_forward_equals_plain_reuse(smol):
    """The training forward under the block pattern == kv_reuse: plain assembly (fp32), on the prompt
    generator.hf builds, for the next-token logits and the teacher-forced answer tokens."""
    from ragkit.generators.hf import HFGenerator
    from ragkit.generators.train import encode_example
    from ragkit.generators._train_data import RAGExample
    from ragkit.kv.prompt import glue_text, prefix_ids

    tok, model = smol
    gen = HFGenerator(max_passage_tokens=100)
    prefix = prefix_ids(tok, gen.prompt_template())
    ex = RAGExample("t", "q", "What is the capital of France?", (
        ("a", "Berlin is the capital of Germany and its largest city by population.", "Berlin"),
        ("b", "Paris is the capital and most populous city of France, on the Seine.", "Paris"),
        ("c", "The Danube flows through Vienna, Bratislava, Budapest and Belgrade.", None)), 1, "Paris")
    enc = encode_example(gen, tok, prefix, ex, tok.eos_token_id)
    eng = KVReuseEngine(model, None, prefix)
    glues = eng.encode_blocks([tok(glue_text(i + 1), add_special_tokens=False)["input_ids"] for i in range(3)])
    assert [g.ids.tolist() for g in glues] == enc["glues"]
    got = eng.prefill(glues, eng.encode_blocks(enc["blocks"]), enc["final"])
    with torch.no_grad():
        logits = block_forward(model, prefix, enc["glues"], enc["blocks"], enc["final"], enc["answer"])[0]
        F = len(enc["final"])
        assert torch.allclose(logits[F - 1], got.logits[0], atol=ATOL * 10, rtol=1e-4)
        ans = enc["answer"]
        out = model(input_ids=torch.tensor([ans]), position_ids=torch.arange(got.length, got.length + len(ans))[None],
                    **cache_kw(got.cache), use_cache=True)
    assert torch.allclose(logits[F:], out.logits[0], atol=ATOL * 10, rtol=1e-4)


def test_merge_lora_equals_peft_merge_and_unload(tiny_model, tmp_path):
    """ragkit merges adapters without peft; the result equals peft's own merge (differential test)."""
    import copy

    from ragkit.adapters import merge_lora

    torch.manual_seed(5)
    net = peft.get_peft_model(copy.deepcopy(tiny_model),
                              peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "down_proj"]))
    for n, p in net.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)      # B starts at zero: give the update some size
    net.save_pretrained(str(tmp_path / "ad"))
    ref = net.merge_and_unload()
    mine = copy.deepcopy(tiny_model)
    assert merge_lora(mine, tmp_path / "ad") == 2 * 3
    for (n, a), (_, b) in zip(mine.named_parameters(), ref.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), n
    assert not torch.allclose(mine.model.layers[0].self_attn.q_proj.weight,
                              tiny_model.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.model
def test_shipped_adapter_loads_merged_and_answers_short_with_a_citation(smol, tmp_path):
    from ragkit.adapters import shipped_adapters
    from ragkit.generators.hf import HFGenerator
    from ragkit.records import Hit, Query, Ranking

    if "smollm2-rag" not in shipped_adapters():
        pytest.fail("the shipped adapter generators/adapters/smollm2-rag is missing")
    kw = dict(device="cpu", dtype="float32", max_new_tokens=24, kv_store=str(tmp_path / "kv"))
    r = Ranking(Query("q", "What is the capital of France?"), (
        Hit("q", "berlin", 2.0, 0, "Berlin is the capital of Germany and its largest city.", meta={"title": "Berlin"}),
        Hit("q", "paris", 1.0, 1, "Paris is the capital and most populous city of France.", meta={"title": "Paris"})))
    tuned = HFGenerator(adapter="smollm2-rag", **kw).setup()
    base_w = smol[1].model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(tuned._model.model.layers[0].self_attn.q_proj.weight, base_w)
    for mode in ("none", "plain"):
        a = HFGenerator(adapter="smollm2-rag", kv_reuse=mode, **kw)([r])[0]
        # the format the adapter teaches: a few words and a valid passage citation (which passage it cites is
        # measured, not asserted: benchmarks/results/train_generator.md, "cites gold")
        assert "paris" in a.text.lower() and len(a.citations) == 1 and a.meta["new_tokens"] <= 12, a.text
        assert not a.meta.get("invalid_citations")


def test_answer_metrics_ignore_citation_markers():
    from ragkit.eval.metrics import answer_score

    assert answer_score("EM", "Denver Broncos [2]", ["Denver Broncos"]) == 1.0
    assert answer_score("EM", "Denver Broncos [1, 3][2]", ["Denver Broncos"]) == 1.0
    assert answer_score("F1", "[1] the Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert answer_score("EM", "Denver Broncos 2", ["Denver Broncos"]) == 0.0     # only bracketed numbers
