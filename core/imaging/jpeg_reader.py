"""JPEG streams Pillow cannot decode -> :class:`XrayImage`, through pylibjpeg-libjpeg.

Pillow reads 8-bit baseline and progressive JPEG only. Radiographs are also exported as 12-bit (extended),
lossless (process 14, up to 16 bits) and JPEG-LS files, which are valid and common in PACS exports; those go to
libjpeg (the decoder pydicom uses for the same streams inside DICOM), after the size declared by their frame header
has passed the limits (the caller checks it: libjpeg allocates what the header says).
"""

from __future__ import annotations

import numpy as np

from core.imaging.errors import CorruptImageError, UnsupportedFormatError, detail
from core.imaging.gray import deep_scale, finish, luma
from core.imaging.headers import Declared
from core.imaging.types import XrayImage

__all__ = ["needs_libjpeg", "read_libjpeg"]

# Lossless processes (SOF3/7/11/15); JPEG-LS is SOF55.
_LOSSLESS_MARKERS = frozenset({0xC3, 0xC7, 0xCB, 0xCF, 0xF7})


def needs_libjpeg(declared: Declared) -> bool:
    """True for a JPEG-family stream Pillow would reject: deeper than 8 bits, lossless, or JPEG-LS."""
    if declared.codec not in ("JPEG", "JPEG-LS"):
        return False
    return declared.bits != 8 or declared.marker in _LOSSLESS_MARKERS


def read_libjpeg(data: bytes, declared: Declared, keep_raw: bool) -> XrayImage:
    """Decode a stand-alone JPEG / JPEG-LS file whose declared size the caller has already checked.

    Raises:
        UnsupportedFormatError: libjpeg is not installed.
        CorruptImageError: the stream does not decode, or decodes to another size than it declared.
        ImageError: the decoded image fails the content checks (see :mod:`core.imaging.checks`).
    """
    kind = f"{declared.bits}-bit {declared.codec}"
    try:
        import libjpeg
    except ImportError:
        raise UnsupportedFormatError(
            f"This {kind} file needs the pylibjpeg-libjpeg decoder, which is not installed here. "
            "Export the X-ray as PNG or as an 8-bit JPEG."
        ) from None
    try:
        values = np.asarray(libjpeg.decode(data))
    except Exception as exc:  # noqa: BLE001 - the codec raises RuntimeError and others on damaged data
        raise CorruptImageError(
            f"This {kind} file could not be decoded: it is damaged or incomplete. Export it again. "
            f"(Technical detail: {detail(exc)})"
        ) from None
    if values.shape[:2] != (declared.height, declared.width) or values.ndim not in (2, 3):
        raise CorruptImageError(
            f"This {kind} file is damaged: its header declares {declared.width} x {declared.height} pixels but "
            f"its data decodes to {values.shape}. Export it again."
        )
    if declared.bits <= 8:
        bits, scale = 8, 255.0
    else:
        bits, scale = deep_scale(values)
    notes: list[str] = []
    if values.ndim == 3:
        raw, mode = luma(values), "RGB"
        notes.append(f"colour {declared.codec} ({mode}) converted to grayscale")
    else:
        raw, mode = values.astype(np.float32), ("L" if declared.bits <= 8 else "I;16")
    return finish(raw, fmt=declared.codec, mode=mode, bits=bits, scale=scale, notes=notes, keep_raw=keep_raw)
