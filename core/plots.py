"""Static plots for model cards and evaluation reports (matplotlib, Agg backend): ROC curves, reliability diagrams.

Each function writes one small PNG and returns its path; nothing here touches models or tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.metrics import expected_calibration_error, per_label_auroc


def plot_roc(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray, labels: Sequence[str], path: str | Path,
             title: str = "ROC (test)") -> Path:
    """One ROC curve per label with a defined AUROC, AUROC in the legend; a small PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    aurocs = per_label_auroc(y_true, y_score, mask)
    # The legend sits outside the axes in 9 pt type, best AUROC first; a curve from fewer than 5 test positives is
    # dashed and called unreliable (one positive gives an AUROC of 0 or 1 by luck).
    fig, ax = plt.subplots(figsize=(10.5, 6.0), dpi=80)
    cmap = plt.get_cmap("tab20")
    curves = []
    for j, label in enumerate(labels):
        if aurocs[j] is None:
            continue
        known = mask[:, j]
        fpr, tpr, _ = roc_curve(y_true[known, j], y_score[known, j])
        curves.append((int(y_true[known, j].sum()) >= 5, aurocs[j], j, label, fpr, tpr,
                       int(y_true[known, j].sum())))
    for reliable, auroc, j, label, fpr, tpr, n_pos in sorted(curves, key=lambda c: (not c[0], -c[1])):
        note = "" if reliable else ", unreliable"
        ax.plot(fpr, tpr, lw=1.4 if reliable else 1.0, ls="-" if reliable else "--", color=cmap(j % 20),
                label=f"{label} {auroc:.2f} (n+={n_pos}{note})")
    ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.set_aspect("equal")
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, title="AUROC (test positives)",
              title_fontsize=9)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a matplotlib figure (tight layout) to ``path``, creating folders, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def reliability_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> tuple[np.ndarray, ...]:
    """Per equal-width bin: mean predicted probability, observed frequency and count (empty bins dropped)."""
    y_true, y_prob = np.asarray(y_true, float).ravel(), np.asarray(y_prob, float).ravel()
    bins = np.minimum((y_prob * n_bins).astype(int), n_bins - 1)
    conf, freq, count = [], [], []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            conf.append(y_prob[sel].mean())
            freq.append(y_true[sel].mean())
            count.append(int(sel.sum()))
    return np.array(conf), np.array(freq), np.array(count)


def plot_calibration(y_true: np.ndarray, curves: Mapping[str, np.ndarray], mask: np.ndarray, path: str | Path,
                     title: str = "Reliability (test, all known labels pooled)") -> Path:
    """Reliability diagram (pooled known entries) of several probability tables, ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.0), dpi=80, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8, label="perfect")
    for name, probs in curves.items():
        t, p = y_true[mask], probs[mask]
        conf, freq, _ = reliability_curve(t, p)
        ece = expected_calibration_error(t, p)
        ax.plot(conf, freq, marker="o", ms=3, lw=1.2, label=f"{name} (ECE {ece:.3f})")
        hx.hist(p, bins=15, range=(0, 1), histtype="step", lw=1.2)
    ax.set(ylabel="Observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    hx.set(xlabel="Predicted probability", ylabel="Count")
    hx.set_yscale("log")
    return _save(fig, path)
