"""What a model card states from held-out data: calibration, operating points and the out-of-distribution threshold.

"Held-out" means images the model that scored them did not train on. With a cross-validation folder these are the
out-of-fold predictions over every train+val image (each scored by the fold model that did not see it, see
:mod:`core.crossval`); without one, the validation split (only when the model did not train on it). The test split
is never used to fit anything here; :mod:`core.export` only *measures* on it.

* **Calibration** (:func:`fit_calibration`): one shared temperature with per-label shrinkage
  (:func:`core.calibration.fit_shrunk_temperatures`); labels not learnt keep the shared value.
* **Operating points** (:func:`fit_operating_points`): per learnt label, the highest displayed probability at
  which the held-out sensitivity reaches the target (``eval.target_sensitivity``), with the specificity there.
* **Out-of-distribution reference** (:func:`fit_ood`): the final model's training features, and a threshold
  whose false-alarm rate on held-out NIH films is ``eval.ood_false_alarm`` (transferred from the fold models).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.calibration import SHRINKAGE, apply_temperature, fit_shrunk_temperatures, operating_threshold
from core.card import Calibration, OperatingPoint
from core.card_sections import MeasuredPoint
from core.config import Config, resolve_path
from core.crossval import fold_weights, load_oof
from core.data import XrayDataset
from core.evaluate import predict_outputs
from core.labels import LabelSet
from core.metrics import expected_calibration_error
from core.model import HiCXRNet, constraint_matrix, load_model, output_probabilities
from core.ood import FeatureReference, PopulationClassifier, transfer_quantile
from core.patient_halves import FIT_HALF, HELD_HALF, patient_half
from core.preprocess import Fit
from core.taxonomy import Taxonomy

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """Held-out logits with their labels.

    Attributes:
        logits: ``(N, L)`` raw logits.
        labels: Their labels (targets, mask, paths, metadata).
        source: Plain-language description (for the card).
        folds: Fold number per row for cross-validation predictions, else ``None``.
    """

    logits: np.ndarray
    labels: LabelSet
    source: str
    folds: np.ndarray | None = None


def held_out_predictions(config: Config, model: HiCXRNet, val: XrayDataset | None, cv_dir: str | Path | None,
                         taxonomy: Taxonomy) -> HeldOut | None:
    """Out-of-fold predictions from ``cv_dir``, else the validation split if the model did not train on it."""
    if cv_dir is not None:
        logits, labels, folds = load_oof(config, resolve_path(cv_dir), taxonomy)
        k = int(folds.max()) + 1
        return HeldOut(logits, labels, f"out-of-fold predictions of {k}-fold patient-level cross-validation over "
                       f"train+val ({len(labels)} images)", folds)
    if val is None or config.data.fit_on == "train+val":
        return None
    logits, _ = predict_outputs(model, val)
    return HeldOut(logits, val.labels, f"validation split ({len(val)} images)")


def training_positives(train: LabelSet, taxonomy: Taxonomy) -> dict[str, int]:
    """Known positive training images per label."""
    pos = ((train.targets == 1) & train.mask).sum(axis=0)
    return {label: int(pos[j]) for j, label in enumerate(taxonomy.labels)}


def fit_calibration(held: HeldOut, learnt: np.ndarray, taxonomy: Taxonomy) -> Calibration:
    """Shared temperature with per-label shrinkage on the held-out logits (see the module docstring)."""
    y, m = held.labels.targets, held.labels.mask
    temps, shared, notes = fit_shrunk_temperatures(held.logits, y, m, fittable=learnt)
    raw = apply_temperature(held.logits, None)
    cal = apply_temperature(held.logits, temps)
    details: dict[str, Any] = {
        "heldout_ece_uncalibrated": expected_calibration_error(y[m], raw[m]),
        "heldout_ece_calibrated": expected_calibration_error(y[m], cal[m]),
        "kept_shared": {taxonomy.labels[j]: why for j, why in notes.items()},
    }
    applied = shared != 1.0 or any(t != 1.0 for t in temps)
    return Calibration(temperature=tuple(float(t) for t in temps), applied=applied,
                       method=f"one shared temperature, per-label temperatures shrunk towards it (log-normal prior "
                              f"worth {SHRINKAGE:.0f} images); a label without enough data keeps the shared value",
                       fitted_on=held.source, shared_temperature=shared, details=details)


def output_probs(logits: np.ndarray, temperature: np.ndarray | None, model: HiCXRNet,
                 taxonomy: Taxonomy) -> np.ndarray:
    """The displayed probabilities: calibrated sigmoids, max-constrained for a C-HMCNN model."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    if temperature is not None:
        z = z / torch.from_numpy(np.asarray(temperature, dtype=np.float32))
    return output_probabilities(z, constraint_matrix(model.config, taxonomy)).numpy()


def fit_operating_points(probs: np.ndarray, labels: LabelSet, learnt: np.ndarray, taxonomy: Taxonomy,
                         target: float, min_positives: int = 5) -> dict[str, OperatingPoint]:
    """Per learnt label with enough held-out positives: the threshold reaching ``target`` sensitivity."""
    out = {}
    for j, label in enumerate(taxonomy.labels):
        known = labels.mask[:, j]
        y = labels.targets[known, j] == 1
        if not learnt[j] or y.sum() < min_positives or (~y).sum() < min_positives:
            continue
        threshold, sens, spec = operating_threshold(probs[known, j], y, target)
        out[label] = OperatingPoint(threshold, target, sens, spec, int(y.sum()), int((~y).sum()))
    return out


def measure_operating_points(points: dict[str, OperatingPoint], probs: np.ndarray, labels: LabelSet,
                             taxonomy: Taxonomy) -> dict[str, MeasuredPoint]:
    """Sensitivity and specificity of each operating point on other data (e.g. the test split)."""
    out: dict[str, MeasuredPoint] = {}
    for label, point in points.items():
        j = taxonomy.index(label)
        known = labels.mask[:, j]
        y = labels.targets[known, j] == 1
        p = probs[known, j]
        out[label] = MeasuredPoint(
            sensitivity=float((p[y] >= point.threshold).mean()) if y.any() else None,
            specificity=float((p[~y] < point.threshold).mean()) if (~y).any() else None,
            positives=int(y.sum()), negatives=int((~y).sum()),
        )
    return out


def fit_population(model: HiCXRNet, train_features: np.ndarray, config: Config
                   ) -> tuple[PopulationClassifier | None, dict[str, Any]]:
    """The population classifier (see :mod:`core.ood`) from ``eval.ood_outliers_*``, or ``None`` when unset.

    The outlier table's patients are split in two by a hash of their id: up to ``ood_outliers_max`` images of
    one half fit the classifier, up to 300 of the other half measure it. With ``eval.ood_adults_*``, the other
    adult collections' patients are split by the same hash: one half joins the adult side, the other half measures
    the false alarms.
    """
    e = config.eval
    if not e.ood_outliers_csv:
        return None, {}
    import pandas as pd

    def table(csv: str) -> pd.DataFrame:
        rows = pd.read_csv(resolve_path(csv), dtype=str, keep_default_na=False)
        for column in (e.ood_outliers_path_column, e.ood_outliers_patient_column):
            if column not in rows.columns:
                raise ValueError(f"{csv}: no column {column!r} (eval.ood_outliers_*)")
        return rows

    def features(rows: pd.DataFrame, images: str) -> np.ndarray:
        labels = LabelSet(paths=rows[e.ood_outliers_path_column].tolist(),
                          targets=np.zeros((len(rows), 1), np.float32), mask=np.zeros((len(rows), 1), bool),
                          labels=("none",), metadata=rows.reset_index(drop=True))
        dataset = XrayDataset(labels, resolve_path(images), config.model.input_size, cache=True, progress=False,
                              fit=Fit.of(model.config))
        return predict_outputs(model, dataset)[1]

    column = e.ood_outliers_patient_column
    outliers = table(e.ood_outliers_csv)
    fit_rows, held_rows = (patient_half(outliers, h, column) for h in (FIT_HALF, HELD_HALF))
    fit_rows = fit_rows.sample(min(e.ood_outliers_max, len(fit_rows)), random_state=0)
    held_rows = held_rows.sample(min(300, len(held_rows)), random_state=0)
    adults_fit = adults_held = None
    if e.ood_adults_csv:
        adults = table(e.ood_adults_csv)
        adults_fit, adults_held = (patient_half(adults, h, column) for h in (FIT_HALF, HELD_HALF))

    classifier, cv_flagged = PopulationClassifier.fit(
        train_features, features(fit_rows, e.ood_outliers_images), e.ood_population_false_alarm,
        other_adults=None if adults_fit is None else features(adults_fit, e.ood_adults_images))
    held_flagged = float((classifier.score(features(held_rows, e.ood_outliers_images)) > classifier.threshold).mean())
    adult_side = "the model's training images"
    if adults_fit is not None:
        adult_side += (f" and {len(adults_fit)} adult films of half the patients of {e.ood_adults_csv} (weighted to "
                       "count as much as the training images)")
    facts = {
        "population_classifier": f"logistic regression on standardised pooled features: {adult_side} vs "
                                 f"{len(fit_rows)} pediatric radiographs of half the patients of {e.ood_outliers_csv}",
        "population_threshold": classifier.threshold,
        "population_target_false_alarm": e.ood_population_false_alarm,
        "population_flagged_heldout_outliers": held_flagged,
        "population_heldout_outliers": len(held_rows),
        "population_flagged_outliers_cv": cv_flagged,
    }
    if adults_held is not None:
        held_adults = classifier.score(features(adults_held, e.ood_adults_images)) > classifier.threshold
        facts |= {"population_flagged_heldout_adults": float(held_adults.mean()),
                  "population_heldout_adults": len(adults_held)}
    return classifier, facts


def fit_ood(model: HiCXRNet, train: XrayDataset, config: Config, cv_dir: str | Path | None,
            held: HeldOut | None, taxonomy: Taxonomy
            ) -> tuple[FeatureReference, PopulationClassifier | None, dict[str, Any]]:
    """The feature reference of ``model`` on its (un-augmented) training images, with a held-out threshold, and the
    population classifier (:func:`fit_population`).

    With a cross-validation folder, each fold model's reference is fitted on its own training rows and its
    held-out rows scored: the training-score quantile whose held-out exceedance is ``eval.ood_false_alarm`` is
    carried over to ``model``. Without one, the quantile ``1 - ood_false_alarm`` of ``model``'s own training
    scores is used (optimistic: training images score lower than unseen ones; the card says which was done).
    """
    k = config.eval.ood_components
    target = config.eval.ood_false_alarm
    _, features = predict_outputs(model, train)
    population, population_facts = fit_population(model, features, config)
    reference = FeatureReference.fit(features, k)
    own_scores = reference.score(features)
    method = "quantile of the model's own training scores (no cross-validation given)"
    quantile = 1.0 - target
    if cv_dir is not None and held is not None and held.folds is not None:
        pool = XrayDataset(held.labels, resolve_path(config.data.images), config.model.input_size, cache=True,
                           progress=False, fit=Fit.of(model.config))
        train_scores, held_scores = [], []
        for fold in range(int(held.folds.max()) + 1):
            fold_model = load_model(fold_weights(resolve_path(cv_dir), fold), taxonomy)
            _, f = predict_outputs(fold_model, pool)
            inside = held.folds != fold
            ref = FeatureReference.fit(f[inside], k)
            train_scores.append(ref.score(f[inside]))
            held_scores.append(ref.score(f[~inside]))
            log.info("OOD reference of fold %d: held-out median score %.2f vs training %.2f", fold,
                     float(np.median(held_scores[-1])), float(np.median(train_scores[-1])))
        quantile = transfer_quantile(train_scores, held_scores, target)
        method = ("quantile of the model's training scores at which the cross-validation fold models flag "
                  f"{target:.0%} of their held-out images")
    threshold = float(np.quantile(own_scores, quantile))
    facts = {
        "method": "Mahalanobis distance of the global-average-pooled features in the top "
                  f"{len(reference.variances)} principal directions of the training features, plus the residual "
                  "energy outside them (each term scaled by its training mean)",
        "threshold": threshold, "threshold_rule": method, "training_quantile": quantile,
        "target_false_alarm": target, "reference_images": len(train),
        "header_rules": "DICOM ViewPosition lateral/decubitus, BodyPartExamined not CHEST, patient age under 18",
        **population_facts,
    }
    return reference.with_threshold(threshold), population, facts
