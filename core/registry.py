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

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from core.card import CardError, ModelCard
from core.config import REPO_ROOT
from core.errors import HiCXRError
from core.model import ModelConfig, ModelLoadError, read_model_config

DEFAULT_FILE = "default.json"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


class RegistryError(HiCXRError, ValueError):
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
        name: Variant name (the file stem, e.g. ``hbce_soft_data``).
        weights_path: The ``.safetensors`` file.
        card_path: The ``.json`` model card.
        card: The parsed, validated :class:`~core.card.ModelCard`.
        config: The :class:`~core.model.ModelConfig` stored in the weights file header.
    """

    name: str
    weights_path: Path
    card_path: Path
    card: ModelCard = field(repr=False)
    config: ModelConfig = field(repr=False)

    @property
    def labels(self) -> list[str]:
        """Output labels in order."""
        return list(self.config.labels)

    @property
    def input_size(self) -> int:
        """Square side the model expects."""
        return int(self.config.input_size)

    @property
    def test_macro_auroc(self) -> float | None:
        """Macro AUROC on the test split, if the card reports it."""
        return self.card.macro_auroc("test")

    def per_label_auroc(self, split: str = "test") -> dict[str, float | None]:
        """AUROC of every label on ``split`` (``None`` where undefined or not reported), in label order."""
        return self.card.per_label_auroc(self.labels, split)

    def per_label_positives(self, split: str = "test") -> dict[str, int | None]:
        """Known positives of every label on ``split`` (``None`` where not reported), in label order."""
        return self.card.per_label_positives(self.labels, split)

    @property
    def tensor_hash(self) -> str:
        """The hash of the tensors: the card's ``tensor_sha256``, else the weights file hashed (slow: reads it)."""
        return self.card.tensor_sha256 or tensor_sha256(self.weights_path)

    @property
    def aliases(self) -> list[str]:
        """Other names this variant answers to (e.g. the paper's hard-penalty variants, which equal ``bce``)."""
        return list(self.card.aliases)

    @property
    def description(self) -> str:
        """One line for pickers: name, loss, and test macro AUROC when known."""
        parts = [" ≡ ".join([self.name, *sorted(self.aliases)])]
        if self.card.loss.reported or self.card.loss_name == "mcloss":
            parts.append(self.card.loss.describe())
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

    @cached_property
    def _groups(self) -> list[list[str]]:
        # Computed once per scan: the page asks for it on every rerun (one call per dropdown option).
        by_hash: dict[str, list[str]] = {}
        for v in self.variants:
            by_hash.setdefault(v.tensor_hash, []).append(v.name)
        return [names for names in by_hash.values() if len(names) > 1]

    def identical_groups(self) -> list[list[str]]:
        """Groups of two or more variants whose weights files hold identical tensors (same model, other name).

        The hash is the card's ``tensor_sha256`` (written by the export); only a card without one has its weights
        file hashed, once per scan.
        """
        return [list(group) for group in self._groups]

    def distinct_names(self) -> list[str]:
        """One name per distinct model (the first of each identical group), in name order."""
        hidden = {n for group in self._groups for n in group[1:]}
        return [n for n in self.names() if n not in hidden]

    def same_as(self, name: str) -> list[str]:
        """The other names of the model ``name``: its aliases and the variants with identical tensors."""
        variant = next((v for v in self.variants if v.name == name), None)
        names = list(variant.aliases) if variant else []
        for group in self._groups:
            if name in group:
                names += [n for n in group if n != name]
        return sorted(set(names))

    @cached_property
    def default_name(self) -> str | None:
        """The default variant of this scan (see :func:`default_variant`), decided once per scan."""
        return _default_of(self.weights_dir, self.variants)


def variant_selection(values: Sequence[str] | None) -> str | list[str] | None:
    """The variants a command line names, as the Predictor takes them: None (the default), "all", or a list."""
    if not values:
        return None
    if "all" in values:
        return "all"
    return list(values)


def resolve_weights_dir(weights_dir: str | Path = "weights") -> Path:
    """``weights_dir`` as an absolute path; a relative one is taken relative to the repository root."""
    path = Path(weights_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def tensor_sha256(path: str | Path) -> str:
    """SHA-256 of a safetensors file's tensor bytes (its JSON header, which names the run, is left out).

    Two weights files with the same value hold the same tensors: the same model under another name.
    """
    with open(path, "rb") as f:
        header = f.read(8)
        if len(header) < 8:
            raise RegistryError(f"{Path(path).name}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", header)
        f.seek(8 + n)
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_variant(weights_dir: str | Path, name: str, config: ModelConfig | None = None) -> Variant:
    """Read one variant's card and weights header; :class:`RegistryError` says exactly what is wrong.

    ``config``: the weights file's config when the caller has already read it (the file is then not opened here).
    """
    folder = resolve_weights_dir(weights_dir)
    weights = folder / f"{name}{WEIGHTS_SUFFIX}"
    card_path = folder / f"{name}{CARD_SUFFIX}"
    if not weights.is_file() and not card_path.is_file():
        raise RegistryError(f"no variant {name!r} in {folder} (neither {weights.name} nor {card_path.name} exists)")
    if not weights.is_file():
        raise RegistryError(f"{card_path.name}: model card without weights ({weights.name} is missing)")
    if not card_path.is_file():
        raise RegistryError(f"{weights.name}: weights without a model card ({card_path.name} is missing)")
    try:
        card = ModelCard.read(card_path)
        config = config or read_model_config(weights)
        card.check_against(config, card_path.name)
    except CardError as exc:
        raise RegistryError(str(exc)) from None
    except ModelLoadError as exc:
        raise RegistryError(f"{weights.name}: {exc}") from None
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
    """The variant called ``name`` (or having ``name`` as an alias); :class:`RegistryError` lists the usable names
    if it is unknown or broken."""
    folder = resolve_weights_dir(weights_dir)
    if not (folder / f"{name}{WEIGHTS_SUFFIX}").exists() and not (folder / f"{name}{CARD_SUFFIX}").exists():
        for variant in list_variants(folder):
            if name in variant.aliases:
                return variant
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
    return _default_of(folder, list_variants(folder))


def _default_of(folder: Path, variants: list[Variant]) -> str | None:
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
