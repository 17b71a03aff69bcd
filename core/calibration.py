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


# ------------------------------------------------------------------------------- shrunk temperatures


#: Wide search bounds: a fit that ends on one is not trusted (the shared value is kept instead).
SEARCH_MIN, SEARCH_MAX = 0.02, 50.0
#: Prior strength of the per-label shrinkage, in pseudo-images: a label with n known images weighs its own fit by
#: n / (n + SHRINKAGE) against the shared temperature.
SHRINKAGE = 20.0


def _golden_min(f, lo: float, hi: float, iterations: int = 80) -> float:
    """Minimiser of a unimodal scalar function on ``[lo, hi]`` by golden-section search."""
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2.0


def _on_bound(log_t: float, lo: float, hi: float) -> bool:
    return min(abs(log_t - lo), abs(log_t - hi)) < 1e-3


def fit_shrunk_temperatures(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, fittable: np.ndarray | None = None,
    shrinkage: float = SHRINKAGE, min_per_class: int = MIN_PER_CLASS_FOR_TEMPERATURE,
) -> tuple[np.ndarray, float, dict[int, str]]:
    """One shared temperature, and per-label temperatures shrunk towards it; no value may end on a search bound.

    The shared temperature ``T0`` minimises the BCE of every fittable label's known entries pooled. Each label's
    ``T_l`` then minimises ``BCE_l(T) + (shrinkage / n_l) * (log T - log T0)^2`` over its ``n_l`` known entries: a
    log-normal prior centred on ``T0`` worth ``shrinkage`` pseudo-images, so a label with little data stays near
    ``T0`` and one with a lot follows its own data. A label with fewer than ``min_per_class`` known positives or
    negatives, one that is not ``fittable`` (e.g. not learnt), or one whose fit ends on a search bound keeps
    ``T0``. If ``T0`` itself ends on a bound, every label gets 1 (no calibration).

    Returns:
        ``(temperatures (L,), T0, notes)``, ``notes`` saying per label index why it kept ``T0``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    n_labels = z.shape[1]
    fittable = np.ones(n_labels, dtype=bool) if fittable is None else np.asarray(fittable, dtype=bool)
    pos = ((y == 1) & m).sum(axis=0)
    neg = ((y == 0) & m).sum(axis=0)
    enough = (pos >= min_per_class) & (neg >= min_per_class) & fittable
    lo, hi = np.log(SEARCH_MIN), np.log(SEARCH_MAX)
    notes: dict[int, str] = {}
    if not enough.any():
        return np.ones(n_labels), 1.0, {j: "no label has enough held-out positives and negatives" for j in
                                        range(n_labels)}
    cols = np.flatnonzero(enough)
    zs, ys = z[:, cols][m[:, cols]], y[:, cols][m[:, cols]]

    def pooled_loss(log_t: float) -> float:
        zt = zs / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - ys * zt))

    log_t0 = _golden_min(pooled_loss, lo, hi)
    if _on_bound(log_t0, lo, hi):
        return np.ones(n_labels), 1.0, {j: "shared temperature hit a search bound: calibration not applied"
                                        for j in range(n_labels)}
    out = np.full(n_labels, np.exp(log_t0))
    for j in range(n_labels):
        if not fittable[j]:
            notes[j] = "not learnt: keeps the shared temperature"
            continue
        if not enough[j]:
            notes[j] = f"fewer than {min_per_class} held-out positives or negatives: keeps the shared temperature"
            continue
        zj, yj = z[m[:, j], j], y[m[:, j], j]
        weight = shrinkage / len(zj)

        def label_loss(log_t: float, zj=zj, yj=yj, weight=weight) -> float:
            zt = zj / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, zt) - yj * zt) + weight * (log_t - log_t0) ** 2)

        log_t = _golden_min(label_loss, lo, hi)
        if _on_bound(log_t, lo, hi):
            notes[j] = "fit ended on a search bound: keeps the shared temperature"
            continue
        out[j] = np.exp(log_t)
    return out, float(np.exp(log_t0)), notes


# ------------------------------------------------------------------------------------- operating points


def operating_threshold(scores: np.ndarray, targets: np.ndarray, sensitivity: float) -> tuple[float, float, float]:
    """The highest threshold whose sensitivity (share of positives scoring at or above it) reaches ``sensitivity``.

    Returns:
        ``(threshold, achieved sensitivity, specificity)`` on the given data.

    Raises:
        ValueError: no positive or no negative in the data.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    positives, negatives = np.sort(scores[targets]), scores[~targets]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("an operating point needs positives and negatives")
    # Keeping the top ceil(s * n) positives at or above the threshold.
    k = int(np.ceil(sensitivity * positives.size - 1e-9))
    threshold = float(positives[positives.size - max(k, 1)])
    achieved = float((positives >= threshold).mean())
    specificity = float((negatives < threshold).mean())
    return threshold, achieved, specificity
