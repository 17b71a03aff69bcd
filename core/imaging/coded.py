"""DICOM header fields reduced to their defined terms, so no free text from a header reaches a user.

Modality, View Position and Body Part Examined are Code Strings whose values the standard lists, but devices and
sites write anything there, including a patient's name or a record number. Everything HiCXR shows, exports, logs
or puts in an error message goes through :func:`coded`: a defined term is kept (upper-cased, spaces trimmed),
anything else becomes :data:`OTHER`. The Manufacturer is free text by definition and is not read at all.
"""

from __future__ import annotations

import re

__all__ = [
    "BODY_PARTS",
    "CHEST_BODY_PARTS",
    "FRONTAL_VIEWS",
    "MODALITIES",
    "OTHER",
    "PHOTOMETRIC_INTERPRETATIONS",
    "VIEW_POSITIONS",
    "age_group",
    "coded",
    "uid_text",
]

OTHER = "other"

# DICOM PS3.3 C.7.3.1.1.1 (Modality), current defined terms plus the retired ones still found in archives.
MODALITIES = frozenset({
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DMS", "DG", "DOC", "DX", "ECG",
    "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS",
    "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA", "PLAN",
    "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD",
    "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US",
    "VA", "XA", "XAPROTOCOL", "XC",
    # retired
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS", "OPR", "ST", "VF",
})  # fmt: skip

# View Position (0018,5101), CR Image and DX Positioning modules: the radiographic projections.
VIEW_POSITIONS = frozenset({"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"})
FRONTAL_VIEWS = frozenset({"AP", "PA"})

# Body Part Examined (0018,0015): the defined terms of PS3.16 Annex L (Table L-1). THORAX is what veterinary
# radiographs (and the highdicom canine sample in shared/data) use.
BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "ACJOINT", "ADRENAL", "ANKLE", "AORTA", "ARM", "AXILLA", "BACK", "BILEDUCT",
    "BILIARYTRACT", "BLADDER", "BRAIN", "BREAST", "BRONCHUS", "BUTTOCK", "CALCANEUS", "CALF", "CAROTID",
    "CEREBELLUM", "CERVIX", "CHEEK", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "CIRCLEOFWILLIS", "CLAVICLE",
    "COCCYX", "COLON", "COMMONBILEDUCT", "CORNEA", "CORONARYARTERY", "CSPINE", "CTSPINE", "DUODENUM", "EAR", "ELBOW",
    "ESOPHAGUS", "EXTREMITY", "EYE", "EYELID", "FACE", "FEMUR", "FIBULA", "FINGER", "FOOT", "FOREARM",
    "GALLBLADDER", "HAND", "HEAD", "HEADNECK", "HEART", "HIP", "HUMERUS", "IAC", "ILEUM", "ILIUM", "JAW", "JEJUNUM",
    "KIDNEY", "KNEE", "LARGEINTESTINE", "LARYNX", "LEG", "LIVER", "LOWERLEG", "LOWERLIMB", "LSPINE", "LSSPINE",
    "LUNG", "MANDIBLE", "MASTOID", "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST", "NECKCHESTABDOMEN",
    "NECKCHESTABDPELV", "NOSE", "OPTICCANAL", "ORBIT", "OVARY", "PANCBILEDUCT", "PANCREAS", "PANCREATICDUCT",
    "PAROTID", "PATELLA", "PELVIS", "PELVISLOWEXTREMT", "PENIS", "PHANTOM", "PHARYNX", "PROSTATE", "RADIUS",
    "RADIUSULNA", "RECTUM", "RIB", "SCALP", "SCAPULA", "SCJOINT", "SCLERA", "SCROTUM", "SELLA", "SESAMOID",
    "SHOULDER", "SIJOINT", "SKULL", "SMALLINTESTINE", "SPINE", "SPLEEN", "SSPINE", "STERNUM", "STOMACH",
    "SUBMANDIBULAR", "TESTIS", "THIGH", "THORAX", "THUMB", "THYMUS", "THYROID", "TIBIA", "TIBIAFIBULA", "TLSPINE",
    "TMJ", "TOE", "TONGUE", "TRACHEA", "TSPINE", "ULNA", "UPPERARM", "UPPERLIMB", "UPRURINARYTRACT", "URETER",
    "URETHRA", "UTERUS", "VAGINA", "VULVA", "WHOLEBODY", "WRIST", "ZYGOMA",
})  # fmt: skip
# Body parts of a chest film: anything else gets a warning, and only these get the polarity plausibility check.
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "RIB"})

# Photometric Interpretation (0028,0004), PS3.3 C.7.6.3.1.2 (enumerated values, current and retired).
PHOTOMETRIC_INTERPRETATIONS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB", "HSV", "ARGB", "CMYK",
})  # fmt: skip

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# PatientAge is an Age String: three digits and a unit, D(ays), W(eeks), M(onths) or Y(ears).
_AGE = re.compile(r"([0-9]{3})([DWMY])")


def age_group(value: object) -> str | None:
    """``"child"`` (under 18) or ``"adult"`` from a DICOM PatientAge, ``None`` if absent or malformed.

    Only the band is kept: the age itself identifies more than HiCXR needs and is never stored or shown.
    """
    match = _AGE.fullmatch(str(value).strip().upper()) if value is not None else None
    if match is None:
        return None
    years = int(match.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]
    return "child" if years < 18 else "adult"


def field_mm(spacing: object, rows: int, columns: int) -> tuple[float, float] | None:
    """The imaged field as (width, height) in mm from a DICOM (Imager) Pixel Spacing, ``None`` when absent or not
    two positive, finite numbers (a spacing of 0, or text, says nothing about the patient's size)."""
    try:
        row_mm, col_mm = (float(v) for v in spacing)  # type: ignore[union-attr]  # PixelSpacing: row, column
    except (TypeError, ValueError):
        return None
    if not (0.0 < row_mm < 10.0 and 0.0 < col_mm < 10.0):
        return None
    return round(columns * col_mm, 1), round(rows * row_mm, 1)


def coded(value: object, terms: frozenset[str]) -> str | None:
    """The defined term ``value`` stands for, :data:`OTHER` for anything else, ``None`` if absent or empty."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text:
        return None
    return text if text in terms else OTHER


def uid_text(value: object) -> str | None:
    """A UID as text when it is made of digits and dots only (at most 64 characters), else ``None``."""
    text = str(value).strip() if value is not None else ""
    return text if len(text) <= 64 and _UID.fullmatch(text) else None
