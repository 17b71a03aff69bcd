"""The entry point: bytes or a path -> :class:`XrayImage`, whatever the format, or one :class:`ImageError`."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import numpy as np

from core.imaging import dicom_reader, headers
from core.imaging.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    detail,
)
from core.imaging.pillow_reader import read_pillow
from core.imaging.types import XrayImage

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "is_dicom", "read_image"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

logger = logging.getLogger("hicxr.imaging")

#: Special files the reader refuses without opening them (a FIFO would block), and how a message names each;
#: :mod:`core.scan` reports them with the same words.
SPECIAL_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def is_dicom(data: bytes) -> bool:
    """Return True if ``data`` is a DICOM image file.

    True for the standard ``DICM`` marker at offset 128 (or at byte 0: a file written without its preamble) in
    a file that is not one of the image formats (see :func:`_decode`), and for old ACR-NEMA files without
    preamble that parse and declare Rows, Columns and Pixel Data.
    """
    if data[:4] == b"DICM" or (data[128:132] == b"DICM" and headers.sniff(data) is None):
        return True
    try:
        return dicom_reader.parse_headerless(data, DEFAULT_MAX_BYTES) is not None
    except ImageTooLargeError:
        return True  # a file meta group declaring a (huge) Deflated dataset is DICOM


def read_image(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_raw: bool = False,
) -> XrayImage:
    """Decode a PNG, JPEG, other Pillow image or DICOM file (bytes or a path) into an :class:`XrayImage`.

    Raises a subclass of :class:`ImageError` for anything wrong with the file, including any unexpected failure
    inside a decoder (reported as :class:`CorruptImageError`) and running out of memory
    (:class:`ImageTooLargeError`). ``keep_raw=True`` also stores the pre-window values so the image can be
    re-windowed (:meth:`XrayImage.rewindow`).
    """
    name: str | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_byte_size(len(data), max_bytes)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        data = _read_path(path, max_bytes)
    else:
        raise TypeError(f"read_image() expects bytes or a path, not {type(source).__name__}")
    try:
        return _check_finite_output(_decode(data, name, max_bytes, max_pixels, keep_raw))
    except ImageError:
        raise
    except MemoryError:
        raise ImageTooLargeError(
            "The image could not be decoded within the memory available. Export a smaller copy of the X-ray."
        ) from None
    except Exception as exc:  # noqa: BLE001 - one hostile file must not take the batch or the page down
        logger.warning("unexpected %s while decoding an image", type(exc).__name__)
        raise CorruptImageError(
            "The file could not be read: it is damaged or laid out in a way HiCXR does not expect. "
            f"Export the X-ray again. (Technical detail: {detail(exc)})"
        ) from None


def _decode(data: bytes, name: str | None, max_bytes: int, max_pixels: int, keep_raw: bool) -> XrayImage:
    """Dispatch on content: each format's own signature first, then what decodes.

    A file that starts with an image format's signature (PNG, JPEG, JPEG 2000, GIF, WebP) is that image, even if
    its bytes 128-131 happen to read ``DICM``; it is read as DICOM only if it does not decode as an image and
    carries the marker. A TIFF header before the marker is the DICOM-TIFF dual layout: DICOM first, then TIFF.
    A DICOM written without its 128-byte preamble (``DICM`` at byte 0) is read as if it had one.
    """
    if data[:4] == b"DICM":
        data = bytes(128) + data
    marker = data[128:132] == b"DICM"
    declared = headers.sniff(data) if marker else None
    # A TIFF header in the preamble is DICOM's own dual-personality layout (PS3.10 7.5): DICOM first, there.
    if marker and (declared is None or declared.codec == "TIFF"):
        try:
            return dicom_reader.read_dicom(data, dicom_reader.parse(data, max_bytes), max_pixels, keep_raw)
        except ImageError as dicom_error:
            # A format without a signature headers.sniff knows (BMP, PNM) may hold DICM at 128 too.
            try:
                image = read_pillow(data, max_pixels, keep_raw)
            except ImageError:
                image = None
            if image is None:
                raise dicom_error from None
            return image
    try:
        image = read_pillow(data, max_pixels, keep_raw)
    except ImageError:
        if not marker:
            raise
        try:  # an image header in a DICOM preamble (DICOM-TIFF dual files, say) that does not decode as one
            return dicom_reader.read_dicom(data, dicom_reader.parse(data, max_bytes), max_pixels, keep_raw)
        except ImageError:
            pass
        raise  # the image reader's reason: the file starts as that image
    if image is not None:
        return image
    ds = dicom_reader.parse_headerless(data, max_bytes)
    if ds is None and len(data) > 136 and not any(data[:128]):
        # A zero preamble without the DICM marker (a writer that forgot it): the data set starts at 128.
        data = data[128:]
        ds = dicom_reader.parse_headerless(data, max_bytes)
    if ds is not None:
        return dicom_reader.read_dicom(data, ds, max_pixels, keep_raw)
    raise UnsupportedFormatError(_not_an_image_message(data, name))


def _check_finite_output(image: XrayImage) -> XrayImage:
    """The last guard before any model or view: displayed grey levels that are not all finite are refused.

    Every step that computes them (rescale, window, LUT, luma) is computed in float64 or range-checked, so this
    should never fire; if it does, the image is refused here, with a plain reason, not after the model.
    """
    pixels = image.pixels
    if not (np.isfinite(pixels.min()) and np.isfinite(pixels.max())):
        raise CorruptImageError(
            "The image's grey levels could not be computed (they are not finite numbers), so it cannot be read "
            "reliably: the file's pixel, rescale or window values are out of range. Export the X-ray again."
        )
    return image


def _check_byte_size(n_bytes: int, max_bytes: int) -> None:
    if n_bytes == 0:
        raise EmptyFileError("The file is empty (0 bytes). Upload it again, or export the X-ray again from PACS.")
    if n_bytes > max_bytes:
        raise ImageTooLargeError(
            f"The file is too large ({n_bytes / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB). "
            "Export a single image, or a smaller copy (PNG, JPEG or an uncompressed single-frame DICOM)."
        )


def _read_path(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, refused without opening it when it is anything else (a FIFO would block)."""
    try:
        info = path.stat()  # size and kind first: a huge file or a pipe is refused without being read
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path.name!r} is a broken link: the file it points to does not exist.") from None
        raise ImageError(f"The file {path.name!r} was not found. Check the name and location.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsupportedFormatError(
                f"{path.name!r} is a symbolic link loop (it leads back to itself), not a file."
            ) from None
        raise ImageError(f"The file {path.name!r} could not be opened ({exc.strerror}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path.name!r} is a folder, not an image file. Choose one image file inside it.")
    for test, kind in SPECIAL_FILE_KINDS:
        if test(info.st_mode):
            raise UnsupportedFormatError(f"{path.name!r} is {kind}, not a regular file: HiCXR reads image files only.")
    _check_byte_size(info.st_size, max_bytes)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as exc:
        raise ImageError(f"The file {path.name!r} could not be read ({exc.strerror}).") from None
    _check_byte_size(len(data), max_bytes)
    return data


def _not_an_image_message(data: bytes, name: str | None) -> str:
    head = data[:512]
    looks_like_text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    what = "it contains text" if looks_like_text else "its content is not a PNG, JPEG or DICOM image"
    if name is not None and name.lower().endswith((".dcm", ".dicom", ".dic")):
        what = f"it is named like a DICOM file but holds no DICOM image ({what})"
    return (
        f"This file is not an image that HiCXR can read: {what}. "
        "Upload the chest X-ray as a DICOM, PNG or JPEG file (export it again from PACS if needed)."
    )
