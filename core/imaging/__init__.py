"""Turn an uploaded file (PNG, JPEG, other Pillow formats, DICOM) into a grayscale float image plus metadata.

Everything downstream (the models, Grad-CAM, the dashboard) sees one convention, whatever came in:
``XrayImage.pixels`` is a C-contiguous ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``, where 0 is
black and dense structures are bright (DICOM MONOCHROME2: air and lungs dark, bone and mediastinum bright).

Every failure a file can cause, including an unexpected exception inside a decoder, raises a subclass of
:class:`ImageError` whose message is written for a clinician: what is wrong with the file and what to do about it.
Programming errors (wrong argument types, a non-positive window width) raise ordinary ``TypeError``/``ValueError``.

The package, one job per module:

* :mod:`~core.imaging.reader` - :func:`read_image`: bytes or a path (a regular file only: a FIFO, device, broken
  link or link loop is refused by name, never opened) to an image, dispatching on content, not on the file name.
* :mod:`~core.imaging.headers` and :mod:`~core.imaging.limits` - memory bounded before any decode: the size each
  codec stream declares, Rows x Columns x samples x bits, and a Deflated DICOM's inflated size.
* :mod:`~core.imaging.integrity` - streams that end early but cleanly (a PNG cut after 20 of 1,000 rows).
* :mod:`~core.imaging.pillow_reader`, :mod:`~core.imaging.jpeg_reader`, :mod:`~core.imaging.gray` - ordinary
  image files (12-bit, lossless JPEG and JPEG-LS through libjpeg).
* :mod:`~core.imaging.dicom_reader`, :mod:`~core.imaging.dicom_voi` - DICOM and ACR-NEMA.
* :mod:`~core.imaging.checks` - no garbage is scored: non-finite values, impossible shapes, no contrast, noise,
  transparency (the rule is stated there and in the README).
* :mod:`~core.imaging.coded` - header fields shown only as DICOM defined terms, anything else as ``"other"``.
* :mod:`~core.imaging.window`, :mod:`~core.imaging.types`, :mod:`~core.imaging.errors`.
"""

from core.imaging.errors import (
    BlankImageError,
    CorruptImageError,
    DegenerateImageError,
    EmptyFileError,
    ImageError,
    ImageTooLargeError,
    UnsupportedDicomError,
    UnsupportedFormatError,
    UnsupportedModalityError,
)
from core.imaging.reader import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, is_dicom, read_image
from core.imaging.types import ImageMetadata, XrayImage
from core.imaging.window import WindowFunction, apply_window, to_uint8

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "BlankImageError",
    "CorruptImageError",
    "DegenerateImageError",
    "EmptyFileError",
    "ImageError",
    "ImageMetadata",
    "ImageTooLargeError",
    "UnsupportedDicomError",
    "UnsupportedFormatError",
    "UnsupportedModalityError",
    "WindowFunction",
    "XrayImage",
    "apply_window",
    "is_dicom",
    "read_image",
    "to_uint8",
]
