"""Pretraining data: image sources -> one uint8 cache, held-out flags, and the random views of SimCLR.

A source is a label table (``csv`` + ``path_column``, optional ``label_column`` and row ``filter``) and the folder
its paths are relative to. Every image is decoded and resized once (:func:`load_sources`); a fixed share of each
labelled source's patients is held out to monitor the supervised heads.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from core.config import resolve_path
from core.data import RandomDegrade, RandomGamma
from core.errors import HiCXRError
from core.imaging import ImageError, read_image, to_uint8
from core.patient_halves import patient_half
from core.preprocess import resize_square
from core.progress import progress

log = logging.getLogger(__name__)


class PretrainError(HiCXRError, RuntimeError):
    """Pretraining cannot start: a source is missing or unreadable, or the config is inconsistent."""


@dataclass
class SourceConfig:
    """One image source: a label table and the folder its paths are relative to."""

    name: str = ""
    csv: str = ""
    images: str = ""
    path_column: str = "file"
    label_column: str | None = None
    patient_column: str | None = None
    filter: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, str] = field(default_factory=dict)
    attribution: str = ""
    #: keep only this half of the patients (:mod:`core.patient_halves`; needs ``patient_column``): ``0`` keeps the
    #: half that fits the population classifier, so the other half, which measures it and is the external check's
    #: held-out set, is never seen in pretraining. ``None``: every patient.
    patient_half: int | None = None


@dataclass
class SimCLRConfig:
    """SimCLR settings: NT-Xent temperature, projection size and the views' random crop."""

    temperature: float = 0.2
    projection_dim: int = 128
    hidden_dim: int = 512
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    rotation: float = 10.0
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.3
    blur: float = 0.5
    degrade: float = 0.3


@dataclass
class PretrainImages:
    """Decoded images (uint8, ``(N, S, S)``) with their source, class (-1: none) and hold-out flag."""

    pixels: np.ndarray
    source: np.ndarray
    target: np.ndarray
    holdout: np.ndarray
    classes: dict[str, list[str]]
    counts: dict[str, int]


def _holdout_flags(ids: list[str], share: float, salt: str) -> np.ndarray:
    u = [int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode()).digest()[:8], "big") / 2**64 for i in ids]
    return np.array(u) < share


def load_sources(sources: list[SourceConfig], size: int, holdout: float, show: bool = True) -> PretrainImages:
    """Read every source's table, decode and resize its images once (uint8 cache).

    Raises:
        PretrainError: a table or column is missing, or images listed in a table do not exist (names them).
    """
    pixels: list[np.ndarray] = []
    source, target, held = [], [], []
    classes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for k, src in enumerate(sources):
        table = resolve_path(src.csv)
        root = resolve_path(src.images)
        try:
            df = pd.read_csv(table, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PretrainError(f"source {src.name!r}: cannot read {table} ({exc})") from None
        needed = [src.path_column] + [c for c in (src.label_column, src.patient_column) if c] + list(src.filter)
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise PretrainError(f"source {src.name!r}: {table} has no column(s) {', '.join(map(repr, missing))}")
        for column, value in src.filter.items():
            df = df[df[column].astype(str) == str(value)]
        if src.patient_half is not None:
            df = patient_half(df, src.patient_half, str(src.patient_column))
        paths = df[src.path_column].tolist()
        absent = [p for p in paths if not (root / p).is_file()]
        if absent:
            raise PretrainError(f"source {src.name!r}: {len(absent)} image(s) missing from {root}, e.g. {absent[0]}")
        if src.label_column:
            names = [src.label_map.get(v, v) for v in df[src.label_column].tolist()]
            classes[src.name] = sorted(set(names))
            target += [classes[src.name].index(n) for n in names]
            ids = df[src.patient_column].tolist() if src.patient_column else paths
            held += list(_holdout_flags(ids, holdout, src.name))
        else:
            target += [-1] * len(paths)
            held += [False] * len(paths)
        for rel in progress(paths, show, desc=f"decoding {src.name}", unit="img"):
            try:
                image = read_image(root / rel).pixels
            except ImageError as exc:
                raise PretrainError(f"source {src.name!r}: {root / rel}: {exc}") from None
            pixels.append(to_uint8(resize_square(image, size)))
        source += [k] * len(paths)
        counts[src.name] = len(paths)
        log.info("source %s: %d images%s", src.name, len(paths),
                 f", classes {classes[src.name]}" if src.label_column else " (unlabelled)")
    if not pixels:
        raise PretrainError("the sources hold no image")
    return PretrainImages(np.stack(pixels), np.array(source), np.array(target), np.array(held, dtype=bool),
                          classes, counts)


def simclr_view(cfg: SimCLRConfig, size: int) -> nn.Module:
    """One random view of a radiograph: crop, small rotation, contrast/gamma, blur, degradation (no flips)."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), ratio=(0.8, 1.25), antialias=True),
        v2.RandomAffine(degrees=cfg.rotation),
        v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
        RandomGamma(cfg.gamma),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=cfg.blur),
        RandomDegrade(cfg.degrade, 0.4),
    ])


class PretrainDataset(Dataset):
    """Items ``(view1, view2, source, target)``; ``view2`` equals ``view1`` when no contrastive view is needed."""

    def __init__(self, images: PretrainImages, rows: np.ndarray, view: nn.Module, two_views: bool) -> None:
        self.images, self.rows, self.view, self.two_views = images, rows, view, two_views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        r = int(self.rows[i])
        x = torch.from_numpy(self.images.pixels[r]).float().div_(255.0)[None]
        a = self.view(x).clamp_(0, 1)
        b = self.view(x).clamp_(0, 1) if self.two_views else a
        return a, b, int(self.images.source[r]), int(self.images.target[r])
