"""Detect image streams that end early but cleanly, which decoders accept and fill with blank rows.

A PNG whose zlib stream ends properly after 20 of its 1,000 rows decodes without an error in Pillow: the missing
rows come out black. :func:`png_rows_missing` inflates the image data in small pieces (output discarded) and
compares its length with what the header requires.
"""

from __future__ import annotations

import math
import struct
import zlib

from core.imaging.headers import PNG_SIGNATURE

__all__ = ["png_rows_missing"]

# Adam7 passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PIECE = 1 << 20


def _expected_bytes(width: int, height: int, pixel_bits: int, interlaced: bool) -> int:
    """Filtered scanline bytes the IHDR requires: one filter byte plus the packed samples, per row (per pass)."""
    if not interlaced:
        return height * (1 + math.ceil(width * pixel_bits / 8))
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols, rows = math.ceil(max(0, width - x0) / dx), math.ceil(max(0, height - y0) / dy)
        if cols and rows:
            total += rows * (1 + math.ceil(cols * pixel_bits / 8))
    return total


def png_rows_missing(data: bytes) -> tuple[int, int] | None:
    """``(rows present, rows declared)`` when a PNG's image data holds fewer rows than its header declares.

    ``None`` when the data is complete, is not a PNG, or is damaged in a way the decoder reports itself (a broken
    zlib stream, a bad chunk). For interlaced images the rows present are an estimate.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos, n = 8, len(data)
    expected = row_bytes = height = 0
    inflater = zlib.decompressobj()
    inflated = 0
    try:
        while pos + 8 <= n:
            length, kind = struct.unpack_from(">I4s", data, pos)
            body = memoryview(data)[pos + 8 : pos + 8 + length]
            pos += 12 + length
            if kind == b"IHDR" and len(body) >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
                pixel_bits = _CHANNELS.get(colour, 4) * depth
                expected = _expected_bytes(width, height, pixel_bits, interlace == 1)
                row_bytes = 1 + math.ceil(width * pixel_bits / 8)
            elif kind == b"IDAT" and expected:
                pending = body
                while pending and inflated < expected:
                    inflated += len(inflater.decompress(pending, _PIECE))
                    pending = inflater.unconsumed_tail
                if inflated >= expected or inflater.eof:
                    break
            elif kind == b"IEND":
                break
    except (zlib.error, struct.error):
        return None
    if not expected or inflated >= expected:
        return None
    return min(height, inflated // max(1, row_bytes)), height
