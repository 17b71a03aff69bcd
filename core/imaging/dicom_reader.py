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

import math
import struct
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
    uid_text,
)
from core.imaging.dicom_fields import get, number, text
from core.imaging.dicom_voi import apply_voi, contradicts_inversion
from core.imaging.errors import (
    CorruptImageError,
    UnsupportedDicomError,
    UnsupportedModalityError,
    detail,
    too_many_pixels,
)
from core.imaging.gray import luma
from core.imaging.limits import check_declared, check_deflated_dicom, check_stored_size
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


def _pydicom() -> Any:
    """pydicom, with reading validation off (see the module docstring); imported on first use only."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def parse(data: bytes, max_bytes: int) -> Any:
    """The pydicom dataset of a file with the ``DICM`` marker; a Deflated one is size-checked first.

    Raises:
        ImageTooLargeError: a Deflated dataset would inflate past ``max_bytes``.
        CorruptImageError: pydicom cannot parse the file.
    """
    check_deflated_dicom(data, max_bytes)
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise CorruptImageError(
            f"This DICOM file is damaged and cannot be read ({type(exc).__name__}). Export it again from PACS."
        ) from None


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
    notes: list[str] = []
    if "PixelData" not in ds:
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
    if samples not in (1, 3) or not 1 <= allocated <= 32:
        raise UnsupportedDicomError(
            f"This DICOM image has {samples} sample(s) per pixel of {allocated} bits; HiCXR reads grayscale or "
            "RGB images of up to 32 bits. Export the X-ray as a grayscale DICOM, PNG or JPEG."
        )
    check_stored_size(cols, rows, samples, allocated, max_pixels, "This DICOM image")
    if photometric == "PALETTE COLOR":
        raise UnsupportedDicomError(
            "This DICOM uses a colour palette (PALETTE COLOR), which is not a radiograph's grey scale. "
            "Export the X-ray as a grayscale DICOM, PNG or JPEG."
        )

    ts_name, ts_uid = _ensure_transfer_syntax(ds, notes)
    n_frames = max(1, int(number(ds, "NumberOfFrames") or 1))
    _check_codestream(ds, ts_uid, ts_name, n_frames, (cols, rows, samples, allocated), max_pixels)
    stored = _decode_first_frame(ds, ts_name, n_frames, notes)
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
        raw = luma(stored)
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
    )
    return XrayImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        metadata=metadata,
        raw=np.ascontiguousarray(raw, dtype=np.float32) if keep_raw else None,
        default_window=default_window,
        window_function=function,
    )


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
            f"Export it again. (Technical detail: {detail(exc)})"
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


def _decode_first_frame(ds: Any, ts_name: str, n_frames: int, notes: list[str]) -> np.ndarray:
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
    if n_frames > 1:
        notes.append(f"multi-frame DICOM: first of {n_frames} frames shown")
    try:
        stored = pixel_array(ds, index=0)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec plugins raise arbitrary types on bad data
        raise CorruptImageError(
            f"The image data in this DICOM file ({ts_name}) could not be decoded: the file may be damaged or "
            f"incomplete. Export it again from PACS. (Technical detail: {detail(exc)})"
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
                f"(Technical detail: {detail(exc)})"
            ) from None
    raw = stored.astype(np.float32)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = _rescale_value(ds, "RescaleSlope"), _rescale_value(ds, "RescaleIntercept")
        if slope == 0:
            raise CorruptImageError(
                "The rescaling information in this DICOM file is broken: its Rescale Slope is 0, which maps every "
                "pixel to the same value. Export the X-ray again."
            )
        # In place, in float32: a 50-megapixel image costs one float copy here, not pydicom's float64 two.
        # Overflow to infinity is not silenced into garbage: check_finite refuses it right after.
        with np.errstate(over="ignore", invalid="ignore"):
            if slope != 1:
                raw *= np.float32(slope)
            if intercept != 0:
                raw += np.float32(intercept)
    return raw
