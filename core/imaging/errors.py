"""The errors a file can cause, each with a message written for a clinician, and helpers that build them."""

from __future__ import annotations

import re

from core.errors import HiCXRError

__all__ = [
    "BlankImageError",
    "CorruptImageError",
    "DegenerateImageError",
    "EmptyFileError",
    "ImageError",
    "ImageTooLargeError",
    "UnsupportedDicomError",
    "UnsupportedFormatError",
    "UnsupportedModalityError",
    "detail",
    "too_many_pixels",
]


class ImageError(HiCXRError, ValueError):
    """Base class of every file problem; ``str(e)`` tells a clinician what is wrong and what to do."""


class EmptyFileError(ImageError):
    """The file has no content at all (0 bytes)."""


class UnsupportedFormatError(ImageError):
    """The file is not an image, or is in a format HiCXR does not read (also: not a regular file)."""


class CorruptImageError(ImageError):
    """The file is a known format but damaged: truncated, undecodable, invalid values, or a DICOM without an image."""


class ImageTooLargeError(ImageError):
    """The file, the image its header declares, or what its compressed stream would expand to, exceeds a limit."""


class UnsupportedModalityError(ImageError):
    """A DICOM image of a modality that is not a radiograph (CT, MR, US, ...)."""


class UnsupportedDicomError(ImageError):
    """A valid DICOM this installation cannot turn into a grayscale radiograph (codec missing, palette colour)."""


class DegenerateImageError(ImageError):
    """The image decodes but cannot be a radiograph: too small, too elongated, no contrast, noise, fully transparent."""


class BlankImageError(DegenerateImageError):
    """The image has no pixels or a single grey level, so there is nothing to read."""


# DICOM readers give the exception type only (pydicom's messages quote element values unquoted too). Other
# libraries' messages sometimes quote the offending header value ("invalid value 'DOE^JOHN' for VR ..."), and any
# header value may be a name or a record number a site wrote there: quoted text never reaches a message.
# Python's repr escapes a quote of the other kind with a backslash, so quoted runs honour escapes; a quote left
# unpaired (a value holding both kinds) ends the message there.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_STRAY_QUOTE = re.compile(r"['\"`].*")


def detail(exc: BaseException) -> str:
    """First line of an exception, quoted values removed, shortened: enough for a support ticket, nothing more."""
    first = (str(exc).strip().splitlines() or [""])[0]
    first = _QUOTED.sub("'…'", first).replace("'…'", "\0")
    first = _STRAY_QUOTE.sub("…", first).replace("\0", "'…'")
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def too_many_pixels(width: int, height: int, max_pixels: int, what: str = "The image") -> ImageTooLargeError:
    """The error for an image whose declared size exceeds the pixel limit."""
    return ImageTooLargeError(
        f"{what} is too large ({width} x {height} pixels; the limit is {max_pixels / 1e6:.0f} million pixels). "
        "Export a smaller copy of the X-ray."
    )
