"""Paired significance tests on synthetic paired data."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ragkit.errors import ConfigError
from ragkit.eval.significance import compare, paired_ttest, randomization_test


def test_identical_runs_give_p_one():
    a = np.random.default_rng(0).random(40)
    assert paired_ttest(a, a) == 1.0
    assert randomization_test(a, a) == 1.0
    assert randomization_test(a[:5], a[:5]) == 1.0  # exact path too


def test_clearly_different_runs_give_small_p():
    rng = np.random.default_rng(1)
    b = rng.random(60)
    a = b + 0.2 + rng.normal(0, 0.05, 60)
    assert paired_ttest(a, b) < 1e-6
    p = randomization_test(a, b)
    assert p == pytest.approx(1 / 10_001)  # no permutation reaches the observed mean
    assert paired_ttest(b, a) == paired_ttest(a, b)  # two-sided


def test_ttest_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.random(30), rng.random(30)
    assert paired_ttest(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_exact_randomization_small_sample():
    # differences (1, 1, 1): of the 8 sign patterns only +++ and --- reach |mean| = 1
    assert randomization_test([1, 1, 1], [0, 0, 0]) == pytest.approx(2 / 8)
    # differences (2, 1, 0, 0): |mean| >= 0.75 for ++ and -- on the first two -> 8 of 16
    assert randomization_test([2, 1, 0, 0], [0, 0, 0, 0]) == pytest.approx(8 / 16)


def test_sampled_randomization_close_to_exact_and_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.random(12), rng.random(12)
    exact = randomization_test(a, b, permutations=5000)  # 2^12 = 4096 <= 5000: exact
    sampled = randomization_test(a, b, permutations=3000, seed=5)
    assert abs(exact - sampled) < 0.05
    assert sampled == randomization_test(a, b, permutations=3000, seed=5)


def test_randomization_null_is_not_significant():
    rng = np.random.default_rng(4)
    base = rng.random(200)
    noise = rng.normal(0, 0.1, 200)
    p = randomization_test(base + noise, base)  # differences: zero-mean noise
    assert p > 0.05


def test_constant_nonzero_difference_and_tiny_samples():
    assert paired_ttest([1, 2, 3], [0, 1, 2]) == 0.0
    assert math.isnan(paired_ttest([1], [0]))
    assert math.isnan(randomization_test([1], [0]))


def test_compare_reports_delta_and_requested_tests():
    out = compare([1, 2, 3, 4], [0, 2, 3, 3], "both")
    assert out["delta"] == pytest.approx(0.5)
    assert out["n"] == 4
    assert set(out) == {"delta", "n", "ttest", "randomization"}
    assert "randomization" not in compare([1, 2], [0, 1], "ttest")
    with pytest.raises(ConfigError, match="Did you mean 'ttest'"):
        compare([1, 2], [1, 2], "tttest")
    with pytest.raises(ValueError):
        paired_ttest([1, 2], [1])
