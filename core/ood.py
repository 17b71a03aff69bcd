"""Is an image like the training population (adult frontal chest radiographs)? Header rules and feature distance.

Two kinds of evidence, each giving a plain-language warning:

* **What the file says** (:func:`header_warnings`): a DICOM view that is not frontal (lateral and decubitus
  views) or a patient age under 18 (read as a coarse age band by :mod:`core.imaging`; the age itself is never
  stored); a body part that is not the chest is flagged by :mod:`core.imaging` itself.
* **What the image looks like**, from the model's own global-average-pooled features of the image:

  - :class:`FeatureReference`, for anything unlike the training images: the reference keeps the training
    features' mean and top ``k`` principal directions; the score is the Mahalanobis distance in that subspace plus
    the residual energy outside it (each term divided by its training mean, so both count alike);
  - :class:`PopulationClassifier`, for children's films in particular: a logistic regression on the standardised
    features separating the training images (adults), and half the patients of other adult collections, from
    pediatric radiographs of a *different* data set (Kermany et al.'s; half its patients, the other half kept to
    measure it), an outlier-exposure detector
    (Hendrycks et al., ICLR 2019). A distance alone flags only about half of those films, since at 64 px a child's
    chest and an adult's share most features.

The threshold must hold on images the model has *not* seen, whose features lie further out than its training
images'. It is set with the cross-validation folds (:func:`transfer_quantile`): for each fold model, the share of
its held-out images scoring above each quantile of its own training scores is measured, and the quantile whose
held-out exceedance equals the target false-alarm rate is carried over to the final model's training scores.

The population classifier's threshold is set on cross-validated scores of the training images at a stated
false-alarm rate. Both are stored as ``ood.*`` tensors in the weights file (the model loader ignores that prefix)
and described in the card's ``ood`` section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.imaging.coded import CHEST_BODY_PARTS

PREFIX = "ood."
NON_FRONTAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "RLD", "LLD", "LLO", "RLO", "OBL"})


@dataclass(frozen=True)
class FeatureReference:
    """Mean, principal directions and variances of training features, and the flagging threshold.

    Attributes:
        mean: ``(K,)`` feature mean.
        components: ``(k, K)`` orthonormal principal directions.
        variances: ``(k,)`` variance along each direction.
        residual: Mean squared residual outside the subspace, per dimension (scale of the second term).
        scale: ``(2,)`` training means of the two score terms (they are divided by these).
        threshold: Score above which an image is flagged.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual: float
    scale: np.ndarray
    threshold: float = float("inf")

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 32) -> FeatureReference:
        """Fit the reference on training features ``(N, K)`` (threshold left at infinity)."""
        x = np.asarray(features, dtype=np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        k = int(min(k, x.shape[0] - 1, x.shape[1]))
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        variances = (s[:k] ** 2) / max(x.shape[0] - 1, 1)
        components = vt[:k]
        resid = centred - (centred @ components.T) @ components
        residual = float((resid**2).sum(axis=1).mean()) + 1e-12
        ref = cls(mean, components, np.maximum(variances, 1e-12), residual, np.ones(2))
        terms = ref._terms(x)
        return cls(mean, components, ref.variances, residual, terms.mean(axis=0) + 1e-12)

    def _terms(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - self.mean
        proj = centred @ self.components.T
        mahalanobis = (proj**2 / self.variances).sum(axis=1)
        resid = centred - proj @ self.components
        return np.stack([mahalanobis, (resid**2).sum(axis=1) / self.residual], axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance score ``(N,)`` of features ``(N, K)`` (about 2 on average for the training images)."""
        return (self._terms(features) / self.scale).sum(axis=1)

    def with_threshold(self, threshold: float) -> FeatureReference:
        """A copy flagging scores above ``threshold``."""
        return FeatureReference(self.mean, self.components, self.variances, self.residual, self.scale,
                                float(threshold))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store in the weights file (float32, ``ood.`` prefix)."""
        def t(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32)).contiguous()

        return {f"{PREFIX}mean": t(self.mean), f"{PREFIX}components": t(self.components),
                f"{PREFIX}variances": t(self.variances), f"{PREFIX}residual": t([self.residual]),
                f"{PREFIX}scale": t(self.scale), f"{PREFIX}threshold": t([self.threshold])}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> FeatureReference | None:
        """The reference stored in a weights file, or ``None`` when it has none."""
        needed = ("mean", "components", "variances", "residual", "scale", "threshold")
        if not all(f"{PREFIX}{n}" in tensors for n in needed):
            return None
        a = {n: tensors[f"{PREFIX}{n}"].double().numpy() for n in needed}
        return cls(a["mean"], a["components"], a["variances"], float(a["residual"][0]), a["scale"],
                   float(a["threshold"][0]))


@dataclass(frozen=True)
class PopulationClassifier:
    """Logistic regression on standardised pooled features: how much an image looks like a pediatric film.

    Attributes:
        mean: ``(K,)`` feature mean of the training images (standardisation).
        scale: ``(K,)`` feature standard deviation.
        weight: ``(K,)`` coefficients.
        bias: Intercept.
        threshold: Decision value above which an image is flagged.
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    threshold: float = float("inf")

    @classmethod
    def fit(cls, inside: np.ndarray, outside: np.ndarray, false_alarm: float, c: float = 0.01,
            seed: int = 0, other_adults: np.ndarray | None = None) -> tuple[PopulationClassifier, float]:
        """Fit on training features (label 0) and outlier features (label 1).

        ``other_adults`` are adult films of *other* collections (other hospitals, portable AP films), also label 0
        and weighted to count as much, all together, as the training images: without them a model trained on one
        hospital's films can learn "not this hospital" instead of "a child" (measured: a model trained on the grown
        NIH data called 59% of held-out COVID-19 films a child's without them, 0.7% with them balanced so).

        The threshold is the ``1 - false_alarm`` quantile of the adult images' 5-fold cross-validated decision
        values (their in-sample values would be too low). Returns the classifier and the share of the outliers
        flagged in cross-validation.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        adults = np.zeros((0, inside.shape[1])) if other_adults is None else np.asarray(other_adults)
        mean = inside.mean(axis=0)
        scale = inside.std(axis=0) + 1e-6
        x = (np.concatenate([inside, adults, outside]) - mean) / scale
        n_in = len(inside) + len(adults)
        y = np.r_[np.zeros(n_in), np.ones(len(outside))]
        weight = np.r_[np.ones(len(inside)), np.full(len(adults), len(inside) / max(len(adults), 1)),
                       np.ones(len(outside))]
        model = LogisticRegression(C=c, max_iter=5000)
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        cv = cross_val_predict(model, x, y, cv=folds, method="decision_function", params={"sample_weight": weight})
        threshold = float(np.quantile(cv[:n_in], 1.0 - false_alarm))
        model.fit(x, y, sample_weight=weight)
        out = cls(mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]), threshold)
        return out, float((cv[n_in:] > threshold).mean())

    def score(self, features: np.ndarray) -> np.ndarray:
        """Decision values ``(N,)`` (log-odds of "pediatric film")."""
        return ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weight + self.bias

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store in the weights file (``ood.population_`` prefix)."""
        def t(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32)).contiguous()

        return {f"{PREFIX}population_mean": t(self.mean), f"{PREFIX}population_scale": t(self.scale),
                f"{PREFIX}population_weight": t(self.weight), f"{PREFIX}population_bias": t([self.bias]),
                f"{PREFIX}population_threshold": t([self.threshold])}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> PopulationClassifier | None:
        """The classifier stored in a weights file, or ``None`` when it has none."""
        needed = ("mean", "scale", "weight", "bias", "threshold")
        if not all(f"{PREFIX}population_{n}" in tensors for n in needed):
            return None
        a = {n: tensors[f"{PREFIX}population_{n}"].double().numpy() for n in needed}
        return cls(a["mean"], a["scale"], a["weight"], float(a["bias"][0]), float(a["threshold"][0]))


def population_warning(score: float, classifier: PopulationClassifier) -> str | None:
    """The warning for an image that looks like a pediatric film, else ``None``."""
    if not np.isfinite(score) or score <= classifier.threshold:
        return None
    return ("This image looks like a child's radiograph; the models were trained on adult radiographs only, so "
            "their outputs do not apply.")


def transfer_quantile(train_scores: Sequence[np.ndarray], held_out_scores: Sequence[np.ndarray],
                      false_alarm: float) -> float:
    """The quantile ``q`` of training scores whose exceedance on held-out images is ``false_alarm`` (CV folds).

    For each fold ``f`` and candidate ``q``, the held-out images scoring above the ``q``-quantile of fold ``f``'s
    training scores are counted; the smallest ``q`` whose pooled exceedance is at most ``false_alarm`` is returned.
    """
    candidates = np.linspace(0.5, 1.0, 501)
    for q in candidates:
        flagged = total = 0
        for train, held in zip(train_scores, held_out_scores, strict=True):
            flagged += int((np.asarray(held) > np.quantile(train, q)).sum())
            total += len(held)
        if total and flagged / total <= false_alarm:
            return float(q)
    return 1.0


def header_warnings(metadata: Mapping[str, Any]) -> list[str]:
    """Warnings from what the file says about itself (view, age band); empty when nothing is odd.

A body part other than the chest is already flagged by :mod:`core.imaging` when the file is read."""
    out = []
    view = str(metadata.get("view_position") or "").upper()
    if view in NON_FRONTAL_VIEWS:
        out.append(f"The file says this is a {view} view; the models were trained on frontal (PA/AP) films only.")
    if metadata.get("age_group") == "child":
        out.append("The file gives a patient age under 18; the models were trained on adult radiographs only.")
    return out


#: A film whose imaged field is at least this wide and tall (mm, from the DICOM pixel spacing) is not of a young child:
#: a 1-5 year old's chest is 15-20 cm wide and is imaged on 18 x 24 or 24 x 30 cm fields, an adult's on 35 x 43 cm.
ADULT_FIELD_MM = 300.0


def header_rules_out_child(metadata: Mapping[str, Any]) -> bool:
    """True when the header contradicts the pediatric-film classifier: it gives an adult age, or an imaged field of
    at least :data:`ADULT_FIELD_MM` on both sides. Only the header can clear that flag; it never raises it."""
    if metadata.get("age_group") == "adult":
        return True
    field = metadata.get("field_mm")
    return field is not None and min(field) >= ADULT_FIELD_MM


def feature_warning(score: float, reference: FeatureReference) -> str | None:
    """The warning for a feature-distance score above the reference's threshold, else ``None``."""
    if not np.isfinite(score) or score <= reference.threshold:
        return None
    return ("This image is unlike the adult frontal chest radiographs the model was trained on (its features lie "
            f"far from theirs: score {score:.1f}, flagged above {reference.threshold:.1f}); treat every output "
            "with extra caution.")


#: Starts of the decoder's notes that are about the file, not the patient's image (how it was decoded): shown once,
#: as technical file notes, apart from the clinical warnings.
TECHNICAL_NOTE_STARTS = ("old ACR-NEMA file", "the file says MONOCHROME", "colour DICOM", "multi-frame",
                         "VOI LUT in the file", "window in the file", "transparency ignored")


def is_technical_note(note: str) -> bool:
    """True for a decoder note about the file itself (see :data:`TECHNICAL_NOTE_STARTS`)."""
    return note.startswith(TECHNICAL_NOTE_STARTS)


@dataclass(frozen=True)
class PopulationCheck:
    """A check that found the image outside the training population (adult frontal chest radiographs).

    Attributes:
        name: Which check fired, in a few words (``"view"``, ``"patient age"``, ``"body part"``,
            ``"looks like a child's film"``, ``"feature distance"``): the reason no label is called.
        message: The warning shown to the reader.
    """

    name: str
    message: str


def population_checks(metadata: Any, distance: tuple[float, FeatureReference] | None = None,
                      population: tuple[float, PopulationClassifier] | None = None) -> list[PopulationCheck]:
    """The population checks that fire for one image, in order: the header (view, age band, body part), the
    pediatric-film classifier (unless the header gives an adult age or an adult-sized field:
    :func:`header_rules_out_child`), the feature distance. Any of them means the model's outputs do not apply."""
    data = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
    out = []
    view = str(data.get("view_position") or "").upper()
    for warning in header_warnings(data):
        out.append(PopulationCheck("view" if view in NON_FRONTAL_VIEWS and view in warning else "patient age",
                                   warning))
    body = data.get("body_part")
    if body is not None and str(body).upper() not in CHEST_BODY_PARTS:
        out.append(PopulationCheck("body part", f"The file says the body part is {body}, not the chest; the models "
                                                "read chest radiographs only."))
    if (population is not None and (message := population_warning(*population))
            and not header_rules_out_child(data)):
        out.append(PopulationCheck("looks like a child's film", message))
    if distance is not None and (message := feature_warning(*distance)):
        out.append(PopulationCheck("feature distance", message))
    return out


def image_warnings(metadata: Any, shape: tuple[int, ...], input_size: int,
                   distance: tuple[float, FeatureReference] | None = None,
                   population: tuple[float, PopulationClassifier] | None = None,
                   checks: list[PopulationCheck] | None = None) -> list[str]:
    """Every clinical warning for one analysed image, in order: the decoder's notes (technical file notes left out:
    see :func:`is_technical_note`), what the header says,
    an image smaller than the model's input, then the two feature checks (``checks``: from
    :func:`population_checks`, computed here when not given)."""
    if checks is None:
        checks = population_checks(metadata, distance, population)
    header = [c.message for c in checks if c.name in ("view", "patient age")]
    features = [c.message for c in checks if c.name in ("looks like a child's film", "feature distance")]
    out = [w for w in metadata.warnings if not is_technical_note(w)]
    out += [w for w in header if w not in out]
    if min(shape) < input_size:
        out.append(f"The image ({shape[1]} x {shape[0]} px) is smaller than this model's {input_size} px input and "
                   "was enlarged: fine detail the model expects is missing.")
    out += features
    return [w for w in out if w]
