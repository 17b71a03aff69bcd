"""Image files wrapped as DICOM studies with made-up patient data, and the development PACS's seed set.

Used to seed the local Orthanc of the tests, the demo (``make pacs-demo``) and the benchmark. Every name, ID,
accession number and date written here is invented (``HICXR^DEMO^...``); sex and age band come from the NIH
table's own (public, de-identified) columns. The negative cases are made on purpose: a CT study, an SR-only
study, and a study whose only image's header says it is a lateral view.
"""

from __future__ import annotations

import csv
import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

__all__ = ["SeedStudy", "demo_studies", "read_dicom_file", "wrap_image"]

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass
class SeedStudy:
    """One study of the seed set: its datasets and what it is for (``kind``: chest, ct, sr_only, lateral_only)."""

    kind: str
    study_uid: str
    accession: str
    datasets: list[Dataset] = field(default_factory=list)
    source: str = ""


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_study(ds: Dataset, n: int, date: dt.date, accession: str, description: str, sex: str = "O",
                   age: int | None = None) -> None:
    ds.PatientName = f"HICXR^DEMO^{n:04d}"
    ds.PatientID = f"HICXR-DEMO-{n:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = sex if sex in ("M", "F", "O") else "O"
    if age is not None and 0 <= age < 1000:
        ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = date.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + n % 10:02d}{(7 * n) % 60:02d}00"
    ds.AccessionNumber = accession
    ds.StudyID = str(n)
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description


def wrap_image(pixels: np.ndarray, *, n: int, date: dt.date, accession: str, modality: str = "DX",
               view: str = "PA", sex: str = "O", age: int | None = None,
               description: str = "XR CHEST") -> Dataset:
    """An 8-bit grey image as a one-instance DICOM study (DX for presentation, or CT for ``modality="CT"``)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    ct = modality == "CT"
    sop_class = CT_IMAGE if ct else DX_PRESENTATION
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(sop_class, ds.SOPInstanceUID)
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(ds, n, date, accession, description, sex, age)
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "CT THORAX" if ct else f"CHEST {view}"
    ds.InstanceNumber = 1
    ds.Manufacturer = "HiCXR test data"
    ds.BodyPartExamined = "CHEST"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if ct else ["DERIVED", "PRIMARY"]
    if not ct:
        ds.ViewPosition = view
        ds.PresentationIntentType = "FOR PRESENTATION"
    else:
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def sr_only_study(*, n: int, date: dt.date, accession: str) -> Dataset:
    """A study holding one Basic Text SR and no image (a report without pictures: nothing to analyse)."""
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(BASIC_TEXT_SR, ds.SOPInstanceUID)
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(ds, n, date, accession, "REPORT ONLY")
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Report"
    ds.InstanceNumber = 1
    ds.Manufacturer = "HiCXR test data"
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = DicomSequence([name])
    item.TextValue = "Made-up report for HiCXR's tests: no image in this study."
    ds.ContentSequence = DicomSequence([item])
    return ds


def read_dicom_file(path: Path) -> Dataset:
    """A DICOM file as a dataset ready to store (file meta added when an old file has none)."""
    with warnings.catch_warnings():  # real files break VR length rules (a 56-character accession number)
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path, force=True)
        ds.AccessionNumber = str(ds.get("AccessionNumber", ""))  # read the value while warnings are silenced
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:  # an old file without meta: keep its own encoding
        ds.file_meta = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        implicit, _ = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _nih_rows(labels_csv: Path, split: str, count: int) -> list[dict[str, str]]:
    with labels_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return rows[:count]


def demo_studies(shared_data: Path, *, nih_count: int = 4, real_dicoms: bool | Sequence[str] = True,
                 first_date: dt.date = dt.date(2026, 11, 2)) -> list[SeedStudy]:
    """The seed set: the real DICOMs of ``shared_data/dicom`` (their own headers; ``real_dicoms``: all, none, or
    these file names), ``nih_count`` NIH test films as made-up DX studies (one a day from ``first_date``), a CT
    study, an SR-only study and a lateral-only study."""
    studies: list[SeedStudy] = []
    if real_dicoms:
        by_study: dict[str, SeedStudy] = {}
        paths = sorted((shared_data / "dicom").glob("*.dcm"))
        if not isinstance(real_dicoms, bool):
            paths = [p for p in paths if p.name in set(real_dicoms)]
        for path in paths:
            ds = read_dicom_file(path)
            uid = str(ds.StudyInstanceUID)
            entry = by_study.setdefault(uid, SeedStudy("chest", uid, str(ds.get("AccessionNumber", "")),
                                                       source=path.name))
            entry.datasets.append(ds)
        studies.extend(by_study.values())
    rows = _nih_rows(shared_data / "nih" / "labels.csv", "test", nih_count + 2)
    images = shared_data / "nih" / "images"

    def pixels(row: dict[str, str]) -> np.ndarray:
        with Image.open(images / row["Image Index"]) as im:
            return np.asarray(im.convert("L"))

    def age(row: dict[str, str]) -> int | None:
        value = row.get("Patient Age", "")
        return int(value) if value.isdigit() else None

    n = 1
    for row in rows[:nih_count]:
        ds = wrap_image(pixels(row), n=n, date=first_date + dt.timedelta(days=n), accession=f"HCX{n:05d}",
                        view=row.get("View Position") or "PA", sex=row.get("Patient Gender", "O"), age=age(row),
                        description="XR CHEST 1 VIEW")
        studies.append(SeedStudy("chest", str(ds.StudyInstanceUID), ds.AccessionNumber, [ds], row["Image Index"]))
        n += 1
    ct_row, lateral_row = rows[nih_count], rows[nih_count + 1]
    ct = wrap_image(pixels(ct_row), n=n, date=first_date + dt.timedelta(days=n), accession=f"HCX{n:05d}",
                    modality="CT", description="CT CHEST")
    studies.append(SeedStudy("ct", str(ct.StudyInstanceUID), ct.AccessionNumber, [ct], ct_row["Image Index"]))
    n += 1
    sr = sr_only_study(n=n, date=first_date + dt.timedelta(days=n), accession=f"HCX{n:05d}")
    studies.append(SeedStudy("sr_only", str(sr.StudyInstanceUID), sr.AccessionNumber, [sr]))
    n += 1
    lateral = wrap_image(pixels(lateral_row), n=n, date=first_date + dt.timedelta(days=n), accession=f"HCX{n:05d}",
                         view="LL", description="XR CHEST LATERAL")
    studies.append(SeedStudy("lateral_only", str(lateral.StudyInstanceUID), lateral.AccessionNumber, [lateral],
                             lateral_row["Image Index"]))
    return studies


def encode(ds: Dataset) -> bytes:
    """A dataset as DICOM file bytes."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def all_datasets(studies: Iterable[SeedStudy]) -> list[Dataset]:
    """Every dataset of the seed set, in order."""
    return [ds for study in studies for ds in study.datasets]
