"""Decoding training images: the one input contract, fast for the 8-bit grayscale files the datasets ship.

:func:`decode_gray` gives exactly the pixels of :func:`core.imaging.read_image` (float32 in [0, 1]) but, for
8-bit grayscale PNG and JPEG files (NIH, CheXpert, MIMIC-CXR-JPG), it skips the general pipeline's float
windowing of the full-size image: for a 2,000 x 2,100 radiograph that pipeline costs about as much again as the
JPEG decode. Everything else (16-bit, colour, EXIF-rotated, huge, damaged, DICOM) goes through ``read_image``,
whose messages name what is wrong.

Measured on one core for a real 2,128 x 2,000 chest film saved as a quality-95 JPEG, decoded and resized to
320 px: 64-79 ms through ``read_image``, 37 ms here. ``draft=True`` additionally lets libjpeg decode a large JPEG
at 1/2, 1/4 or 1/8 scale (DCT-domain scaling, never below the requested size) before the antialiased resize:
20 ms. The drafted image differs from the full decode by about 1/1000 on average (up to 7 % at a few sharp
edges), so it is off unless a config asks for it (the MIMIC configs do).

:func:`decode_many` decodes a list of files with ``torch`` DataLoader workers (for the uint8 cache).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from core.imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, read_image, to_uint8
from core.preprocess import Fit

_EXIF_ORIENTATION = 0x0112


def decode_gray(path: str | Path, size: int | None = None, draft: bool = False) -> np.ndarray:
    """The pixels of an image file as :func:`core.imaging.read_image` gives them (float32 ``(H, W)`` in [0, 1]).

    Args:
        path: The image file.
        size: The input size the image will be resized to (only used with ``draft``).
        draft: Let a large JPEG decode at a reduced scale that stays at least ``size`` on both sides.

    Raises:
        ImageError: the file is missing, damaged, blank or not an image (from ``read_image``).
    """
    path = Path(path)
    try:
        if os.stat(path).st_size <= DEFAULT_MAX_BYTES:
            with Image.open(path) as image:
                pixels = _fast_levels(image, size if draft else None)
                if pixels is not None:
                    return pixels
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        pass  # read_image below turns the problem into a message a user can act on
    return read_image(path).pixels


def _fast_levels(image: Image.Image, draft_size: int | None) -> np.ndarray | None:
    """8-bit grayscale PNG/JPEG pixels / 255, or None where ``read_image`` must decide (any other case)."""
    width, height = image.size
    if (image.format not in ("JPEG", "PNG") or image.mode != "L" or width * height > DEFAULT_MAX_PIXELS
            or getattr(image, "n_frames", 1) != 1 or image.getexif().get(_EXIF_ORIENTATION, 1) != 1):
        return None
    if draft_size is not None and image.format == "JPEG":
        image.draft("L", (draft_size, draft_size))
    raw = np.asarray(image)
    if raw.size == 0 or raw.min() == raw.max():
        return None  # blank: read_image raises the proper error
    # read_image maps 8-bit levels with the window (center 127.5, width 255): (x - 0) / 255, bit for bit.
    return raw.astype(np.float32) / np.float32(255.0)


def load_resized(path: str | Path, size: int, draft: bool = False, fit: Fit = Fit()) -> np.ndarray:
    """Decode ``path`` and fit it to ``(size, size)`` float32 in [0, 1] (the model's input contract)."""
    return fit.apply(decode_gray(path, size, draft), size)


class _DecodeJob(Dataset):
    """Item ``i``: ``(i, uint8 (S, S) image or None, error message or None)``; errors do not stop the others."""

    def __init__(self, root: Path, paths: np.ndarray, size: int, draft: bool, fit: Fit = Fit()) -> None:
        self.root, self.paths, self.size, self.draft, self.fit = root, paths, size, draft, fit

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, to_uint8(load_resized(self.root / self.paths[i].decode(), self.size, self.draft,
                                           self.fit)), None
        except ImageError as exc:
            return i, None, str(exc)


def _as_list(batch: list) -> list:
    return batch


def decode_many(
    root: Path, paths: np.ndarray, size: int, *, draft: bool = False, workers: int = 0, progress: bool = True,
    desc: str = "decoding images", fit: Fit = Fit(),
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Decode and resize every file of ``paths`` (bytes, relative to ``root``) to uint8, in order.

    ``fit``: how each image is fitted to the square (the model's crop and resize).
    ``workers`` > 0 decodes in that many DataLoader worker processes; 0 decodes here, one file after another.
    Yields ``(index, image or None, error message or None)``.
    """
    loader = DataLoader(_DecodeJob(root, paths, size, draft, fit), batch_size=32, num_workers=workers,
                        collate_fn=_as_list)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            yield from batch
            bar.update(len(batch))
