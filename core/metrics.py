"""Evaluation metrics for multi-label, hierarchical predictions (scikit-learn underneath).

Conventions: ``y_true`` and ``y_score`` are ``(N, L)`` arrays; an optional boolean ``mask`` ``(N, L)`` marks known
labels, and unknown entries are left out label by label. A label whose known entries hold one class only has no
AUROC (``None``); means skip such labels.

* macro AUROC: plain mean of the per-label AUROCs;
* weighted AUROC: ``sum_l AUROC_l * n_pos_l / sum_l n_pos_l`` -- scikit-learn's ``average="weighted"``, the
  paper's "weighted AUROC";
* hierarchy-violation rate: share of (image, edge) pairs with parent < threshold < child;
* ECE: 15 equal-width bins, ``sum_b |B_b| / n * |acc_b - conf_b|`` on the positive-class probability.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from core.card_sections import LabelMetrics, SplitMetrics
from core.taxonomy import Taxonomy


def _columns(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray | None):
    y_true, y_score = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be the same (N, L) shape")
    mask = np.ones_like(y_true, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    for j in range(y_true.shape[1]):
        known = mask[:, j]
        yield y_true[known, j], y_score[known, j]


def per_label_auroc(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray | None = None) -> list[float | None]:
    """AUROC of each label over its known entries; ``None`` where only one class is present."""
    return [float(roc_auc_score(t, s)) if len(np.unique(t)) == 2 else None for t, s in _columns(y_true, y_score, mask)]


def per_label_average_precision(
    y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray | None = None
) -> list[float | None]:
    """Average precision of each label over its known entries; ``None`` where only one class is present."""
    return [
        float(average_precision_score(t, s)) if len(np.unique(t)) == 2 else None
        for t, s in _columns(y_true, y_score, mask)
    ]


def positive_counts(y_true: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Known positives per label, shape ``(L,)``."""
    y_true = np.asarray(y_true)
    known = np.ones_like(y_true, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return ((y_true == 1) & known).sum(axis=0)


def macro_mean(values: Sequence[float | None], select: Sequence[int] | None = None) -> float | None:
    """Mean of the defined values (optionally only at indices ``select``); ``None`` if none is defined."""
    chosen = [values[i] for i in (select if select is not None else range(len(values)))]
    defined = [v for v in chosen if v is not None]
    return float(np.mean(defined)) if defined else None


def weighted_mean(
    values: Sequence[float | None], weights: Sequence[float], select: Sequence[int] | None = None
) -> float | None:
    """``sum w_l v_l / sum w_l`` over defined values (optionally only at ``select``); the paper's weighted AUROC."""
    idx = [i for i in (select if select is not None else range(len(values))) if values[i] is not None]
    total = float(sum(weights[i] for i in idx))
    if not idx or total == 0:
        return None
    return float(sum(values[i] * weights[i] for i in idx) / total)


def violation_rate(probs: np.ndarray, taxonomy: Taxonomy, threshold: float = 0.5) -> float:
    """Share of (image, edge) pairs where the parent is below ``threshold`` and the child above it."""
    probs = np.asarray(probs)
    return float(taxonomy.violations(probs, threshold).mean()) if probs.size else 0.0


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE of positive-class probabilities over equal-width bins (``[0, 1/n), ..., [(n-1)/n, 1]``)."""
    y_true, y_prob = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_prob, dtype=float).ravel()
    if y_true.size == 0:
        return 0.0
    bins = np.minimum((y_prob * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(y_true[in_bin].mean() - y_prob[in_bin].mean())
    return float(ece)


def per_label_ece(
    y_true: np.ndarray, y_prob: np.ndarray, mask: np.ndarray | None = None, n_bins: int = 15
) -> list[float]:
    """ECE of each label over its known entries."""
    return [expected_calibration_error(t, s, n_bins) for t, s in _columns(y_true, y_prob, mask)]


def resampled_auroc(y_true: np.ndarray, y_score: np.ndarray) -> Callable[[np.ndarray], float | None]:
    """A statistic for :func:`bootstrap_ci`: the AUROC of ``y_true[rows], y_score[rows]`` for a resample ``rows``
    (indices, repeats allowed), ``None`` when the resample holds one class only.

    Equal to ``roc_auc_score`` on the resampled arrays (the Mann–Whitney statistic, a tied positive and negative
    counting one half), but computed from each row's repeat count over scores sorted once, so a resample costs a
    few vector operations instead of scikit-learn's sort and validation: a 1,000-resample interval over a few
    thousand images takes well under a second instead of about five.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(y_score, dtype=float)
    order = np.argsort(scores, kind="stable")
    y_sorted = y[order]
    # Rows of equal score are one tie group; groups are contiguous in the sorted order.
    starts = np.flatnonzero(np.r_[True, np.diff(scores[order]) != 0])
    n = len(y)

    def auroc(rows: np.ndarray) -> float | None:
        weight = np.bincount(rows, minlength=n)[order].astype(float)
        pos = np.add.reduceat(weight * y_sorted, starts)
        neg = np.add.reduceat(weight * ~y_sorted, starts)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(neg) - neg  # negatives scored strictly below each tie group
        return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))

    return auroc


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    groups: Sequence,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile CI of ``statistic(rows)`` when resampling whole groups (patients or studies) with replacement.

    Args:
        statistic: Called with the row indices of one resample; may return ``None`` (e.g. one-class), skipped.
        groups: Group id per row; rows of a group are always drawn together.
        n_boot: Number of resamples.
        level: Confidence level.
        seed: Seed of the resampling generator (results are reproducible).

    Returns:
        ``(low, high)``, or ``None`` when no resample gives a defined statistic.
    """
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(unique), size=len(unique))
        rows = np.concatenate([members[g] for g in drawn])
        value = statistic(rows)
        if value is not None:
            values.append(value)
    if not values:
        return None
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def evaluate_predictions(
    y_true: np.ndarray,
    y_score: np.ndarray,
    taxonomy: Taxonomy,
    mask: np.ndarray | None = None,
    groups: Sequence | None = None,
    n_boot: int = 0,
    seed: int = 0,
) -> SplitMetrics:
    """All metrics of a prediction table, as the typed record model cards and reports hold.

    Returns a :class:`~core.card_sections.SplitMetrics` with ``per_label`` (AUROC, CI, AP, ECE, positives, known
    count per label) and summaries:
    ``macro_auroc`` (labels with a defined AUROC), ``macro_auroc_chexpert`` (the 14 source labels),
    ``weighted_auroc`` (positive-count weighted, all outputs), ``macro_ap``, ``ece`` (all known entries pooled),
    ``violation_rate`` and, when ``n_boot`` > 0 and ``groups`` are given, ``macro_auroc_ci``.
    """
    y_true, y_score = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    mask = np.ones_like(y_true, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    labels = list(taxonomy.labels)
    aurocs = per_label_auroc(y_true, y_score, mask)
    aps = per_label_average_precision(y_true, y_score, mask)
    eces = per_label_ece(y_true, y_score, mask)
    pos = positive_counts(y_true, mask)
    chexpert_idx = [taxonomy.index(x) for x in taxonomy.chexpert_labels]
    cis: list[tuple[float, float] | None] = [None] * len(labels)
    macro_ci = None
    if n_boot > 0 and groups is not None:
        for j in range(len(labels)):
            if aurocs[j] is not None:
                cis[j] = bootstrap_ci(
                    lambda r, j=j: per_label_auroc(y_true[r][:, [j]], y_score[r][:, [j]], mask[r][:, [j]])[0],
                    groups, n_boot, seed=seed)
        macro_ci = bootstrap_ci(lambda r: macro_mean(per_label_auroc(y_true[r], y_score[r], mask[r])),
                                groups, n_boot, seed=seed)
    per_label = {
        label: LabelMetrics(auroc=aurocs[j], auroc_ci=list(cis[j]) if cis[j] else None, average_precision=aps[j],
                            ece=eces[j], positives=int(pos[j]), known=int(mask[:, j].sum()))
        for j, label in enumerate(labels)
    }
    return SplitMetrics(
        n_images=int(len(y_true)),
        per_label=per_label,
        macro_auroc=macro_mean(aurocs),
        macro_auroc_ci=list(macro_ci) if macro_ci else None,
        macro_auroc_chexpert=macro_mean(aurocs, chexpert_idx),
        weighted_auroc=weighted_mean(aurocs, pos),
        macro_ap=macro_mean(aps),
        ece=expected_calibration_error(y_true[mask], y_score[mask]),
        violation_rate=violation_rate(y_score, taxonomy),
    )
