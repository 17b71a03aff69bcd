"""One training configuration: nested dataclasses loaded from YAML, with ``--set key.sub=value`` overrides.

A config file is a mapping with the sections ``data``, ``model``, ``loss``, ``optim``, ``train`` and ``eval`` (all
optional; every field has a default) plus ``name``. ``base:`` names another YAML file (relative to the one that
names it) whose values are read first and then overridden key by key, so variants share one base file.

Relative paths in ``data.csv``, ``data.images`` and ``train.out_dir`` are resolved against the repository root,
not the working directory, so ``python train.py`` behaves the same from anywhere. Unknown keys, wrong types and
values outside a field's allowed set are refused with a message naming the key and the file.

The resolved config (after ``base`` and overrides) is saved as ``config.yaml`` next to the checkpoints and stored
in the model card, so every run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.contract import CONSTRAINTS, MIN_INPUT_SIZE, OUTPUT_STRIDES, Architecture
from core.errors import HiCXRError

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Default memory the uint8 image cache may take (all splits together); above it images are streamed.
DEFAULT_CACHE_BUDGET_MB = 4096.0


class ConfigError(HiCXRError, ValueError):
    """A config file or override is invalid: unknown key, wrong type, bad value or missing file."""


@dataclass
class AugmentConfig:
    """Training-time augmentation of radiographs (never applied to validation or test).

    No vertical flips ever; horizontal flips are off by default because chest anatomy is lateralised (heart on
    the left, situs), and a flipped film is a different, rarer anatomy.
    """

    enabled: bool = True
    rotation: float = 7.0
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.1
    hflip: bool = False
    degrade: float = 0.0
    degrade_min_scale: float = 0.35


@dataclass
class DataConfig:
    """Where the labels and images are, how to split them, and whether images are cached or streamed.

    ``format`` is ``nih``, ``chexpert``, ``mimic`` (MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-chexpert.csv``, with the
    metadata and split files found beside it) or ``auto`` (from the table's columns). ``official_split`` uses a
    dataset's own split files when they are found (CheXpert ``valid.csv``, NIH ``train_val_list.txt`` and
    ``test_list.txt``, MIMIC ``mimic-cxr-2.0.0-split.csv``). ``views`` keeps ``frontal`` (PA/AP) images only, or
    ``all``; ``auto`` is frontal for MIMIC and all for the others. ``cache`` keeps decoded images as uint8 only
    while they fit ``cache_budget_mb`` (all splits together); otherwise they are streamed by ``num_workers``
    DataLoader workers. ``jpeg_draft`` lets large JPEGs decode at a reduced scale (a power of 2, never below
    the input size) before the resize.
    """

    csv: str = ""
    images: str = ""
    format: str = "auto"
    uncertainty_policy: str = "U-Ones"
    blank: str = "zero"
    abnormal_rule: str = "not_no_finding"
    split_column: str = "split"
    patient_column: str = "Patient ID"
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_salt: str = "hicxr"
    cache: bool = True
    on_error: str = "raise"
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sources: list[dict[str, str]] = field(default_factory=list)
    attribution: str = ""
    limitations: str = ""
    cv_folds: int = 0
    cv_fold: int = 0
    fit_on: str = "train"
    views: str = "auto"
    official_split: bool = True
    cache_budget_mb: float = DEFAULT_CACHE_BUDGET_MB
    jpeg_draft: bool = False
    # Rows whose ``source_column`` value is listed are left out of every split: e.g. the copies the NIH data grew by
    # on 2026-12-01, to rebuild a card of a model trained before on exactly the data it trained on.
    exclude_sources: list[str] = field(default_factory=list)
    # Rows whose ``source_column`` value is listed are never trained on but still scored: they keep their split and
    # CV fold (so two CVs with and without this hold out the same images) and are dropped from ``train`` only.
    # For a source whose selection ties its look to its labels (a folder sampled half No Finding, half Pneumonia).
    untrained_sources: list[str] = field(default_factory=list)
    source_column: str = "source_repo"


@dataclass
class ModelSection(Architecture):
    """Architecture and input contract (becomes :class:`core.model.ModelConfig`; both take their fields and
    defaults from :class:`core.contract.Architecture`), plus an optional pretrained backbone."""

    pretrained: str | None = None


@dataclass
class LossConfig:
    """The loss: ``hbce`` with ``penalty`` none (plain BCE), fixed or data_driven and ``violation`` hard or soft;
    or ``mcloss``, C-HMCNN's max-constraint loss (needs ``model.constraint: max``).

    ``source_offsets``: add each training image's source prior to its logits inside the loss (per-source logit
    adjustment, :mod:`core.source_prior`; sources from ``data.source_column``), shrunk towards the pooled prior by
    ``source_prior_strength`` pseudo-counts. Training only: inference never adds an offset."""

    name: str = "hbce"
    penalty: str = "data_driven"
    violation: str = "soft"
    lam: float = 1.0
    fixed_value: float = 0.5
    alpha: float = 1.0
    source_offsets: bool = False
    source_prior_strength: float = 50.0


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """Loop settings: epochs, batch size, early stopping, seeds, devices, output folder."""

    epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int = 64
    patience: int = 6
    min_val_positives: int = 5
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    threads: int | None = None
    out_dir: str = "runs"
    stop_after_epochs: int | None = None  # end this invocation early (time-sliced CPU use); continue with --resume
    keep_epoch: int | None = None  # stop at this epoch and keep its weights (no early stopping), e.g. chosen by CV
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    mixup: float = 0.0  # > 0: mixup with Beta(alpha, alpha) mixing weights
    channels_last: bool = True  # NHWC convolutions (faster on CPU oneDNN and on CUDA)
    save_val_logits: bool = False  # write each epoch's validation logits (cross-validation uses them)


@dataclass
class EvalConfig:
    """Final evaluation for the model card."""

    n_boot: int = 1000
    boot_seed: int = 0
    calibrate: bool = True
    target_sensitivity: float = 0.8  # operating point of each label: the threshold reaching this sensitivity
    min_train_positives: int = 10  # a label with fewer known positive training images is "not learnt"
    ood_false_alarm: float = 0.05  # share of held-out NIH films the out-of-distribution check may flag
    ood_components: int = 32  # principal directions of the training features kept by the reference
    # Outlier exposure: radiographs of another population (children) to fit the population classifier on; half of
    # their patients are kept to measure it. Empty csv: no population classifier.
    ood_outliers_csv: str = ""
    ood_outliers_images: str = ""
    ood_outliers_path_column: str = "file"
    ood_outliers_patient_column: str = "patient_id"
    ood_outliers_max: int = 1000
    ood_population_false_alarm: float = 0.025
    # Adult films of other collections (same path and patient columns as the outlier table): half of their patients
    # (the same hash) join the training images on the adult side of the population classifier, the other half
    # measure its false alarms. Empty csv: the training images alone.
    ood_adults_csv: str = ""
    ood_adults_images: str = ""


@dataclass
class Config:
    """The whole configuration of one training run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what ``config.yaml`` and the model card hold)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    def run_dir(self) -> Path:
        """``<train.out_dir>/<name>``: where config.yaml, metrics.csv and checkpoints go."""
        return resolve_path(self.train.out_dir) / self.name


#: Allowed values of string fields, checked by :func:`validate`.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("auto", "nih", "chexpert", "mimic"),
    "data.views": ("auto", "frontal", "all"),
    "data.uncertainty_policy": ("U-Ones", "U-Zeros", "U-Ignore"),
    "data.blank": ("zero", "unknown"),
    "data.abnormal_rule": ("not_no_finding", "any_child"),
    "data.on_error": ("raise", "skip"),
    "data.fit_on": ("train", "train+val"),
    "model.constraint": CONSTRAINTS,
    "loss.name": ("hbce", "mcloss"),
    "loss.penalty": ("none", "fixed", "data_driven"),
    "loss.violation": ("hard", "soft"),
    "optim.name": ("adamw", "adam"),
    "optim.schedule": ("cosine", "plateau", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
}


def resolve_path(path: str | Path) -> Path:
    """A config path as an absolute path: relative ones are taken from the repository root, not the CWD."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to ``annotation`` where that is lossless (int -> float), else raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: bad value {value!r}")
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the number it obviously is.
        try:
            return float(value)
        except ValueError:
            pass
    if expected in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{source}: {key} must be {getattr(expected, '__name__', expected)}, got {value!r}")
    return value


def build_dataclass(cls: type, values: dict[str, Any], prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix or 'the config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        where = f"section {prefix!r}" if prefix else "the top level"
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(prefix + '.' + k if prefix else k) for k in unknown)} "
            f"in {where}; known: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value or {}, key, source)
        else:
            kwargs[name] = _check_type(value, hint, key, source)
    return cls(**kwargs)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "split_fractions":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, following ``base:`` (relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None) or data.pop("inherit", None)
    if base is None:
        return data
    return _deep_merge(read_yaml(path.parent / str(base), seen + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> ``(["optim", "lr"], 0.001)``; the value is parsed as YAML (typed)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a plain config mapping (returns a new mapping)."""
    data = _deep_merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(config: Config, source: str = "config") -> Config:
    """Check value ranges and choices; raises :class:`ConfigError` naming the key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r}; expected one of {', '.join(allowed)}")
    positive = {
        "model.input_size": config.model.input_size, "train.batch_size": config.train.batch_size,
        "train.eval_batch_size": config.train.eval_batch_size, "optim.lr": config.optim.lr,
        "model.std": config.model.std,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{source}: {key} must be > 0, got {value!r}")
    if config.model.input_size < MIN_INPUT_SIZE:
        raise ConfigError(f"{source}: model.input_size must be >= {MIN_INPUT_SIZE} (DenseNet121 downsamples by 32)")
    if config.train.epochs < 0 or config.train.patience < 1:
        raise ConfigError(f"{source}: train.epochs must be >= 0 and train.patience >= 1")
    if config.model.output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"{source}: model.output_stride must be one of {OUTPUT_STRIDES}, got "
                          f"{config.model.output_stride}")
    if (config.loss.name == "mcloss") != (config.model.constraint == "max"):
        raise ConfigError(f"{source}: loss.name 'mcloss' and model.constraint 'max' go together (C-HMCNN); got "
                          f"loss.name {config.loss.name!r} with model.constraint {config.model.constraint!r}")
    if config.data.cv_folds == 1 or config.data.cv_folds < 0:
        raise ConfigError(f"{source}: data.cv_folds must be 0 (off) or >= 2, got {config.data.cv_folds}")
    if config.data.cv_folds and not 0 <= config.data.cv_fold < config.data.cv_folds:
        raise ConfigError(f"{source}: data.cv_fold must be in [0, {config.data.cv_folds}), got {config.data.cv_fold}")
    if not 0.0 <= config.train.ema_decay < 1.0 or config.train.mixup < 0:
        raise ConfigError(f"{source}: train.ema_decay must be in [0, 1) and train.mixup >= 0")
    if config.loss.source_prior_strength < 0:
        raise ConfigError(f"{source}: loss.source_prior_strength must be >= 0, got "
                          f"{config.loss.source_prior_strength}")
    if config.loss.source_offsets and config.train.mixup > 0:
        # A mixed image has two sources; rather than guess its prior, the two options are kept apart.
        raise ConfigError(f"{source}: loss.source_offsets and train.mixup cannot be combined")
    if not 0.0 <= config.data.augment.degrade <= 1.0 or not 0.0 < config.data.augment.degrade_min_scale <= 1.0:
        raise ConfigError(f"{source}: data.augment.degrade must be a probability and degrade_min_scale in (0, 1]")
    if config.train.keep_epoch is not None and not 1 <= config.train.keep_epoch <= config.train.epochs:
        raise ConfigError(f"{source}: train.keep_epoch must be in [1, train.epochs], got {config.train.keep_epoch}")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ConfigError(f"{source}: model.dropout must be in [0, 1), got {config.model.dropout}")
    if config.data.num_workers < 0:
        raise ConfigError(f"{source}: data.num_workers must be >= 0")
    if not config.data.cache_budget_mb >= 0:
        raise ConfigError(f"{source}: data.cache_budget_mb must be >= 0, got {config.data.cache_budget_mb}")
    if len(config.data.augment.scale) != 2 or config.data.augment.scale[0] > config.data.augment.scale[1]:
        raise ConfigError(f"{source}: data.augment.scale must be [low, high], got {config.data.augment.scale}")
    fractions = config.data.split_fractions
    if set(fractions) != {"train", "val", "test"} or any(v < 0 for v in fractions.values()):
        raise ConfigError(f"{source}: data.split_fractions needs non-negative train, val and test, got {fractions}")
    if not config.data.csv:
        raise ConfigError(f"{source}: data.csv is not set")
    return config


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data."""
    return validate(build_dataclass(Config, data, "", source), source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (following ``base:``), apply ``key.sub=value`` overrides and validate.

    The run name defaults to the file's stem when the file does not set ``name``.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or invalid value (the message says which).
    """
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source=str(path))
