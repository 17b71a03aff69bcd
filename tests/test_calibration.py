"""Shared temperature with per-label shrinkage, and operating points: no fit ends on a bound."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import (
    SEARCH_MAX,
    SEARCH_MIN,
    apply_temperature,
    fit_shrunk_temperatures,
    operating_threshold,
)


def _data(scale: np.ndarray, n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 2, (n, len(scale)))
    y = (rng.random(true.shape) < apply_temperature(true, None)).astype(float)
    return true * scale[None, :], y


def test_shared_and_per_label_temperatures_recover_overconfidence():
    logits, y = _data(np.array([3.0, 3.0, 1.0, 3.0]))
    temps, shared, notes = fit_shrunk_temperatures(logits, y, np.ones_like(y, bool))
    assert 1.5 < shared < 3.0
    np.testing.assert_allclose(temps[[0, 1, 3]], 3.0, rtol=0.15)
    assert temps[2] == pytest.approx(1.0, rel=0.2)
    assert notes == {}


def test_small_labels_and_unlearnt_labels_keep_the_shared_value():
    logits, y = _data(np.array([2.0, 2.0, 2.0]), n=600)
    mask = np.ones_like(y, bool)
    mask[3:, 1] = False  # label 1: three known entries only
    temps, shared, notes = fit_shrunk_temperatures(logits, y, mask, fittable=np.array([True, True, False]))
    assert temps[1] == shared and temps[2] == shared
    assert "fewer than" in notes[1] and "not learnt" in notes[2]


def test_a_label_that_cannot_be_fitted_never_ends_on_a_bound():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (500, 2))
    y = np.zeros_like(logits)
    y[:, 0] = (logits[:, 0] > 0).astype(float)  # separable: its optimum is T -> 0, a bound
    y[:250, 1] = 1.0
    temps, shared, _ = fit_shrunk_temperatures(logits, y, np.ones_like(y, bool), shrinkage=0.0)
    assert np.all(temps > SEARCH_MIN * 1.01) and np.all(temps < SEARCH_MAX * 0.99)
    assert temps[0] == shared


def test_operating_threshold_reaches_the_target_sensitivity():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    targets = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool)
    threshold, sens, spec = operating_threshold(scores, targets, 0.8)
    assert threshold == 0.4 and sens == pytest.approx(0.8) and spec == pytest.approx(3 / 5)
    assert operating_threshold(scores, targets, 1.0)[0] == 0.1
    with pytest.raises(ValueError):
        operating_threshold(scores, np.zeros(10, bool), 0.8)
