"""DICOM (and old ACR-NEMA) files -> :class:`XrayImage`.

* **Before anything is decoded**: a Deflated file's inflated size, Rows x Columns x samples x bits, and for a
  compressed frame the size its own codestream declares (JPEG / JPEG-LS frame header, JPEG 2000 SIZ, RLE segment
  count), which must match the header (:mod:`core.imaging.limits`, :mod:`core.imaging.headers`).
* **Grayscale pipeline.** Modality LUT (a Modality LUT Sequence through pydicom, otherwise Rescale Slope/Intercept
  in float32; a slope of 0 or a non-numeric one is refused), then the VOI (:mod:`core.imaging.dicom_voi`).
* **MONOCHROME1 / INVERSE.** The image is inverted once if the Photometric Interpretation is MONOCHROME1 *or* the
  Presentation LUT Shape is INVERSE (for MONOCHROME1 the standard requires INVERSE: both mean one inversion).
* **Modalities.** CR, DX and RG (radiographs) are read. OT (other) or a missing Modality is read with a warning,
  since secondary captures of chest films often carry it. Everything else is refused, including RF/XA
  (fluoroscopy and angiography) and MG (mammography): the models were trained on chest radiographs only.
* **Colour DICOM** (SamplesPerPixel 3, RGB/YBR) is converted to luma with a warning; PALETTE COLOR is refused.
* **Multi-frame**: only the first frame is decoded, with a warning.
* **Privacy.** Metadata is built from an allow-list of technical attributes, and Modality, View Position, Body
  Part Examined and Photometric Interpretation only as defined terms (:mod:`core.imaging.coded`); no patient,
  study, date, institution or device attribute is copied, and no header text reaches a message. pydicom's value
  validation on reading is switched off (``reading_validation_mode = IGNORE``, once, process-wide) because its
  warnings quote the offending value (a name typed into a Code String, say) into the log and onto stderr; HiCXR
  validates the few values it uses itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import struct
import warnings
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np

from core.imaging import headers
from core.imaging.checks import check_content, check_finite, check_geometry, check_not_uniform
from core.imaging.coded import (
    BODY_PARTS,
    CHEST_BODY_PARTS,
    MODALITIES,
    OTHER,
    PHOTOMETRIC_INTERPRETATIONS,
    VIEW_POSITIONS,
    age_group,
    coded,
    field_mm,
    uid_text,
)
from core.imaging.dicom_fields import get, number, text
from core.imaging.dicom_voi import apply_voi, contradicts_inversion
from core.imaging.errors import (
    CorruptImageError,
    UnsupportedDicomError,
    UnsupportedModalityError,
    too_many_pixels,
)
from core.imaging.gray import luma
from core.imaging.limits import check_declared, check_deflated_dicom, check_stored_size, dicom_meta
from core.imaging.types import ImageMetadata, XrayImage
from core.imaging.window import apply_window

__all__ = ["parse", "parse_headerless", "read_dicom"]

_RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
_UNSPECIFIED_MODALITIES = frozenset({None, "OT"})
_MODALITY_NAMES = {
    "CT": "a CT", "MR": "an MRI", "US": "an ultrasound", "NM": "a nuclear medicine", "PT": "a PET",
    "XA": "an angiography (XA)", "RF": "a fluoroscopy (RF)", "MG": "a mammography", "IO": "an intra-oral dental",
    "PX": "a panoramic dental", "OP": "an ophthalmic photography", "SM": "a slide microscopy", "ES": "an endoscopy",
    "XC": "an external camera photography", "SR": "a structured report", "SEG": "a segmentation",
    "PR": "a presentation state",
}  # fmt: skip
_JPEG_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81)})
_J2K_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)})
_RLE_SYNTAX = "1.2.840.10008.1.2.5"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LUMA_PLANE_PHOTOMETRIC = frozenset({"YBR_FULL", "YBR_FULL_422"})
_GREY_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", OTHER})


def _check_frame_count(ds: Any, notes: list[str]) -> None:
    """A Number of Frames that is not a positive integer is replaced by 1 (the frame HiCXR reads) with a note
    naming the attribute; its text, which may be anything a site typed, is never quoted."""
    if "NumberOfFrames" not in ds:
        return
    value = number(ds, "NumberOfFrames")
    if value is None or value < 1 or not float(value).is_integer():
        notes.append("Number of Frames (0028,0008) is not a positive whole number: the first frame is read")
        ds.NumberOfFrames = 1


# pydicom reports header problems through its logger *and* warnings.warn (pydicom.misc.warn_and_log), and both
# quote the header's value ("Unknown encoding 'ISO_IR DOE^JOHN'"). Its logger is routed to the read in progress
# (a context variable: each dashboard session thread has its own), where the message is rephrased into a note that
# names the attribute only, and never propagates to the server log; its warnings are not printed.
_CAPTURED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("hicxr_pydicom_notes", default=None)
_REPHRASED = (
    (("encoding", "character set"), "the file's Specific Character Set (0008,0005) is not a DICOM defined term: "
                                    "header text read with the default character set"),
)


class _PydicomNotes(logging.Handler):
    """Turns pydicom's log records into notes of the read in progress; their text is never kept."""

    def emit(self, record: logging.LogRecord) -> None:
        notes = _CAPTURED.get()
        if notes is None or record.levelno < logging.WARNING:
            return
        message = record.getMessage().lower()
        for keys, note in _REPHRASED:
            if any(k in message for k in keys) and note not in notes:
                notes.append(note)


_QUIETED = False


def _pydicom() -> Any:
    """pydicom, with reading validation off and its messages captured (see above); imported on first use only."""
    global _QUIETED
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if not _QUIETED:
        _QUIETED = True
        log = logging.getLogger("pydicom")
        log.addHandler(_PydicomNotes())
        log.propagate = False
    # Idempotent (an equal filter is replaced, not added), and renewed each time because a test harness or an
    # application may reset the warning filters.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    return pydicom


@contextlib.contextmanager
def _capturing(notes: list[str]) -> Iterator[None]:
    """Within this block pydicom's header complaints become (rephrased) entries of ``notes``."""
    token = _CAPTURED.set(notes)
    try:
        yield
    finally:
        _CAPTURED.reset(token)


def parse(data: bytes, max_bytes: int) -> Any:
    """The pydicom dataset of a file with the ``DICM`` marker; a Deflated one is size-checked first.

    Raises:
        ImageTooLargeError: a Deflated dataset would inflate past ``max_bytes``.
        CorruptImageError: pydicom cannot parse the file.
    """
    check_deflated_dicom(data, max_bytes)
    pydicom = _pydicom()
    notes: list[str] = []
    try:
        with _capturing(notes):
            ds = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        ds, error = None, exc
    if ds is None or not _has_pixels(ds):
        # A file meta that names the wrong uncompressed encoding (big endian over a little endian body, say)
        # parses into garbage with no image: the dataset is read with the encoding its own bytes follow.
        reread = _reread_as_encoded(data, ds)
        if reread is not None:
            return reread
    if ds is None:
        raise CorruptImageError(
            f"This DICOM file is damaged and cannot be read ({type(error).__name__}). Export it again from PACS."
        ) from None
    ds.hicxr_notes = notes  # what pydicom said while parsing, rephrased; read_dicom starts from these
    return ds


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNCOMPRESSED = {  # tried in this order: the common encodings first
    "1.2.840.10008.1.2.1": (False, True), "1.2.840.10008.1.2": (True, True), "1.2.840.10008.1.2.2": (False, False),
}  # fmt: skip


def _has_pixels(ds: Any) -> bool:
    try:
        return any(k in ds for k in _PIXEL_KEYWORDS)
    except Exception:  # noqa: BLE001 - a garbage parse can fail on lookup too
        return False


def _reread_as_encoded(data: bytes, ds: Any | None) -> Any | None:
    """The dataset read with another uncompressed encoding than its file meta names, if that one holds an image."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    offset, declared = dicom_meta(data)
    if declared not in _UNCOMPRESSED or offset >= len(data):
        return None
    for uid, (implicit, little) in _UNCOMPRESSED.items():
        if uid == declared:
            continue
        try:
            candidate = read_dataset(BytesIO(data[offset:]), implicit, little)
            ok = _has_pixels(candidate) and (number(candidate, "Rows") or 0) > 0
        except Exception:  # noqa: BLE001 - the wrong encoding fails in arbitrary ways
            continue
        if ok:
            meta = FileMetaDataset(ds.file_meta) if ds is not None and getattr(ds, "file_meta", None) else None
            candidate.file_meta = meta if meta is not None else FileMetaDataset()
            candidate.file_meta.TransferSyntaxUID = UID(uid)
            candidate.set_original_encoding(implicit, little)
            candidate.hicxr_notes = [f"the file meta names {UID(declared).name} but the data set is encoded as "
                                    f"{UID(uid).name}: read as encoded"]
            return candidate
    return None


def parse_headerless(data: bytes, max_bytes: int) -> Any | None:
    """Parse bytes without the DICM marker (ACR-NEMA); the dataset only if it describes an image, else None."""
    check_deflated_dicom(data, max_bytes)  # pydicom honours a file meta group even without the marker
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        ok = "PixelData" in ds and (number(ds, "Rows") or 0) > 0 and (number(ds, "Columns") or 0) > 0
    except Exception:  # noqa: BLE001 - any parser failure just means "not DICOM"
        return None
    return ds if ok else None


def read_dicom(data: bytes, ds: Any, max_pixels: int, keep_raw: bool) -> XrayImage:
    """Decode frame 0 of a parsed DICOM dataset (see the module docstring); raises :class:`ImageError` subclasses."""
    notes: list[str] = list(getattr(ds, "hicxr_notes", None) or [])
    with _capturing(notes):
        return _read_dicom(ds, max_pixels, keep_raw, notes)


def _read_dicom(ds: Any, max_pixels: int, keep_raw: bool, notes: list[str]) -> XrayImage:
    if not _has_pixels(ds):
        raise CorruptImageError(
            "This DICOM file holds no image (no Pixel Data): it may be a report, a structured report or a "
            "presentation state. Open the image itself (the X-ray series) and upload that file."
        )
    modality = _check_modality(ds, notes)
    body_part = coded(text(ds, "BodyPartExamined"), BODY_PARTS)
    if body_part == OTHER:
        notes.append("body part is not a standard DICOM term: HiCXR's findings are meant for chest radiographs")
    elif body_part is not None and body_part not in CHEST_BODY_PARTS:
        notes.append(f"body part is {body_part}, not chest: HiCXR's findings are meant for chest radiographs")
    view_position = coded(text(ds, "ViewPosition"), VIEW_POSITIONS)
    photometric = coded(text(ds, "PhotometricInterpretation"), PHOTOMETRIC_INTERPRETATIONS)

    rows, cols = int(number(ds, "Rows") or 0), int(number(ds, "Columns") or 0)
    if rows * cols > max_pixels:
        raise too_many_pixels(cols, rows, max_pixels)
    check_geometry(cols, rows)
    samples, allocated = int(number(ds, "SamplesPerPixel") or 1), int(number(ds, "BitsAllocated") or 16)
    widest = 64 if "DoubleFloatPixelData" in ds else 32
    if samples not in (1, 3) or not 1 <= allocated <= widest:
        raise UnsupportedDicomError(
            f"This DICOM image has {samples} sample(s) per pixel of {allocated} bits; HiCXR reads grayscale or "
            "RGB images of up to 32 bits (64 for Double Float Pixel Data). Export the X-ray as a grayscale DICOM, "
            "PNG or JPEG."
        )
    check_stored_size(cols, rows, samples, allocated, max_pixels, "This DICOM image")
    if photometric == "PALETTE COLOR":
        raise UnsupportedDicomError(
            "This DICOM uses a colour palette (PALETTE COLOR), which is not a radiograph's grey scale. "
            "Export the X-ray as a grayscale DICOM, PNG or JPEG."
        )
    if samples == 1 and photometric is not None and photometric not in _GREY_PHOTOMETRIC:
        # The header contradicts itself; one sample per pixel can only be grey levels.
        notes.append(f"the file says {photometric} (colour) but holds one sample per pixel: read as grayscale")
        ds.PhotometricInterpretation = "MONOCHROME2"
    _check_frame_count(ds, notes)

    ts_name, ts_uid = _ensure_transfer_syntax(ds, notes)
    n_frames = max(1, int(number(ds, "NumberOfFrames") or 1))
    _check_codestream(ds, ts_uid, ts_name, n_frames, (cols, rows, samples, allocated), max_pixels)
    # YBR_FULL(_422) is kept as decoded: its Y plane *is* the luma (ITU-R 601), so no RGB is ever made. pydicom's
    # YBR -> RGB conversion works in float64 and took a 49.6 MP colour JPEG-in-DICOM to 1.2 GB.
    luma_plane = samples == 3 and photometric in _LUMA_PLANE_PHOTOMETRIC
    stored = _decode_first_frame(ds, ts_name, n_frames, notes, keep_ybr=luma_plane)
    if stored.shape[:2] != (rows, cols):
        raise CorruptImageError(
            f"This DICOM file is damaged: its image data decodes to {stored.shape[1]} x {stored.shape[0]} pixels "
            f"but its header says {cols} x {rows}. Export it again."
        )
    bits_stored = int(number(ds, "BitsStored") or 0) or None

    window_applied: tuple[float, float] | None = None
    inverted = False
    if stored.ndim == 3:
        # Colour: no modality/VOI LUT applies; show the luma through the nominal range of the stored bits.
        notes.append(f"colour DICOM ({photometric}) converted to grayscale")
        raw = stored[..., 0].astype(np.float32) if luma_plane else luma(stored)
        del stored
        check_not_uniform(raw)
        scale = float(2 ** (bits_stored or 8) - 1)
        default_window, function = (scale / 2.0, scale), "LINEAR_EXACT"
        pixels = apply_window(raw, *default_window, function=function)
    else:
        raw = _modality_lut(stored, ds)
        del stored
        check_finite(raw, "This DICOM image")
        check_not_uniform(raw)
        pixels, window_applied, default_window, function = apply_voi(raw, ds, notes)
        presentation = (text(ds, "PresentationLUTShape") or "").upper()
        inverted = photometric == "MONOCHROME1" or presentation == "INVERSE"
        if inverted and contradicts_inversion(pixels, view_position, body_part):
            inverted = False
            notes.append(
                f"the file says {photometric} with an inverted grey scale, but its pixels are already stored "
                "lungs-dark: shown without inverting; check the image polarity"
            )
        if inverted:
            np.subtract(1.0, pixels, out=pixels)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    check_content(pixels, notes)

    metadata = ImageMetadata(
        format="DICOM",
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        bits_stored=bits_stored,
        photometric=photometric,
        modality=modality,
        view_position=view_position,
        body_part=body_part,
        transfer_syntax=ts_name,
        window=window_applied,
        inverted=inverted,
        warnings=tuple(notes),
        age_group=age_group(get(ds, "PatientAge")),
        field_mm=_field_mm(ds, rows, cols),
    )
    return XrayImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        metadata=metadata,
        raw=np.ascontiguousarray(raw, dtype=np.float32) if keep_raw else None,
        default_window=default_window,
        window_function=function,
    )


def _field_mm(ds: Any, rows: int, cols: int) -> tuple[float, float] | None:
    """The imaged field in mm: the detector's spacing (ImagerPixelSpacing) first, else PixelSpacing."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            found = field_mm(ds.get(keyword), rows, cols)
        except Exception:  # noqa: BLE001 - pydicom converts lazily and can raise anything on a malformed value
            found = None
        if found is not None:
            return found
    return None


def _check_modality(ds: Any, notes: list[str]) -> str | None:
    modality = coded(text(ds, "Modality"), MODALITIES)
    if modality in _UNSPECIFIED_MODALITIES:
        what = "missing" if modality is None else "OT (other)"
        notes.append(f"DICOM modality is {what}: assumed to be a chest radiograph")
    elif modality == OTHER:
        raise UnsupportedModalityError(
            "This DICOM's Modality is not a standard DICOM code, so it cannot be confirmed to be a radiograph; "
            "HiCXR reads chest radiographs (CR/DX) only. Upload a chest X-ray."
        )
    elif modality not in _RADIOGRAPH_MODALITIES:
        kind = _MODALITY_NAMES.get(modality, f"a {modality}")
        raise UnsupportedModalityError(
            f"This DICOM is {kind} image (Modality {modality}); HiCXR reads chest radiographs (CR/DX) only. "
            "Upload a chest X-ray."
        )
    return modality


def _ensure_transfer_syntax(ds: Any, notes: list[str]) -> tuple[str, str]:
    """(transfer syntax name for messages, its UID), filling in file meta for ACR-NEMA files so pydicom decodes."""
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
    if uid.is_transfer_syntax:
        return uid.name, str(uid)
    shown = uid_text(uid)
    return (f"unknown transfer syntax {shown}" if shown else "an unknown transfer syntax"), str(uid)


def _check_codestream(
    ds: Any, ts_uid: str, ts_name: str, n_frames: int, layout: tuple[int, int, int, int], max_pixels: int
) -> None:
    """Refuse a compressed frame 0 whose own stream declares a size beyond the limits or unlike the header's."""
    if ts_uid not in _JPEG_SYNTAXES | _J2K_SYNTAXES | {_RLE_SYNTAX}:
        return
    cols, rows, samples, allocated = layout
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=n_frames)
    except Exception as exc:  # noqa: BLE001 - broken fragment structure
        raise CorruptImageError(
            f"The compressed image data in this DICOM file ({ts_name}) is damaged: its fragments cannot be read. "
            f"Export it again. (Technical detail: {type(exc).__name__})"
        ) from None
    if ts_uid == _RLE_SYNTAX:
        # RLE decodes into Rows x Columns x planes from the header (already checked); the stream's own header only
        # says how many byte planes (segments) it holds, which must be what the header implies.
        segments = struct.unpack("<I", frame[:4])[0] if len(frame) >= 64 else -1
        if segments != samples * math.ceil(allocated / 8):
            raise CorruptImageError(
                "The RLE-compressed image data in this DICOM file does not match its header (wrong number of "
                "segments): the file is damaged. Export it again."
            )
        return
    declared = headers.jpeg(frame) or headers.j2k(frame) or headers.jp2(frame)
    if declared is None:
        raise CorruptImageError(
            f"The compressed image data in this DICOM file ({ts_name}) could not be decoded: it has no readable "
            "image header, so the file is damaged. Export it again."
        )
    check_declared(declared, max_pixels, " inside this DICOM file")
    if (declared.width, declared.height) != (cols, rows):
        raise CorruptImageError(
            f"This DICOM file is damaged: its compressed image declares {declared.width} x {declared.height} "
            f"pixels but its header says {cols} x {rows}. Export it again."
        )


def _decode_first_frame(ds: Any, ts_name: str, n_frames: int, notes: list[str], keep_ybr: bool = False) -> np.ndarray:
    """Decode only frame 0: (rows, cols) for grayscale, (rows, cols, 3) RGB for colour."""
    from pydicom.pixels import get_decoder, pixel_array

    from core.imaging.dicom_codecs import plugin_for

    try:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise UnsupportedDicomError(
            f"This DICOM image is compressed as '{ts_name}', which HiCXR cannot decode on this installation. "
            "Ask for the image exported uncompressed (or as PNG)."
        )
    if n_frames > 1:
        notes.append(f"multi-frame DICOM: first of {n_frames} frames shown")
    try:
        # The faster codec where one is installed (core.imaging.dicom_codecs); "" = pydicom's own order.
        stored = pixel_array(ds, index=0, raw=keep_ybr, decoding_plugin=plugin_for(ds.file_meta.TransferSyntaxUID))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec plugins raise arbitrary types on bad data
        raise CorruptImageError(
            f"The image data in this DICOM file ({ts_name}) could not be decoded: the file may be damaged or "
            f"incomplete. Export it again from PACS. (Technical detail: {type(exc).__name__})"
        ) from None
    if stored.ndim not in (2, 3) or (stored.ndim == 3 and stored.shape[-1] != 3):
        raise UnsupportedDicomError(
            f"This DICOM image has an unexpected layout (array shape {stored.shape}). Export it as PNG or JPEG."
        )
    return stored


def _rescale_value(ds: Any, keyword: str) -> float:
    try:
        value = float(get(ds, keyword))
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value):
        raise CorruptImageError(
            "The rescaling information (Rescale Slope/Intercept) in this DICOM file is not a valid number. "
            "Export the X-ray again."
        )
    return value


def _modality_lut(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> modality values as float32 (pydicom's rule: a LUT Sequence, else slope and intercept)."""
    if get(ds, "ModalityLUTSequence") is not None:
        from pydicom.pixels import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - a malformed Modality LUT must become a readable message
            raise CorruptImageError(
                "The rescaling information (Modality LUT) in this DICOM file is invalid. Export the X-ray again. "
                f"(Technical detail: {type(exc).__name__})"
            ) from None
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return stored.astype(np.float32)
    slope, intercept = _rescale_value(ds, "RescaleSlope"), _rescale_value(ds, "RescaleIntercept")
    if slope == 0:
        raise CorruptImageError(
            "The rescaling information in this DICOM file is broken: its Rescale Slope is 0, which maps every "
            "pixel to the same value. Export the X-ray again."
        )
    if slope == 1 and intercept == 0:
        return stored.astype(np.float32)
    # The rescaled range is checked in float64 before any pixel is computed: float32 (what the pipeline holds)
    # must represent it, and must still tell its extremes apart (a slope of 1e-50 underflows every value to 0).
    lo, hi = float(stored.min()), float(stored.max())
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    if max(abs(ends[0]), abs(ends[1])) > _FLOAT32_MAX:
        raise CorruptImageError(
            "The rescaling information (Rescale Slope/Intercept) in this DICOM file maps the pixel values beyond "
            "the range of numbers an image can hold (about 3.4e38), so the grey levels cannot be computed. Export "
            "the X-ray again."
        )
    if hi > lo and not np.float32(ends[1]) - np.float32(ends[0]) > 0:
        raise CorruptImageError(
            "The rescaling information (Rescale Slope/Intercept) in this DICOM file is so small (or the intercept "
            "so large) that distinct pixel values become the same number, so the image cannot be shown. Export "
            "the X-ray again."
        )
    raw = np.empty(stored.shape, dtype=np.float32)
    for top in range(0, stored.shape[0], 256):  # float64 in row blocks, float32 out: one float32 copy in all
        block = stored[top : top + 256].astype(np.float64)
        block *= slope
        block += intercept
        raw[top : top + 256] = block
    return raw
