"""monoT5 reranker (Nogueira et al., "Document Ranking with a Pretrained Sequence-to-Sequence Model", 2020).

The input is ``Query: {q} Document: {d} Relevant:``; the model runs its encoder once and its
decoder for one step from the decoder start token. The score is the log-softmax, over the two
logits of the ``true`` and ``false`` tokens (the words monoT5 checkpoints were trained to emit;
configurable), taken at the ``true`` token: log P(true | true or false).

Any T5-style checkpoint loads by local folder or hub id (``castorini/monot5-base-msmarco`` where
a user has it, or one trained with ``ragkit train-reranker --kind monot5``). A vocabulary without
single tokens for the target words is refused with a clear error. The query keeps at most
``query_max_tokens`` tokens; the document is cut at its end so that the whole prompt, with the
closing ``Relevant:``, fits ``max_length``.
"""
from __future__ import annotations

from typing import Sequence

from ragkit._deps import require
from ragkit.errors import ConfigError
from ragkit.registry import register
from ragkit.stage import param

from ragkit.models import pick_device, pick_dtype

from ._base import RerankerBase, encode_template, load_error, pad_batch, score_sorted, single_token_id

MONOT5_TEMPLATE = "Query: {query} Document: {document} Relevant:"


def load_seq2seq(stage: RerankerBase) -> None:
    """Load a T5-style model + tokenizer and the ids of the target words into the stage."""
    torch = require("torch", f"{stage.key} reranking")
    tf = require("transformers", f"{stage.key} reranking")
    path = stage._model_path()
    try:
        config = tf.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise load_error(stage.model, exc) from exc  # type: ignore[attr-defined]
    if not getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"'{stage.key}': parameter 'model' is {stage.model!r} (model type "  # type: ignore[attr-defined]
                          f"{config.model_type!r}), not an encoder-decoder (T5-style) checkpoint. Use "
                          f"reranker.cross_encoder for BERT-style classifiers, reranker.llm for causal LMs.")
    try:
        tok = tf.AutoTokenizer.from_pretrained(path)
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise load_error(stage.model, exc) from exc  # type: ignore[attr-defined]
    t_id = single_token_id(tok, stage.true_token, "true_token", stage.key)  # type: ignore[attr-defined]
    f_id = single_token_id(tok, stage.false_token, "false_token", stage.key)  # type: ignore[attr-defined]
    if t_id == f_id:
        raise ConfigError(f"'{stage.key}': 'true_token' and 'false_token' map to the same token id {t_id}.")
    dev = pick_device(stage.device)
    model = model.to(device=dev, dtype=pick_dtype(stage.dtype, dev)).eval()
    start = model.config.decoder_start_token_id
    if start is None:
        start = tok.pad_token_id
    stage._tok, stage._model, stage._dev, stage._torch = tok, model, dev, torch
    stage._ids, stage._start = (t_id, f_id), int(start)


def true_false_logprob(stage: RerankerBase, rows: list[dict]) -> "object":
    """log P(true | {true, false}) at the first decoder step, for a batch of encoded inputs."""
    torch, tok, model, dev = stage._torch, stage._tok, stage._model, stage._dev
    ids, mask = pad_batch([r["input_ids"] for r in rows], tok.pad_token_id or 0)
    dec = torch.full((len(rows), 1), stage._start, dtype=torch.long, device=dev)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), decoder_input_ids=dec).logits
    pair = logits[:, 0, list(stage._ids)].float()
    return torch.log_softmax(pair, dim=-1)[:, 0]


@register("reranker.monot5")
class MonoT5Reranker(RerankerBase):
    """monoT5: score = log-softmax of the true/false logits after `Query: q Document: d Relevant:`."""

    model: str = param(help="T5-style checkpoint (local folder or hub id), e.g. castorini/monot5-base-msmarco")
    true_token: str = param("true", help="the word the checkpoint emits for a relevant document")
    false_token: str = param("false", help="the word the checkpoint emits for a non-relevant document")
    template: str = param(MONOT5_TEMPLATE, help="prompt with {query} and {document}")

    def validate(self) -> None:
        super().validate()
        for f in ("{query}", "{document}"):
            if f not in self.template:
                raise ConfigError(f"'{self.key}': parameter 'template' must contain {f}; got {self.template!r}")

    def _setup(self) -> None:
        load_seq2seq(self)

    def encode(self, queries: Sequence[str], passages: Sequence[str]) -> tuple[list[dict], list[bool]]:
        self.setup()
        return encode_template(self._tok, lambda q, d: self.template.format(query=q, document=d),
                               queries, [(p,) for p in passages], self.max_length, self.query_max_tokens)

    def _forward(self, rows: list[dict]) -> list[float]:
        return true_false_logprob(self, rows).tolist()

    def score_pairs(self, queries: Sequence[str], passages: Sequence[str],
                    sizes: Sequence[int] | None = None) -> tuple[list[float], list[bool]]:
        rows, cut = self.encode(queries, passages)
        return score_sorted(rows, self.batch_size, self._forward), cut


from . import duot5 as _duot5  # noqa: E402,F401  (registers reranker.duot5, which shares the loader above)
