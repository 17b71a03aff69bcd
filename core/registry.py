"""The model variants shipped in ``weights/``: which exist, what their model cards say, which is the default.

A variant is a pair ``<name>.safetensors`` + ``<name>.json`` (the model card). Scanning never raises for a broken
variant: :func:`scan_weights` returns the good variants *and* one :class:`RegistryProblem` per broken file (card
without weights, weights without card, unreadable or malformed JSON, a card that contradicts its weights), so the
dashboard can list what it skipped and why. :func:`list_variants` returns only the good ones (or raises
:class:`RegistryError` on the first problem with ``strict=True``); :func:`get_variant` raises :class:`RegistryError`
naming the problem when asked for a broken or unknown variant.

Default variant: ``weights/default.json`` = ``{"default": "<name>"}`` if it names a usable variant, else the
variant with the best test macro AUROC (ties and missing metrics: alphabetical order).

Only the safetensors *header* is read here (the model config), never the tensors, so scanning is cheap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.model import ModelConfig, ModelLoadError, read_model_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = "default.json"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


class RegistryError(ValueError):
    """A variant is missing, or its files are unusable; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RegistryProblem:
    """A file in the weights folder that was skipped, and why (for the UI and logs)."""

    name: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name}: {self.reason}"


@dataclass(frozen=True)
class Variant:
    """One usable model variant.

    Attributes:
        name: Variant name (the file stem, e.g. ``hbce_soft``).
        weights_path: The ``.safetensors`` file.
        card_path: The ``.json`` model card.
        card: The parsed model card (schema in the project's model-card documentation).
        config: The :class:`~core.model.ModelConfig` stored in the weights file header.
    """

    name: str
    weights_path: Path
    card_path: Path
    card: dict[str, Any] = field(repr=False)
    config: ModelConfig = field(repr=False)

    @property
    def labels(self) -> list[str]:
        """Output labels in order."""
        return list(self.config.labels)

    @property
    def input_size(self) -> int:
        """Square side the model expects."""
        return int(self.config.input_size)

    def metrics(self, split: str = "test") -> dict[str, Any]:
        """The card's ``metrics[split]`` dict (an :func:`core.metrics.evaluate_predictions` result), or ``{}``."""
        value = (self.card.get("metrics") or {}).get(split)
        return value if isinstance(value, dict) else {}

    @property
    def test_macro_auroc(self) -> float | None:
        """Macro AUROC on the test split, if the card reports it."""
        return _finite(self.metrics("test").get("macro_auroc"))

    @property
    def val_macro_auroc(self) -> float | None:
        """Macro AUROC on the validation split, if the card reports it."""
        return _finite(self.metrics("val").get("macro_auroc"))

    @property
    def test_weighted_auroc(self) -> float | None:
        """Positive-weighted AUROC over all outputs on the test split (the paper's figure), if reported."""
        return _finite(self.metrics("test").get("weighted_auroc"))

    def per_label_auroc(self, split: str = "test") -> dict[str, float | None]:
        """AUROC of every label on ``split`` (``None`` where undefined or not reported), in label order."""
        per_label = self.metrics(split).get("per_label") or {}
        return {label: _finite((per_label.get(label) or {}).get("auroc")) for label in self.labels}

    @property
    def test_per_label_auroc(self) -> dict[str, float | None]:
        """Per-label test AUROC (shortcut for :meth:`per_label_auroc`)."""
        return self.per_label_auroc("test")

    @property
    def temperature(self) -> list[float] | None:
        """Per-label temperatures to divide logits by, or ``None`` when calibration is absent or not applied."""
        calibration = self.card.get("calibration")
        if not isinstance(calibration, dict) or not calibration.get("applied"):
            return None
        return [float(t) for t in calibration["temperature"]]

    @property
    def loss(self) -> dict[str, Any]:
        """The card's ``loss`` section (``lambda``, ``penalty_source``, ``violation``...), or ``{}``."""
        return self.card.get("loss") or {}

    @property
    def description(self) -> str:
        """One line for pickers: name, loss, and test macro AUROC when known."""
        loss = self.loss
        parts = [self.name]
        if loss:
            parts.append(f"penalty {loss.get('penalty_source', '?')}, lambda {loss.get('lambda', '?')}")
        if self.test_macro_auroc is not None:
            parts.append(f"test macro AUROC {self.test_macro_auroc:.3f}")
        return " | ".join(parts)


@dataclass(frozen=True)
class RegistryScan:
    """Result of :func:`scan_weights`: usable variants (sorted by name) and skipped files with reasons."""

    weights_dir: Path
    variants: list[Variant]
    problems: list[RegistryProblem]

    def names(self) -> list[str]:
        """Names of the usable variants."""
        return [v.name for v in self.variants]


def resolve_weights_dir(weights_dir: str | Path = "weights") -> Path:
    """``weights_dir`` as an absolute path; a relative one is taken relative to the repository root."""
    path = Path(weights_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def read_card(path: str | Path) -> dict[str, Any]:
    """Parse a model card; :class:`RegistryError` if it is missing, not UTF-8 JSON, or not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path.name}: model card not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path.name}: model card cannot be read ({exc})") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path.name}: model card is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(card, dict):
        raise RegistryError(f"{path.name}: model card must be a JSON object, got {type(card).__name__}")
    return card


def check_card(card: dict[str, Any], config: ModelConfig, source: str) -> None:
    """Check the parts of a card that inference relies on against the weights' own config.

    Raises:
        RegistryError: ``variant`` differs from the file name, ``preprocessing`` contradicts the weights file,
            ``calibration`` is applied without one positive temperature per label, or ``metrics`` is not an object.
    """
    name = Path(source).stem
    if "variant" in card and card["variant"] != name:
        raise RegistryError(f"{source}: card says variant {card['variant']!r} but the file is named {name!r}")
    pre = card.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            raise RegistryError(f"{source}: 'preprocessing' must be an object")
        for key in ("input_size", "in_channels", "mean", "std"):
            if key in pre and not _same(pre[key], getattr(config, key)):
                raise RegistryError(
                    f"{source}: preprocessing.{key} = {pre[key]!r} but the weights file says {getattr(config, key)!r}"
                )
    calibration = card.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise RegistryError(f"{source}: 'calibration' must be an object or null")
        if calibration.get("applied"):
            temps = calibration.get("temperature")
            n = len(config.labels)
            if not isinstance(temps, list) or len(temps) != n:
                got = len(temps) if isinstance(temps, list) else type(temps).__name__
                raise RegistryError(f"{source}: calibration.temperature must list {n} numbers, got {got}")
            bad = [t for t in temps if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0]
            if bad:
                raise RegistryError(f"{source}: calibration.temperature must be positive numbers, got {bad[0]!r}")
    if "metrics" in card and card["metrics"] is not None and not isinstance(card["metrics"], dict):
        raise RegistryError(f"{source}: 'metrics' must be an object")


def load_variant(weights_dir: str | Path, name: str) -> Variant:
    """Read one variant's card and weights header; :class:`RegistryError` says exactly what is wrong."""
    folder = resolve_weights_dir(weights_dir)
    weights = folder / f"{name}{WEIGHTS_SUFFIX}"
    card_path = folder / f"{name}{CARD_SUFFIX}"
    if not weights.is_file() and not card_path.is_file():
        raise RegistryError(f"no variant {name!r} in {folder} (neither {weights.name} nor {card_path.name} exists)")
    if not weights.is_file():
        raise RegistryError(f"{card_path.name}: model card without weights ({weights.name} is missing)")
    if not card_path.is_file():
        raise RegistryError(f"{weights.name}: weights without a model card ({card_path.name} is missing)")
    card = read_card(card_path)
    try:
        config = read_model_config(weights)
    except ModelLoadError as exc:
        raise RegistryError(f"{weights.name}: {exc}") from None
    check_card(card, config, card_path.name)
    return Variant(name=name, weights_path=weights, card_path=card_path, card=card, config=config)


def scan_weights(weights_dir: str | Path = "weights") -> RegistryScan:
    """Every usable variant in ``weights_dir`` plus a problem record for each file that had to be skipped."""
    folder = resolve_weights_dir(weights_dir)
    if not folder.is_dir():
        return RegistryScan(folder, [], [RegistryProblem("", folder, "weights folder does not exist")])
    stems = sorted(
        {p.stem for p in folder.iterdir() if p.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) and p.name != DEFAULT_FILE}
    )
    variants: list[Variant] = []
    problems: list[RegistryProblem] = []
    for stem in stems:
        try:
            variants.append(load_variant(folder, stem))
        except RegistryError as exc:
            bad = folder / f"{stem}{WEIGHTS_SUFFIX}"
            if not bad.is_file():
                bad = folder / f"{stem}{CARD_SUFFIX}"
            problems.append(RegistryProblem(stem, bad, str(exc)))
    return RegistryScan(folder, variants, problems)


def list_variants(weights_dir: str | Path = "weights", strict: bool = False) -> list[Variant]:
    """Usable variants sorted by name; broken ones are skipped (see :func:`scan_weights` for the reasons).

    Raises:
        RegistryError: only with ``strict=True``, for the first broken file found.
    """
    scan = scan_weights(weights_dir)
    if strict and scan.problems:
        raise RegistryError(str(scan.problems[0]) if scan.problems[0].name else str(scan.problems[0].reason))
    return scan.variants


def get_variant(name: str, weights_dir: str | Path = "weights") -> Variant:
    """The variant called ``name``; :class:`RegistryError` lists the usable names if it is unknown or broken."""
    try:
        return load_variant(weights_dir, name)
    except RegistryError as exc:
        available = ", ".join(scan_weights(weights_dir).names()) or "none"
        raise RegistryError(f"{exc}; usable variants: {available}") from None


def default_variant(weights_dir: str | Path = "weights") -> str | None:
    """The dashboard's default variant: ``default.json`` if it names a usable one, else the best test macro AUROC.

    Returns ``None`` when no variant is usable.
    """
    folder = resolve_weights_dir(weights_dir)
    variants = list_variants(folder)
    if not variants:
        return None
    names = {v.name for v in variants}
    chosen = _declared_default(folder / DEFAULT_FILE)
    if chosen in names:
        return chosen
    best = min(variants, key=lambda v: (v.test_macro_auroc is None, -(v.test_macro_auroc or 0.0), v.name))
    return best.name


def _declared_default(path: Path) -> str | None:
    # A broken default.json falls back to the metric rule instead of hiding every model from the dashboard.
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = data.get("default") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b
