"""Size limits, enforced before any decoder or inflater allocates memory.

Three declarations are checked against the limits, because each is what some library allocates:

* the size a codec stream declares (:mod:`core.imaging.headers`): pixels, and bytes = pixels x samples x bytes per
  sample, which may not exceed what a float32 grey image of ``max_pixels`` takes (4 bytes a pixel);
* for DICOM, Rows x Columns x Samples per Pixel x Bits Allocated, and for a compressed frame, that the stream
  inside declares the same size as the header (a mismatch would make the decoder allocate the stream's size);
* for a Deflated DICOM (which pydicom inflates whole, in memory, before parsing), the inflated size, counted by
  inflating in small pieces and discarding them; it may not exceed ``max_bytes``, the limit for a file on disk.
"""

from __future__ import annotations

import math
import struct
import zlib

from core.imaging.errors import CorruptImageError, ImageTooLargeError, UnsupportedFormatError, too_many_pixels
from core.imaging.headers import Declared

__all__ = [
    "BYTES_PER_PIXEL_BUDGET",
    "DEFLATED_SYNTAX",
    "check_declared",
    "check_deflated_dicom",
    "check_stored_size",
    "dicom_meta",
    "inflated_size",
]

# A decoded image may take at most this many bytes per pixel of the pixel limit before any conversion: enough for
# RGBA 8-bit or a 32-bit float grey image, not for 16-bit colour at the limit.
BYTES_PER_PIXEL_BUDGET = 4
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
MAX_COMPONENTS = 4

# File meta VRs with a 4-byte length (PS3.5 7.1.2); every other explicit VR has a 2-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_CHUNK = 1 << 20


def check_declared(declared: Declared, max_pixels: int, where: str = "") -> None:
    """Refuse a stream whose declared image is empty, too large, or has more samples than an image can.

    Raises:
        CorruptImageError: a side of 0 (deferred to a marker HiCXR does not read, or simply broken).
        UnsupportedFormatError: more than 4 samples per pixel.
        ImageTooLargeError: over ``max_pixels``, or over the byte budget of ``max_pixels`` grey float pixels.
    """
    what = f"The {declared.codec} image{where}"
    w, h = declared.width, declared.height
    if w <= 0 or h <= 0:
        raise CorruptImageError(
            f"{what} does not declare its size ({w} x {h} pixels), so it cannot be decoded safely. "
            "Export the X-ray again (PNG, JPEG or an uncompressed DICOM)."
        )
    if w * h > max_pixels:
        raise too_many_pixels(w, h, max_pixels, what)
    if declared.components > MAX_COMPONENTS:
        raise UnsupportedFormatError(
            f"{what} declares {declared.components} samples per pixel; a radiograph has 1 (grey) or 3 (colour). "
            "Export it as a grayscale PNG, JPEG or DICOM."
        )
    check_stored_size(w, h, declared.components, declared.bits, max_pixels, what)


def check_stored_size(width: int, height: int, samples: int, bits: int, max_pixels: int, what: str) -> None:
    """Refuse an image whose decoded samples would take more than the byte budget of ``max_pixels``."""
    stored = width * height * max(1, samples) * max(1, math.ceil(bits / 8))
    if stored > BYTES_PER_PIXEL_BUDGET * max_pixels:
        raise ImageTooLargeError(
            f"{what} is too large to decode: {width} x {height} pixels with {samples} sample(s) of {bits} bits "
            f"would take {stored / 2**20:.0f} MB (the limit is {BYTES_PER_PIXEL_BUDGET * max_pixels / 2**20:.0f} MB). "
            "Export a smaller or grayscale copy of the X-ray."
        )


def inflated_size(stream: bytes | memoryview, limit: int) -> int:
    """Bytes a raw deflate stream inflates to, counted up to just past ``limit`` (memory stays at ~1 MB).

    Returns what was inflated before the stream ended, broke or passed ``limit``; a broken stream is left for the
    parser to report.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(stream)
    total = 0
    try:
        for start in range(0, len(view), _CHUNK):
            pending = view[start : start + _CHUNK]
            while pending and total <= limit:
                total += len(inflater.decompress(pending, _CHUNK))
                pending = inflater.unconsumed_tail
            if total > limit or inflater.eof:
                break
    except zlib.error:
        pass
    return total


def dicom_meta(data: bytes) -> tuple[int, str | None]:
    """Parse the file meta group (0002,xxxx) by hand: (offset of the dataset after it, transfer syntax UID or None).

    The group is always explicit VR little endian and comes right after the ``DICM`` marker (or at the start of
    a file without preamble). Parsing stops at the first element of another group, or at a damaged element.
    """
    pos = 132 if data[128:132] == b"DICM" else 0
    syntax: str | None = None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if element == 0x0010:
            syntax = data[pos + header : pos + header + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += header + length
    return pos, syntax


def check_deflated_dicom(data: bytes, max_bytes: int) -> None:
    """Refuse a Deflated Explicit VR DICOM that would inflate past ``max_bytes``; any other file passes untouched.

    Raises:
        ImageTooLargeError: the dataset inflates to more than ``max_bytes``.
    """
    offset, syntax = dicom_meta(data)
    if syntax != DEFLATED_SYNTAX:
        return
    size = inflated_size(memoryview(data)[offset:], max_bytes)
    if size > max_bytes:
        raise ImageTooLargeError(
            f"This compressed (Deflated) DICOM file expands to more than {max_bytes / 2**20:.0f} MB, the limit for "
            "a file. Export a single image, or an uncompressed single-frame DICOM."
        )
