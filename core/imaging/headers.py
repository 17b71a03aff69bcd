"""Read the image size a codec stream declares, from its header bytes alone, without decoding anything.

A decoder allocates what its own stream declares, whatever a container header (DICOM Rows/Columns, the file's
size) says, so the size limits are checked against these declarations before any decoder runs. Each parser reads
a few dozen bytes and returns ``None`` when the bytes are not that format or its header is cut short; none of them
allocates more than the header it reads.

Covered: PNG (IHDR), JPEG and JPEG-LS (the frame header: SOF0-SOF15, SOF55), JPEG 2000 (SIZ, in a raw codestream
or a JP2 file), GIF (logical screen and every image descriptor), TIFF and BigTIFF (first image directory) and WebP
(VP8X canvas, VP8, VP8L).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Declared", "gif", "j2k", "jp2", "jpeg", "png", "sniff", "tiff", "webp"]


@dataclass(frozen=True)
class Declared:
    """What a codec stream says it will decode to.

    Attributes:
        codec: Name for messages ("PNG", "JPEG", "JPEG-LS", "JPEG 2000", "GIF", "TIFF", "WebP").
        width: Columns (0 when the stream defers it, e.g. a JPEG DNL marker).
        height: Rows (0 when the stream defers it).
        components: Samples per pixel.
        bits: Bits per sample (the largest over components).
        marker: JPEG only: the frame marker (0xC0-0xCF, 0xF7 for JPEG-LS), which says what decoder it needs.
    """

    codec: str
    width: int
    height: int
    components: int = 1
    bits: int = 8
    marker: int | None = None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SIGNATURE = b"\xff\x4f\xff\x51"
# Frame headers: every SOFn except DHT (C4), JPG (C8) and DAC (CC), plus JPEG-LS's SOF55 (F7).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png(data: bytes) -> Declared | None:
    """PNG: the IHDR chunk, which the signature must be followed by."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return Declared("PNG", width, height, _PNG_CHANNELS.get(colour, 4), depth)


def jpeg(data: bytes) -> Declared | None:
    """JPEG / JPEG-LS: the first frame header, skipping the segments before it by their lengths."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            # Stray bytes between segments: decoders skip to the next marker, and so does this parser.
            i = data.find(b"\xff", i)
            if i < 0:
                return None
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in JPEG_FRAME_MARKERS:
            segment = data[i + 4 : i + 2 + length]
            if length < 8 or len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            codec = "JPEG-LS" if marker == 0xF7 else "JPEG"
            return Declared(codec, width, height, components, precision, marker)
        if length < 2:
            return None
        i += 2 + length
    return None


def j2k(data: bytes) -> Declared | None:
    """JPEG 2000 codestream: the SIZ segment, which must follow the SOC marker."""
    if not data.startswith(J2K_SIGNATURE) or len(data) < 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
    components = int.from_bytes(data[40:42], "big")
    depths = data[42 : 42 + 3 * components : 3]
    bits = max(((s & 0x7F) + 1 for s in depths), default=0)
    return Declared("JPEG 2000", max(0, xsiz - xosiz), max(0, ysiz - yosiz), components, bits)


def jp2(data: bytes) -> Declared | None:
    """JP2 file: the SIZ of the codestream box (``jp2c``), found by walking the top-level boxes."""
    if not data.startswith(JP2_SIGNATURE):
        return None
    i, n = 0, len(data)
    while i + 8 <= n:
        length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        header = 8
        if length == 1:  # 64-bit length follows
            if i + 16 > n:
                return None
            length, header = int.from_bytes(data[i + 8 : i + 16], "big"), 16
        elif length == 0:  # box runs to the end of the file
            length = n - i
        if kind == b"jp2c":
            return j2k(data[i + header : i + header + 64 + 3 * 16384])
        if length < header:
            return None
        i += length
    return None


def gif(data: bytes) -> Declared | None:
    """GIF: the logical screen, grown to hold every frame (Pillow enlarges the canvas for a frame that overflows)."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    n = len(data)
    while i < n:
        block = data[i]
        if block == 0x2C:  # image descriptor
            if i + 10 > n:
                break
            left, top, w, h, flags = struct.unpack("<HHHHB", data[i + 1 : i + 10])
            width, height = max(width, left + w), max(height, top + h)
            i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # + local colour table + LZW code size
        elif block == 0x21:  # extension: label, then sub-blocks
            i += 2
        else:  # trailer or garbage: the decoder stops here too
            break
        while i < n and data[i]:  # skip sub-blocks
            i += data[i] + 1
        i += 1
    return Declared("GIF", width, height, 1, 8)


def tiff(data: bytes) -> Declared | None:
    """TIFF / BigTIFF: ImageWidth, ImageLength, SamplesPerPixel and BitsPerSample of the first image directory."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    magic = struct.unpack(order + "H", data[2:4])[0]
    if magic == 42:  # classic: 32-bit offsets, 12-byte entries
        offset = struct.unpack(order + "I", data[4:8])[0]
        count_fmt, entry_fmt, entry_size, value_size = "H", "HHI", 12, 4
    elif magic == 43:  # BigTIFF: 64-bit offsets, 20-byte entries
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count_fmt, entry_fmt, entry_size, value_size = "Q", "HHQ", 20, 8
    else:
        return None
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(data):
        return None
    count = struct.unpack(order + count_fmt, data[offset : offset + count_size])[0]
    fields: dict[int, int] = {}
    start = offset + count_size
    for k in range(min(count, (len(data) - start) // entry_size)):
        pos = start + k * entry_size
        tag, kind, n_values = struct.unpack(order + entry_fmt, data[pos : pos + entry_size - value_size])
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)  # SHORT, LONG, LONG8
        if tag not in (256, 257, 258, 277) or fmt is None or n_values < 1:
            continue
        size = struct.calcsize(fmt)
        where = pos + entry_size - value_size  # the value itself when it fits, else the offset of the values
        if n_values * size > value_size:
            where = struct.unpack(order + ("I" if value_size == 4 else "Q"), data[where : where + value_size])[0]
        if where + size <= len(data):
            fields[tag] = struct.unpack(order + fmt, data[where : where + size])[0]
    if 256 not in fields or 257 not in fields:
        return None
    samples = fields.get(277, 1)
    bits = fields.get(258, 8) if fields.get(258, 8) <= 64 else 8
    return Declared("TIFF", fields[256], fields[257], samples, bits)


def webp(data: bytes) -> Declared | None:
    """WebP: the VP8X canvas if present (libwebp allocates it up front), else the VP8 or VP8L frame header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    kind, body = data[12:16], data[20:40]
    if kind == b"VP8X" and len(body) >= 10:
        return Declared("WebP", int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1, 4)
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return Declared("WebP", width & 0x3FFF, height & 0x3FFF, 3)
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return Declared("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4)
    return None


_PARSERS: tuple[Callable[[bytes], Declared | None], ...] = (png, jpeg, j2k, jp2, gif, tiff, webp)


def sniff(data: bytes) -> Declared | None:
    """The declared size of a stand-alone image file in any format above, or ``None`` for anything else."""
    for parse in _PARSERS:
        try:
            declared = parse(data)
        except (struct.error, IndexError, ValueError):
            # A header cut short is not this parser's business: the decoder reports the damage.
            declared = None
        if declared is not None:
            return declared
    return None
