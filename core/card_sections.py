"""The model card's sections, one typed record each (the card itself is :class:`core.card.ModelCard`).

Each section is a :class:`core.record.Record`: read from its JSON object by type, with the keys it does not know
kept for the round trip. A field that is ``None`` was not reported. Adding a section: one record here (or next to
the code that computes it), one field of :class:`~core.card.ModelCard`, and its test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.record import Record, keyed, omitted_when_empty, optional


@dataclass
class ModelInfo(Record):
    """``model``: the weights file's :class:`core.model.ModelConfig` as stored (the contract and architecture)."""

    labels: list[str] = field(default_factory=list)
    taxonomy_hash: str | None = None
    backbone: str | None = None
    input_size: int | None = None
    in_channels: int | None = None
    mean: float | None = None
    std: float | None = None
    dropout: float | None = None
    output_stride: int | None = None
    constraint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cam_grid(self) -> str:
        """The side of the CAM grid, ``"8 x 8"`` (``"?"`` when not reported)."""
        stride = self.output_stride or 32
        if not self.input_size:
            return "?"
        side = self.input_size // stride
        return f"{side} x {side}"


@dataclass
class PreprocessingInfo(Record):
    """``preprocessing``: the input contract (checked against the weights file) and how images are resized."""

    input_size: int | None = None
    in_channels: int | None = None
    mean: float | None = None
    std: float | None = None
    resize: str | None = None
    input: str | None = None
    crop: str | None = optional()


@dataclass
class TaxonomyInfo(Record):
    """``taxonomy``: name, hash and edges (parent -> children) of the taxonomy the outputs follow."""

    name: str | None = None
    hash: str | None = None
    edges: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class LossInfo(Record):
    """``loss``: which loss trained the model (the one place that describes it in words, :meth:`describe`).

    Attributes:
        name: ``hbce`` (BCE + hierarchical penalty) or ``mcloss`` (C-HMCNN); older cards: not reported (hbce).
        lam: The penalty weight λ (JSON key ``lambda``); 0 for plain BCE.
        penalty_source: ``none``, ``fixed`` or ``data_driven``.
        violation: ``hard`` (the paper's step) or ``soft`` (``relu(p_child - p_parent)``).
        fixed_value: The fixed penalty, for ``penalty_source: fixed``.
        constraint: The model's output constraint (``max`` for C-HMCNN).
        source_prior_strength: Set when each training source's label prior was taken out of the loss
            (``loss.source_offsets``, :mod:`core.source_prior`): its pseudo-count strength. None: not used.
    """

    name: str | None = None
    lam: float | None = keyed("lambda")
    penalty_source: str | None = None
    violation: str | None = None
    fixed_value: float | None = None
    constraint: str | None = None
    source_prior_strength: float | None = optional()

    @property
    def loss_name(self) -> str:
        """``hbce`` or ``mcloss`` (older cards: ``hbce``)."""
        return self.name or "hbce"

    @property
    def reported(self) -> bool:
        """Whether the card says anything about its loss."""
        return any(v is not None for v in (self.name, self.lam, self.penalty_source, self.violation))

    def describe(self) -> str:
        """One line for pickers, the model card and reports."""
        return self._describe_loss() + self._describe_priors()

    def _describe_loss(self) -> str:
        if self.loss_name == "mcloss":
            return "C-HMCNN: max-constraint module + MCLoss (coherent by construction)"
        if not self.reported:
            return "not reported"
        if self.penalty_source == "none":
            return "plain BCE (λ = 0)"
        lam = "?" if self.lam is None else f"{self.lam:g}"
        return f"BCE + {self.violation or '?'} penalty, {self.penalty_source or '?'}, λ = {lam}"

    def _describe_priors(self) -> str:
        if self.source_prior_strength is None:
            return ""
        return f"; each image source's label prior taken out in training (strength {self.source_prior_strength:g})"


@dataclass
class PenaltyRow(Record):
    """One row of ``penalty_table``: an edge, its counts on the training labels and its penalty ``P_pc``."""

    parent: str = ""
    child: str = ""
    n_parent_negative: int | None = None
    n_inconsistent: int | None = None
    penalty: float | None = None


@dataclass
class PretrainingSource(Record):
    """One image source of a pretraining run: its name, the half of its patients used, its attribution."""

    name: str = ""
    patient_half: int | None = None
    attribution: str = ""


# How ``pretrain.py``'s methods read in a sentence: ``both`` trains NT-Xent and the supervised heads together.
_METHOD_WORDS = {"supervised": "supervised", "simclr": "SimCLR", "both": "SimCLR + supervised"}


@dataclass
class PretrainingInfo(Record):
    """``training.pretraining``: the backbone a model started from (``model.pretrained``) and how it was made.

    ``sha256`` is the hash of the backbone file, so the weights can be traced to one pretraining run; the run's
    facts (``run`` ... ``sources``) come from the ``config.yaml`` and ``metrics.csv`` beside it (``pretrain.py``)
    and are absent for a backbone from elsewhere.
    """

    backbone: str = ""
    sha256: str | None = optional()
    run: str | None = optional()
    method: str | None = optional()
    epochs: int | None = optional()
    holdout_accuracy: float | None = optional()
    sources: list[PretrainingSource] = omitted_when_empty(list)

    def describe(self) -> str:
        """One line for people: method, sources (with the patient half), epochs, held-out accuracy."""
        if not self.run:
            return f"backbone {self.backbone}" + (f" (sha256 {self.sha256[:12]})" if self.sha256 else "")
        names = ", ".join(s.name + ("" if s.patient_half is None else f" (patient half {s.patient_half})")
                          for s in self.sources)
        method = _METHOD_WORDS.get(self.method or "", self.method or "?")
        text = f"{method} pretraining on {names or '?'}, {self.epochs if self.epochs else '?'} epochs"
        if self.holdout_accuracy is not None:
            text += f", held-out accuracy {self.holdout_accuracy:.3f}"
        return text + (f" (backbone sha256 {self.sha256[:12]})" if self.sha256 else "")


@dataclass
class TrainingInfo(Record):
    """``training``: the resolved config and facts of the run; ``pretraining`` when it started from a backbone."""

    config: dict[str, Any] = field(default_factory=dict)
    epochs_run: int | None = optional()
    best_epoch: int | None = optional()
    best_val_macro_auroc: float | None = optional()
    monitored_val_labels: list[str] | None = optional()
    seconds: float | None = optional()
    pretraining: PretrainingInfo | None = optional()


@dataclass
class DataSource(Record):
    """One source of training data and what its licence asks."""

    name: str = ""
    url: str = ""
    licence: str = ""
    citation: str = ""


@dataclass
class DataInfo(Record):
    """``data``: split sizes, sources and the attribution the data requires."""

    train_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    trained_on: str | None = None
    sources: list[DataSource] = field(default_factory=list)
    attribution: str = ""


@dataclass
class LabelMetrics(Record):
    """One label's figures on a split (``None``: undefined, e.g. one class only, or not reported)."""

    auroc: float | None = None
    auroc_ci: list[float] | None = None
    average_precision: float | None = None
    ece: float | None = None
    positives: int | None = None
    known: int | None = None


@dataclass
class MeasuredPoint(Record):
    """An operating point (set on held-out data) as measured on another split."""

    sensitivity: float | None = None
    specificity: float | None = None
    positives: int | None = None
    negatives: int | None = None


@dataclass
class SplitMetrics(Record):
    """``metrics.<split>``: what :func:`core.metrics.evaluate_predictions` measured on one split."""

    n_images: int | None = None
    per_label: dict[str, LabelMetrics] = field(default_factory=dict)
    macro_auroc: float | None = None
    macro_auroc_ci: list[float] | None = None
    macro_auroc_chexpert: float | None = None
    weighted_auroc: float | None = None
    macro_ap: float | None = None
    ece: float | None = None
    violation_rate: float | None = None
    temperature_applied: bool | None = optional()
    operating_points: dict[str, MeasuredPoint] | None = optional()

    def label(self, name: str) -> LabelMetrics:
        """The figures of label ``name`` (all ``None`` when not reported)."""
        return self.per_label.get(name) or LabelMetrics()


#: The image sets ``ood.measured`` holds (:mod:`core.card_evidence`): what each is, and whether its films are adults'
#: (a flag is a false alarm) or children's (a flag is a detection).
MEASURED_SETS: dict[str, tuple[str, bool]] = {
    "nih_test": ("NIH test split", True),
    "dicom_adult": ("adult DICOM films (other scanners)", True),
    "covid": ("COVID-19 collection, patients not used to fit the check", True),
    "shenzhen": ("Shenzhen, patients not used to fit the check", True),
    "kermany_heldout": ("children aged 1-5 (Kermany), patients not used to fit the check", False),
}


@dataclass
class OODInfo(Record):
    """``ood``: the out-of-distribution rule (:mod:`core.ood`), its thresholds and what it flags."""

    method: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    training_quantile: float | None = None
    target_false_alarm: float | None = None
    reference_images: int | None = None
    header_rules: str | None = None
    population_classifier: str | None = None
    population_threshold: float | None = None
    population_target_false_alarm: float | None = None
    population_flagged_heldout_outliers: float | None = None
    population_heldout_outliers: int | None = None
    population_flagged_outliers_cv: float | None = None
    #: False alarms on the adult films of other collections that did not fit it (``eval.ood_adults_*``).
    population_flagged_heldout_adults: float | None = None
    population_heldout_adults: int | None = None
    test_flagged_distance: float | None = None
    test_flagged_population: float | None = None
    test_flagged: float | None = None
    #: Image set -> ``images`` and the share flagged by each check (``header``, ``distance``, ``population``,
    #: ``any``): false alarms on adult films, detection on held-out pediatric films (``python -m core.card_evidence``).
    measured: dict[str, dict[str, float]] = omitted_when_empty(dict)


@dataclass
class CrossValidationInfo(Record):
    """``cross_validation``: the summary of the cross-validation that chose the epoch (:mod:`core.crossval`)."""

    folds: int | None = None
    images: int | None = None
    chosen_epoch: int | None = None
    cv_macro_auroc_mean: float | None = None
    cv_macro_auroc_std: float | None = None
    cv_fold_macro_auroc: list[float | None] = field(default_factory=list)
    oof_macro_auroc: float | None = None
    oof_per_label_auroc: dict[str, float | None] = field(default_factory=dict)
    rule: str | None = None


@dataclass
class PointingCounts(Record):
    """Pointing-game counts of one split or label: (image, finding) pairs, map hits, centre hits."""

    pairs: int = 0
    hits: int = 0
    centre_hits: int = 0


@dataclass
class PointingInfo(Record):
    """``pointing``: the pointing game of the model's maps against NIH's radiologist boxes (:mod:`core.pointing`).

    ``rate`` is the share of (image, finding) pairs whose map maximum lies inside a box of that finding;
    ``centre_rate`` the same for a pointer always at the image centre, ``random_rate`` the expected share for a
    uniformly random point.
    """

    method: str | None = None
    command: str | None = None
    pairs: int | None = None
    images: int | None = None
    hits: int | None = None
    rate: float | None = None
    centre_hits: int | None = None
    centre_rate: float | None = None
    random_rate: float | None = None
    relative_maps: int | None = None
    skipped_not_learnt: int | None = None
    by_split: dict[str, PointingCounts] = field(default_factory=dict)
    by_label: dict[str, PointingCounts] = field(default_factory=dict)


@dataclass
class LabelSourceRow(Record):
    """One row of an imported model's label map: the label, how it is obtained, from which outputs."""

    label: str = ""
    kind: str = ""
    outputs: list[str] = field(default_factory=list)


@dataclass
class ImportedInfo(Record):
    """``imported``: where an imported model came from and how its outputs map (:mod:`core.import_model`)."""

    source: str | None = None
    weights: str | None = None
    url: str | None = None
    torchxrayvision_version: str | None = None
    randomly_initialised: bool = False
    weights_file: str | None = None
    label_map: list[LabelSourceRow] = field(default_factory=list)
    dropped_outputs: list[str] = field(default_factory=list)
    nih_only_dropped: list[str] = field(default_factory=list)
