"""The model card: what a weights file is, how it was made and how well it does, as one validated JSON file.

This module and :mod:`core.card_sections` are the only places that know the card's schema. :class:`ModelCard`
reads (:meth:`ModelCard.read`), validates (:meth:`ModelCard.from_dict`, :meth:`ModelCard.check_against`) and writes
(:meth:`ModelCard.write`) ``weights/<variant>.json``; every section is a typed record, so everything else
(registry, inference, evaluation, dashboard, reports) reads typed attributes instead of digging in dicts.

Schema (keys of the JSON object, the record that types each):

* ``variant``, ``created``, ``reproduce``, ``intended_use``, ``limitations``: strings;
* ``model`` (:class:`~core.card_sections.ModelInfo`: the :class:`core.model.ModelConfig` stored in the weights
  file), ``taxonomy`` (:class:`~core.card_sections.TaxonomyInfo`), ``preprocessing`` (the input contract,
  :class:`~core.card_sections.PreprocessingInfo`), ``loss`` (:class:`~core.card_sections.LossInfo`), ``training``
  (:class:`~core.card_sections.TrainingInfo`), ``data`` (:class:`~core.card_sections.DataInfo`: split sizes,
  sources, attribution), ``metrics`` (split -> :class:`~core.card_sections.SplitMetrics`, what
  :func:`core.metrics.evaluate_predictions` returns): objects;
* ``penalty_table``: one :class:`~core.card_sections.PenaltyRow` per edge;
* ``calibration``: ``null`` or a :class:`Calibration`: one positive ``temperature`` per output, ``applied``,
  ``method``, ``fitted_on`` and ECE figures (see :mod:`core.calibration`);
* optional: ``plots`` (file names next to the card), ``training_positives`` (label -> known positive training
  images), ``labels_not_learnt`` (labels with too few training positives to learn, with
  ``labels_not_learnt_rule``), ``operating_points`` (label -> :class:`OperatingPoint`), ``ood``
  (:class:`~core.card_sections.OODInfo`), ``tensor_sha256`` (hash of the model tensors: two variants with the same
  hash are the same model), ``cross_validation`` (:class:`~core.card_sections.CrossValidationInfo`), ``aliases``
  (other names of the same model), ``call_rule`` and ``call_evidence`` (:class:`core.calls.CallRule`,
  :class:`core.calls.CallEvidence`: the rule that decides calls and its per-label inputs from held-out images).

Unknown keys are kept (``unknown``, at the top and in every section) and written back, so a newer card survives a
round trip through older code.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from core.calls import CallEvidence, CallRule
from core.card_sections import (
    CrossValidationInfo,
    DataInfo,
    ImportedInfo,
    LossInfo,
    ModelInfo,
    OODInfo,
    PenaltyRow,
    PointingInfo,
    PreprocessingInfo,
    SplitMetrics,
    TaxonomyInfo,
    TrainingInfo,
)
from core.contract import InputContract
from core.record import Record, RecordError, omitted_when_empty, optional

INTENDED_USE = (
    "Research use only; not a medical device. For studying hierarchical multi-label chest X-ray classification "
    "and for demonstrating the HiCXR dashboard. Not for diagnosis, triage, screening or any clinical decision."
)
#: Sections that must be JSON objects when present (a minimal card with only ``variant`` is valid: the weights
#: file's header carries the model contract, and a missing section reads as "not reported").
OBJECTS = ("model", "taxonomy", "preprocessing", "loss", "training", "data", "metrics")
STRINGS = ("variant", "created", "reproduce", "intended_use", "limitations")


class CardError(RecordError):
    """A model card is missing, unreadable or malformed, or contradicts its weights (the message says which)."""


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN/inf replaced by ``None`` and NumPy values by Python ones, so it is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as strict, indented JSON (NaN -> null) to ``path``, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(data), indent=1, allow_nan=False), encoding="utf-8")
    return path


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class Calibration:
    """Per-output temperatures that divide the logits before the sigmoid, and how they were fitted.

    Attributes:
        temperature: One positive temperature per output, in output order.
        applied: Whether inference uses them (``False`` keeps them for the record only).
        method: How they were fitted (e.g. one shared temperature with per-label shrinkage).
        fitted_on: Which data they were fitted on.
        shared_temperature: The shared value every label is shrunk towards (``None`` for older cards).
        details: ECE before/after and other figures of the fit.
    """

    temperature: tuple[float, ...]
    applied: bool
    method: str = "per-label temperature"
    fitted_on: str = ""
    shared_temperature: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_shared(self) -> dict[str, str]:
        """Label -> why it kept the shared temperature (labels not listed were fitted)."""
        kept = self.details.get("kept_shared")
        return {str(k): str(v) for k, v in kept.items()} if isinstance(kept, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """The card's ``calibration`` object."""
        return {"temperature": [round(float(t), 5) for t in self.temperature], "applied": self.applied,
                "method": self.method, "fitted_on": self.fitted_on, "shared_temperature": self.shared_temperature,
                **self.details}

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration") -> Calibration | None:
        """Parse and validate a ``calibration`` object (``None`` stays ``None``); ``where`` names it in errors."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise CardError(f"{where} must be an object or null")
        temps = data.get("temperature")
        if not isinstance(temps, list) or not temps:
            raise CardError(f"{where}.temperature must be a list of numbers")
        values = [finite(t) for t in temps]
        bad = [t for t, v in zip(temps, values, strict=True) if v is None or v <= 0]
        if bad:
            raise CardError(f"{where}.temperature must be positive numbers, got {bad[0]!r}")
        known = {"temperature", "applied", "method", "fitted_on", "shared_temperature"}
        return cls(temperature=tuple(values), applied=bool(data.get("applied")),
                   method=str(data.get("method") or "per-label temperature"), fitted_on=str(data.get("fitted_on", "")),
                   shared_temperature=finite(data.get("shared_temperature")),
                   details={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class OperatingPoint:
    """The probability at or above which the model calls a label positive, and how it performs there.

    Attributes:
        threshold: Displayed (calibrated) probability of the operating point.
        target_sensitivity: The sensitivity the threshold was chosen to reach.
        sensitivity: Sensitivity reached on the held-out data the threshold was set on.
        specificity: Specificity there.
        positives: Known positives in that data.
        negatives: Known negatives in that data.
    """

    threshold: float
    target_sensitivity: float
    sensitivity: float
    specificity: float
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {"threshold": round(self.threshold, 6), "target_sensitivity": self.target_sensitivity,
                "sensitivity": round(self.sensitivity, 4), "specificity": round(self.specificity, 4),
                "positives": self.positives, "negatives": self.negatives}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> OperatingPoint:
        """Parse one operating point; :class:`CardError` names the label on a bad value."""
        if not isinstance(data, dict):
            raise CardError(f"{where} must be an object")
        threshold = finite(data.get("threshold"))
        if threshold is None or not 0.0 <= threshold <= 1.0:
            raise CardError(f"{where}.threshold must be a probability, got {data.get('threshold')!r}")
        return cls(threshold=threshold, target_sensitivity=finite(data.get("target_sensitivity")) or 0.0,
                   sensitivity=finite(data.get("sensitivity")) or 0.0,
                   specificity=finite(data.get("specificity")) or 0.0,
                   positives=int(data.get("positives") or 0), negatives=int(data.get("negatives") or 0))


@dataclass
class ModelCard(Record):
    """A parsed, validated model card (see the module docstring for the JSON schema): one typed field per section.

    Keys this code does not know are kept in ``unknown`` (also readable as ``extra``) and written back.
    """

    variant: str
    created: str = field(default_factory=lambda: dt.date.today().isoformat())
    model: ModelInfo = field(default_factory=ModelInfo)
    taxonomy: TaxonomyInfo = field(default_factory=TaxonomyInfo)
    preprocessing: PreprocessingInfo = field(default_factory=PreprocessingInfo)
    loss: LossInfo = field(default_factory=LossInfo)
    penalty_table: list[PenaltyRow] = field(default_factory=list)
    calibration: Calibration | None = None
    training: TrainingInfo = field(default_factory=TrainingInfo)
    data: DataInfo = field(default_factory=DataInfo)
    metrics: dict[str, SplitMetrics] = field(default_factory=dict)
    reproduce: str = ""
    intended_use: str = INTENDED_USE
    limitations: str = ""
    training_positives: dict[str, int] = field(default_factory=dict)
    labels_not_learnt: list[str] = field(default_factory=list)
    labels_not_learnt_rule: str = ""
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    ood: OODInfo | None = None
    tensor_sha256: str | None = None
    cross_validation: CrossValidationInfo | None = None
    plots: dict[str, str] = omitted_when_empty(dict)
    aliases: list[str] = omitted_when_empty(list)
    #: The rule that decides calls and its per-label inputs measured on held-out images (:mod:`core.calls`).
    call_rule: CallRule | None = optional()
    call_evidence: CallEvidence | None = optional()
    pointing: PointingInfo | None = optional()
    imported: ImportedInfo | None = optional()

    # ------------------------------------------------------------------------------------------ parsing

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card") -> ModelCard:
        """Validate plain data and build the card.

        Raises:
            CardError: not an object, a required key missing or of the wrong type, a bad calibration or
                operating point (the message names the key).
        """
        if not isinstance(data, dict):
            raise CardError(f"{source}: model card must be a JSON object, got {type(data).__name__}")
        if "variant" not in data:
            raise CardError(f"{source}: model card lacks 'variant'")
        for key in OBJECTS:
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise CardError(f"{source}: {key!r} must be an object")
        for key in STRINGS:
            if key in data and data[key] is not None and not isinstance(data[key], str):
                raise CardError(f"{source}: {key!r} must be a string")
        for key, kind in (("penalty_table", list), ("plots", dict), ("training_positives", dict),
                          ("labels_not_learnt", list), ("operating_points", dict), ("ood", dict),
                          ("cross_validation", dict), ("aliases", list)):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise CardError(f"{source}: {key!r} must be {'a list' if kind is list else 'an object'}")
        # A missing or null value reads as "not reported" (an empty string for the free texts).
        data = {k: v for k, v in data.items() if v is not None or k in ("calibration", "ood", "cross_validation",
                                                                        "tensor_sha256")}
        data.setdefault("created", "")
        if not data.get("intended_use"):
            data.pop("intended_use", None)
        try:
            return super().from_dict(data, f"{source}:")
        except RecordError as exc:
            raise CardError(str(exc)) from None

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read and validate a card file; :class:`CardError` if it is missing, not UTF-8 JSON or malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CardError(f"{path.name}: model card not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CardError(f"{path.name}: model card cannot be read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"{path.name}: model card is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_dict(data, path.name)

    def write(self, path: str | Path) -> Path:
        """Write the card as strict JSON to ``path``."""
        return write_json(self.to_dict(), path)

    @property
    def extra(self) -> dict[str, Any]:
        """The top-level keys this code does not know (kept for the round trip)."""
        return self.unknown

    def check_against(self, config: Any, source: str) -> None:
        """Check what inference relies on against the weights file's :class:`~core.model.ModelConfig`.

        Raises:
            CardError: ``variant`` differs from the file name, ``preprocessing`` contradicts the weights file, or
                the calibration does not give one temperature per output.
        """
        name = Path(source).stem
        if self.variant != name:
            raise CardError(f"{source}: card says variant {self.variant!r} but the file is named {name!r}")
        for key in (f.name for f in fields(InputContract)):
            stated = getattr(self.preprocessing, key)
            if stated is not None and not _same(stated, getattr(config, key)):
                raise CardError(f"{source}: preprocessing.{key} = {stated!r} but the weights file "
                                f"says {getattr(config, key)!r}")
        crop = self.preprocessing.crop
        if crop is not None and crop != getattr(config, "crop", "none"):
            raise CardError(f"{source}: preprocessing.crop = {crop!r} but the weights file says {config.crop!r}")
        n = len(config.labels)
        if self.calibration is not None and len(self.calibration.temperature) != n:
            raise CardError(f"{source}: calibration.temperature must list {n} numbers, got "
                            f"{len(self.calibration.temperature)}")
        unknown = [label for label in self.operating_points if label not in config.labels]
        if unknown:
            raise CardError(f"{source}: operating_points names unknown label(s) {unknown}")

    # ---------------------------------------------------------------------------------------- accessors

    def temperature(self) -> np.ndarray | None:
        """The temperatures inference divides logits by, or ``None`` when calibration is absent or not applied."""
        if self.calibration is None or not self.calibration.applied:
            return None
        return np.asarray(self.calibration.temperature, dtype=np.float32)

    def split_metrics(self, split: str = "test") -> SplitMetrics:
        """``metrics[split]`` (an :func:`core.metrics.evaluate_predictions` result; empty when not reported)."""
        return self.metrics.get(split) or SplitMetrics()

    def macro_auroc(self, split: str = "test") -> float | None:
        """Macro AUROC on ``split`` if reported."""
        return finite(self.split_metrics(split).macro_auroc)

    def per_label_auroc(self, labels: list[str], split: str = "test") -> dict[str, float | None]:
        """AUROC of every label on ``split`` (``None`` where undefined or not reported)."""
        metrics = self.split_metrics(split)
        return {label: finite(metrics.label(label).auroc) for label in labels}

    def per_label_positives(self, labels: list[str], split: str = "test") -> dict[str, int | None]:
        """Known positives of every label on ``split`` (``None`` where not reported): how much an AUROC rests on."""
        metrics = self.split_metrics(split)
        return {label: metrics.label(label).positives for label in labels}

    def learnt(self, label: str) -> bool:
        """False for a label the card lists under ``labels_not_learnt``."""
        return label not in self.labels_not_learnt

    @property
    def attribution(self) -> str:
        """The attribution the training data requires: ``data.attribution``, then that of every source its backbone
        was pretrained on (``training.pretraining``), since those images shaped the weights too."""
        parts = [self.data.attribution]
        if self.training.pretraining is not None:
            parts += [f"Pretraining data ({s.name}): {s.attribution}" for s in self.training.pretraining.sources
                      if s.attribution]
        return " ".join(p for p in parts if p)

    @property
    def loss_name(self) -> str:
        """``hbce`` or ``mcloss`` (older cards: ``hbce``)."""
        return self.loss.loss_name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b
