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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.calibration import apply_temperature, fit_temperature
from core.card import write_json
from core.labels import LabelSet
from core.metrics import evaluate_predictions, expected_calibration_error
from core.model import load_model, save_model
from core.plots import plot_calibration, plot_roc
from core.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from core.trainer import TrainResult

log = logging.getLogger(__name__)


INTENDED_USE = (
    "Research use only; not a medical device. For studying hierarchical multi-label chest X-ray classification "
    "and for demonstrating the HiCXR dashboard. Not for diagnosis, triage, screening or any clinical decision."
)


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
    write_json(card, Path(f"{prefix}.json"))
    log.info("exported %s: test macro AUROC %s, weighted %s", weights, metrics["test"]["macro_auroc"],
             metrics["test"]["weighted_auroc"])
    return card
