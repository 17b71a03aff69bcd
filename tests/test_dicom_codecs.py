"""The faster DICOM codecs (core.imaging.dicom_codecs) decode exactly what pydicom's default plugins decode.

The real compressed chest films in ``../shared/data/dicom`` are read through the reader (the faster plugin) and
compared pixel for pixel with pydicom's pylibjpeg plugins; JPEG 2000 films of other layouts (signed 12-bit, 8-bit,
colour with the reversible colour transform) are made by pydicom's own encoder and checked the same way.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import REPO_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000Lossless, JPEGLSNearLossless, generate_uid

from core.imaging import read_image
from core.imaging.dicom_codecs import IMAGECODECS, PYJPEGLS, decode_threads, plugin_for

DICOM_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
REAL = {
    "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm": (JPEG2000Lossless, IMAGECODECS),
    "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm": (JPEGLSNearLossless, PYJPEGLS),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_films_decode_bit_identical_to_pylibjpeg(name: str) -> None:
    path = DICOM_DIR / name
    syntax, plugin = REAL[name]
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert plugin_for(syntax) == plugin
    fast = pixel_array(ds, index=0, decoding_plugin=plugin)
    reference = pixel_array(ds, index=0, decoding_plugin="pylibjpeg")
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    assert np.array_equal(fast, reference)
    # The reader's raw values are the stored values through the film's rescale (slope 1 here): the same numbers.
    image = read_image(path.read_bytes(), keep_raw=True)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert np.array_equal(image.raw, reference.astype(np.float32) * slope + intercept)


def _dataset(pixels: np.ndarray, *, bits_stored: int, signed: bool, photometric: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.mark.parametrize(
    ("dtype", "bits_stored", "signed", "channels"),
    [(np.uint16, 12, False, 1), (np.int16, 12, True, 1), (np.uint8, 8, False, 1), (np.uint8, 8, False, 3)],
    ids=["unsigned 12-bit", "signed 12-bit", "8-bit", "colour (reversible colour transform)"],
)
def test_other_jpeg2000_layouts_decode_as_pydicom_does(dtype, bits_stored: int, signed: bool, channels: int) -> None:
    rng = np.random.default_rng(7)
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
    shape = (70, 90) if channels == 1 else (70, 90, 3)
    # A smooth gradient plus noise, so the wavelet has real work and a sign or byte-order slip shows.
    ramp = np.linspace(low, high - 1, shape[1])[None, :] * np.ones((shape[0], 1))
    if channels == 3:
        ramp = ramp[..., None] * np.array([1.0, 0.6, 0.3])
    noise = rng.integers(-40, 40, size=shape)
    pixels = np.clip(ramp + noise, low, high - 1).astype(dtype)
    ds = _dataset(pixels, bits_stored=bits_stored, signed=signed,
                  photometric="RGB" if channels == 3 else "MONOCHROME2")
    # pydicom's own encoder (pylibjpeg-openjpeg); colour is coded with the reversible colour transform, which
    # the file must then declare (PS3.5 8.2.4).
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", **({"use_mct": True} if channels == 3 else {}))
    if channels == 3:
        ds.PhotometricInterpretation = "YBR_RCT"
    fast = pixel_array(ds, index=0, decoding_plugin=IMAGECODECS)
    reference = pixel_array(ds, index=0, decoding_plugin="pylibjpeg")
    assert np.array_equal(reference, pixels)  # the encoder is lossless, so both must give the pixels back
    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)


def test_other_transfer_syntaxes_keep_pydicom_order() -> None:
    assert plugin_for(pydicom.uid.JPEGBaseline8Bit) == ""
    assert plugin_for(pydicom.uid.RLELossless) == ""
    assert 1 <= decode_threads() <= 4


@pytest.mark.parametrize("name", sorted(REAL))
@pytest.mark.parametrize("kept", [0.5, 0.05])
def test_a_cut_codestream_is_a_clear_error_from_the_faster_codecs(name: str, kept: float) -> None:
    import io

    from pydicom.encaps import encapsulate, generate_frames

    from core.imaging import CorruptImageError

    ds = pydicom.dcmread(DICOM_DIR / name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: int(len(frame) * kept)]])  # a well-formed file whose image stream stops
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(CorruptImageError, match="could not be decoded: the file may be damaged or incomplete"):
        read_image(buffer.getvalue())
