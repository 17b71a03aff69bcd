"""Coded values only: free text written into DICOM header fields never reaches metadata, exports or messages."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from conftest import make_test_model

from bench import hostile
from core.imaging import ImageError, UnsupportedModalityError, read_image
from core.imaging.coded import OTHER, coded, uid_text
from core.imaging.errors import detail
from core.inference import Predictor
from core.serialize import record
from dashboard.components.image_view import metadata_table

# What a site might type into these fields: a name, a record number, a hospital.
LEAKS = {"BodyPartExamined": "DOE^JOHN 1234567", "ViewPosition": "MRN 998877", "Manufacturer": "St Elsewhere 42"}


def _dicom(**text: str) -> bytes:
    return hostile.dicom_native(hostile.chest_like(), **text)


def _assert_no_leak(text: str) -> None:
    for value in (*LEAKS.values(), "DOE", "998877", "Elsewhere", "JOHN"):
        assert value not in text


def test_free_text_fields_become_other_and_go_nowhere() -> None:
    image = read_image(_dicom(Modality="DX", **LEAKS))
    meta = image.metadata
    assert (meta.body_part, meta.view_position, meta.modality) == (OTHER, OTHER, "DX")
    assert "manufacturer" not in meta.to_dict()
    _assert_no_leak(repr(meta.to_dict()))
    assert any("not a standard DICOM term" in w for w in meta.warnings)
    _assert_no_leak(metadata_table(meta.to_dict()).to_csv())  # the dashboard's metadata panel

    predictor = Predictor.from_model(make_test_model(), "m")
    analysis = predictor.analyse(image, mc_samples=2)
    _assert_no_leak(json.dumps(record(analysis)))  # the JSON export (and the PDF's header line reads the same dict)


def test_defined_terms_are_kept_and_normalised() -> None:
    meta = read_image(_dicom(Modality=" dx", BodyPartExamined="chest", ViewPosition="pa ")).metadata
    assert (meta.modality, meta.body_part, meta.view_position) == ("DX", "CHEST", "PA")
    assert meta.warnings == ()
    meta = read_image(_dicom(Modality="CR", BodyPartExamined="KNEE", ViewPosition="LATERAL")).metadata
    assert (meta.body_part, meta.view_position) == ("KNEE", OTHER)  # LATERAL is not a defined term (LL/RL are)
    assert "body part is KNEE, not chest" in meta.warnings[0]


def test_free_text_modality_is_refused_without_echoing_it() -> None:
    with pytest.raises(UnsupportedModalityError, match="not a standard DICOM code") as info:
        read_image(_dicom(Modality="JOHN DOE"))
    _assert_no_leak(str(info.value))
    with pytest.raises(UnsupportedModalityError, match=r"is a CT image \(Modality CT\)"):
        read_image(_dicom(Modality="CT"))


def test_photometric_and_transfer_syntax_text_is_not_echoed() -> None:
    ds = pydicom.dcmread(io.BytesIO(_dicom(Modality="DX")))
    ds.PhotometricInterpretation = "JOHN DOE"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    try:
        meta = read_image(buffer.getvalue()).metadata
        assert meta.photometric == OTHER
        _assert_no_leak(repr(meta.to_dict()))
    except ImageError as exc:
        _assert_no_leak(str(exc))
    ds = pydicom.dcmread(io.BytesIO(_dicom(Modality="DX")))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.3.JOHN.DOE")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    with pytest.raises(ImageError) as info:
        read_image(buffer.getvalue())
    _assert_no_leak(str(info.value))


def test_helpers() -> None:
    assert coded(None, frozenset({"A"})) is None and coded("  ", frozenset({"A"})) is None
    assert coded("a", frozenset({"A"})) == "A" and coded("b", frozenset({"A"})) == OTHER
    assert uid_text("1.2.840.10008.1.2") == "1.2.840.10008.1.2" and uid_text("1.2.JOHN") is None
    text = detail(ValueError("invalid value 'DOE^JOHN' for \"Patient\" in element"))
    assert text == "ValueError: invalid value '…' for '…' in element"
