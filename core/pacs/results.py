"""HiCXR's analysis of one image as standard DICOM objects (``highdicom``), ready to store in the source study.

* :func:`build_sr` - a **Comprehensive SR following TID 1500** (Measurement Report): one measurement group
  (TID 1501) per learnt label, whose finding is the label's code (:mod:`core.pacs.codes`: SNOMED CT where a
  concept exists, the private ``99HICXR`` scheme for the taxonomy's groups), with three measurements (calibrated
  probability = the Monte-Carlo mean, its standard deviation, the operating point when the card has one) and one
  qualitative evaluation (the call at the operating point); the algorithm identification (TID 4019: model name,
  version = the card's ``tensor_sha256``, parameters) and the source image in every group; a last group holds the
  text: "research use only, not for diagnosis", every warning of the analysis, and the labels not learnt (which
  have no group). The source study, series and instance are referenced in the Image Library and the evidence.
* :func:`build_sc` - a **Secondary Capture** of one learnt label's map over the image (the top learnt finding by
  default), with a caption and a burned-in "NOT FOR DIAGNOSIS".

Both copy the patient and study modules from the source instance (so the PACS files them in its study), sit in
new series whose SeriesDescription starts "HiCXR", and get new UIDs. :func:`read_sr` reads an SR back into numbers.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from core.analysis import Analysis
from core.pacs import codes as hc
from core.pacs.studies import RESULT_PREFIX

__all__ = ["DISCLAIMER", "ModelIdentity", "SrReading", "build_sc", "build_sr", "read_sr", "sr_model"]

DISCLAIMER = "Research use only, not for diagnosis. HiCXR is not a medical device."
BURNED_IN = "NOT FOR DIAGNOSIS - research use only"
MANUFACTURER = "HiCXR (research prototype)"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SC_MAX_SIDE = 2048


@dataclass(frozen=True)
class ModelIdentity:
    """What produced the analysis (TID 4019 Algorithm Identification).

    Attributes:
        name: Model (variant) name, e.g. ``bce``.
        version: The model card's ``tensor_sha256`` (two models with the same hash are one model).
        parameters: Settings of the analysis, e.g. ``{"mc_samples": "10", "seed": "0"}``.
    """

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_version(self) -> str:
        """The first 12 hex digits of the version (for series descriptions)."""
        return self.version[:12]


def _call(analysis: Analysis, label: str) -> str:
    """The record's call for a label (the one rule lives with the analysis record; never re-derived here);
    ``""`` when the record makes none (e.g. an image outside the training population)."""
    return analysis.call(label)


def _call_reason(analysis: Analysis, label: str) -> str:
    """Why the record made no call on a label, when it says (empty otherwise)."""
    reason = getattr(analysis, "call_reason", None)
    return str(reason(label)) if callable(reason) else ""


def _source_header(source: Dataset) -> Dataset:
    """The source without pixel data (evidence and module copies need the header only)."""
    header = Dataset()
    header.update({elem.tag: elem for elem in source if elem.tag != 0x7FE00010})
    header.file_meta = getattr(source, "file_meta", Dataset())
    return header


def _library_ready(source: Dataset) -> bool:
    """Whether highdicom can describe the source in the Image Library (TID 1600): for a radiograph it needs
    Patient Orientation and Imager Pixel Spacing, which many real films lack. Without them the source is still
    referenced by every measurement group and by the evidence sequence."""
    if str(source.get("Modality", "")) not in ("CR", "DX", "MG", "RG", "XA", "RF", "IO", "PX", "DG"):
        return "SOPClassUID" in source
    orientation, spacing = source.get("PatientOrientation"), source.get("ImagerPixelSpacing")
    return orientation is not None and len(orientation) == 2 and spacing is not None and len(spacing) == 2


def _text_item(name: Any, text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=text[:1024] or "-",
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def build_sr(analysis: Analysis, source: Dataset, model: ModelIdentity, *, series_uid: str | None = None,
             instance_number: int = 1) -> hd.sr.ComprehensiveSR:
    """The TID 1500 Comprehensive SR of one analysis of ``source`` (see the module docstring)."""
    source = _source_header(source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"HiCXR {model.name}", version=model.version,
        parameters=[f"{k}={v}" for k, v in model.parameters.items()] or None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["HiCXR", model.name, model.version]), name="HiCXR",
            manufacturer_name=MANUFACTURER, model_name=model.name[:64]))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    for i, label in enumerate(analysis.labels):
        if not analysis.learnt(label):
            continue
        measurements = [
            hd.sr.Measurement(name=hc.PROBABILITY, value=float(analysis.mc_mean[i]), unit=hc.UNIT),
            hd.sr.Measurement(name=hc.MC_STD, value=float(analysis.mc_std[i]), unit=hc.UNIT),
        ]
        threshold = analysis.operating_points.get(label)
        if threshold is not None:
            measurements.append(hd.sr.Measurement(name=hc.OPERATING_POINT, value=float(threshold), unit=hc.UNIT))
        call = _call(analysis, label)
        evaluations = [hd.sr.QualitativeEvaluation(hc.CALL, hc.CALL_VALUES[call])] if call in hc.CALL_VALUES else []
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label),
            finding_type=hc.finding_code(label), algorithm_id=algorithm, source_images=[source_image],
            measurements=measurements, qualitative_evaluations=evaluations or None)
        reason = _call_reason(analysis, label)
        if reason:
            group[0].ContentSequence.append(_text_item(hc.CALL_REASON, reason))
        groups.append(group)
    notes = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="HiCXR notes"),
        finding_type=hc.NOTE, algorithm_id=algorithm, source_images=[source_image])
    items = [_text_item(hc.NOTE, DISCLAIMER)]
    items += [_text_item(hc.WARNING, w) for w in analysis.warnings]
    if analysis.not_learnt:
        items.append(_text_item(hc.NOT_LEARNT, "Not learnt by this model, so not reported: "
                                + ", ".join(analysis.not_learnt)))
    notes[0].ContentSequence.extend(items)
    groups.append(notes)
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=hc.PROCEDURE,
                                     imaging_measurements=groups,
                                     referenced_images=[source] if _library_ready(source) else None)
    with warnings.catch_warnings():  # highdicom warns about the private scheme; it is declared below
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.ComprehensiveSR(
            evidence=[source], content=report, series_instance_uid=series_uid or generate_uid(),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=instance_number,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=f"{RESULT_PREFIX} SR {model.name} {model.short_version}"[:64])
    scheme = Dataset()
    scheme.CodingSchemeDesignator = hc.SCHEME
    scheme.CodingSchemeName = hc.SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = hc.SCHEME_ORGANIZATION
    sr.CodingSchemeIdentificationSequence = DicomSequence([scheme])
    _stamp(sr)
    return sr


def _stamp(ds: Dataset) -> None:
    now = dt.datetime.now()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = "HiCXR"


# --------------------------------------------------------------------------------------------- read back


@dataclass
class SrReading:
    """An SR read back: per label ``probability``, ``std``, ``operating_point`` (or None) and ``call``; the model
    name and version; the text items."""

    model_name: str = ""
    model_version: str = ""
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_learnt: str = ""


def _items(ds: Dataset):
    for item in getattr(ds, "ContentSequence", None) or []:
        yield item
        yield from _items(item)


def _code(item: Dataset) -> tuple[str, str]:
    seq = getattr(item, "ConceptNameCodeSequence", None)
    if not seq:
        return "", ""
    value = seq[0].get("CodeValue") or seq[0].get("LongCodeValue") or ""
    return str(value), str(seq[0].CodingSchemeDesignator)


def sr_model(ds: Dataset) -> tuple[str, str] | None:
    """``(algorithm name, version)`` of the first Algorithm Identification in an SR, or ``None``."""
    name = version = None
    for item in _items(ds):
        code = _code(item)
        if code == ("111001", "DCM") and name is None:
            name = str(item.TextValue)
        elif code == ("111003", "DCM") and version is None:
            version = str(item.TextValue)
        if name is not None and version is not None:
            return name, version
    return None


def read_sr(ds: Dataset) -> SrReading:
    """The numbers and text of a HiCXR SR (see :func:`build_sr`)."""
    out = SrReading()
    model = sr_model(ds)
    if model is not None:
        out.model_name, out.model_version = model
    for group in _items(ds):
        if _code(group) != ("125007", "DCM"):  # Measurement Group
            continue
        label = None
        values: dict[str, Any] = {"operating_point": None, "call": ""}
        for item in getattr(group, "ContentSequence", None) or []:
            code = _code(item)
            if code == ("121071", "DCM"):  # Finding
                concept = item.ConceptCodeSequence[0]
                value = concept.get("CodeValue") or concept.get("LongCodeValue") or ""
                label = hc.label_of(str(value), str(concept.CodingSchemeDesignator))
            elif code[1] == hc.SCHEME and item.ValueType == "NUM":
                value = float(item.MeasuredValueSequence[0].NumericValue)
                key = {"PROB": "probability", "MCSTD": "std", "OPPOINT": "operating_point"}.get(code[0])
                if key:
                    values[key] = value
            elif code == ("CALL", hc.SCHEME):
                values["call"] = {v.value: k for k, v in hc.CALL_VALUES.items()}.get(
                    str(item.ConceptCodeSequence[0].CodeValue), "")
            elif code == ("CALLWHY", hc.SCHEME):
                values["call_reason"] = str(item.TextValue)
            elif code == ("NOTE", hc.SCHEME) and item.ValueType == "TEXT":
                out.notes.append(str(item.TextValue))
            elif code == ("WARN", hc.SCHEME):
                out.warnings.append(str(item.TextValue))
            elif code == ("NOTLEARNT", hc.SCHEME):
                out.not_learnt = str(item.TextValue)
        if label is not None and "probability" in values:
            out.findings[label] = values
    return out


# --------------------------------------------------------------------------------------- secondary capture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                 "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def map_picture(analysis: Analysis, label: str) -> tuple[np.ndarray, str]:
    """The label's map over the image (RGB uint8) and what kind of picture it is.

    A Grad-CAM is a heat map; where the label's Grad-CAM is empty, the relative map as dashed contours ("not
    evidence"), as in the dashboard.
    """
    from core.explain import contour_overlay, overlay

    i = analysis.index(label)
    image = analysis.image
    scale = min(1.0, SC_MAX_SIDE / max(image.shape))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
            size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    map_of = (analysis.cam_labels or analysis.labels)[i]
    of = f" (map of {map_of})" if map_of != label else ""
    if analysis.cams[i].any():
        heat = overlay(image, analysis.cams[i], opacity=0.45, threshold=0.2)
        return heat, f"Grad-CAM{of}: regions that raise {label}"
    if analysis.relative_cams is not None:
        return (contour_overlay(image, analysis.relative_cams[i]),
                f"relative map{of}, dashed: where {label} is least unlikely - not evidence")
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), f"no map for {label} (no region raises it)"


def _burn_in(picture: np.ndarray, caption: str) -> np.ndarray:
    """Caption strip below the picture and "NOT FOR DIAGNOSIS" burned into its top edge."""
    h, w = picture.shape[:2]
    size = max(12, w // 45)
    font = _font(size)
    canvas = Image.new("RGB", (w, h + 3 * (size + 8) + 8), (0, 0, 0))
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    banner = _font(max(12, w // 32))
    box = draw.textbbox((0, 0), BURNED_IN, font=banner)
    draw.rectangle((0, 0, w, box[3] + 8), fill=(150, 0, 0))
    draw.text((max(4, (w - box[2]) // 2), 4), BURNED_IN, fill=(255, 255, 255), font=banner)
    lines = _wrap(caption, draw, font, w - 8)[:3]
    for k, line in enumerate(lines):
        draw.text((4, h + 4 + k * (size + 8)), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: Any, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    return [*lines, current] if current else lines


def caption_for(analysis: Analysis, label: str, model: ModelIdentity, kind: str) -> str:
    """The SC's caption: model, label, probability ± std, operating point and call, what the map is."""
    i = analysis.index(label)
    threshold = analysis.operating_points.get(label)
    call = _call(analysis, label)
    if threshold is not None and call in ("above", "below"):
        point = f"operating point {threshold:.2f}: {call}"
    else:
        point = _call_reason(analysis, label) or call or "no call"
    return (f"HiCXR {model.name} ({model.short_version}): {label} P = {analysis.mc_mean[i]:.2f} "
            f"± {analysis.mc_std[i]:.2f}, {point}. {kind}. Maps are attention cues, not localisations.")


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's Patient Orientation when it gives both directions; else the display convention of a frontal
    chest film (rows toward the patient's left, columns toward the feet), which is how HiCXR shows it."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return "L", "F"


def build_sc(analysis: Analysis, source: Dataset, model: ModelIdentity, label: str | None = None, *,
             series_uid: str | None = None, instance_number: int = 1) -> hd.sc.SCImage:
    """A Secondary Capture of ``label``'s map (the top learnt finding by default) over the image.

    Raises:
        ValueError: ``label`` is not a learnt label of the analysis.
    """
    label = label or (analysis.top_findings(1) or [next(x for x in analysis.labels if analysis.learnt(x))])[0]
    if label not in analysis.labels or not analysis.learnt(label):
        raise ValueError(f"{label!r} is not a label this model learnt, so it has no map to send")
    picture, kind = map_picture(analysis, label)
    pixels = _burn_in(picture, caption_for(analysis, label, model, kind))
    source = _source_header(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", patient_orientation=_orientation(source),
            series_instance_uid=series_uid or generate_uid(),
            series_number=SC_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=instance_number,
            manufacturer=MANUFACTURER, transfer_syntax_uid="1.2.840.10008.1.2.1",
            series_description=f"{RESULT_PREFIX} map {model.name} {label}"[:64])
    sc.Modality = "OT"  # a picture of a result, not a radiograph: never read back as an input
    sc.BurnedInAnnotation = "YES"
    # General Series' Laterality is required for a paired body part: naming the (unpaired) chest settles it.
    sc.BodyPartExamined = "CHEST"
    sc.ImageComments = caption_for(analysis, label, model, kind)[:10240]
    sc.DerivationDescription = f"{kind}; {DISCLAIMER}"[:1024]
    _stamp(sc)
    return sc
