"""Turn an uploaded file (PNG, JPEG, other Pillow formats, DICOM) into a grayscale float image plus metadata.

Everything downstream (the models, Grad-CAM, the dashboard) sees one convention, whatever came in:
``XrayImage.pixels`` is a C-contiguous ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``, where 0 is
black and dense structures are bright (DICOM MONOCHROME2: air and lungs dark, bone and mediastinum bright).

Every failure a user can cause raises a subclass of :class:`ImageError` whose message is written for a clinician:
what is wrong with the file and what to do about it. Programming errors (wrong argument types, a non-positive
window width) raise ordinary ``TypeError``/``ValueError``.

Decisions worth knowing:

* **Size limits are checked before decoding.** Byte size before parsing, and the pixel count from the PNG/JPEG
  header or from DICOM Rows x Columns before any pixel is decompressed, so a decompression bomb costs nothing.
  Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``) is left untouched, because changing a process-wide global
  is not thread-safe; its error (raised above about 179 MP) is reported as :class:`ImageTooLargeError` too.
* **PNG/JPEG scaling.** 8-bit images are divided by 255. 16-bit images are divided by ``2**b - 1`` where ``b`` is
  the bit depth of the image's largest value (at least 8): 12-bit data in a 16-bit PNG fills the range instead of
  looking black, an 8-bit image up-scaled by 257 reads exactly like the original, and brightness is not stretched
  per image. Colour images become luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as Pillow's ``"L"``) computed in
  float; alpha is dropped, not composited.
* **DICOM grayscale pipeline.** Modality LUT (rescale slope/intercept) with pydicom, then the VOI: a VOI LUT
  Sequence through pydicom's ``apply_voi_lut``; otherwise the first Window Center/Width through
  :func:`apply_window` (the same function the dashboard uses to re-window, so the default view is reproduced
  exactly); otherwise the data's min-max. A header window that leaves almost nothing visible is replaced by
  min-max, with a warning.
* **MONOCHROME1 / INVERSE.** The image is inverted once if the Photometric Interpretation is MONOCHROME1 *or* the
  Presentation LUT Shape is INVERSE. For MONOCHROME1 the standard requires INVERSE, so both together still mean one
  inversion, not two.
* **Header contradicted by the pixels.** Some converters rewrite the header to MONOCHROME1 without inverting the
  pixels (the ``Fake_MONOHR1`` test file of torchxrayvision is such a case). For a frontal chest
  (ViewPosition PA/AP, BodyPartExamined CHEST/THORAX) whose header asks for inversion, the inversion is skipped
  when the result would be clearly impossible anatomy, i.e. lung fields markedly brighter than the mediastinum
  (see ``_POLARITY_MARGIN``), and a warning says so. A header that asks for no inversion is always trusted.
* **Modalities.** CR, DX and RG (radiographs) are read. OT (other) or a missing Modality is read with a warning,
  since secondary captures of chest films often carry it. Everything else is rejected, including RF/XA
  (fluoroscopy and angiography: moving, contrast-filled studies) and MG (mammography): the models were trained on
  chest radiographs only.
* **Colour DICOM** (SamplesPerPixel 3, RGB/YBR) is converted to luma with a warning, like a colour PNG, because
  screenshots of chest films are a common real-world input. PALETTE COLOR is rejected.
* **Multi-frame** files (DICOM, TIFF, GIF): only the first frame is decoded, with a warning.
* **Privacy.** Metadata is built from an explicit allow-list of technical attributes; no patient, study, date or
  institution attribute is ever copied.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "BlankImageError",
    "CorruptImageError",
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

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]

# Formats with an unambiguous signature. Pillow's permissive plugins (TGA, for instance) could otherwise claim
# arbitrary bytes, such as an old ACR-NEMA file, and return noise instead of a clear error.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "JPEG2000", "PPM")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"

_RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
_UNSPECIFIED_MODALITIES = frozenset({"", "OT"})
_MODALITY_NAMES = {
    "CT": "a CT",
    "MR": "an MRI",
    "US": "an ultrasound",
    "NM": "a nuclear medicine",
    "PT": "a PET",
    "XA": "an angiography (XA)",
    "RF": "a fluoroscopy (RF)",
    "MG": "a mammography",
    "IO": "an intra-oral dental",
    "PX": "a panoramic dental",
    "OP": "an ophthalmic photography",
    "SM": "a slide microscopy",
    "ES": "an endoscopy",
    "XC": "an external camera photography",
    "SR": "a structured report",
    "SEG": "a segmentation",
    "PR": "a presentation state",
}
_CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "RIB", "RIBS"})
_FRONTAL_VIEWS = frozenset({"PA", "AP"})

# Mean brightness of the lung boxes minus the mediastinum box (see _lung_minus_mediastinum), in [0, 1] units,
# above which a frontal chest is impossible anatomy. Correctly displayed chests are almost always negative: on the
# 1,683 PNGs in shared/data the largest value is 0.17 (a 64 px thumbnail), 0.13 among the 720 images of 224 px or
# more; the mislabelled MONOCHROME1 test file would come out at +0.28. Only ever used to *undo* an inversion the
# header asks for, so a miss falls back to trusting the header.
_POLARITY_MARGIN = 0.2

# A header window that maps more than this fraction of pixels to pure black or white shows nothing useful.
_MAX_CLIPPED_FRACTION = 0.98


# --------------------------------------------------------------------------------------------------- errors


class ImageError(ValueError):
    """Base class of every file problem; ``str(e)`` tells a clinician what is wrong and what to do."""


class EmptyFileError(ImageError):
    """The file has no content at all (0 bytes)."""


class UnsupportedFormatError(ImageError):
    """The file is not an image, or is in a format HiCXR does not read."""


class CorruptImageError(ImageError):
    """The file is a known format but damaged: truncated, undecodable pixel data, or a DICOM without an image."""


class ImageTooLargeError(ImageError):
    """The file, or the image its header declares, exceeds the configured size limit."""


class UnsupportedModalityError(ImageError):
    """A DICOM image of a modality that is not a radiograph (CT, MR, US, ...)."""


class UnsupportedDicomError(ImageError):
    """A valid DICOM this installation cannot turn into a grayscale radiograph (codec missing, palette colour)."""


class BlankImageError(ImageError):
    """The image has no pixels or a single grey level, so there is nothing to read."""


# ----------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ImageMetadata:
    """Technical description of a decoded image. Never contains patient, study, date or institution data."""

    format: str
    width: int
    height: int
    bits_stored: int | None = None
    photometric: str | None = None
    modality: str | None = None
    view_position: str | None = None
    manufacturer: str | None = None
    body_part: str | None = None
    transfer_syntax: str | None = None
    window: tuple[float, float] | None = None
    inverted: bool = False
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as JSON-serialisable builtins (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["window"] = list(self.window) if self.window is not None else None
        out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A decoded radiograph.

    ``pixels`` is float32, shape (H, W), in [0, 1], 0 = black, MONOCHROME2 convention (lungs dark, bone bright).

    With ``read_image(..., keep_raw=True)``, ``raw`` holds the pre-VOI values (DICOM: after the modality LUT;
    PNG/JPEG: the stored integer levels, luma for colour) and ``default_window``/``window_function`` reproduce
    ``pixels`` from it, so a viewer can re-window with :meth:`rewindow` without decoding the file again.
    """

    pixels: np.ndarray
    metadata: ImageMetadata
    raw: np.ndarray | None = None
    default_window: tuple[float, float] | None = None
    window_function: WindowFunction = "LINEAR"

    def rewindow(self, center: float, width: float) -> np.ndarray:
        """Return the image displayed with another window, inverted exactly as ``pixels`` was.

        Raises ``ValueError`` if the image was read without ``keep_raw=True``.
        """
        if self.raw is None:
            raise ValueError("rewindow() needs the raw pixels: read the image with read_image(..., keep_raw=True)")
        out = apply_window(self.raw, center, width, function=self.window_function)
        if self.metadata.inverted:
            out = 1.0 - out
        return np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------ public helpers


def apply_window(
    pixels_raw: np.ndarray, center: float, width: float, *, function: WindowFunction = "LINEAR"
) -> np.ndarray:
    """Map raw values to [0, 1] with a window (level ``center``, ``width``), as float32.

    ``LINEAR`` and ``LINEAR_EXACT`` both use the exact ramp ``(x - (center - width/2)) / width``: DICOM's LINEAR
    differs by half a stored unit, far below what a display shows, and using one formula lets any positive width
    (including widths below 1 on rescaled float data) work. ``SIGMOID`` follows DICOM PS3.3 C.11.2.1.3.1.
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width!r}")
    x = np.asarray(pixels_raw, dtype=np.float32)
    if function == "SIGMOID":
        # float64 for the exponent: float32 exp overflows to inf (harmless but noisy) on wide dynamic ranges.
        out = 1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - center) / width))
    elif function in ("LINEAR", "LINEAR_EXACT"):
        out = (x - np.float32(center - width / 2.0)) / np.float32(width)
    else:
        raise ValueError(f"unknown VOI LUT function {function!r}")
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Convert a [0, 1] float image to uint8 (0-255) for display or caching; NaN becomes 0, out-of-range clips."""
    arr = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def is_dicom(data: bytes) -> bool:
    """Return True if ``data`` is a DICOM image file.

    True for the standard ``DICM`` marker at offset 128, and for old ACR-NEMA files without preamble that parse
    and declare Rows, Columns and Pixel Data.
    """
    if data[128:132] == b"DICM":
        return True
    return _parse_headerless_dicom(data) is not None


def read_image(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_raw: bool = False,
) -> XrayImage:
    """Decode a PNG, JPEG, other Pillow image or DICOM file (bytes or a path) into an :class:`XrayImage`.

    Raises a subclass of :class:`ImageError` for anything wrong with the file (see the module docstring).
    ``keep_raw=True`` also stores the pre-window values so the image can be re-windowed (:meth:`XrayImage.rewindow`).
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

    if data[128:132] == b"DICM":
        return _read_dicom(data, None, max_pixels, keep_raw)

    image = _open_with_pillow(data)
    if image is not None:
        with image:
            return _read_pillow(image, max_pixels, keep_raw)

    ds = _parse_headerless_dicom(data)
    if ds is not None:
        return _read_dicom(data, ds, max_pixels, keep_raw)
    raise UnsupportedFormatError(_not_an_image_message(data, name))


# ---------------------------------------------------------------------------------------------- file input


def _check_byte_size(n_bytes: int, max_bytes: int) -> None:
    if n_bytes == 0:
        raise EmptyFileError("The file is empty (0 bytes). Upload it again, or export the X-ray again from PACS.")
    if n_bytes > max_bytes:
        raise ImageTooLargeError(
            f"The file is too large ({n_bytes / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB). "
            "Export a single image, or a smaller copy (PNG, JPEG or an uncompressed single-frame DICOM)."
        )


def _read_path(path: Path, max_bytes: int) -> bytes:
    try:
        # Size first: a huge file is refused without being read into memory.
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"The file {path.name!r} was not found. Check the name and location.") from None
    except OSError as exc:
        raise ImageError(f"The file {path.name!r} could not be opened ({exc.strerror}).") from None
    if path.is_dir():
        raise ImageError(f"{path.name!r} is a folder, not an image file. Choose one image file inside it.")
    _check_byte_size(size, max_bytes)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"The file {path.name!r} could not be read ({exc.strerror}).") from None
    _check_byte_size(len(data), max_bytes)  # the file may have changed since stat()
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


def _detail(exc: BaseException) -> str:
    """First line of an exception, shortened: enough for a support ticket without flooding the clinician."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"The image is too large ({width} x {height} pixels; the limit is {max_pixels / 1e6:.0f} million pixels). "
        "Export a smaller copy of the X-ray."
    )


# ------------------------------------------------------------------------------------------ Pillow formats


def _open_with_pillow(data: bytes) -> Image.Image | None:
    """Open lazily (header only); None if Pillow does not recognise the bytes as one of the accepted formats."""
    Image.init()
    formats = [f for f in _PIL_FORMATS if f in Image.OPEN]
    try:
        return Image.open(BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        if data.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE)):
            kind = "PNG" if data.startswith(_PNG_SIGNATURE) else "JPEG"
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
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(
            "The image file is damaged and cannot be opened. Upload it again or export a new copy. "
            f"(Technical detail: {_detail(exc)})"
        ) from None


def _read_pillow(image: Image.Image, max_pixels: int, keep_raw: bool) -> XrayImage:
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    if width == 0 or height == 0:
        raise BlankImageError("The image has no pixels (0 x 0). Upload the X-ray image itself.")

    fmt = image.format or "image"
    notes: list[str] = []
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"multi-frame {fmt}: first of {n_frames} frames shown")
    mode = image.mode
    try:
        image.load()
        # Phones and some exporters store "rotate on display" in EXIF instead of rotating the pixels.
        image = ImageOps.exif_transpose(image)
        raw, bits, scale = _pillow_levels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(width, height, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(
            f"The {fmt} file is damaged or incomplete (it may have been cut off during upload or copy). "
            f"Upload it again or export a new copy. (Technical detail: {_detail(exc)})"
        ) from None

    if raw.size == 0:
        raise BlankImageError("The image has no pixels. Upload the X-ray image itself.")
    lo, hi = float(raw.min()), float(raw.max())
    if not hi > lo:
        raise BlankImageError(
            "The image is completely uniform (a single grey level): there is no X-ray to read. "
            "Check that the right file was exported."
        )
    if scale is None:  # float or signed data: no meaningful nominal range
        center, win = (lo + hi) / 2.0, hi - lo
    else:
        center, win = scale / 2.0, scale
    pixels = apply_window(raw, center, win, function="LINEAR_EXACT")
    metadata = ImageMetadata(
        format=fmt,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        bits_stored=bits,
        photometric=mode,
        warnings=tuple(notes),
    )
    return XrayImage(
        pixels=pixels,
        metadata=metadata,
        raw=raw if keep_raw else None,
        default_window=(center, win),
        window_function="LINEAR_EXACT",
    )


def _pillow_levels(image: Image.Image) -> tuple[np.ndarray, int | None, float | None]:
    """Return (gray levels as float32, container bit depth, full-scale value or None for min-max)."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.float32), 8, 255.0
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0), dtype=np.float32), 8, 255.0
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi < 2**16:
            bits = max(8, hi.bit_length())
            return values.astype(np.float32), 16, float(2**bits - 1)
        return values.astype(np.float32), 32, None
    if mode == "F":
        return np.asarray(image, dtype=np.float32), 32, None
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32), 1, 255.0
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        image = image.convert("RGB")
    return _luma(np.asarray(image)), 8, 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3].astype(np.float32)
    return np.ascontiguousarray(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114, dtype=np.float32)


# -------------------------------------------------------------------------------------------------- DICOM


def _parse_headerless_dicom(data: bytes) -> Any | None:
    """Parse bytes without the DICM marker (ACR-NEMA); return the dataset only if it describes an image."""
    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        ok = "PixelData" in ds and (_number(ds, "Rows") or 0) > 0 and (_number(ds, "Columns") or 0) > 0
    except Exception:  # noqa: BLE001 - any parser failure just means "not DICOM"
        return None
    return ds if ok else None


def _get(ds: Any, keyword: str) -> Any:
    """The first value of an attribute, or None if absent, empty or malformed (optional data must not stop a read)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom converts lazily and can raise anything on a malformed value
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    return value


def _text(ds: Any, keyword: str) -> str | None:
    value = _get(ds, keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _number(ds: Any, keyword: str) -> float | None:
    try:
        number = float(_get(ds, keyword))
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _read_dicom(data: bytes, ds: Any | None, max_pixels: int, keep_raw: bool) -> XrayImage:
    if ds is None:
        import pydicom

        try:
            ds = pydicom.dcmread(BytesIO(data), force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise CorruptImageError(
                f"This DICOM file is damaged and cannot be read ({type(exc).__name__}). Export it again from PACS."
            ) from None

    notes: list[str] = []
    if "PixelData" not in ds:
        raise CorruptImageError(
            "This DICOM file holds no image (no Pixel Data): it may be a report, a structured report or a "
            "presentation state. Open the image itself (the X-ray series) and upload that file."
        )
    modality = _check_modality(ds, notes)
    body_part = _text(ds, "BodyPartExamined")
    if body_part is not None and body_part.upper() not in _CHEST_BODY_PARTS:
        notes.append(f"body part is {body_part}, not chest: HiCXR's findings are meant for chest radiographs")
    view_position = _text(ds, "ViewPosition")

    rows, cols = int(_number(ds, "Rows") or 0), int(_number(ds, "Columns") or 0)
    if rows * cols > max_pixels:
        raise _too_many_pixels(cols, rows, max_pixels)
    if rows == 0 or cols == 0:
        raise BlankImageError("This DICOM image has no pixels (0 rows or columns). Export the X-ray again.")
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric == "PALETTE COLOR":
        raise UnsupportedDicomError(
            "This DICOM uses a colour palette (PALETTE COLOR), which is not a radiograph's grey scale. "
            "Export the X-ray as a grayscale DICOM, PNG or JPEG."
        )

    ts_name = _ensure_transfer_syntax(ds, notes)
    stored = _decode_first_frame(ds, ts_name, notes)
    bits_stored = int(_number(ds, "BitsStored") or 0) or None

    window_applied: tuple[float, float] | None = None
    inverted = False
    if stored.ndim == 3:
        # Colour: no modality/VOI LUT applies; show the luma through the nominal range of the stored bits.
        notes.append(f"colour DICOM ({photometric}) converted to grayscale")
        raw = _luma(stored)
        _check_not_blank(raw)
        scale = float(2 ** (bits_stored or 8) - 1)
        default_window, function = (scale / 2.0, scale), "LINEAR_EXACT"
        pixels = apply_window(raw, *default_window, function=function)
    else:
        from pydicom.pixels import apply_modality_lut

        try:
            raw = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - a malformed Modality LUT must become a readable message
            raise CorruptImageError(
                "The rescaling information (Modality LUT) in this DICOM file is invalid. Export the X-ray again. "
                f"(Technical detail: {_detail(exc)})"
            ) from None
        if not np.isfinite(raw).all():
            raise CorruptImageError(
                "The DICOM image contains invalid values (not numbers) after rescaling. Export the X-ray again."
            )
        _check_not_blank(raw)
        pixels, window_applied, default_window, function = _apply_voi(raw, ds, notes)
        inverted = photometric == "MONOCHROME1" or (_text(ds, "PresentationLUTShape") or "").upper() == "INVERSE"
        if inverted and _contradicts_inversion(pixels, view_position, body_part):
            inverted = False
            notes.append(
                f"the file says {photometric} with an inverted grey scale, but its pixels are already stored "
                "lungs-dark: shown without inverting; check the image polarity"
            )
        if inverted:
            pixels = 1.0 - pixels

    metadata = ImageMetadata(
        format="DICOM",
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        bits_stored=bits_stored,
        photometric=photometric,
        modality=modality,
        view_position=view_position,
        manufacturer=_text(ds, "Manufacturer"),
        body_part=body_part,
        transfer_syntax=ts_name,
        window=window_applied,
        inverted=inverted,
        warnings=tuple(notes),
    )
    return XrayImage(
        pixels=np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32),
        metadata=metadata,
        raw=np.ascontiguousarray(raw, dtype=np.float32) if keep_raw else None,
        default_window=default_window,
        window_function=function,
    )


def _check_modality(ds: Any, notes: list[str]) -> str | None:
    modality = _text(ds, "Modality")
    code = (modality or "").upper()
    if code in _UNSPECIFIED_MODALITIES:
        what = "missing" if not code else "OT (other)"
        notes.append(f"DICOM modality is {what}: assumed to be a chest radiograph")
    elif code not in _RADIOGRAPH_MODALITIES:
        kind = _MODALITY_NAMES.get(code, f"a {code}")
        raise UnsupportedModalityError(
            f"This DICOM is {kind} image (Modality {code}); HiCXR reads chest radiographs (CR/DX) only. "
            "Upload a chest X-ray."
        )
    return modality


def _ensure_transfer_syntax(ds: Any, notes: list[str]) -> str:
    """Return the transfer syntax name, filling in file meta for ACR-NEMA files so pydicom can decode them."""
    import pydicom
    from pydicom.uid import UID

    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not tsyntax:
        # ACR-NEMA files carry no transfer syntax; they are never compressed, so the parser's guess is exact.
        implicit_vr, little_endian = getattr(ds, "original_encoding", (True, True))
        if little_endian is False:
            tsyntax = pydicom.uid.ExplicitVRBigEndian
        elif implicit_vr is False:
            tsyntax = pydicom.uid.ExplicitVRLittleEndian
        else:
            tsyntax = pydicom.uid.ImplicitVRLittleEndian
        if file_meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
        notes.append(f"old ACR-NEMA file without a DICOM header: read as {UID(tsyntax).name}")
    uid = UID(str(tsyntax))
    return uid.name if uid.is_transfer_syntax else str(uid)


def _decode_first_frame(ds: Any, ts_name: str, notes: list[str]) -> np.ndarray:
    """Decode only frame 0: (rows, cols) for grayscale, (rows, cols, 3) RGB for colour."""
    from pydicom.pixels import get_decoder, pixel_array

    try:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise UnsupportedDicomError(
            f"This DICOM image is compressed as '{ts_name}', which HiCXR cannot decode on this installation. "
            "Ask for the image exported uncompressed (or as PNG)."
        )
    n_frames = int(_number(ds, "NumberOfFrames") or 1)
    if n_frames > 1:
        notes.append(f"multi-frame DICOM: first of {n_frames} frames shown")
    try:
        stored = pixel_array(ds, index=0)
    except Exception as exc:  # noqa: BLE001 - codec plugins raise arbitrary types on bad data
        raise CorruptImageError(
            f"The image data in this DICOM file ({ts_name}) could not be decoded: the file may be damaged or "
            f"incomplete. Export it again from PACS. (Technical detail: {_detail(exc)})"
        ) from None
    if stored.ndim not in (2, 3) or (stored.ndim == 3 and stored.shape[-1] != 3):
        raise UnsupportedDicomError(
            f"This DICOM image has an unexpected layout (array shape {stored.shape}). Export it as PNG or JPEG."
        )
    return stored


def _check_not_blank(raw: np.ndarray) -> None:
    if raw.size == 0 or not float(raw.max()) > float(raw.min()):
        raise BlankImageError(
            "The image is completely uniform (a single grey level): there is no X-ray to read. "
            "Check that the right image was exported."
        )


def _apply_voi(
    raw: np.ndarray, ds: Any, notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, tuple[float, float], WindowFunction]:
    """Return (pixels in [0, 1], window applied or None, default window for re-windowing, window function)."""
    lo, hi = float(raw.min()), float(raw.max())
    minmax = ((lo + hi) / 2.0, hi - lo)

    if _get(ds, "VOILUTSequence") is not None:
        from pydicom.pixels import apply_voi_lut

        try:
            lut_out = np.asarray(apply_voi_lut(raw, ds, index=0, prefer_lut=True), dtype=np.float32)
            out_lo, out_hi = float(lut_out.min()), float(lut_out.max())
        except Exception:  # noqa: BLE001 - a broken LUT degrades to windowing, it does not lose the image
            out_lo = out_hi = 0.0
        if out_hi > out_lo:
            # The LUT is not a window, so a re-windowing viewer starts from the data range instead.
            return (lut_out - out_lo) / (out_hi - out_lo), None, minmax, "LINEAR_EXACT"
        notes.append("VOI LUT in the file is unusable: grey levels scaled to the data range instead")

    center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if center is not None and width is not None and width > 0:
        pixels = apply_window(raw, center, width, function=function)  # type: ignore[arg-type]
        clipped = float(np.mean((pixels <= 0.0) | (pixels >= 1.0)))
        if clipped <= _MAX_CLIPPED_FRACTION:
            return pixels, (center, width), (center, width), function  # type: ignore[return-value]
        notes.append("window in the file does not fit the image data: grey levels scaled to the data range")
    elif center is not None or width is not None:
        notes.append("window in the file is invalid: grey levels scaled to the data range")
    return apply_window(raw, *minmax, function="LINEAR_EXACT"), None, minmax, "LINEAR_EXACT"


def _box_mean(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = image.shape
    r0, c0 = int(rows[0] * h), int(cols[0] * w)
    # max(..., start + 1) keeps every box non-empty on tiny images.
    return float(image[r0 : max(int(rows[1] * h), r0 + 1), c0 : max(int(cols[1] * w), c0 + 1)].mean())


def _lung_minus_mediastinum(pixels: np.ndarray) -> float:
    """Mean of two lateral lung boxes minus a central mediastinum box; positive on a wrongly inverted chest."""
    step = max(1, min(pixels.shape) // 256)  # a ~256 px view is plenty for box means and keeps this cheap
    small = pixels[::step, ::step]
    lungs = (_box_mean(small, (0.30, 0.60), (0.15, 0.35)) + _box_mean(small, (0.30, 0.60), (0.65, 0.85))) / 2.0
    return lungs - _box_mean(small, (0.30, 0.70), (0.45, 0.55))


def _contradicts_inversion(pixels_before_inversion: np.ndarray, view: str | None, body_part: str | None) -> bool:
    """True if inverting this frontal chest would make its lungs clearly brighter than its mediastinum."""
    if (view or "").upper() not in _FRONTAL_VIEWS or (body_part or "").upper() not in _CHEST_BODY_PARTS:
        return False
    # After inversion, lungs - mediastinum is exactly the negation of the value before it.
    return -_lung_minus_mediastinum(pixels_before_inversion) > _POLARITY_MARGIN
