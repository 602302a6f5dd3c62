"""Pointwise LLM reranker: relevance as the yes/no log-probability of a causal language model.

The model reads an instruction prompt (through its chat template when it has one) holding the
query and the passage and asking whether the passage is relevant, answered with one word. The
score is log P(yes | yes or no) at the next-token position: the log-softmax over the two logits
of the ``yes_token`` and ``no_token`` words (as in pointwise LLM relevance scoring, e.g. Liang
et al., HELM, and Sun et al., "Is ChatGPT good at search?", pointwise baseline).

Works with any transformers causal LM (local folder or hub id) and with the offline
``smollm2-135m-instruct`` (a GGUF file: dequantised once, about 16 s, then cached as
safetensors under the ragkit cache so later loads take well under a second).

Inputs are right-padded and the logits are read at each row's last real token, so padding and
batching do not change scores. The query keeps at most ``query_max_tokens`` tokens; the passage
is cut at its end so the prompt fits ``max_length``.
"""
from __future__ import annotations

from typing import Sequence

from ragkit._deps import require
from ragkit.errors import ConfigError
from ragkit.registry import register
from ragkit.stage import param

from ragkit.models import load_causal_lm

from ._base import RerankerBase, encode_template, pad_batch, score_sorted, single_token_id

SYSTEM = "You are a search relevance judge. Answer with a single word: Yes or No."
PROMPT = ("Query: {query}\nPassage: {document}\n"
          "Does the passage contain information relevant to the query? Answer Yes or No.")


@register("reranker.llm")
class LLMReranker(RerankerBase):
    """Pointwise LLM relevance: log P(yes | yes or no) after an instruction prompt."""

    model: str = param("smollm2-135m-instruct", help="causal LM: short name, local folder or hub id")
    top_n: int = param(20, ge=1, help="rerank this many top hits of each incoming ranking")
    batch_size: int = param(16, ge=1, help="prompts per forward pass (sorted by length first)")
    yes_token: str = param("Yes", help="the answer word for a relevant passage")
    no_token: str = param("No", help="the answer word for a non-relevant passage")
    prompt: str = param(PROMPT, help="user message with {query} and {document}")
    system: str = param(SYSTEM, help="system message (used when the model has a chat template)")
    chat_template: bool = param(True, help="wrap the prompt in the model's chat template when it has one")

    _chat = False       # loaded state: whether prompts go through the chat template

    def validate(self) -> None:
        super().validate()
        for f in ("{query}", "{document}"):
            if f not in self.prompt:
                raise ConfigError(f"'{self.key}': parameter 'prompt' must contain {f}; got {self.prompt!r}")

    def _setup(self) -> None:
        torch = require("torch", "LLM reranking")
        tok, model, _ = load_causal_lm(self.model, self.device, self.dtype, "sdpa", what=f"'{self.key}'",
                                       base_dir=self._base_dir)
        if getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"'{self.key}': {self.model!r} is an encoder-decoder model; use reranker.monot5.")
        y = single_token_id(tok, self.yes_token, "yes_token", self.key)
        n = single_token_id(tok, self.no_token, "no_token", self.key)
        if y == n:
            raise ConfigError(f"'{self.key}': 'yes_token' and 'no_token' map to the same token id {y}.")
        dev = next(model.parameters()).device
        head = model.get_output_embeddings()
        w = head.weight[[y, n]].detach()
        b = head.bias[[y, n]].detach() if getattr(head, "bias", None) is not None else None
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        use_chat = self.chat_template and bool(getattr(tok, "chat_template", None))
        self._tok, self._model, self._dev, self._torch = tok, model, dev, torch
        self._w, self._b, self._pad, self._chat = w, b, pad, use_chat

    def render(self, query: str, document: str) -> str:
        user = self.prompt.format(query=query, document=document)
        if not self._chat:
            return user + "\nAnswer:"
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": user}]
        return self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def _forward(self, rows: list[dict]) -> list[float]:
        torch, model, dev = self._torch, self._model, self._dev
        ids, mask = pad_batch([r["input_ids"] for r in rows], self._pad, side="right")
        last = mask.sum(dim=1) - 1
        with torch.inference_mode():
            hidden = model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
            h = hidden[torch.arange(len(rows), device=dev), last.to(dev)]
            logits = (h @ self._w.T).float()
            if self._b is not None:
                logits = logits + self._b.float()
        return torch.log_softmax(logits, dim=-1)[:, 0].tolist()

    def score_pairs(self, queries: Sequence[str], passages: Sequence[str],
                    sizes: Sequence[int] | None = None) -> tuple[list[float], list[bool]]:
        self.setup()
        add_special = not self._chat
        rows, cut = encode_template(self._tok, self.render, queries, [(p,) for p in passages],
                                    self.max_length, self.query_max_tokens, add_special_tokens=add_special)
        return score_sorted(rows, self.batch_size, self._forward), cut
