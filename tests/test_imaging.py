"""Tests of core.imaging on the real radiographs in ../shared/data plus malformed inputs built from them."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from core.imaging import (
    BlankImageError,
    CorruptImageError,
    EmptyFileError,
    ImageError,
    ImageTooLargeError,
    UnsupportedDicomError,
    UnsupportedFormatError,
    UnsupportedModalityError,
    XrayImage,
    apply_window,
    is_dicom,
    read_image,
    to_uint8,
)

DICOM_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
NIH_PNG = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih" / "images" / "00000001_001.png"  # 512 px

SIIM = "txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm"
FAKE_MONO1 = "txv_Fake_MONOHR1_CR_MONO1_JPEG_baseline_chestPA.dcm"
CANINE = "highdicom_dx_image_DX_MONO1_canine_thorax.dcm"
ACR_NEMA = "fodicom_CR-MONO1-10-chest.dcm"

# name -> (modality, photometric, transfer syntax name fragment, bits stored, (rows, cols), inverted)
EXPECTED = {
    ACR_NEMA: ("CR", "MONOCHROME1", "Implicit VR Little Endian", 10, (440, 440), True),
    CANINE: ("DX", "MONOCHROME1", "Explicit VR Little Endian", 8, (169, 211), True),
    "nhsx_NIH_GoogleCloud_DX_MONO2_implicitLE.dcm": (
        "DX", "MONOCHROME2", "Implicit VR Little Endian", 8, (1024, 1024), False,
    ),
    "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm": ("DX", "MONOCHROME1", "JPEG 2000", 12, (2128, 2000), True),
    "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm": (
        "CR", "MONOCHROME1", "JPEG-LS", 15, (1955, 1841), True,
    ),
    FAKE_MONO1: ("CR", "MONOCHROME1", "JPEG Baseline", 8, (1024, 1024), False),
    SIIM: ("CR", "MONOCHROME2", "JPEG Baseline", 8, (1024, 1024), False),
}  # fmt: skip
HUMAN_CHESTS = sorted(name for name in EXPECTED if name != CANINE)
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate",
    "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "OtherPatientIDs",
)  # fmt: skip


@cache
def _decoded(name: str) -> XrayImage:
    """Decode each real file once for the whole module (the J2K and JPEG-LS ones take a moment)."""
    return read_image(DICOM_DIR / name, keep_raw=True)


def _dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(DICOM_DIR / name, force=True)


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _lungs_minus_mediastinum(pixels: np.ndarray) -> float:
    """Lateral lung boxes (rows 30-60 %, columns 15-35 % and 65-85 %) minus a central box (45-55 %, rows 30-70 %)."""
    h, w = pixels.shape
    rows = slice(int(0.30 * h), int(0.60 * h))
    lungs = np.concatenate(
        [pixels[rows, int(0.15 * w) : int(0.35 * w)].ravel(), pixels[rows, int(0.65 * w) : int(0.85 * w)].ravel()]
    )
    center = pixels[int(0.30 * h) : int(0.70 * h), int(0.45 * w) : int(0.55 * w)]
    return float(lungs.mean() - center.mean())


def _assert_valid_pixels(image: XrayImage) -> None:
    pixels = image.pixels
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2
    assert pixels.flags.c_contiguous
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.max() > pixels.min()
    assert (image.metadata.height, image.metadata.width) == pixels.shape


# ------------------------------------------------------------------------------------------ real DICOM files


def test_all_real_dicom_files_are_covered(shared_data: Path) -> None:
    assert sorted(p.name for p in (shared_data / "dicom").glob("*.dcm")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dicom_decodes_with_metadata(name: str) -> None:
    modality, photometric, syntax, bits, shape, inverted = EXPECTED[name]
    image = _decoded(name)
    _assert_valid_pixels(image)
    meta = image.metadata
    assert meta.format == "DICOM"
    assert image.pixels.shape == shape
    assert meta.modality == modality
    assert meta.photometric == photometric
    assert syntax in (meta.transfer_syntax or "")
    assert meta.bits_stored == bits
    assert meta.inverted is inverted
    json.dumps(meta.to_dict())  # JSON-friendly
    assert is_dicom((DICOM_DIR / name).read_bytes())


@pytest.mark.filterwarnings("ignore:The value length")  # 966 has over-long hashed identifiers
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata_holds_no_patient_identifiers(name: str) -> None:
    ds = _dataset(name)
    text = repr(_decoded(name).metadata.to_dict())
    checked = 0
    for keyword in IDENTIFYING_KEYWORDS:
        value = str(ds.get(keyword, "") or "").strip()
        if len(value) >= 4:
            checked += 1
            assert value not in text, f"{keyword} leaked into the metadata"
    assert checked >= 1 or name == ACR_NEMA  # every file but the ACR-NEMA one has identifiers to leak
    assert not {k for k in _decoded(name).metadata.to_dict() if "patient" in k.lower() or "date" in k.lower()}


@pytest.mark.parametrize("name", HUMAN_CHESTS)
def test_human_chest_lungs_are_darker_than_mediastinum(name: str) -> None:
    assert _lungs_minus_mediastinum(_decoded(name).pixels) < -0.1


def test_monochrome1_is_inverted_after_the_header_window() -> None:
    image = _decoded(ACR_NEMA)
    assert image.metadata.window == (550.0, 1024.0)
    assert image.raw is not None
    np.testing.assert_allclose(image.pixels, 1.0 - apply_window(image.raw, 550.0, 1024.0), atol=1e-6)
    assert any("ACR-NEMA" in w for w in image.metadata.warnings)


def test_monochrome1_with_inverse_presentation_lut_is_inverted_once() -> None:
    ds = _dataset(ACR_NEMA)
    ds.PresentationLUTShape = "INVERSE"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    both = read_image(_to_bytes(ds))
    assert both.metadata.inverted
    np.testing.assert_allclose(both.pixels, _decoded(ACR_NEMA).pixels, atol=1e-6)


def test_inverse_presentation_lut_alone_inverts() -> None:
    ds = _dataset(SIIM)
    ds.PresentationLUTShape = "INVERSE"
    del ds.ViewPosition  # not a declared frontal chest, so the header is followed without a plausibility check
    image = read_image(_to_bytes(ds))
    assert image.metadata.inverted
    np.testing.assert_allclose(image.pixels, 1.0 - _decoded(SIIM).pixels, atol=1e-6)


def test_canine_thorax_decodes_inverted_per_its_header() -> None:
    image = _decoded(CANINE)
    assert image.metadata.body_part == "THORAX"
    assert image.metadata.inverted
    assert not any("polarity" in w for w in image.metadata.warnings)
    raw_view = apply_window(image.raw, *image.default_window)
    np.testing.assert_allclose(image.pixels, 1.0 - raw_view, atol=1e-6)


def test_fake_monochrome1_looks_the_same_as_the_siim_original() -> None:
    """Data README: the fake is the SIIM image with only its header changed; correctly converted they look the same.

    The pixel data is byte-identical, so following the header would show the fake inverted (lungs white). The
    reader notices that inverting this frontal chest would be impossible anatomy, skips it and says so.
    """
    assert _dataset(FAKE_MONO1).PixelData == _dataset(SIIM).PixelData
    fake, original = _decoded(FAKE_MONO1), _decoded(SIIM)
    np.testing.assert_allclose(fake.pixels, original.pixels, atol=1e-6)
    assert not fake.metadata.inverted and not original.metadata.inverted
    assert fake.metadata.photometric == "MONOCHROME1"
    assert any("polarity" in w for w in fake.metadata.warnings)
    assert original.metadata.warnings == ()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rewindow_with_default_window_reproduces_pixels(name: str) -> None:
    image = _decoded(name)
    assert image.raw is not None and image.default_window is not None
    np.testing.assert_allclose(image.rewindow(*image.default_window), image.pixels, atol=1e-5)


def test_rewindow_needs_keep_raw() -> None:
    image = read_image(DICOM_DIR / CANINE)
    assert image.raw is None
    with pytest.raises(ValueError, match="keep_raw"):
        image.rewindow(100.0, 200.0)


def test_multiframe_dicom_shows_first_frame_with_warning() -> None:
    ds = _dataset(CANINE)
    frame = ds.pixel_array
    ds.PixelData = np.stack([frame, 255 - frame]).astype(np.uint8).tobytes()
    ds.NumberOfFrames = 2
    image = read_image(_to_bytes(ds))
    np.testing.assert_allclose(image.pixels, _decoded(CANINE).pixels, atol=1e-6)
    assert "multi-frame DICOM: first of 2 frames shown" in image.metadata.warnings


def test_colour_dicom_is_converted_to_gray() -> None:
    ds = _dataset(CANINE)
    frame = ds.pixel_array
    ds.PixelData = np.repeat(frame[..., None], 3, axis=-1).astype(np.uint8).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    image = read_image(_to_bytes(ds))
    np.testing.assert_allclose(image.pixels, frame / 255.0, atol=1e-5)
    assert any("colour DICOM" in w for w in image.metadata.warnings)


def test_other_modality_is_accepted_with_warning() -> None:
    ds = _dataset(SIIM)
    ds.Modality = "OT"
    image = read_image(_to_bytes(ds))
    assert any("assumed to be a chest radiograph" in w for w in image.metadata.warnings)


# ------------------------------------------------------------------------------------------------- PNG/JPEG


@pytest.fixture(scope="module")
def nih_gray() -> np.ndarray:
    with Image.open(NIH_PNG) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_png_8_bit_is_divided_by_255(nih_gray: np.ndarray) -> None:
    image = read_image(NIH_PNG)
    _assert_valid_pixels(image)
    meta = image.metadata
    assert (meta.format, meta.bits_stored, meta.photometric, meta.modality, meta.inverted) == (
        "PNG",
        8,
        "L",
        None,
        False,
    )
    np.testing.assert_allclose(image.pixels, nih_gray / 255.0, atol=1e-6)


@pytest.mark.parametrize("variant", ["16-bit", "12-bit in 16", "RGB", "RGBA", "LA", "P", "JPEG"])
def test_png_variants_give_the_same_gray_image(nih_gray: np.ndarray, variant: str) -> None:
    reference = nih_gray / 255.0
    atol = 1e-5
    if variant == "16-bit":
        data = _png_bytes(Image.fromarray(nih_gray.astype(np.uint16) * 257))
    elif variant == "12-bit in 16":
        data = _png_bytes(Image.fromarray(nih_gray.astype(np.uint16) * 16))  # max 4080 -> scaled by 4095
        atol = 0.005
    elif variant in ("RGB", "RGBA"):
        rgb = np.repeat(nih_gray[..., None], 3, axis=-1)
        if variant == "RGBA":  # a varying alpha must be dropped, not composited
            alpha = np.random.default_rng(0).integers(0, 256, nih_gray.shape, dtype=np.uint8)
            rgb = np.concatenate([rgb, alpha[..., None]], axis=-1)
        data = _png_bytes(Image.fromarray(rgb))
    elif variant == "LA":
        data = _png_bytes(Image.fromarray(nih_gray).convert("LA"))
    elif variant == "P":
        data = _png_bytes(Image.fromarray(nih_gray).convert("P"))
    else:
        buffer = io.BytesIO()
        Image.fromarray(nih_gray).save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
    image = read_image(data)
    _assert_valid_pixels(image)
    if variant == "JPEG":
        assert image.metadata.format == "JPEG"
        assert float(np.abs(image.pixels - reference).mean()) < 0.01
    else:
        np.testing.assert_allclose(image.pixels, reference, atol=atol)


# ----------------------------------------------------------------------------------------- malformed inputs


def test_zero_bytes_is_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyFileError, match="empty"):
        read_image(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty"):
        read_image(tmp_path / "empty.png")


def test_truncated_png_is_corrupt() -> None:
    data = NIH_PNG.read_bytes()
    with pytest.raises(CorruptImageError, match="damaged or incomplete"):
        read_image(data[: len(data) // 2])


def test_text_is_not_an_image(tmp_path: Path) -> None:
    text = b"hello, not an image"
    assert not is_dicom(text)
    with pytest.raises(UnsupportedFormatError, match="not an image") as info:
        read_image(text)
    assert "contains text" in str(info.value)
    path = tmp_path / "scan.dcm"
    path.write_bytes(text)
    with pytest.raises(UnsupportedFormatError, match="named like a DICOM file but holds no DICOM image"):
        read_image(path)
    with pytest.raises(UnsupportedFormatError, match="not an image"):
        read_image(str(path))


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_dicom_without_pixel_data_is_corrupt() -> None:
    ds = _dataset(SIIM)
    del ds.PixelData
    with pytest.raises(CorruptImageError, match=r"holds no image \(no Pixel Data\)"):
        read_image(_to_bytes(ds))


@pytest.mark.parametrize(("modality", "phrase"), [("CT", "is a CT image"), ("MR", "is an MRI image")])
def test_non_radiograph_modality_is_rejected(modality: str, phrase: str) -> None:
    ds = _dataset(SIIM)
    ds.Modality = modality
    with pytest.raises(UnsupportedModalityError, match=phrase) as info:
        read_image(_to_bytes(ds))
    assert "chest radiographs (CR/DX) only" in str(info.value)


def test_undecodable_pixel_data_is_corrupt_and_names_the_transfer_syntax() -> None:
    ds = _dataset(SIIM)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0" + bytes(100)])
    with pytest.raises(CorruptImageError, match=r"could not be decoded") as info:
        read_image(_to_bytes(ds))
    assert "JPEG Baseline" in str(info.value)


def test_transfer_syntax_without_decoder_is_unsupported() -> None:
    ds = _dataset(SIIM)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG-2 video
    with pytest.raises(UnsupportedDicomError, match="MPEG2 Main Profile"):
        read_image(_to_bytes(ds))


def _png_with_declared_size(width: int, height: int) -> bytes:
    data = bytearray(_png_bytes(Image.new("L", (8, 8), 128)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [30_000, 8_000])  # beyond Pillow's own bomb guard, and only beyond ours
def test_png_declaring_huge_size_is_refused_before_decoding(side: int) -> None:
    data = _png_with_declared_size(side, side)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match="too large"):
            read_image(data)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 10 * 2**20


def test_pixel_limit_applies_to_dicom_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="440 x 440 pixels"):
        read_image(DICOM_DIR / ACR_NEMA, max_pixels=100_000)


def test_byte_limit(tmp_path: Path) -> None:
    data = NIH_PNG.read_bytes()
    with pytest.raises(ImageTooLargeError, match="file is too large"):
        read_image(data, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeError, match="file is too large"):
        read_image(NIH_PNG, max_bytes=1000)


def test_constant_images_are_blank() -> None:
    with pytest.raises(BlankImageError, match="completely uniform"):
        read_image(_png_bytes(Image.new("L", (64, 64), 77)))
    ds = _dataset(CANINE)
    ds.PixelData = bytes(len(ds.PixelData))
    with pytest.raises(BlankImageError, match="completely uniform"):
        read_image(_to_bytes(ds))


def test_every_error_is_an_image_error_and_a_value_error() -> None:
    for cls in (
        EmptyFileError, UnsupportedFormatError, CorruptImageError, ImageTooLargeError,
        UnsupportedModalityError, UnsupportedDicomError, BlankImageError,
    ):  # fmt: skip
        assert issubclass(cls, ImageError) and issubclass(cls, ValueError)


# ---------------------------------------------------------------------------------------------- helpers


def test_apply_window_and_to_uint8() -> None:
    raw = np.array([0.0, 50.0, 100.0, 150.0, 200.0], dtype=np.float32)
    np.testing.assert_allclose(apply_window(raw, 100.0, 100.0), [0.0, 0.0, 0.5, 1.0, 1.0])
    sigmoid = apply_window(raw, 100.0, 100.0, function="SIGMOID")
    assert sigmoid[2] == pytest.approx(0.5) and np.all(np.diff(sigmoid) > 0)
    with pytest.raises(ValueError, match="positive"):
        apply_window(raw, 100.0, 0.0)
    out = to_uint8(np.array([0.0, 0.5, 1.0, 1.5, -1.0, np.nan], dtype=np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255, 255, 0, 0]


def test_is_dicom() -> None:
    assert is_dicom((DICOM_DIR / ACR_NEMA).read_bytes())  # no preamble, found by parsing
    assert not is_dicom(NIH_PNG.read_bytes())


def test_import_is_light() -> None:
    code = "import sys, core.imaging; sys.exit(bool({'torch', 'streamlit', 'pydicom'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=False)
    assert result.returncode == 0, "core.imaging must not import torch/streamlit (or pydicom) at import time"
