"""Percentiles are exact on known inputs, and merging raw samples from workers changes nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llama_tui.core.stats import Samples, merge_all, percentile, summarize


def test_percentiles_of_1_to_100():
    s = summarize(range(1, 101), digits=None)
    assert s == {"p50": 50.5, "p95": pytest.approx(95.05), "p99": pytest.approx(99.01), "mean": 50.5}


def test_small_and_empty_inputs():
    assert summarize([]) == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert summarize([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "mean": 7.0}
    assert summarize([1.0, 2.0], digits=None) == {"p50": 1.5, "p95": pytest.approx(1.95), "p99": pytest.approx(1.99),
                                                 "mean": 1.5}
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_unsorted_input_and_scale():
    s = summarize([0.003, 0.001, 0.002], scale=1000.0)
    assert s == {"p50": 2.0, "p95": 2.9, "p99": 2.98, "mean": 2.0}


@pytest.mark.parametrize("n", [2, 10, 999, 5000])
def test_matches_numpy_linear_percentiles(n):
    rng = random.Random(n)
    data = [rng.expovariate(3.0) for _ in range(n)]
    s = summarize(data, digits=None)
    for q in (50, 95, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(data, q)), rel=1e-12, abs=1e-15)
    assert s["mean"] == pytest.approx(float(np.mean(data)), rel=1e-12)


def test_merging_worker_samples_is_exact():
    rng = random.Random(1)
    data = [rng.random() for _ in range(3001)]
    parts = [Samples(data[i::3]) for i in range(3)]
    merged = merge_all(parts)
    assert len(merged) == len(data)
    assert merged.summary(digits=None) == summarize(data, digits=None)
    # and through the text encoding workers use on their pipe
    decoded = merge_all(Samples.decode(p.encode()) for p in parts)
    assert decoded.summary(digits=None) == summarize(data, digits=None)


def test_quantile_helper():
    s = Samples([5.0, 1.0, 3.0])
    assert s.quantile(50) == 3.0 and s.quantile(0) == 1.0 and s.quantile(100) == 5.0
    assert Samples.decode(Samples().encode()).values.tolist() == []
