"""Training data: label tables + image folder -> a torch ``Dataset`` of fixed-size grayscale tensors.

Each item is ``(image, targets, mask, index)``: ``image`` is a ``(1, S, S)`` float32 tensor in [0, 1] (resized by
:func:`core.preprocess.resize_square`, the one input contract; normalisation happens on the batch, see
:func:`core.preprocess.normalize`), ``targets`` ``(L,)`` float32, ``mask`` ``(L,)`` bool (known labels, for the
masked loss) and ``index`` the row in the dataset's :class:`~core.labels.LabelSet`.

Tables are read by :mod:`core.datasets` (NIH, CheXpert, MIMIC-CXR-JPG in their released layouts). Splits come
from a dataset's official split files where it has them (MIMIC's split file, NIH's list files, CheXpert's
``valid.csv``), else from a split column (NIH ``labels.csv`` has ``split`` = train/val/test, fixed by patient)
or, for tables without one, from a hash of the patient id, so that all images of a patient land in the same
split and the split never changes between runs or machines.

With ``cache=True`` every image is decoded and resized once and kept as ``uint8`` in one ``(N, S, S)`` array
(1,571 NIH images at 256 px are about 100 MB); augmentation then runs on the cached arrays. The cached image is
quantised to 8 bits after resizing, which differs from the float path by at most 1/510. The cache is used only
while all splits together fit ``data.cache_budget_mb`` (CheXpert's 223k images at 320 px would take 23 GB):
above it, images are decoded on the fly by the DataLoader's ``data.num_workers`` worker processes. Per-row data
is held in numpy arrays (paths as one fixed-width byte array), so forked workers share it instead of copying
Python objects they touch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from core.config import DEFAULT_CACHE_BUDGET_MB, AugmentConfig, Config, DataConfig, resolve_path
from core.datasets import read_table
from core.datasets.decode import decode_many, load_resized
from core.datasets.splits import SPLITS, SplitError, hash_split, normalise_split_names
from core.errors import HiCXRError
from core.imaging import ImageError
from core.labels import LabelError, LabelSet
from core.preprocess import Fit
from core.taxonomy import Taxonomy

__all__ = ["SPLITS", "DataError", "RandomDegrade", "RandomGamma", "XrayDataset", "build_augment", "build_datasets",
           "cache_bytes", "cv_folds", "hash_split", "load_splits", "patient_ids", "split_assignments", "split_table"]

log = logging.getLogger(__name__)


class DataError(HiCXRError, ValueError):
    """The data cannot be used: unreadable or missing images, empty splits, bad split values."""


# ------------------------------------------------------------------------------------------------ splits


def split_assignments(labels: LabelSet, data: DataConfig, source: str = "label table") -> np.ndarray:
    """The split name of every row: from ``data.split_column`` if the table has it, else by patient hash."""
    meta = labels.metadata
    if data.split_column and data.split_column in meta.columns:
        values = normalise_split_names(meta[data.split_column])
        bad = sorted(set(values) - set(SPLITS))
        if bad:
            raise DataError(f"{source}: column {data.split_column!r} has value(s) {bad}; expected train, val, test")
        return values
    if data.patient_column not in meta.columns:
        raise LabelError(
            f"{source}: no split column {data.split_column!r} and no patient column {data.patient_column!r} "
            "to split by patient"
        )
    try:
        return hash_split(meta[data.patient_column].astype(str).tolist(), data.split_fractions, data.split_salt)
    except SplitError as exc:
        raise DataError(f"{source}: {exc}") from None


def split_table(data: DataConfig, taxonomy: Taxonomy | None = None) -> tuple[LabelSet, np.ndarray]:
    """Every row of ``data.csv`` (as :func:`core.datasets.read_table` reads it) and its split name.

    The split is the dataset's official one where it has one (and ``data.official_split`` is on), else
    :func:`split_assignments`'.
    """
    table = read_table(data, taxonomy)
    if table.assignment is not None:
        return table.labels, table.assignment
    return table.labels, split_assignments(table.labels, data, table.source)


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
    Rows from ``data.exclude_sources`` are in no split; rows from ``data.untrained_sources`` keep their split and
    fold but are left out of ``train``.

    Raises:
        LabelError: the CSV is missing, unreadable or lacks a column (named in the message).
        DataError: a split value is unknown.
    """
    data = config.data
    labels, assignment = split_table(data, taxonomy)
    if data.exclude_sources:
        assignment = np.where(_from_sources(labels, data, "exclude_sources"), "", assignment)
    if data.cv_folds:
        pool = np.flatnonzero((assignment == "train") | (assignment == "val"))
        folds = cv_folds(patient_ids(labels.subset(pool), data), data.cv_folds)
        assignment = assignment.copy()
        assignment[pool] = np.where(folds == data.cv_fold, "val", "train")
    out = {s: labels.subset(assignment == s) for s in SPLITS}
    if data.fit_on == "train+val":
        out["train"] = labels.subset((assignment == "train") | (assignment == "val"))
    if data.untrained_sources:
        out["train"] = out["train"].subset(~_from_sources(out["train"], data, "untrained_sources"))
    return out


def _from_sources(labels: LabelSet, data: DataConfig, option: str) -> np.ndarray:
    """Per row: is its ``data.source_column`` value one of ``data.<option>``?

    Raises:
        SplitError: the table has no such column.
    """
    if data.source_column not in labels.metadata.columns:
        raise SplitError(f"{data.csv}: no column {data.source_column!r} to select data.{option} by")
    return labels.metadata[data.source_column].astype(str).isin(set(getattr(data, option))).to_numpy()


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
        cache: Decode and resize every image once, keep them as one ``uint8`` array in memory -- if it fits
            ``cache_budget_mb``; otherwise images are decoded on every access (streamed), with a logged warning.
        on_error: ``raise`` (default) on an unreadable image, naming the file; ``skip`` drops such rows with one
            warning listing them (this decodes every image up front to find them).
        progress: Show a tqdm bar while caching or checking.
        cache_budget_mb: Most memory the cache may take; None for no limit.
        num_workers: Worker processes that decode the images up front (cache or ``skip`` check); 0: this one.
        jpeg_draft: Decode large JPEGs at a reduced scale (see :mod:`core.datasets.decode`).
        fit: The crop and resize of the model's input contract (:class:`core.preprocess.Fit`; default: squash,
            antialiased bilinear).
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
        cache_budget_mb: float | None = DEFAULT_CACHE_BUDGET_MB,
        num_workers: int = 0,
        jpeg_draft: bool = False,
        fit: Fit = Fit(),
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_root = Path(image_root)
        self.input_size = int(input_size)
        self.augment = augment
        self.on_error = on_error
        self.jpeg_draft = bool(jpeg_draft)
        self.fit = fit
        self.skipped: list[str] = []
        if not self.image_root.is_dir():
            raise DataError(f"image folder {self.image_root} not found")
        root = str(self.image_root)
        missing = [p for p in labels.paths if not os.path.isfile(os.path.join(root, p))]
        if missing and on_error == "raise":
            raise DataError(
                f"{len(missing)} image file(s) listed in the label table are missing from {self.image_root}, "
                f"e.g. {', '.join(missing[:5])}"
            )
        need = cache_bytes(len(labels), self.input_size)
        if cache and cache_budget_mb is not None and need > cache_budget_mb * 2**20:
            log.warning("not caching %d images at %d px: %.1f GB of uint8 exceed the cache budget of %.0f MB; "
                        "decoding them on the fly instead", len(labels), self.input_size, need / 1e9, cache_budget_mb)
            cache = False
        self._cache: np.ndarray | None = None
        paths = _path_array(labels.paths)
        if cache or on_error == "skip":
            keep, arrays = self._decode_all(paths, progress, store=cache, workers=num_workers)
            if len(keep) < len(labels):
                dropped = np.setdiff1d(np.arange(len(labels)), keep)
                self.skipped = [labels.paths[i] for i in dropped]
                warnings.warn(
                    f"skipped {len(self.skipped)} unreadable image(s): {', '.join(self.skipped[:20])}"
                    + (" ..." if len(self.skipped) > 20 else ""),
                    stacklevel=2,
                )
                labels, paths = labels.subset(keep), paths[keep]
            self._cache = arrays if cache else None
        self.labels = labels
        # Paths as one byte array, not a list of str: DataLoader workers read it without touching refcounts.
        self._paths = paths
        self._targets = torch.from_numpy(np.ascontiguousarray(labels.targets, dtype=np.float32))
        self._mask = torch.from_numpy(np.ascontiguousarray(labels.mask, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def cached(self) -> bool:
        """Whether the images are held in memory (else decoded on every access)."""
        return self._cache is not None

    def _load(self, rel: str) -> np.ndarray:
        """Decode one image and resize it to ``(S, S)`` float32 in [0, 1]; errors name the file."""
        path = self.image_root / rel
        try:
            return load_resized(path, self.input_size, self.jpeg_draft, self.fit)
        except ImageError as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from None

    def _decode_all(self, paths: np.ndarray, progress: bool, store: bool,
                    workers: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode every image once: the row indices that decoded, and (``store``) their uint8 images."""
        n, size = len(paths), self.input_size
        arrays = np.empty((n, size, size), dtype=np.uint8) if store else None
        ok = np.zeros(n, dtype=bool)
        desc = "caching images" if store else "checking images"
        for i, image, error in decode_many(self.image_root, paths, size, draft=self.jpeg_draft, workers=workers,
                                           progress=progress, desc=desc, fit=self.fit):
            if error is not None:
                exc = DataError(f"{self.image_root / paths[i].decode()}: cannot read image: {error}")
                if self.on_error == "raise":
                    raise exc
                log.warning("%s", exc)
                continue
            ok[i] = True
            if arrays is not None:
                arrays[i] = image
        keep = np.flatnonzero(ok)
        if arrays is not None and len(keep) < n:
            arrays = arrays[keep]
        return keep, arrays

    def image(self, index: int) -> torch.Tensor:
        """The un-augmented ``(1, S, S)`` float32 image of row ``index``."""
        if self._cache is not None:
            return torch.from_numpy(self._cache[index]).float().div_(255.0)[None]
        return torch.from_numpy(self._load(self._paths[index].decode()))[None]

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


def cache_bytes(n_images: int, input_size: int) -> int:
    """Bytes a uint8 cache of ``n_images`` images at ``input_size`` px takes."""
    return int(n_images) * int(input_size) ** 2


def _path_array(paths: Sequence[str]) -> np.ndarray:
    """Paths as one fixed-width UTF-8 byte array (``np.bytes_``), decoded again on access."""
    return np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_) if len(paths) else np.array([], "S1")


def build_datasets(
    config: Config, taxonomy: Taxonomy | None = None, splits: Sequence[str] = SPLITS, progress: bool = True
) -> dict[str, XrayDataset]:
    """Datasets for ``splits`` from a config; augmentation on ``train`` only. Empty splits raise ``DataError``.

    The uint8 cache (``data.cache``) is used only if the requested splits together fit ``data.cache_budget_mb``;
    otherwise every split streams (a warning says so and what it would have taken).
    """
    label_sets = load_splits(config, taxonomy)
    data, size = config.data, config.model.input_size
    root = resolve_path(data.images)
    for split in splits:
        if len(label_sets[split]) == 0:
            raise DataError(f"{resolve_path(data.csv)}: the {split!r} split is empty")
    cache = data.cache
    total = sum(len(label_sets[s]) for s in splits)
    if cache and cache_bytes(total, size) > data.cache_budget_mb * 2**20:
        log.warning("streaming %d images from %s: a uint8 cache at %d px would take %.1f GB, over "
                    "data.cache_budget_mb = %.0f; decoding with data.num_workers = %d DataLoader workers",
                    total, root, size, cache_bytes(total, size) / 1e9, data.cache_budget_mb, data.num_workers)
        cache = False
    out = {}
    for split in splits:
        out[split] = XrayDataset(
            label_sets[split],
            root,
            size,
            augment=build_augment(data.augment) if split == "train" else None,
            cache=cache,
            on_error=data.on_error,
            progress=progress,
            cache_budget_mb=None,  # checked above for all splits together
            num_workers=data.num_workers,
            jpeg_draft=data.jpeg_draft,
        )
    return out
