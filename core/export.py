"""Exporting a trained model: fp16 safetensors, per-label temperature scaling, plots and the JSON model card.

Temperature scaling fits one temperature ``T_l`` per output on the VALIDATION logits, minimising the masked BCE
of ``sigmoid(z / T_l)`` over ``T_l`` in [0.05, 20] by a golden-section search on ``log T`` (the loss is convex in
``1 / T``, hence unimodal in ``log T``). A positive temperature never changes a label's ranking, so AUROC and AP
are unchanged; only calibration (ECE) and the hierarchy-violation rate move. The temperatures are applied only if
they lower the TEST ECE (``calibration.applied``), and both ECE values are kept in the card.

The model card schema is described in the project's brief (``weights/<variant>.json``): variant, created, model,
taxonomy, preprocessing, loss, penalty_table, calibration, training, data, metrics, reproduce, intended_use,
limitations and plots.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.labels import LabelSet
from core.metrics import evaluate_predictions, expected_calibration_error, per_label_auroc
from core.model import load_model, save_model
from core.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from core.trainer import TrainResult

log = logging.getLogger(__name__)

T_MIN, T_MAX = 0.05, 20.0
MIN_PER_CLASS_FOR_TEMPERATURE = 5

INTENDED_USE = (
    "Research use only; not a medical device. For studying hierarchical multi-label chest X-ray classification "
    "and for demonstrating the HiCXR dashboard. Not for diagnosis, triage, screening or any clinical decision."
)


# -------------------------------------------------------------------------------------------- temperature


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


# ------------------------------------------------------------------------------------------------- plots


def plot_roc(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray, labels: Sequence[str], path: str | Path,
             title: str = "ROC (test)") -> Path:
    """One ROC curve per label with a defined AUROC, AUROC in the legend; a small PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    aurocs = per_label_auroc(y_true, y_score, mask)
    fig, ax = plt.subplots(figsize=(7.5, 6.0), dpi=80)
    cmap = plt.get_cmap("tab20")
    for j, label in enumerate(labels):
        if aurocs[j] is None:
            continue
        known = mask[:, j]
        fpr, tpr, _ = roc_curve(y_true[known, j], y_score[known, j])
        n_pos = int(y_true[known, j].sum())
        ax.plot(fpr, tpr, lw=1.2, color=cmap(j % 20), label=f"{label} {aurocs[j]:.2f} (n+={n_pos})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=6.5, loc="lower right", ncol=2, frameon=False)
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


# ------------------------------------------------------------------------------------------- model card


def data_limitations(train: LabelSet, test: LabelSet, taxonomy: Taxonomy, extra: str = "") -> str:
    """Plain-language limitations derived from the data: unsupervised outputs, thinly tested labels."""
    parts = []
    never = [taxonomy.labels[j] for j in range(len(taxonomy.labels)) if not train.mask[:, j].any()]
    if never:
        parts.append(
            f"These outputs had no known training label and were never supervised; ignore them: {', '.join(never)}."
        )
    pos = ((test.targets == 1) & test.mask).sum(axis=0)
    thin = [f"{taxonomy.labels[j]} ({int(pos[j])})" for j in range(len(taxonomy.labels))
            if test.mask[:, j].any() and pos[j] < 10]
    if thin:
        parts.append(f"Fewer than 10 test positives, so their AUROC is very uncertain: {', '.join(thin)}.")
    parts.append(
        f"Small data: {len(train)} training and {len(test)} test images; confidence intervals are wide and "
        "differences between variants may be noise. Not validated on any other population, scanner or institution; "
        "no prospective or clinical evaluation. Probabilities are not risks; Grad-CAM maps are coarse cues, not "
        "localisation."
    )
    if extra:
        parts.append(extra.strip())
    return " ".join(parts)


def _split_counts(result: TrainResult) -> dict[str, int]:
    return {f"{s}_images": len(result.datasets[s]) for s in ("train", "val", "test")}


def build_model_card(
    *, variant: str, result: TrainResult, taxonomy: Taxonomy, calibration: dict | None, metrics: dict,
    reproduce: str, plots: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model card as plain data (the schema in the module docstring)."""
    cfg = result.config
    m = result.model.config
    card: dict[str, Any] = {
        "variant": variant,
        "created": dt.date.today().isoformat(),
        "model": json.loads(m.to_json()),
        "taxonomy": {"name": taxonomy.name, "hash": taxonomy.hash, "edges": taxonomy.to_dict()["edges"]},
        "preprocessing": {
            "input_size": m.input_size, "in_channels": m.in_channels, "mean": m.mean, "std": m.std,
            "resize": "squash, antialiased bilinear", "input": "grayscale in [0,1]",
        },
        "loss": {
            "lambda": 0.0 if cfg.loss.penalty == "none" else cfg.loss.lam,
            "penalty_source": cfg.loss.penalty,
            "violation": cfg.loss.violation,
            "fixed_value": cfg.loss.fixed_value if cfg.loss.penalty == "fixed" else None,
        },
        "penalty_table": [row.to_dict() for row in result.penalty_table],
        "calibration": calibration,
        "training": {
            "config": cfg.to_dict(),
            "epochs_run": result.state.epoch,
            "best_epoch": result.state.best_epoch,
            "best_val_macro_auroc": result.state.best_metric,
            "monitored_val_labels": result.val_labels_monitored,
            "seconds": round(result.state.seconds, 1),
        },
        "data": {
            **_split_counts(result),
            "sources": list(cfg.data.sources),
            "attribution": cfg.data.attribution,
        },
        "metrics": metrics,
        "reproduce": reproduce,
        "intended_use": INTENDED_USE,
        "limitations": data_limitations(result.datasets["train"].labels, result.datasets["test"].labels, taxonomy,
                                        cfg.data.limitations),
    }
    if plots:
        card["plots"] = plots
    return card


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None so the card is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def write_model_card(card: dict[str, Any], path: str | Path) -> Path:
    """Write ``card`` as strict JSON (NaN -> null) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(card), indent=1, allow_nan=False), encoding="utf-8")
    return path


def export_variant(result: TrainResult, prefix: str | Path, argv: Sequence[str] | None = None,
                   taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """Write ``<prefix>.safetensors`` (fp16), ``<prefix>.json`` (card) and the two plots; return the card.

    Val and test predictions come from the exported fp16 file itself (reloaded), so the card's numbers are
    exactly what a user of the file gets. Call on one process only (rank 0).
    """
    from core.evaluate import predict_dataset

    taxonomy = taxonomy or load_taxonomy()
    prefix = Path(prefix)
    variant = prefix.name
    cfg = result.config
    weights = save_model(result.model, Path(f"{prefix}.safetensors"), half=True)
    model = load_model(weights, taxonomy, device=result.info.device)
    val, test = result.datasets["val"], result.datasets["test"]
    val_logits = predict_dataset(model, val, cfg.train.eval_batch_size, cfg.train.amp)
    test_logits = predict_dataset(model, test, cfg.train.eval_batch_size, cfg.train.amp)

    vl, tl = val.labels, test.labels
    calibration = None
    temperature = None
    if cfg.eval.calibrate:
        t = fit_temperature(val_logits, vl.targets, vl.mask)
        raw_ece = expected_calibration_error(tl.targets[tl.mask], apply_temperature(test_logits, None)[tl.mask])
        cal_ece = expected_calibration_error(tl.targets[tl.mask], apply_temperature(test_logits, t)[tl.mask])
        val_raw = expected_calibration_error(vl.targets[vl.mask], apply_temperature(val_logits, None)[vl.mask])
        val_cal = expected_calibration_error(vl.targets[vl.mask], apply_temperature(val_logits, t)[vl.mask])
        applied = bool(cal_ece < raw_ece)
        temperature = t if applied else None
        calibration = {
            "temperature": [round(float(x), 5) for x in t], "fitted_on": "val", "applied": applied,
            "test_ece_uncalibrated": raw_ece, "test_ece_calibrated": cal_ece,
            "val_ece_uncalibrated": val_raw, "val_ece_calibrated": val_cal,
        }
    val_probs, test_probs = apply_temperature(val_logits, temperature), apply_temperature(test_logits, temperature)
    metrics = {
        "val": evaluate_predictions(vl.targets, val_probs, taxonomy, vl.mask),
        "test": evaluate_predictions(tl.targets, test_probs, taxonomy, tl.mask, groups=test.groups,
                                     n_boot=cfg.eval.n_boot, seed=cfg.eval.boot_seed),
    }
    metrics["test"]["temperature_applied"] = temperature is not None
    roc = plot_roc(tl.targets, test_probs, tl.mask, taxonomy.labels, prefix.parent / f"{variant}_roc.png",
                   title=f"{variant}: ROC on test ({len(test)} images)")
    curves = {"uncalibrated": apply_temperature(test_logits, None)}
    if calibration is not None:
        curves["temperature-scaled"] = apply_temperature(test_logits, calibration["temperature"])
    cal = plot_calibration(tl.targets, curves, tl.mask, prefix.parent / f"{variant}_calibration.png",
                           title=f"{variant}: reliability on test")
    reproduce = shlex.join(["python", "train.py", *(argv or [])])
    card = build_model_card(variant=variant, result=result, taxonomy=taxonomy, calibration=calibration,
                            metrics=metrics, reproduce=reproduce, plots={"roc": roc.name, "calibration": cal.name})
    write_model_card(card, Path(f"{prefix}.json"))
    log.info("exported %s: test macro AUROC %s, weighted %s", weights, metrics["test"]["macro_auroc"],
             metrics["test"]["weighted_auroc"])
    return card
