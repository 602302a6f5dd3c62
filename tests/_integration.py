"""Skips of the integration tier that CI turns into failures.

A test that cannot run here because real weights, real data (``../shared/data``) or an optional
extra are missing calls :func:`unavailable` (or :func:`import_or_unavailable`) instead of
``pytest.skip``. On a user's machine that is a skip whose reason starts with ``not run:``; the
terminal summary (``pytest_terminal_summary`` in conftest.py) counts them by reason, so a run
without ``../shared/data`` is clean and says what it did not cover. With
``RAGKIT_REQUIRE_INTEGRATION=1`` (set by ``.ci/run``) the same call is a failure, so CI cannot pass
by skipping. Skips that are not about the environment (a case that does not apply to a stage)
stay plain ``pytest.skip``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

ENV = "RAGKIT_REQUIRE_INTEGRATION"
TAG = "not run:"


def required() -> bool:
    return os.environ.get(ENV, "").strip() not in ("", "0", "false", "no")


def unavailable(what: str, *, module_level: bool = False) -> NoReturn:
    """Skip (or, under RAGKIT_REQUIRE_INTEGRATION=1, fail) because ``what`` is missing here."""
    msg = f"{TAG} {what}"
    if required():
        pytest.fail(f"{msg} ({ENV}=1: every integration test must run)", pytrace=False)
    pytest.skip(msg, allow_module_level=module_level)


def import_or_unavailable(name: str, extra: str, *, module_level: bool = True) -> ModuleType:
    """Import ``name`` or report it missing with the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"needs {name} (pip install -e '.[{extra}]')", module_level=module_level)
