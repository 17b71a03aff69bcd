"""Exporting a model: fp16 safetensors (with its out-of-distribution reference), plots and the model card.

Two ways in, one code path (:func:`export_model`):

* ``train.py ... --export weights/NAME`` exports the model it has just trained;
* ``python -m core.export weights/NAME [--from CHECKPOINT] [--config CONFIG] [--cv CV_DIR]`` builds (or rebuilds,
  or recalibrates) the card of saved weights, from a labelled split: the config comes from ``--config`` or from
  the existing card.

Everything the card states is computed from the exported fp16 file itself (reloaded), so its numbers are what a
user of the file gets. Calibration, operating points, the call rule's evidence (:mod:`core.card_evidence`) and the
out-of-distribution threshold are fitted on held-out data (:mod:`core.heldout`); the test split is only measured,
once.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.calls import CallEvidence, CallRule
from core.card import Calibration, ModelCard, OperatingPoint
from core.card_evidence import card_call_evidence
from core.card_sections import (
    CrossValidationInfo,
    DataInfo,
    ModelInfo,
    OODInfo,
    PreprocessingInfo,
    SplitMetrics,
    TaxonomyInfo,
    TrainingInfo,
)
from core.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, resolve_path
from core.contract import InputContract, contract_of
from core.crossval import load_cv_summary
from core.data import XrayDataset, load_splits
from core.errors import HiCXRError
from core.evaluate import predict_outputs
from core.heldout import (
    HeldOut,
    fit_calibration,
    fit_ood,
    fit_operating_points,
    held_out_predictions,
    measure_operating_points,
    output_probs,
    training_positives,
)
from core.labels import LabelSet
from core.loss import loss_info, penalty_rows
from core.metrics import evaluate_predictions, expected_calibration_error
from core.model import HiCXRNet, load_model, save_model
from core.plots import plot_calibration, plot_roc
from core.preprocess import Fit
from core.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from core.trainer import TrainResult

log = logging.getLogger(__name__)


#: The card's ``preprocessing.resize`` text for each (crop, resize) of a model config.
RESIZE_TEXT = {
    ("none", "bilinear"): "squash, antialiased bilinear",
    ("center", "bilinear"): "central square of the shorter side, antialiased bilinear",
    ("none", "skimage"): "squash, scikit-image anti-aliased resize",
    ("center", "skimage"): "central square of the shorter side (torchxrayvision's XRayCenterCrop), scikit-image "
                           "anti-aliased resize (XRayResizer)",
}


def data_limitations(train: LabelSet, test: LabelSet, not_learnt: Sequence[str], taxonomy: Taxonomy,
                     extra: str = "") -> str:
    """Plain-language limitations derived from the data: labels not learnt, thinly tested labels, small data."""
    parts = []
    if not_learnt:
        parts.append(f"Not learnt (too few positive training images; their outputs carry no meaning and are shown "
                     f"as 'not learnt'): {', '.join(not_learnt)}.")
    pos = ((test.targets == 1) & test.mask).sum(axis=0)
    thin = [f"{taxonomy.labels[j]} ({int(pos[j])})" for j in range(len(taxonomy.labels))
            if test.mask[:, j].any() and 0 < pos[j] < 10]
    if thin:
        parts.append(f"Fewer than 10 test positives, so their AUROC is very uncertain: {', '.join(thin)}.")
    parts.append(
        f"Small data: {len(train)} training and {len(test)} test images; confidence intervals are wide and "
        "differences between variants may be noise. Not validated on any other population, scanner or institution; "
        "no prospective or clinical evaluation. Probabilities are not risks; CAMs are coarse cues, not localisation."
    )
    if extra:
        parts.append(extra.strip())
    return " ".join(parts)


def _datasets(config: Config, taxonomy: Taxonomy, fit: Fit = Fit()) -> dict[str, XrayDataset]:
    """Un-augmented datasets of the config's splits (train = what the model trained on), fitted as ``fit``."""
    splits = load_splits(config, taxonomy)
    root = resolve_path(config.data.images)
    return {s: XrayDataset(labels, root, config.model.input_size, cache=True, progress=sys.stderr.isatty(), fit=fit)
            for s, labels in splits.items() if len(labels)}


def export_model(
    model: HiCXRNet, config: Config, prefix: str | Path, *, training: dict[str, Any] | None = None,
    cv_dir: str | Path | None = None, reproduce: str = "", aliases: Sequence[str] = (),
    taxonomy: Taxonomy | None = None, not_learnt: Sequence[str] | None = None, not_learnt_rule: str | None = None,
    card_updates: dict[str, Any] | None = None,
) -> ModelCard:
    """Write ``<prefix>.safetensors`` (fp16 + OOD reference), ``<prefix>.json`` and the plots; return the card.

    Args:
        model: The trained model.
        config: Its training config (data, loss and evaluation settings).
        prefix: ``weights/NAME``.
        training: Facts of the training run (epochs, timing...) for the card.
        cv_dir: A cross-validation folder of the same config: its out-of-fold predictions calibrate the model and
            set its operating points and out-of-distribution threshold.
        reproduce: The command that reproduces the weights.
        aliases: Other names of this model (e.g. the paper's hard-penalty variants, equal to ``bce``).
        taxonomy: Output taxonomy (the packaged one by default).
        not_learnt: The labels not learnt, when the training data does not say (an imported model), with
            ``not_learnt_rule`` saying why; default: labels with too few positive training images.
        not_learnt_rule: Why ``not_learnt`` are not learnt (with ``not_learnt``).
        card_updates: Card fields (typed sections) that replace what the training config would say (an imported
            model's data, loss, limitations and ``imported`` section).
    """
    taxonomy = taxonomy or load_taxonomy()
    prefix = Path(prefix)
    # 1. save fp16 and reload: every figure below is that of the file a user gets
    weights = save_model(model, Path(f"{prefix}.safetensors"), half=True)
    model = load_model(weights, taxonomy)
    ds = _datasets(config, taxonomy, Fit.of(model.config))
    train, test = ds["train"], ds["test"]
    val = ds.get("val") if config.data.fit_on == "train" else None
    # 2. which labels the data let it learn
    positives = training_positives(train.labels, taxonomy)
    rule = f"fewer than {config.eval.min_train_positives} known positive training images"
    if not_learnt is None:
        not_learnt = [label for label, n in positives.items() if n < config.eval.min_train_positives]
    else:
        rule, not_learnt = not_learnt_rule or "", list(not_learnt)
    learnt = np.array([label not in not_learnt for label in taxonomy.labels])
    # 3. calibrate and set operating points on held-out data, measure on test (and val)
    held = held_out_predictions(config, model, val, cv_dir, taxonomy)
    measured = _calibrate_and_measure(model, config, held, learnt, test, val, taxonomy)
    # 4. fit the out-of-distribution rule and save its reference tensors beside the weights
    ood = _fit_ood_and_resave(model, weights, train, config, cv_dir, held, taxonomy, measured.test_features)
    # 5. plots and the cross-validation summary
    plots = _plots(prefix, test, measured, taxonomy)
    cross_validation = _cross_validation(cv_dir, prefix, plots)
    # 6. the card
    m = model.config
    card = ModelCard(
        variant=prefix.name, model=ModelInfo.from_dict(json_model(m)), preprocessing=PreprocessingInfo(
            **contract_of(m, InputContract), resize=RESIZE_TEXT[(m.crop, m.resize)], input="grayscale in [0,1]",
            crop=None if m.crop == "none" else m.crop),
        taxonomy=TaxonomyInfo(name=taxonomy.name, hash=taxonomy.hash, edges=taxonomy.to_dict()["edges"]),
        loss=loss_info(config.loss, m.constraint),
        penalty_table=penalty_rows(config, train.labels, taxonomy), calibration=measured.calibration,
        training=_training_info(config, training),
        data=DataInfo.from_dict({
            "train_images": len(train), "val_images": len(ds.get("val", [])), "test_images": len(test),
            "trained_on": "train+val" if config.data.fit_on == "train+val" else "train",
            "sources": list(config.data.sources), "attribution": config.data.attribution}, "data"),
        metrics=measured.metrics, reproduce=reproduce, plots=plots,
        limitations=data_limitations(train.labels, test.labels, not_learnt, taxonomy, config.data.limitations),
        training_positives=positives, labels_not_learnt=not_learnt,
        labels_not_learnt_rule=rule,
        operating_points=measured.points, ood=ood, cross_validation=cross_validation, aliases=list(aliases),
    )
    for key, value in (card_updates or {}).items():
        setattr(card, key, value)
    # 7. the call rule's evidence, from the held-out predictions that set the operating points
    evidence = _call_evidence(card, held, measured)
    if evidence is not None:
        card.call_rule, card.call_evidence = evidence
    # 8. where its maps point, against NIH's radiologist boxes (when the box file is beside the label table)
    from core.pointing import measure_for_card

    card.pointing = measure_for_card(model, card, resolve_path(config.data.csv), resolve_path(config.data.images))
    from core.registry import tensor_sha256

    card.tensor_sha256 = tensor_sha256(weights)
    card.write(Path(f"{prefix}.json"))
    log.info("exported %s: test macro AUROC %s (OOD flags %.1f%% of test images)", weights,
             measured.metrics["test"].macro_auroc, 100 * (ood.test_flagged or 0.0))
    return card


@dataclass
class _Measured:
    """What step 3 of :func:`export_model` found: calibration, operating points, metrics, test outputs."""

    calibration: Calibration | None
    temperature: np.ndarray | None
    points: dict[str, OperatingPoint]
    metrics: dict[str, SplitMetrics]
    test_probs: np.ndarray
    raw_probs: np.ndarray
    test_features: np.ndarray
    #: The held-out predictions as displayed (calibrated, max-constrained), ``None`` without held-out data.
    held_probs: np.ndarray | None = None


def _calibrate_and_measure(model: HiCXRNet, config: Config, held: HeldOut | None, learnt: np.ndarray,
                           test: XrayDataset, val: XrayDataset | None, taxonomy: Taxonomy) -> _Measured:
    """Temperatures and operating points from the held-out data; metrics (with bootstrap CIs) on test."""
    calibration = fit_calibration(held, learnt, taxonomy) if held is not None and config.eval.calibrate else None
    temperature = np.asarray(calibration.temperature) if calibration and calibration.applied else None
    test_logits, test_features = predict_outputs(model, test)
    tl = test.labels
    test_probs = output_probs(test_logits, temperature, model, taxonomy)
    raw_probs = output_probs(test_logits, None, model, taxonomy)
    if calibration is not None:
        calibration.details["test_ece_uncalibrated"] = expected_calibration_error(tl.targets[tl.mask],
                                                                                  raw_probs[tl.mask])
        calibration.details["test_ece_calibrated"] = expected_calibration_error(tl.targets[tl.mask],
                                                                                test_probs[tl.mask])
    metrics = {"test": evaluate_predictions(tl.targets, test_probs, taxonomy, tl.mask, groups=test.groups,
                                            n_boot=config.eval.n_boot, seed=config.eval.boot_seed)}
    metrics["test"].temperature_applied = temperature is not None
    if val is not None:
        val_logits, _ = predict_outputs(model, val)
        metrics["val"] = evaluate_predictions(val.labels.targets, output_probs(val_logits, temperature, model,
                                                                               taxonomy), taxonomy, val.labels.mask)
    points, held_probs = {}, None
    if held is not None:
        held_probs = output_probs(held.logits, temperature, model, taxonomy)
        points = fit_operating_points(held_probs, held.labels, learnt, taxonomy, config.eval.target_sensitivity)
        metrics["test"].operating_points = measure_operating_points(points, test_probs, tl, taxonomy)
    return _Measured(calibration, temperature, points, metrics, test_probs, raw_probs, test_features, held_probs)


def _call_evidence(card: ModelCard, held: HeldOut | None, measured: _Measured
                   ) -> tuple[CallRule, CallEvidence] | None:
    """The card's call rule and per-label call evidence (:func:`core.card_evidence.card_call_evidence`), fitted on
    the held-out predictions; ``None`` without held-out data (a model fitted on train+val without a
    cross-validation folder): the card then falls back to :func:`core.calls.card_evidence`'s analytic rule.

    The held-out logits are single passes without Monte-Carlo dropout (the fold models' stored out-of-fold logits;
    scoring them again with dropout would mean loading every fold model), so the evidence rests on the calibrated
    single-pass probabilities, as the operating points do, while the dashboard compares the Monte-Carlo mean with
    the threshold. ``python -m core.card_evidence`` measures the Monte-Carlo mean on unseen patients where such
    images exist, and replaces this evidence.
    """
    if held is None or measured.held_probs is None:
        return None
    return card_call_evidence(card, measured.held_probs, held.labels,
                              source=f"{held.source}; calibrated single-pass probabilities (no Monte-Carlo dropout)")


def _fit_ood_and_resave(model: HiCXRNet, weights: Path, train: XrayDataset, config: Config,
                        cv_dir: str | Path | None, held: HeldOut | None, taxonomy: Taxonomy,
                        test_features: np.ndarray) -> OODInfo:
    """Fit the feature reference (and population classifier), measure what they flag on test, and save their
    tensors into the weights file."""
    reference, population, ood = fit_ood(model, train, config, cv_dir, held, taxonomy)
    flagged = reference.score(test_features) > reference.threshold
    ood["test_flagged_distance"] = float(flagged.mean())
    extra = reference.to_tensors()
    if population is not None:
        by_population = population.score(test_features) > population.threshold
        ood["test_flagged_population"] = float(by_population.mean())
        flagged |= by_population
        extra.update(population.to_tensors())
    ood["test_flagged"] = float(flagged.mean())
    save_model(model, weights, half=True, extra=extra)
    return OODInfo.from_dict(ood, "ood")


def _plots(prefix: Path, test: XrayDataset, measured: _Measured, taxonomy: Taxonomy) -> dict[str, str]:
    """The ROC and reliability plots on test, next to the card; their file names."""
    name, tl = prefix.name, test.labels
    plots = {"roc": plot_roc(tl.targets, measured.test_probs, tl.mask, taxonomy.labels,
                             prefix.parent / f"{name}_roc.png", title=f"{name}: ROC on test ({len(test)} images)").name}
    curves = {"uncalibrated": measured.raw_probs}
    if measured.temperature is not None:
        curves["temperature-scaled"] = measured.test_probs
    plots["calibration"] = plot_calibration(tl.targets, curves, tl.mask, prefix.parent / f"{name}_calibration.png",
                                            title=f"{name}: reliability on test").name
    return plots


def _cross_validation(cv_dir: str | Path | None, prefix: Path, plots: dict[str, str]) -> CrossValidationInfo | None:
    """The card's summary of the cross-validation (its curve copied next to the card and added to ``plots``)."""
    if cv_dir is None:
        return None
    summary = load_cv_summary(resolve_path(cv_dir))
    info = CrossValidationInfo.from_dict(
        {f.name: summary.get(f.name) for f in fields(CrossValidationInfo) if f.name != "unknown"},
        "cross-validation summary")
    curve = resolve_path(cv_dir) / "cv_curve.png"
    if curve.is_file():
        shutil.copyfile(curve, prefix.parent / f"{prefix.name}_cv.png")
        plots["cross_validation"] = f"{prefix.name}_cv.png"
    return info


def _training_info(config: Config, training: dict[str, Any] | None) -> TrainingInfo:
    """The card's ``training``: the config, the run's facts, and where its backbone came from when it had one (kept
    from ``training`` when a card is rebuilt, since the backbone file may be gone by then)."""
    info = TrainingInfo.from_dict({"config": config.to_dict(), **(training or {})}, "training")
    if config.model.pretrained and info.pretraining is None:
        from core.pretrain import backbone_provenance

        info.pretraining = backbone_provenance(config.model.pretrained)
    return info


def json_model(config: Any) -> dict[str, Any]:
    """The model config as plain data (as stored in the weights file)."""
    import json

    return json.loads(config.to_json())


def export_variant(result: TrainResult, prefix: str | Path, argv: Sequence[str] | None = None,
                   cv_dir: str | Path | None = None, aliases: Sequence[str] = ()) -> ModelCard:
    """Export the model a :func:`core.trainer.train` call returned (rank 0 only)."""
    training = {
        "epochs_run": result.state.epoch, "best_epoch": result.state.best_epoch,
        "best_val_macro_auroc": result.state.best_metric, "monitored_val_labels": result.val_labels_monitored,
        "seconds": round(result.state.seconds, 1),
    }
    return export_model(result.model, result.config, prefix, training=training, cv_dir=cv_dir,
                        reproduce=shlex.join(["python", "train.py", *(argv or [])]), aliases=aliases)


def _same_training_data(card: ModelCard, config: Config) -> None:
    """Refuse to rebuild a card from data other than the model trained on: everything the export fits (calibration,
    operating points, the out-of-distribution reference, training positives) would describe images the model never
    trained on, e.g. after the data set grew (2026-12-01) under a model trained before."""
    if card.data.train_images is None:
        return
    now = len(load_splits(config)["train"])
    if now != card.data.train_images:
        raise ConfigError(
            f"the card says the model trained on {card.data.train_images} images, but its config's training split "
            f"has {now} now (the data changed since): rebuilding the card would describe other images. Export it "
            "from the data it trained on, or retrain it (train.py ... --export).")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.export``: build or rebuild a variant's weights file and card; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", help="the variant to write, e.g. weights/hbce_soft_data")
    parser.add_argument("--from", dest="source", help="weights to export (a checkpoint); default: PREFIX.safetensors")
    parser.add_argument("--config", help="training config (YAML); default: the one stored in the existing card")
    parser.add_argument("--cv", help="cross-validation folder of that config (calibration, operating points, OOD)")
    parser.add_argument("--alias", action="append", default=[], help="another name of this model (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the config, e.g. --set eval.n_boot=200 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    prefix = resolve_path(args.prefix)
    source = resolve_path(args.source) if args.source else Path(f"{prefix}.safetensors")
    try:
        old = ModelCard.read(Path(f"{prefix}.json")) if Path(f"{prefix}.json").is_file() else None
        if args.config:
            config = load_config(resolve_path(args.config), args.overrides)
        elif old is not None and old.training.config:
            data = apply_overrides(old.training.config, args.overrides)
            config = config_from_dict(data, f"{prefix}.json: training.config")
        else:
            raise ConfigError("no --config given and no existing card with a training config")
        if old is not None and not args.source:
            _same_training_data(old, config)
        model = load_model(source)
        training = {k: v for k, v in (old.training.to_dict() if old else {}).items() if k != "config"}
        aliases = args.alias or (old.aliases if old else [])
        reproduce = old.reproduce if old and not args.source else shlex.join(["python", "-m", "core.export",
                                                                              *(argv or sys.argv[1:])])
        card = export_model(model, config, prefix, training=training, cv_dir=args.cv, reproduce=reproduce,
                            aliases=aliases)
    except HiCXRError as exc:  # card, config, CV, data, labels, weights, images: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {prefix}.safetensors and {prefix}.json: test macro AUROC {card.macro_auroc('test')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
