"""PNG, JPEG, TIFF, GIF, WebP, BMP, PNM and JPEG 2000 files -> :class:`XrayImage`, through Pillow.

* **Sizes are checked before decoding**: the codec header (:mod:`core.imaging.headers`) and Pillow's own header
  parse must both be within the limits (:mod:`core.imaging.limits`) and the shape rules
  (:func:`core.imaging.checks.check_geometry`) before ``load()``. Pillow's bomb guard (``Image.MAX_IMAGE_PIXELS``)
  is left untouched because it is a process-wide global; its error is reported as :class:`ImageTooLargeError`.
* **Colour** becomes luma (ITU-R 601, computed in float, in row blocks). **Palette** images are looked up through
  the palette's luma, never expanded to RGB (a 50-megapixel palette PNG would otherwise take 200 MB of RGBA).
  **Transparency** is ignored, not composited; see :func:`core.imaging.checks.check_alpha`.
* **Multi-frame** files (TIFF, GIF, WebP): the first frame only, with a warning.
* **JPEG streams Pillow cannot decode** (12/16-bit, lossless, JPEG-LS) go to :mod:`core.imaging.jpeg_reader`.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.imaging import headers, integrity, jpeg_reader
from core.imaging.checks import check_alpha, check_geometry
from core.imaging.errors import CorruptImageError, ImageError, ImageTooLargeError, detail
from core.imaging.gray import deep_scale, finish, luma
from core.imaging.limits import check_declared
from core.imaging.types import XrayImage

__all__ = ["PIL_FORMATS", "read_pillow"]

# Formats with an unambiguous signature. Pillow's permissive plugins (TGA, for instance) could otherwise claim
# arbitrary bytes, such as an old ACR-NEMA file, and return noise instead of a clear error.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "JPEG2000", "PPM")
_ROWS_PER_BLOCK = 256
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}
_ORIENTATION = 0x0112


def read_pillow(data: bytes, max_pixels: int, keep_raw: bool) -> XrayImage | None:
    """Decode ``data`` if it is one of :data:`PIL_FORMATS` (or a JPEG only libjpeg reads); None if it is not.

    Raises:
        ImageError: the file is one of these formats but too large, damaged or not a usable radiograph.
    """
    declared = headers.sniff(data)
    if declared is not None:
        check_declared(declared, max_pixels)
        check_geometry(declared.width, declared.height)
        if jpeg_reader.needs_libjpeg(declared):
            return jpeg_reader.read_libjpeg(data, declared, keep_raw)
    missing = integrity.png_rows_missing(data)
    if missing is not None:
        raise CorruptImageError(
            f"The PNG file is damaged or incomplete: its image data ends after about {missing[0]} of its "
            f"{missing[1]} rows (it may have been cut off during export or copy). Export it again."
        )
    image = _open(_without_png_text(data))
    if image is None:
        return None
    with image:
        return _read(image, max_pixels, keep_raw)


_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _without_png_text(data: bytes) -> bytes:
    """A PNG without its text chunks (comments, which never hold pixels); any other bytes unchanged.

    Pillow refuses a PNG whose compressed comment inflates past ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MB) as if the
    image were damaged; that limit is a process-wide global and protects memory, so it is left alone and the
    comments are dropped before Pillow sees the file. Chunks are walked by their declared lengths; a damaged
    layout is left for Pillow to report.
    """
    if not data.startswith(headers.PNG_SIGNATURE):
        return data
    pos, start, found = len(headers.PNG_SIGNATURE), 0, False
    kept: list[bytes] = []
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        if kind in _PNG_TEXT_CHUNKS:
            kept.append(data[start:pos])
            start, found = end, True
        pos = end
        if kind == b"IEND":
            break
    if not found:
        return data
    kept.append(data[start:])
    return b"".join(kept)


def _open(data: bytes) -> Image.Image | None:
    """Open lazily (header only); None if Pillow does not recognise the bytes as one of the accepted formats."""
    Image.init()
    formats = [f for f in PIL_FORMATS if f in Image.OPEN]
    try:
        return Image.open(BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        for signature, kind in ((headers.PNG_SIGNATURE, "PNG"), (b"\xff\xd8\xff", "JPEG")):
            if data.startswith(signature):
                raise CorruptImageError(
                    f"This {kind} file is damaged and cannot be opened. Upload it again or export a new copy."
                ) from None
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The warning only reaches here as an exception when warnings are turned into errors.
        raise ImageTooLargeError(
            "The image is too large (its header declares more pixels than HiCXR accepts). "
            "Export a smaller copy of the X-ray."
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on damaged headers
        raise CorruptImageError(
            "The image file is damaged and cannot be opened. Upload it again or export a new copy. "
            f"(Technical detail: {detail(exc)})"
        ) from None


def _read(image: Image.Image, max_pixels: int, keep_raw: bool) -> XrayImage:
    fmt = image.format or "image"
    mode = image.mode
    width, height = image.size
    # Pillow's own header parse, for the formats headers.sniff does not cover (BMP, PNM) and as a second opinion.
    check_declared(headers.Declared(fmt, width, height, len(image.getbands()), _MODE_BITS.get(mode, 8)), max_pixels)
    check_geometry(width, height)
    notes: list[str] = []
    try:
        n_frames = getattr(image, "n_frames", 1)
        if n_frames > 1:
            notes.append(f"multi-frame {fmt}: first of {n_frames} frames shown")
        image.load()
        if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
            # Phones and some exporters store "rotate on display" in EXIF instead of rotating the pixels.
            image = ImageOps.exif_transpose(image)
        raw, bits, scale = _levels(image, notes)
        if _is_colour(image):
            notes.append(f"colour {fmt} ({mode}) converted to grayscale")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"The image is too large ({width} x {height} pixels). Export a smaller copy of the X-ray."
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's error
        raise CorruptImageError(
            f"The {fmt} file is damaged or incomplete (it may have been cut off during upload or copy). "
            f"Upload it again or export a new copy. (Technical detail: {detail(exc)})"
        ) from None
    return finish(raw, fmt=fmt, mode=mode, bits=bits, scale=scale, notes=notes, keep_raw=keep_raw)


_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def _is_colour(image: Image.Image) -> bool:
    """True for a file stored in colour (RGB, CMYK, CIELAB, YCbCr, a non-grey palette), as a colour DICOM is:
    the analysis reads its luma, and the reader is told so."""
    if image.mode in _GREY_MODES:
        return False
    if image.mode in ("P", "PA"):
        palette = image.getpalette("RGB") or []
        entries = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
        return bool(np.any(entries != entries[:, :1]))
    return True


def _levels(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, int | None, float | None]:
    """(grey levels as float32, container bit depth, full-scale value or None for min-max); checks transparency."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image).astype(np.float32), 8, 255.0
    if mode in ("LA", "La"):
        _alpha_summary(np.asarray(image.getchannel("A")), notes)
        return np.asarray(image.getchannel(0)).astype(np.float32), 8, 255.0
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        bits, scale = deep_scale(values)
        return values.astype(np.float32), bits, scale
    if mode == "F":
        return np.asarray(image, dtype=np.float32), 32, None
    if mode == "1":
        return np.asarray(image.convert("L")).astype(np.float32), 1, 255.0
    if mode in ("P", "PA"):
        return _palette_levels(image, notes), 8, 255.0
    if mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        image = image.convert("RGB")
    return _colour_levels(image, notes), 8, 255.0


def _palette_levels(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Palette indices looked up in the palette's luma: 1 byte a pixel in, 4 out, never RGB."""
    indices = np.asarray(image.getchannel(0) if image.mode == "PA" else image)
    palette = image.getpalette("RGB")
    if palette:
        lut = np.zeros(256, dtype=np.float32)
        entries = np.asarray(palette[: 3 * 256], dtype=np.float32).reshape(-1, 3)
        lut[: len(entries)] = luma(entries[None])[0]
        # In row blocks: NumPy turns uint8 indices into 8-byte ones for the lookup, 392 MB at 49 MP in one go.
        levels = np.empty(indices.shape, dtype=np.float32)
        for top in range(0, indices.shape[0], _ROWS_PER_BLOCK):
            levels[top : top + _ROWS_PER_BLOCK] = lut[indices[top : top + _ROWS_PER_BLOCK]]
    else:
        levels = indices.astype(np.float32)
    if image.mode == "PA":
        _alpha_summary(np.asarray(image.getchannel("A")), notes)
    else:
        alpha_lut = _palette_alpha(image)
        if alpha_lut is not None:
            counts = np.zeros(256, dtype=np.int64)
            for top in range(0, indices.shape[0], _ROWS_PER_BLOCK):  # bincount makes 8-byte indices, so in blocks
                counts += np.bincount(indices[top : top + _ROWS_PER_BLOCK].ravel(), minlength=256)[:256]
            visible = bool(counts[alpha_lut > 0].sum())
            check_alpha(visible, float(counts[alpha_lut < 255].sum()) / max(1, indices.size), notes)
    return levels


def _palette_alpha(image: Image.Image) -> np.ndarray | None:
    """Alpha per palette index (256 entries), or None when the palette has no transparency."""
    info = image.info.get("transparency")
    if image.palette is not None and image.palette.mode == "RGBA":
        rgba = np.asarray(image.getpalette("RGBA") or [], dtype=np.uint8).reshape(-1, 4)
        alpha = np.full(256, 255, dtype=np.uint8)
        alpha[: len(rgba)] = rgba[:256, 3]
        return alpha
    if isinstance(info, int) and 0 <= info < 256:
        alpha = np.full(256, 255, dtype=np.uint8)
        alpha[info] = 0
        return alpha
    if isinstance(info, bytes):
        alpha = np.full(256, 255, dtype=np.uint8)
        alpha[: min(256, len(info))] = np.frombuffer(info[:256], dtype=np.uint8)
        return alpha
    return None


def _colour_levels(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Luma of an RGB(A) image, read in row blocks so neither a NumPy RGB copy nor a float RGB copy is made."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.float32)
    has_alpha = image.mode in ("RGBA", "RGBa")
    visible, not_opaque = False, 0
    for top in range(0, height, _ROWS_PER_BLOCK):
        block = np.asarray(image.crop((0, top, width, min(height, top + _ROWS_PER_BLOCK))))
        out[top : top + block.shape[0]] = luma(block)
        if has_alpha:
            alpha = block[..., 3]
            visible = visible or bool(alpha.any())
            not_opaque += int(np.count_nonzero(alpha < 255))
    if has_alpha:
        check_alpha(visible, not_opaque / max(1, width * height), notes)
    return out


def _alpha_summary(alpha: np.ndarray, notes: list[str]) -> None:
    check_alpha(bool(alpha.any()), float(np.count_nonzero(alpha < 255)) / max(1, alpha.size), notes)
