"""``reranker.attention``: rerank passages by the attention a generator LM pays them (listwise).

Found in the Middle (Hsieh et al. 2024): the top ``top_n`` passages are placed in one prompt (the
``generator.hf`` prompt: system message, numbered passages, question) and each passage is scored by
the attention mass the rows of the final block (question and instructions) give its tokens, mean
over layers and heads (``layers`` to restrict). ``calibrated`` (default) subtracts the positional
bias: the attention mass a content-free dummy passage (``dummy``) gets at the same position
(``bias: dummy``: one extra prefill with the dummy at every position; ``bias: swap``: one prefill per
position with only that passage replaced, as in the paper). ``calibrated: false`` is the vanilla
attention score. Passages below ``top_n`` are kept under the reranked ones (``keep_rest``) or cut.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from ragkit.errors import StageInputError
from ragkit.records import Ranking
from ragkit.registry import register
from ragkit.stage import RANKINGS, Stage, param


@register("reranker.attention")
class AttentionReranker(Stage):
    """Listwise reranking by (calibrated) attention of a causal LM to each passage."""

    model: str = param("smollm2-135m-instruct", help="causal LM: short name, local folder or cached hub id")
    top_n: int = param(10, ge=1, help="rerank this many top hits (all in one prompt)")
    keep_rest: bool = param(True, help="keep the hits below top_n under the reranked ones")
    calibrated: bool = param(True, help="subtract the positional bias measured with a dummy passage")
    bias: Literal["dummy", "swap"] = param("dummy", help="dummy at every position (1 prefill) or one per position")
    dummy: str = param("N/A", help="content-free dummy text, repeated to each passage's length")
    layers: str = param("all", help="layers averaged ('all', 'auto' = later half, 'a-b', 'a,b')")
    max_passage_tokens: int = param(512, ge=0, help="cut each passage to this many tokens (0 = no cut)")
    device: Literal["auto", "cpu", "cuda"] = param("auto", help="where to run the model")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = param("auto", help="model dtype")

    input_kind = RANKINGS
    output_kind = RANKINGS
    _gen = _run = _layers = None   # the generator whose attention is read, set in _setup()

    def needs(self) -> frozenset[str]:
        return frozenset({"text"})

    def provides(self) -> frozenset[str]:
        return frozenset({"text"})

    def _setup(self) -> None:
        from ragkit.generators import _attnrun
        from ragkit.generators._attention import install_hook, parse_layers
        from ragkit.generators.hf import HFGenerator

        gen = HFGenerator(model=self.model, device=self.device, dtype=self.dtype, max_passages=self.top_n,
                          max_passage_tokens=self.max_passage_tokens, max_new_tokens=1)
        gen.bind_context(base_dir=self._base_dir)
        gen.setup()
        model = gen._model
        install_hook(model, f"'{self.key}'")
        if gen._act_heads is None:
            gen._act_heads = {}
        n = model.config.num_hidden_layers
        self._gen, self._run = gen, _attnrun
        self._layers = None if self.layers == "all" else parse_layers(self.layers, n, f"'{self.key}': layers")

    def scores(self, r: Ranking, hits: list[Any]) -> tuple[list[float], dict]:
        """(score per hit, {'vanilla': [...], 'bias': [...]}) for ``hits`` in their given order."""
        import torch

        gen, run, layers = self._gen, self._run, self._layers
        with gen._model_lock, torch.no_grad():
            rel, info = run.attention_relevance(gen, r.query.text, hits, calibrated=self.calibrated, bias=self.bias,
                                                dummy=self.dummy, layers=layers)
        info.pop("prefill", None)
        return rel, info

    def run(self, batch: list[Ranking]) -> list[Ranking]:
        out = []
        for r in batch:
            if not isinstance(r, Ranking):
                raise StageInputError(f"'{self.key}': expected Ranking records, got {type(r).__name__}")
            head = list(r.hits[: self.top_n])
            for h in head:
                if not isinstance(h.text, str):
                    raise StageInputError(f"'{self.key}': hit doc_id={h.doc_id!r} (query {r.qid!r}, rank {h.rank}) has "
                                          "no text. Add `text: true` to the retriever or a text lookup stage before it.")
            sc, _ = self.scores(r, head) if head else ([], {})
            new = [replace(h, score=float(s), meta={**(h.meta or {}), "first_stage_score": h.score})
                   for h, s in zip(head, sc)]
            rest = list(r.hits[self.top_n:]) if self.keep_rest else []
            if rest and new:                          # keep the tail below the reranked head
                low = min(h.score for h in new)
                rest = [replace(h, score=low - 1.0 - i, meta={**(h.meta or {}), "first_stage_score": h.score})
                        for i, h in enumerate(rest)]
            out.append(Ranking(r.query, tuple(new + rest)))
        return out
