"""One error hierarchy for ragkit.

Every message says where (file, line, stage #, field), what was given, the valid
choices and the fix. Nothing in ragkit uses ``assert`` on user input.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class RagkitError(Exception):
    """Base class of every error ragkit raises on purpose."""


class ConfigError(RagkitError):
    """A pipeline or stage configuration is invalid (CLI exit code 2)."""


class PipelineError(RagkitError):
    """Stages do not fit together (needs/provides, input/output kinds)."""


class StageInputError(RagkitError):
    """A record given to a stage is unusable (empty text, duplicate id, ...)."""


class DataError(RagkitError):
    """A data file (corpus, queries, qrels, dataset) cannot be read."""


class IndexArtifactError(RagkitError):
    """An index folder is missing, corrupt or was built with other parameters."""


class MissingDependencyError(RagkitError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class ModelNotFoundError(RagkitError):
    """A model name does not resolve offline."""



def did_you_mean(given: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choice, or ''."""
    close = difflib.get_close_matches(str(given), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def where(file: str | None = None, line: int | None = None, stage: int | None = None,
          key: str | None = None) -> str:
    """Format a location prefix like ``pipelines/rag.yaml:12: stage #2 'retriever.bm25': ``."""
    parts = []
    if file:
        parts.append(f"{file}:{line}:" if line else f"{file}:")
    if stage is not None:
        parts.append(f"stage #{stage}" + (f" '{key}'" if key else "") + ":")
    elif key:
        parts.append(f"'{key}':")
    return (" ".join(parts) + " ") if parts else ""
