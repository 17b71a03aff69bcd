"""Calibration of output probabilities: temperature scaling fitted on held-out logits.

``fit_temperature`` fits one temperature ``T_l`` per output minimising the masked BCE of ``sigmoid(z / T_l)``
over ``T_l`` by a golden-section search on ``log T`` (the loss is convex in ``1 / T``, hence unimodal in
``log T``). A positive temperature never changes a label's ranking, so AUROC and AP are unchanged; only
calibration (ECE) and the hierarchy-violation rate move.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

T_MIN, T_MAX = 0.05, 20.0
MIN_PER_CLASS_FOR_TEMPERATURE = 5


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _masked_bce_per_label(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mean BCE of ``sigmoid(logits / t)`` per column over known entries; shape ``(L,)``."""
    z = logits / t[None, :]
    # log(1 + exp(-|z|)) + max(z, 0) - y z  is BCE-with-logits without overflow.
    bce = np.logaddexp(0.0, z) - targets * z
    w = mask.astype(np.float64)
    return (bce * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1.0)


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None, t_min: float = T_MIN,
    t_max: float = T_MAX, iterations: int = 80, min_per_class: int = MIN_PER_CLASS_FOR_TEMPERATURE,
) -> np.ndarray:
    """One temperature per column minimising masked BCE; 1.0 where the column cannot be fitted.

    A column is fitted when it has at least ``min_per_class`` known positives and as many known negatives: with
    one class only the optimum sits at a bound, and with a handful of positives the fitted value is noise.

    Returns:
        ``(L,)`` float array of temperatures in ``[t_min, t_max]``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    mask = np.ones_like(targets, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    lo = np.full(logits.shape[1], np.log(t_min))
    hi = np.full(logits.shape[1], np.log(t_max))
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa = _masked_bce_per_label(logits, targets, mask, np.exp(a))
    fb = _masked_bce_per_label(logits, targets, mask, np.exp(b))
    for _ in range(iterations):
        left = fa < fb  # minimum lies in [lo, b]
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
        new_a, new_b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        a_next = np.where(left, new_a, b)
        b_next = np.where(left, a, new_b)
        fa_next = np.where(left, _masked_bce_per_label(logits, targets, mask, np.exp(new_a)), fb)
        fb_next = np.where(left, fa, _masked_bce_per_label(logits, targets, mask, np.exp(new_b)))
        a, b, fa, fb = a_next, b_next, fa_next, fb_next
    t = np.exp((lo + hi) / 2.0)
    known = mask.sum(axis=0)
    pos = ((targets == 1) & mask).sum(axis=0)
    fittable = (pos >= min_per_class) & (known - pos >= min_per_class)
    return np.where(fittable, t, 1.0).astype(np.float64)


def apply_temperature(logits: np.ndarray, temperature: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Probabilities ``sigmoid(logits / T)`` (``T`` per column; plain sigmoid when ``None``)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature is None:
        return sigmoid(logits)
    return sigmoid(logits / np.asarray(temperature, dtype=np.float64)[None, :])
