"""Small, seeded hostile and broken image files, built in memory: the cases of issue 10 ("Hostile and broken inputs").

Shared by ``bench/robustness.py`` (peak memory of each case) and the tests (what each case must give). Nothing here
is committed as a file: every builder returns bytes, built from a seed and a few parameters.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator

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
    if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"):
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


# ============================================================ issue 22: hostile and odd inputs, third round
# Each builder is one case of a class; the tests (tests/test_imaging_odd.py, tests/test_predict.py) cover every
# class through them, and bench/robustness.py measures the large ones.


def dicom_with(pixels: np.ndarray, attrs: dict[tuple[int, int], tuple[bytes, bytes]], *,
               syntax: str = EXPLICIT_LE, pixel_tag: tuple[int, int, bytes] = (0x7FE0, 0x0010, b"OB"),
               pixel_bytes: bytes | None = None, preamble: bool = True) -> bytes:
    """An explicit VR little endian DX DICOM of ``pixels`` (uint8 unless ``pixel_bytes``) with raw ``attrs``
    (tag -> (VR, value bytes)) overriding the defaults: the way to write values pydicom would refuse to write."""
    rows, cols = pixels.shape[:2]
    data = pixel_bytes if pixel_bytes is not None else np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    meta = _file_meta(syntax)
    body = _image_elements(rows, cols, attrs) + _element(pixel_tag[0], pixel_tag[1], pixel_tag[2], data)
    return (meta if preamble else meta[128:]) + body


def _ds(value: str) -> tuple[bytes, bytes]:
    return b"DS", value.encode()


# ---- class 1: file names that are not UTF-8 (written by tests under these byte names)

ODD_NAMES: tuple[bytes, ...] = (
    b"r\xf6ntgen_\xfc.png",  # Latin-1 umlauts: not valid UTF-8
    b"\xff\xfe\\x41.png",  # a UTF-16 BOM and a literal backslash escape
    b"ok_\xc3(.png",  # a broken two-byte UTF-8 sequence
)


# ---- class 2: non-finite values produced by a window, a rescale or the pixel data itself

def dicom_window_overflow(width: str = "1e39") -> bytes:
    """A DX DICOM whose Window Width overflows float32 (finite in float64)."""
    return dicom_with(chest_like(), {(0x0028, 0x1050): _ds("128"), (0x0028, 0x1051): _ds(width)})


def dicom_rescale_overflow(slope: str = "1e38") -> bytes:
    """A DX DICOM whose Rescale Slope times its stored values overflows float32."""
    return dicom_with(chest_like(), {(0x0028, 0x1052): _ds("0"), (0x0028, 0x1053): _ds(slope)})


def dicom_float_pixels(values: np.ndarray, double: bool = False) -> bytes:
    """A DX DICOM with Float (or Double Float) Pixel Data holding ``values``.

    Float images carry no Bits Stored, High Bit or Pixel Representation (PS3.3 C.7.6.3.1), so those are left out.
    """
    if double:
        dtype, bits, tag = np.float64, 64, (0x7FE0, 0x0009, b"OD")
    else:
        dtype, bits, tag = np.float32, 32, (0x7FE0, 0x0008, b"OF")
    rows, cols = values.shape
    elements = {
        (0x0008, 0x0016): (b"UI", DX_SOP_CLASS.encode()), (0x0008, 0x0018): (b"UI", INSTANCE_UID.encode()),
        (0x0008, 0x0060): (b"CS", b"DX"), (0x0028, 0x0002): (b"US", struct.pack("<H", 1)),
        (0x0028, 0x0004): (b"CS", b"MONOCHROME2"), (0x0028, 0x0010): (b"US", struct.pack("<H", rows)),
        (0x0028, 0x0011): (b"US", struct.pack("<H", cols)), (0x0028, 0x0100): (b"US", struct.pack("<H", bits)),
    }
    dataset = b"".join(_element(g, e, vr, v) for (g, e), (vr, v) in sorted(elements.items()))
    body = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return _file_meta(EXPLICIT_LE) + dataset + _element(tag[0], tag[1], tag[2], body)


def dicom_all_nan(double: bool = False) -> bytes:
    """Float Pixel Data in which every value is NaN."""
    return dicom_float_pixels(np.full((128, 128), np.nan), double=double)


def float_tiff_all(value: float = float("nan")) -> bytes:
    """A 64 x 64 float32 TIFF in which every pixel is ``value``."""
    return encode(Image.fromarray(np.full((64, 64), value, dtype=np.float32), mode="F"), "TIFF")


# ---- class 3: header text that must never reach a message or the log

LEAK_TOKEN = "DOE^JOHN7731"


def dicom_frames_leak(token: str = LEAK_TOKEN) -> bytes:
    """A DX DICOM whose Number of Frames (IS) holds quotes and an identifying token."""
    return dicom_with(chest_like(), {(0x0028, 0x0008): (b"IS", f"2'\"{token}".encode())})


def dicom_charset_leak(token: str = LEAK_TOKEN) -> bytes:
    """A DX DICOM whose Specific Character Set is an unknown term holding an identifying token."""
    return dicom_with(chest_like(), {(0x0008, 0x0005): (b"CS", f"ISO_IR {token}".encode())})


# ---- class 4: signatures in the wrong order

def png_with_dicm_at_128() -> bytes:
    """A valid grayscale PNG whose bytes 128-131 are ``DICM`` (a tEXt chunk placed to put them there)."""
    png = encode(Image.fromarray(chest_like(128, 128)), "PNG")
    ihdr_end = 8 + 25
    prefix_len = ihdr_end + 8 + len(b"Comment\x00")  # chunk length + type, then the keyword
    text = b"x" * (128 - prefix_len) + b"DICM" + b" padding"
    return png[:ihdr_end] + png_chunk(b"tEXt", b"Comment\x00" + text) + png[ihdr_end:]


def jpeg_with_dicm_at_128() -> bytes:
    """A valid baseline JPEG whose bytes 128-131 are ``DICM`` (inside a COM segment right after SOI)."""
    jpeg = encode(Image.fromarray(chest_like(128, 128)), "JPEG", quality=90)
    comment = b"c" * (128 - 6) + b"DICM" + b" padding"
    return b"\xff\xd8\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def png_big_text(inflated: int = 8 << 20) -> bytes:
    """A valid PNG carrying a zTXt and an iTXt comment that inflate to ``inflated`` bytes (Pillow's limit is 1 MB)."""
    png = encode(Image.fromarray(chest_like(128, 128)), "PNG")
    blob = zlib.compress(b"A" * inflated, 9)
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + blob)
    itxt = png_chunk(b"iTXt", b"Description\x00\x01\x00\x00\x00" + blob)
    return png[:33] + ztxt + itxt + png[33:]


def bmp_with_dicm_at_128() -> bytes:
    """A valid grayscale BMP whose bytes 128-131 are ``DICM`` (inside its palette, whose entry 0 is patched)."""
    data = bytearray(encode(Image.fromarray(chest_like(128, 128)), "BMP"))
    data[128:132] = b"DICM"  # palette entries are BGRA: two entries the image does not use become colours
    return bytes(data)


def dicom_zero_preamble_no_marker() -> bytes:
    """A DX DICOM with its 128-byte zero preamble but no ``DICM`` marker and no file meta (a broken writer)."""
    return bytes(128) + _image_elements(256, 256, {}) + _element(0x7FE0, 0x0010, b"OB", chest_like().tobytes())


def dicom_tiff_preamble() -> bytes:
    """A DX DICOM whose preamble starts with a TIFF header (the DICOM-TIFF dual layout of PS3.10 7.5)."""
    data = bytearray(dicom_native(chest_like()))
    data[0:8] = b"II*\x00" + struct.pack("<I", 8)
    return bytes(data)


def dicom_no_preamble() -> bytes:
    """A DX DICOM written without its 128-byte preamble: ``DICM`` at byte 0."""
    return dicom_with(chest_like(), {}, preamble=False)


# ---- class 5: colour and bi-level files

def colour_files() -> dict[str, bytes]:
    """Colour files of each container (built from a tinted chest image), by file name."""
    gray = chest_like(128, 128)
    rgb = np.stack([gray, (gray * 0.8).astype(np.uint8), (gray * 0.6).astype(np.uint8)], axis=-1)
    image = Image.fromarray(rgb)
    return {
        "rgb.png": encode(image, "PNG"),
        "cmyk.jpg": encode(image.convert("CMYK"), "JPEG", quality=90),
        "cmyk.tif": encode(image.convert("CMYK"), "TIFF"),
        "lab.tif": encode(image.convert("LAB"), "TIFF"),
        "planar.tif": tiff_planar_rgb(rgb),
    }


def tiff_planar_rgb(rgb: np.ndarray) -> bytes:
    """An uncompressed RGB TIFF with PlanarConfiguration 2 (one plane per colour), written by hand."""
    height, width, _ = rgb.shape
    planes = [np.ascontiguousarray(rgb[..., c]).tobytes() for c in range(3)]
    entries: list[tuple[int, int, int, bytes | int]] = []
    n_entries = 11
    ifd_size = 2 + 12 * n_entries + 4
    data_start = 8 + ifd_size
    bits_at = data_start
    offsets_at = bits_at + 6
    counts_at = offsets_at + 12
    planes_at = counts_at + 12
    plane_offsets = [planes_at + k * len(planes[0]) for k in range(3)]
    entries = [
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 3, offsets_at), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 3, counts_at), (284, 3, 1, 2),
        (296, 3, 1, 1),
    ]
    ifd = struct.pack("<H", n_entries)
    for tag, kind, count, value in entries:
        packed = struct.pack("<HHI", tag, kind, count)
        if count == 1 and kind == 3:
            packed += struct.pack("<HH", value, 0)
        else:
            packed += struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    extra = struct.pack("<HHH", 8, 8, 8) + struct.pack("<III", *plane_offsets)
    extra += struct.pack("<III", *(len(p) for p in planes))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + extra + b"".join(planes)


def bilevel_png() -> bytes:
    """A 1-bit PNG mask: a chest-like shape thresholded to black and white."""
    return encode(Image.fromarray(chest_like(128, 128) > 120), "PNG")


def dicom_rgb_one_sample() -> bytes:
    """A DX DICOM whose Photometric Interpretation says RGB over one sample per pixel."""
    return dicom_with(chest_like(), {(0x0028, 0x0004): (b"CS", b"RGB")})


# ---- class 6: reasons that mislead

def dicom_big_endian_meta() -> bytes:
    """A DX DICOM whose file meta says Explicit VR Big Endian over a little endian dataset."""
    return dicom_with(chest_like(), {}, syntax="1.2.840.10008.1.2.2")


def dicom_slope_underflow(slope: str = "1e-50") -> bytes:
    """A DX DICOM whose Rescale Slope is a number float32 cannot hold (it underflows to 0)."""
    return dicom_with(chest_like(), {(0x0028, 0x1052): _ds("0"), (0x0028, 0x1053): _ds(slope)})


def dicom_voi_lut_to_black() -> bytes:
    """A DX DICOM whose VOI LUT maps every stored value but the top few to 0."""
    chest = chest_like()
    lut = np.zeros(256, dtype=np.uint16)
    lut[int(np.percentile(chest, 99)) :] = 255  # the brightest 1% visible, everything else black
    descriptor = struct.pack("<HHH", 256, 0, 8)
    item = (_element(0x0028, 0x3002, b"US", descriptor) + _element(0x0028, 0x3006, b"OW", lut.tobytes()))
    sequence = (struct.pack("<HH2sHI", 0x0028, 0x3010, b"SQ", 0, 0xFFFFFFFF)
                + struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    rows, cols = 256, 256
    head = _image_elements(rows, cols, {})
    return _file_meta(EXPLICIT_LE) + head + sequence + _element(0x7FE0, 0x0010, b"OB", chest.tobytes())


# ---- class 7: large images in small files

def dicom_jpeg_large(side: int = 7_040, colour: bool = False, seed: int = SEED) -> bytes:
    """A JPEG Baseline DICOM of ``side`` x ``side`` (7,040: 49.6 MP) holding a smooth chest-like image (~1 MB);
    ``colour``: three samples, YBR_FULL_422 (a colour secondary capture of a film)."""
    small = Image.fromarray(chest_like(256, 256, seed=seed))
    if colour:
        small = Image.merge("RGB", (small, small.point(lambda v: v * 0.9), small.point(lambda v: v * 0.8)))
    frame = encode(small.resize((side, side), Image.Resampling.BILINEAR), "JPEG", quality=75)
    attrs = {(0x0028, 0x0002): (b"US", struct.pack("<H", 3)), (0x0028, 0x0004): (b"CS", b"YBR_FULL_422"),
             (0x0028, 0x0006): (b"US", struct.pack("<H", 0))} if colour else {}
    return _file_meta(JPEG_BASELINE) + _image_elements(side, side, attrs) + _encapsulated(frame)


def png_large(side: int = 7_040, seed: int = SEED) -> bytes:
    """A ``side`` x ``side`` 8-bit grayscale PNG (49.6 MP at 7,040) in a small file."""
    small = Image.fromarray(chest_like(128, 128, seed=seed))
    return encode(small.resize((side, side), Image.Resampling.NEAREST), "PNG", compress_level=9)


# ---- every case above with what reading it must give: "refused" (the error holds the phrase), "warned" (a
# warning holds it) or "read" (analysable, no phrase). The tests and bench/robustness.py iterate over this table.

ODD_CASES: dict[str, tuple[str, Callable[[], bytes], str, str]] = {
    # class 2: non-finite values
    "dicom_window_overflow": ("dcm", dicom_window_overflow, "warned", "window in the file does not fit"),
    "dicom_window_overflow_sigmoid": ("dcm", lambda: dicom_with(chest_like(), {
        (0x0028, 0x1050): _ds("128"), (0x0028, 0x1051): _ds("3e38"), (0x0028, 0x1056): (b"CS", b"SIGMOID")}),
        "warned", "window in the file does not fit"),
    "dicom_rescale_overflow": ("dcm", dicom_rescale_overflow, "refused", "beyond the range of numbers"),
    "dicom_float_all_nan": ("dcm", dicom_all_nan, "refused", "not numbers (infinite or NaN)"),
    "dicom_double_all_inf": ("dcm", lambda: dicom_float_pixels(np.full((96, 96), np.inf), double=True), "refused",
                             "not numbers (infinite or NaN)"),
    "tiff_all_nan": ("tif", float_tiff_all, "refused", "not numbers (infinite or NaN)"),
    # class 3: header text never quoted
    "dicom_frames_leak": ("dcm", dicom_frames_leak, "warned", "Number of Frames (0028,0008)"),
    "dicom_charset_leak": ("dcm", dicom_charset_leak, "warned", "Specific Character Set (0008,0005)"),
    # class 4: signatures first
    "png_dicm_at_128": ("png", png_with_dicm_at_128, "read", ""),
    "jpeg_dicm_at_128": ("jpg", jpeg_with_dicm_at_128, "read", ""),
    "png_big_text": ("png", png_big_text, "read", ""),
    "dicom_no_preamble": ("dcm", dicom_no_preamble, "read", ""),
    "dicom_tiff_preamble": ("dcm", dicom_tiff_preamble, "read", ""),
    # the marker sits in the palette, which is then not grey: read, with the colour warning
    "bmp_dicm_at_128": ("bmp", bmp_with_dicm_at_128, "warned", "colour BMP"),
    "dicom_zero_preamble_no_marker": ("dcm", dicom_zero_preamble_no_marker, "warned", "old ACR-NEMA file"),
    # class 5: colour and bi-level
    **{f"colour_{name.replace('.', '_')}": (name.rsplit(".", 1)[1], (lambda n=name: colour_files()[n]), "warned",
                                            "converted to grayscale") for name in
       ("rgb.png", "cmyk.jpg", "cmyk.tif", "lab.tif", "planar.tif")},
    "bilevel_png": ("png", bilevel_png, "refused", "only two grey levels"),
    "bilevel_tiff": ("tif", lambda: encode(Image.fromarray(chest_like(128, 128) > 100), "TIFF"), "refused",
                     "only two grey levels"),
    "dicom_rgb_one_sample": ("dcm", dicom_rgb_one_sample, "warned", "holds one sample per pixel"),
    # class 6: accurate reasons
    "dicom_float_pixels": ("dcm", lambda: dicom_float_pixels(chest_like().astype(np.float32) / 7.0), "read", ""),
    "dicom_double_float_pixels": ("dcm", lambda: dicom_float_pixels(chest_like() * 3.5 - 100.0, double=True),
                                  "read", ""),
    "dicom_big_endian_meta": ("dcm", dicom_big_endian_meta, "warned", "the data set is encoded as Explicit VR Little"),
    "dicom_slope_underflow": ("dcm", dicom_slope_underflow, "refused", "Rescale Slope/Intercept"),
    "dicom_voi_lut_to_black": ("dcm", dicom_voi_lut_to_black, "warned", "VOI LUT in the file leaves almost nothing"),
}
