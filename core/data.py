"""Training data: label tables + image folder -> a torch ``Dataset`` of fixed-size grayscale tensors.

Each item is ``(image, targets, mask, index)``: ``image`` is a ``(1, S, S)`` float32 tensor in [0, 1] (resized by
:func:`core.preprocess.resize_square`, the one input contract; normalisation happens on the batch, see
:func:`core.preprocess.normalize`), ``targets`` ``(L,)`` float32, ``mask`` ``(L,)`` bool (known labels, for the
masked loss) and ``index`` the row in the dataset's :class:`~core.labels.LabelSet`.

Splits come from a split column (NIH ``labels.csv`` has ``split`` = train/val/test, fixed by patient) or, for
tables without one, from a hash of the patient id, so that all images of a patient land in the same split and
the split never changes between runs or machines.

With ``cache=True`` every image is decoded and resized once and kept as ``uint8`` (1,571 NIH images at 256 px are
about 100 MB); augmentation then runs on the cached arrays. The cached image is quantised to 8 bits after
resizing, which differs from the float path by at most 1/510.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from core.config import AugmentConfig, Config, DataConfig, resolve_path
from core.imaging import ImageError, read_image, to_uint8
from core.labels import LabelError, LabelSet, detect_format, read_label_csv
from core.preprocess import resize_square
from core.taxonomy import Taxonomy

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The data cannot be used: unreadable or missing images, empty splits, bad split values."""


# ------------------------------------------------------------------------------------------------ splits


def hash_split(patient_ids: Sequence, fractions: dict[str, float], salt: str = "hicxr") -> np.ndarray:
    """Deterministic split per row from a hash of the patient id (same patient -> same split, on any machine).

    Args:
        patient_ids: One id per row.
        fractions: ``{"train": f, "val": f, "test": f}``; normalised to sum to 1.
        salt: Mixed into the hash so that another salt gives another (still deterministic) split.

    Returns:
        Array of split names, one per row.
    """
    total = sum(fractions[s] for s in SPLITS)
    if total <= 0:
        raise DataError("split fractions must not all be 0")
    edges = np.cumsum([fractions[s] / total for s in SPLITS])
    out = []
    for pid in patient_ids:
        digest = hashlib.sha256(f"{salt}:{pid}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append(SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)])
    return np.array(out, dtype=object)


def split_assignments(labels: LabelSet, data: DataConfig, source: str = "label table") -> np.ndarray:
    """The split name of every row: from ``data.split_column`` if the table has it, else by patient hash."""
    meta = labels.metadata
    if data.split_column and data.split_column in meta.columns:
        values = meta[data.split_column].astype(str).str.strip().str.lower().to_numpy(dtype=object)
        values = np.where(values == "valid", "val", values)
        values = np.where(values == "validation", "val", values)
        bad = sorted(set(values) - set(SPLITS))
        if bad:
            raise DataError(f"{source}: column {data.split_column!r} has value(s) {bad}; expected train, val, test")
        return values
    if data.patient_column not in meta.columns:
        raise LabelError(
            f"{source}: no split column {data.split_column!r} and no patient column {data.patient_column!r} "
            "to split by patient"
        )
    return hash_split(meta[data.patient_column].astype(str).tolist(), data.split_fractions, data.split_salt)


def cv_folds(patient_ids: Sequence, k: int, salt: str = "hicxr-cv") -> np.ndarray:
    """Fold number (0..k-1) per row, by patient: patients sorted by a salted hash, dealt round-robin.

    All images of a patient share a fold, fold sizes differ by at most one patient, and the assignment depends
    only on the ids (the same on any machine, whatever the row order).
    """
    ids = [str(p) for p in patient_ids]
    unique = sorted(set(ids), key=lambda p: hashlib.sha256(f"{salt}:{p}".encode()).digest())
    fold_of = {p: i % k for i, p in enumerate(unique)}
    return np.array([fold_of[p] for p in ids], dtype=np.int64)


def patient_ids(labels: LabelSet, data: DataConfig) -> np.ndarray:
    """Patient id per row from ``data.patient_column`` (the image path where the table has none)."""
    meta = labels.metadata
    if data.patient_column in meta.columns:
        return meta[data.patient_column].astype(str).to_numpy(dtype=object)
    return np.asarray(labels.paths, dtype=object)


def load_splits(config: Config, taxonomy: Taxonomy | None = None) -> dict[str, LabelSet]:
    """Read ``config.data.csv`` and return ``{"train", "val", "test"}`` label sets.

    With ``data.cv_folds = k`` the train and val rows are pooled and split by patient into ``k`` folds: fold
    ``data.cv_fold`` is returned as ``val`` and the rest as ``train`` (``test`` is untouched). With
    ``data.fit_on = train+val`` the val rows are trained on as well (``val`` is still returned, for logging only).

    Raises:
        LabelError: the CSV is missing, unreadable or lacks a column (named in the message).
        DataError: a split value is unknown.
    """
    data = config.data
    csv = resolve_path(data.csv)
    fmt = data.format if data.format != "auto" else _sniff_format(csv)
    kwargs = {"policy": data.uncertainty_policy, "blank": data.blank} if fmt == "chexpert" else {}
    labels = read_label_csv(csv, fmt=fmt, taxonomy=taxonomy, abnormal_rule=data.abnormal_rule, **kwargs)
    assignment = split_assignments(labels, data, str(csv))
    if data.cv_folds:
        pool = np.flatnonzero((assignment == "train") | (assignment == "val"))
        folds = cv_folds(patient_ids(labels.subset(pool), data), data.cv_folds)
        assignment = assignment.copy()
        assignment[pool] = np.where(folds == data.cv_fold, "val", "train")
    out = {s: labels.subset(assignment == s) for s in SPLITS}
    if data.fit_on == "train+val":
        out["train"] = labels.subset((assignment == "train") | (assignment == "val"))
    return out


def _sniff_format(csv: Path) -> str:
    """``nih`` or ``chexpert`` from the header, or ``auto`` to let :func:`read_label_csv` report the problem."""
    try:
        columns = pd.read_csv(csv, nrows=0).columns
        return detect_format(columns)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return "auto"


# --------------------------------------------------------------------------------------------- transforms


class RandomGamma(nn.Module):
    """``x ** g`` with ``log g`` uniform in ``[log(1 - amount), log(1 + amount)]`` (film/processing curve)."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = float(amount)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply a random gamma to a [0, 1] tensor."""
        if self.amount <= 0:
            return x
        lo, hi = np.log(1.0 - min(self.amount, 0.9)), np.log(1.0 + self.amount)
        g = float(torch.empty(()).uniform_(lo, hi).exp())
        return x.clamp(0.0, 1.0).pow(g)


class RandomDegrade(nn.Module):
    """With probability ``p``, downsample by a random factor in ``[min_scale, 1]`` and upsample back.

    Two thirds of the NIH training images exist only as 64 px thumbnails, while validation and test images are
    full resolution: at inputs above 64 px a model could learn "blurry means thumbnail" (and so the thumbnails'
    label mix). Degrading sharp images at random makes sharpness carry no label information.
    """

    def __init__(self, p: float, min_scale: float) -> None:
        super().__init__()
        self.p, self.min_scale = float(p), float(min_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Degrade a ``(C, H, W)`` tensor in [0, 1] (or return it unchanged)."""
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return x
        h, w = x.shape[-2:]
        scale = float(torch.empty(()).uniform_(self.min_scale, 1.0))
        small = (max(8, round(h * scale)), max(8, round(w * scale)))
        down = torch.nn.functional.interpolate(x[None], size=small, mode="bilinear", antialias=True,
                                               align_corners=False)
        return torch.nn.functional.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)[0]


def build_augment(cfg: AugmentConfig) -> nn.Module | None:
    """Random degradation, affine (rotation, scale, translation) + brightness/contrast/gamma; ``None`` if disabled.

    No vertical flip: an upside-down chest film is not a plausible input. Horizontal flip only if asked.
    """
    if not cfg.enabled:
        return None
    steps: list[nn.Module] = [RandomDegrade(cfg.degrade, cfg.degrade_min_scale)] if cfg.degrade > 0 else []
    steps += [
        v2.RandomAffine(
            degrees=cfg.rotation,
            translate=(cfg.translate, cfg.translate),
            scale=tuple(cfg.scale),
            interpolation=v2.InterpolationMode.BILINEAR,
            fill=0.0,
        )
    ]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.brightness > 0 or cfg.contrast > 0:
        steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    if cfg.gamma > 0:
        steps.append(RandomGamma(cfg.gamma))
    return v2.Compose(steps)


# ----------------------------------------------------------------------------------------------- dataset


class XrayDataset(Dataset):
    """Images of a :class:`LabelSet` read from ``image_root``, resized to ``input_size``.

    Args:
        labels: Rows to serve (paths relative to ``image_root``).
        image_root: Folder the label paths are relative to.
        input_size: Square side of the output tensors.
        augment: Optional transform of a ``(1, S, S)`` float tensor (training only).
        cache: Decode and resize every image once, keep ``uint8`` arrays in memory.
        on_error: ``raise`` (default) on an unreadable image, naming the file; ``skip`` drops such rows with one
            warning listing them (this decodes every image up front to find them).
        progress: Show a tqdm bar while caching or checking.
    """

    def __init__(
        self,
        labels: LabelSet,
        image_root: str | Path,
        input_size: int,
        augment: nn.Module | None = None,
        cache: bool = False,
        on_error: str = "raise",
        progress: bool = True,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_root = Path(image_root)
        self.input_size = int(input_size)
        self.augment = augment
        self.on_error = on_error
        self.skipped: list[str] = []
        if not self.image_root.is_dir():
            raise DataError(f"image folder {self.image_root} not found")
        missing = [p for p in labels.paths if not (self.image_root / p).is_file()]
        if missing and on_error == "raise":
            raise DataError(
                f"{len(missing)} image file(s) listed in the label table are missing from {self.image_root}, "
                f"e.g. {', '.join(missing[:5])}"
            )
        self._cache: list[np.ndarray] | None = None
        if cache or on_error == "skip":
            keep, arrays = self._decode_all(labels, progress, store=cache)
            if len(keep) < len(labels):
                self.skipped = [labels.paths[i] for i in range(len(labels)) if i not in set(keep)]
                warnings.warn(
                    f"skipped {len(self.skipped)} unreadable image(s): {', '.join(self.skipped[:20])}"
                    + (" ..." if len(self.skipped) > 20 else ""),
                    stacklevel=2,
                )
                labels = labels.subset(keep)
            self._cache = arrays if cache else None
        self.labels = labels
        self._targets = torch.from_numpy(np.ascontiguousarray(labels.targets, dtype=np.float32))
        self._mask = torch.from_numpy(np.ascontiguousarray(labels.mask, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, rel: str) -> np.ndarray:
        """Decode one image and resize it to ``(S, S)`` float32 in [0, 1]; errors name the file."""
        path = self.image_root / rel
        try:
            pixels = read_image(path).pixels
        except ImageError as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from None
        return resize_square(pixels, self.input_size)

    def _decode_all(self, labels: LabelSet, progress: bool, store: bool) -> tuple[list[int], list[np.ndarray]]:
        keep: list[int] = []
        arrays: list[np.ndarray] = []
        desc = "caching images" if store else "checking images"
        for i, rel in enumerate(tqdm(labels.paths, desc=desc, unit="img", disable=not progress, leave=False)):
            try:
                arr = self._load(rel)
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                log.warning("%s", exc)
                continue
            keep.append(i)
            if store:
                arrays.append(to_uint8(arr))
        return keep, arrays

    def image(self, index: int) -> torch.Tensor:
        """The un-augmented ``(1, S, S)`` float32 image of row ``index``."""
        if self._cache is not None:
            return torch.from_numpy(self._cache[index]).float().div_(255.0)[None]
        return torch.from_numpy(self._load(self.labels.paths[index]))[None]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        x = self.image(index)
        if self.augment is not None:
            x = self.augment(x).clamp_(0.0, 1.0)
        return x, self._targets[index], self._mask[index], index

    @property
    def groups(self) -> np.ndarray:
        """Patient id per row (for patient-level bootstrap), falling back to the path."""
        meta = self.labels.metadata
        if "Patient ID" in meta.columns:
            return meta["Patient ID"].astype(str).to_numpy()
        return np.asarray(self.labels.paths, dtype=object)


def build_datasets(
    config: Config, taxonomy: Taxonomy | None = None, splits: Sequence[str] = SPLITS, progress: bool = True
) -> dict[str, XrayDataset]:
    """Datasets for ``splits`` from a config; augmentation on ``train`` only. Empty splits raise ``DataError``."""
    label_sets = load_splits(config, taxonomy)
    root = resolve_path(config.data.images)
    out = {}
    for split in splits:
        labels = label_sets[split]
        if len(labels) == 0:
            raise DataError(f"{resolve_path(config.data.csv)}: the {split!r} split is empty")
        out[split] = XrayDataset(
            labels,
            root,
            config.model.input_size,
            augment=build_augment(config.data.augment) if split == "train" else None,
            cache=config.data.cache,
            on_error=config.data.on_error,
            progress=progress,
        )
    return out
