"""The one place that knows how transformers names the KV cache (and hides peft's use of a deprecated
transformers method, :func:`peft_quiet`).

transformers renamed the cache argument of every forward (models, decoder layers,
``create_causal_mask``) and the cache field of its outputs from ``past_key_values`` to ``cache``;
the old names still work in 5.2x but warn (``FutureWarning: past_key_values is deprecated and will
be removed in version 5.40.0``). ragkit passes and reads the cache through these helpers, which use
``cache`` when the installed transformers has it and ``past_key_values`` on releases before the
rename (see pyproject.toml for the supported range and scripts/check_min_versions.sh for its
test), so no ragkit call uses a deprecated name.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from typing import Any, Iterator


@functools.lru_cache(maxsize=None)
def cache_arg() -> str:
    """``"cache"`` on transformers releases that renamed the argument, else ``"past_key_values"``."""
    from transformers.masking_utils import create_causal_mask

    params = inspect.signature(inspect.unwrap(create_causal_mask)).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kw(cache: Any) -> dict[str, Any]:
    """Keyword arguments that pass ``cache`` to a forward, a decoder layer or a mask function."""
    return {cache_arg(): cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a model output (``out.cache``, or ``out.past_key_values`` on older releases)."""
    if cache_arg() == "cache":
        return out.cache
    return out.past_key_values


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """``with peft_quiet(): peft.get_peft_model(...)`` (or ``PeftModel.from_pretrained``): hides the
    FutureWarning that peft's own call of transformers' deprecated ``is_gradient_checkpointing`` raises on
    transformers 5.2x (peft's code, nothing a ragkit user can change); any other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
