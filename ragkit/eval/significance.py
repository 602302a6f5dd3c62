"""Paired significance tests between two systems' per-query scores.

- :func:`paired_ttest`: two-sided paired t-test (``scipy.stats.ttest_rel``).
- :func:`randomization_test`: two-sided paired randomisation (sign-flip permutation) test on the
  mean difference: each permutation flips the sign of every query's difference with probability
  1/2; ``p = (1 + #{|mean perm| >= |mean observed|}) / (1 + permutations)``. With at most
  ``permutations`` distinct sign patterns (2^n, n queries) the test is exact: all patterns are
  enumerated and ``p = #{|mean| >= |observed|} / 2^n``.

Both return 1.0 when the two score lists are identical, and NaN with fewer than two queries.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

TESTS = ("ttest", "randomization", "both")


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired tests need two equally long score lists, got {x.shape} and {y.shape}")
    return x - y


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b``."""
    d = _diffs(a, b)
    if d.size < 2:
        return math.nan
    if np.all(np.abs(d - d[0]) <= 1e-15):  # constant differences: t is 0/0 or infinite
        return 1.0 if abs(d[0]) <= 1e-15 else 0.0
    from scipy import stats

    return float(stats.ttest_rel(np.asarray(a, float), np.asarray(b, float)).pvalue)


def randomization_test(a: Sequence[float], b: Sequence[float], *, permutations: int = 10_000,
                       seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip randomisation test of ``a`` against ``b``."""
    d = _diffs(a, b)
    n = d.size
    if n < 2:
        return math.nan
    if permutations < 1:
        raise ValueError("permutations must be >= 1")
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= 20 and 2 ** n <= permutations:  # exact: every sign pattern once
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1) * 2 - 1
        means = np.abs(patterns @ d) / n
        return float(np.count_nonzero(means >= observed - tol) / 2 ** n)
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, min(permutations, 4_000_000 // max(n, 1)))
    while done < permutations:
        m = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ d) / n
        hits += int(np.count_nonzero(means >= observed - tol))
        done += m
    return float((hits + 1) / (permutations + 1))


def compare(a: Sequence[float], b: Sequence[float], test: str = "ttest", *, permutations: int = 10_000,
            seed: int = 0) -> dict[str, float]:
    """p-values of the requested test(s) (``ttest``, ``randomization`` or ``both``) plus the mean
    difference ``delta = mean(a) - mean(b)``."""
    if test not in TESTS:
        from ..errors import ConfigError, did_you_mean

        raise ConfigError(f"significance={test!r}; valid: {', '.join(TESTS)}, None.{did_you_mean(test, TESTS)}")
    d = _diffs(a, b)
    out: dict[str, float] = {"delta": float(d.mean()) if d.size else math.nan, "n": int(d.size)}
    if test in ("ttest", "both"):
        out["ttest"] = paired_ttest(a, b)
    if test in ("randomization", "both"):
        out["randomization"] = randomization_test(a, b, permutations=permutations, seed=seed)
    return out


__all__ = ["paired_ttest", "randomization_test", "compare", "TESTS"]
