"""Small, seeded hostile and broken image files, built in memory: the cases of issue 10 ("Hostile and broken inputs").

Shared by ``bench/robustness.py`` (peak memory of each case) and the tests (what each case must give). Nothing here
is committed as a file: every builder returns bytes, built from a seed and a few parameters.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

SEED = 10
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.10"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


# ------------------------------------------------------------------------------------------- plain images


def chest_like(height: int = 256, width: int = 256, seed: int = SEED) -> np.ndarray:
    """A smooth uint8 image with a radiograph's layout (dark lung fields, bright mediastinum), seeded noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xx / max(1, width - 1), yy / max(1, height - 1)
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2)) + np.exp(
        -(((x - 0.7) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2)
    )
    image = 0.75 - 0.5 * lungs + 0.1 * y
    image += np.random.default_rng(seed).normal(0.0, 0.01, image.shape).astype(np.float32)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """``image`` saved by Pillow as ``fmt``, as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# ------------------------------------------------------------------------------------- header size bombs


def png_ihdr_bomb(side: int = 30_000) -> bytes:
    """A valid 8 x 8 PNG whose IHDR (CRC fixed) declares ``side`` x ``side``."""
    data = bytearray(encode(Image.new("L", (8, 8), 128), "PNG"))
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_sof_bomb(side: int = 20_000) -> bytes:
    """A 64 x 64 baseline JPEG whose frame header declares ``side`` x ``side`` (about 1 KB)."""
    return _patch_sof(encode(Image.fromarray(chest_like(64, 64)), "JPEG", quality=50), side, side)


def _patch_siz(codestream: bytes, width: int, height: int) -> bytes:
    data = bytearray(codestream)
    i = data.find(b"\xff\x51")
    data[i + 6 : i + 14] = struct.pack(">II", width, height)  # Xsiz, Ysiz (offsets stay 0)
    return bytes(data)


def j2k_siz_bomb(side: int = 20_000, jp2: bool = False) -> bytes:
    """A 64 x 64 JPEG 2000 (raw codestream, or a JP2 file) whose SIZ declares ``side`` x ``side`` (a few KB)."""
    image = Image.fromarray(chest_like(64, 64))
    if not jp2:
        return _patch_siz(encode(image, "JPEG2000", no_jp2=True), side, side)
    data = encode(image, "JPEG2000")
    start = data.find(b"\xff\x4f\xff\x51")
    return data[:start] + _patch_siz(data[start:], side, side)


def gif_screen_bomb(side: int = 65_535) -> bytes:
    """A 64 x 64 GIF whose logical screen declares ``side`` x ``side``."""
    data = bytearray(encode(Image.fromarray(chest_like(64, 64)).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def webp_canvas_bomb(side: int = 16_384) -> bytes:
    """A RIFF/WEBP file with a VP8X chunk declaring a ``side`` x ``side`` canvas (libwebp allocates it on open)."""
    image = encode(Image.fromarray(chest_like(64, 64)), "WEBP", lossless=True)
    vp8l = image[12:]  # the VP8L chunk of a simple lossless file
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (side - 1).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_size_bomb(side: int = 100_000) -> bytes:
    """A 64 x 64 uncompressed TIFF whose first image directory declares ``side`` x ``side``."""
    data = bytearray(encode(Image.fromarray(chest_like(64, 64)), "TIFF"))
    offset = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        pos = offset + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[pos : pos + 4])
        if tag in (256, 257):
            data[pos + 2 : pos + 4] = struct.pack("<H", 4)  # LONG
            data[pos + 8 : pos + 12] = struct.pack("<I", side)
    return bytes(data)


# ---------------------------------------------------------------------------------------- broken streams


def tiff_bad_second_ifd() -> bytes:
    """A two-page TIFF whose second image directory points past the end of the file."""
    page = Image.fromarray(chest_like(64, 64))
    data = bytearray(encode(page, "TIFF", save_all=True, append_images=[page]))
    offset = struct.unpack("<I", data[4:8])[0]
    pointer = offset + 2 + 12 * struct.unpack("<H", data[offset : offset + 2])[0]
    data[pointer : pointer + 4] = struct.pack("<I", len(data) + 1000)
    return bytes(data)


def float_tiff(bad_value: float = float("inf")) -> bytes:
    """A 64 x 64 float32 TIFF (mode F) with one pixel set to ``bad_value`` (inf, -inf or NaN)."""
    pixels = chest_like(64, 64).astype(np.float32) / 255.0
    pixels[3, 3] = bad_value
    return encode(Image.fromarray(pixels, mode="F"), "TIFF")


def png_clean_truncation(rows_kept: int = 20, height: int = 1000, width: int = 1000) -> bytes:
    """A grayscale PNG declaring ``height`` rows whose zlib stream ends cleanly after ``rows_kept`` of them."""
    pixels = chest_like(height, width)
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(rows_kept))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------ large but plausible


def palette_png(side: int = 7_000) -> bytes:
    """A ``side`` x ``side`` palette PNG with a chest-like layout (7,000 px: 49 MP, just under the 50 MP limit)."""
    small = Image.fromarray(chest_like(128, 128)).quantize(64)
    return encode(small.resize((side, side), Image.Resampling.NEAREST), "PNG", compress_level=9)


def png16(side: int = 7_000) -> bytes:
    """A ``side`` x ``side`` 16-bit grayscale PNG with a chest-like layout."""
    small = chest_like(128, 128).astype(np.uint16) * 16
    image = Image.fromarray(small).resize((side, side), Image.Resampling.NEAREST)
    return encode(image, "PNG", compress_level=9)


# -------------------------------------------------------------------------------------------------- DICOM


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (value padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _file_meta(syntax: str) -> bytes:
    body = (_element(2, 1, b"OB", b"\x00\x01") + _element(2, 2, b"UI", DX_SOP_CLASS.encode())
            + _element(2, 3, b"UI", INSTANCE_UID.encode()) + _element(2, 0x10, b"UI", syntax.encode()))
    return bytes(128) + b"DICM" + _element(2, 0, b"UL", struct.pack("<I", len(body))) + body


def _image_elements(rows: int, cols: int, attrs: dict[tuple[int, int], tuple[bytes, bytes]]) -> bytes:
    """Explicit VR LE dataset elements of a grayscale DX image (no pixel data), sorted by tag."""
    elements = {
        (0x0008, 0x0016): (b"UI", DX_SOP_CLASS.encode()),
        (0x0008, 0x0018): (b"UI", INSTANCE_UID.encode()),
        (0x0008, 0x0060): (b"CS", b"DX"),
        (0x0028, 0x0002): (b"US", struct.pack("<H", 1)),
        (0x0028, 0x0004): (b"CS", b"MONOCHROME2"),
        (0x0028, 0x0010): (b"US", struct.pack("<H", rows)),
        (0x0028, 0x0011): (b"US", struct.pack("<H", cols)),
        (0x0028, 0x0100): (b"US", struct.pack("<H", 8)),
        (0x0028, 0x0101): (b"US", struct.pack("<H", 8)),
        (0x0028, 0x0102): (b"US", struct.pack("<H", 7)),
        (0x0028, 0x0103): (b"US", struct.pack("<H", 0)),
        **attrs,
    }
    return b"".join(_element(g, e, vr, value) for (g, e), (vr, value) in sorted(elements.items()))


def _encapsulated(frame: bytes) -> bytes:
    """Pixel Data (7FE0,0010) holding one encapsulated frame (empty basic offset table)."""
    if len(frame) % 2:
        frame += b"\x00"
    items = (struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(frame)) + frame
             + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + items


def dicom_native(pixels: np.ndarray, **text_attrs: str) -> bytes:
    """An explicit VR little endian 8-bit DX DICOM of ``pixels`` (uint8), with extra text attributes by keyword.

    ``text_attrs`` keys: Modality, ViewPosition, BodyPartExamined, Manufacturer (all written as given).
    """
    tags = {"Modality": (0x0008, 0x0060, b"CS"), "Manufacturer": (0x0008, 0x0070, b"LO"),
            "BodyPartExamined": (0x0018, 0x0015, b"CS"), "ViewPosition": (0x0018, 0x5101, b"CS")}
    attrs = {tags[k][:2]: (tags[k][2], v.encode()) for k, v in text_attrs.items()}
    rows, cols = pixels.shape
    data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return (_file_meta(EXPLICIT_LE) + _image_elements(rows, cols, attrs)
            + _element(0x7FE0, 0x0010, b"OB", data))


def dicom_jpeg_sof_bomb(side: int = 20_000) -> bytes:
    """A 64 x 64 JPEG Baseline DICOM whose JPEG frame header declares ``side`` x ``side`` (about 2 KB)."""
    frame = jpeg_sof_bomb(side)
    return _file_meta(JPEG_BASELINE) + _image_elements(64, 64, {}) + _encapsulated(frame)


def dicom_j2k_siz_bomb(side: int = 20_000) -> bytes:
    """A 64 x 64 JPEG 2000 DICOM whose codestream SIZ declares ``side`` x ``side`` (a few KB)."""
    frame = j2k_siz_bomb(side)
    return _file_meta(JPEG2000_LOSSLESS) + _image_elements(64, 64, {}) + _encapsulated(frame)


def _deflated_chunks(dataset_head: bytes, padding: int, tail: bytes) -> Iterator[bytes]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield compressor.compress(dataset_head)
    zeros = bytes(1 << 24)
    for start in range(0, padding, len(zeros)):
        yield compressor.compress(zeros[: min(len(zeros), padding - start)])
    yield compressor.compress(tail)
    yield compressor.flush()


def dicom_deflate_bomb(inflated_bytes: int = 1 << 30) -> bytes:
    """A valid 256 x 256 Deflated DICOM carrying a private element of zeros: inflates to ``inflated_bytes``.

    Built in 16 MB pieces, so building it never holds the inflated dataset (1 GiB deflates to about 1 MB).
    """
    pixels = chest_like(256, 256)
    head = _image_elements(256, 256, {(0x0029, 0x0010): (b"LO", b"HICXR TEST")})
    padding = max(0, inflated_bytes - len(head) - pixels.size - 32)
    private = struct.pack("<HH2sHI", 0x0029, 0x1000, b"OB", 0, padding)
    tail = _element(0x7FE0, 0x0010, b"OB", pixels.tobytes())
    return _file_meta(DEFLATED) + b"".join(_deflated_chunks(head + private, padding, tail))


# ------------------------------------------------------------------------------------ valid, uncommon files


def jpeg_lossless(pixels: np.ndarray, precision: int = 12) -> bytes:
    """A lossless JPEG (process 14, SOF3, predictor 1) of a 2-D unsigned array: a valid file Pillow cannot read.

    A minimal encoder: one component, one Huffman table giving every difference category (0-16) a 5-bit code.
    """
    x = np.asarray(pixels, dtype=np.int64)
    height, width = x.shape
    predicted = np.empty_like(x)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = x[0, :-1]  # first row: the left neighbour
    predicted[1:, 0] = x[:-1, 0]  # first column: the pixel above
    predicted[1:, 1:] = x[1:, :-1]  # elsewhere: predictor 1, the left neighbour
    diffs = ((x - predicted + 32768) % 65536 - 32768).ravel()
    bits: list[str] = []
    for d in diffs.tolist():
        size = abs(d).bit_length()
        bits.append(format(size, "05b"))
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    scan = bytearray()
    for k in range(0, len(stream), 8):
        byte = int(stream[k : k + 8], 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0x00)  # byte stuffing
    sof = struct.pack(">BHHB", precision, height, width, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0x00])

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(scan) + b"\xff\xd9"


def valid_files(side: int = 160) -> dict[str, bytes]:
    """One small chest-like image in each format a folder scan must analyse, by file name."""
    gray = Image.fromarray(chest_like(side, side))
    return {
        "plain.png": encode(gray, "PNG"),
        "photo.jfif": encode(gray, "JPEG", quality=90),
        "frames.gif": encode(gray.convert("P"), "GIF"),
        "wavelet.jp2": encode(gray, "JPEG2000"),
        "netpbm.pgm": encode(gray, "PPM"),
        "scan.tiff": encode(gray, "TIFF"),
        "web.webp": encode(gray, "WEBP", lossless=True),
        "bitmap.bmp": encode(gray, "BMP"),
        "deep.jpg": jpeg_lossless(chest_like(side, side).astype(np.uint16) * 16, precision=12),
    }
