"""No silent garbage: invalid values, truncated streams, degenerate images, transparency, and the messages for them.

Files are built at test time (``bench/hostile.py``: small and seeded). The thresholds of the degenerate-image rule
(:mod:`core.imaging.checks`, stated in the README) are exercised on both sides, and checked against every real
radiograph in shared/data (slow).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO_ROOT
from PIL import Image

from bench import hostile
from core.imaging import (
    BlankImageError,
    CorruptImageError,
    DegenerateImageError,
    ImageError,
    UnsupportedFormatError,
    read_image,
)
from core.imaging.checks import MAX_ASPECT, MIN_SIDE

DATA = REPO_ROOT.parent / "shared" / "data"
JPEG_LS = DATA / "dicom" / "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm"


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode=mode)
    return hostile.encode(image, "PNG")


def _dicom(**changes: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(hostile.dicom_native(hostile.chest_like())))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ invalid values


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_pixels_are_refused_as_such(value: float) -> None:
    with pytest.raises(CorruptImageError, match=r"1 pixel value\(s\) that are not numbers") as info:
        read_image(hostile.float_tiff(value))
    assert "uniform" not in str(info.value)


def test_float_tiff_without_bad_values_is_read() -> None:
    image = read_image(hostile.float_tiff(0.5))
    assert image.metadata.format == "TIFF" and np.isfinite(image.pixels).all()


def test_rescale_slope_zero_is_named() -> None:
    with pytest.raises(CorruptImageError, match="Rescale Slope is 0") as info:
        read_image(_dicom(RescaleSlope=0, RescaleIntercept=0))
    assert "uniform" not in str(info.value)
    rescaled = read_image(_dicom(RescaleSlope=2, RescaleIntercept=-100), keep_raw=True)
    np.testing.assert_allclose(rescaled.raw, hostile.chest_like().astype(np.float32) * 2 - 100)


def test_rescale_overflowing_to_infinity_is_refused() -> None:
    with pytest.raises(CorruptImageError, match="Rescale Slope/Intercept.*beyond the range of numbers"):
        read_image(_dicom(RescaleSlope="1e38", RescaleIntercept=0))


# ------------------------------------------------------------------------------------------- truncation


def test_png_ending_cleanly_after_20_of_1000_rows_is_refused() -> None:
    with pytest.raises(CorruptImageError, match="ends after about 20 of its 1000 rows"):
        read_image(hostile.png_clean_truncation(rows_kept=20))
    complete = read_image(hostile.png_clean_truncation(rows_kept=1000))
    assert complete.pixels.shape == (1000, 1000)


def _interlaced_png(pixels: np.ndarray, passes_kept: int = 7) -> bytes:
    """An Adam7-interlaced grayscale PNG (Pillow cannot write one), optionally with only the first passes."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes[:passes_kept]:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    height, width = pixels.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + hostile.png_chunk(b"IHDR", ihdr) + hostile.png_chunk(b"IDAT", zlib.compress(raw))
            + hostile.png_chunk(b"IEND", b""))


def test_interlaced_png_complete_and_cut() -> None:
    pixels = hostile.chest_like(101, 99)  # odd sizes exercise every Adam7 pass boundary
    np.testing.assert_allclose(read_image(_interlaced_png(pixels)).pixels, pixels / 255.0, atol=1e-6)
    with pytest.raises(CorruptImageError, match="damaged or incomplete"):
        read_image(_interlaced_png(pixels, passes_kept=5))


def test_tiff_with_a_second_directory_past_the_end_is_a_file_error() -> None:
    with pytest.raises(CorruptImageError, match="TIFF file is damaged or incomplete"):
        read_image(hostile.tiff_bad_second_ifd())


# ---------------------------------------------------------------------------------------- degenerate images


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [((2, 2), "only 2 x 2 pixels"), ((3, 100_000), "100000 x 3 pixels"), ((MIN_SIDE - 1, 200), "only 200 x 63"),
     ((64, 300), r"4\.7 times longer than wide")],
)
def test_too_small_or_too_elongated_is_refused(shape: tuple[int, int], phrase: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with pytest.raises(DegenerateImageError, match=phrase):
        read_image(_png(pixels))


def test_shape_limits_are_inclusive() -> None:
    """A 64 px side (the NIH thumbnails) and a 1:4 aspect ratio are still read."""
    for height, width in ((MIN_SIDE, MIN_SIDE), (MIN_SIDE, int(MAX_ASPECT * MIN_SIDE))):
        assert read_image(_png(hostile.chest_like(height, width))).pixels.shape == (height, width)


def test_nothing_to_read_is_refused() -> None:
    chest = hostile.chest_like().astype(np.float64)
    cases = {
        "almost entirely black": (chest * 0.02).astype(np.uint8),
        "almost entirely white": (255 - chest * 0.02).astype(np.uint8),
        "almost no contrast": (120 + chest / 25).astype(np.uint8),
        "random noise": np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8),
    }
    for phrase, pixels in cases.items():
        with pytest.raises(DegenerateImageError, match=phrase):
            read_image(_png(pixels))
    with pytest.raises(BlankImageError, match="completely uniform"):
        read_image(_png(np.full((128, 128), 77, np.uint8)))


def test_mostly_black_is_analysed_with_a_warning() -> None:
    pixels = hostile.chest_like()
    pixels[:, : int(0.6 * pixels.shape[1])] = 0
    image = read_image(_png(pixels))
    assert any("60% of the image is black" in w for w in image.metadata.warnings)
    assert read_image(_png(hostile.chest_like())).metadata.warnings == ()


def test_transparency() -> None:
    chest = hostile.chest_like()
    rgba = np.dstack([chest, chest, chest, np.zeros_like(chest)])
    with pytest.raises(DegenerateImageError, match="fully transparent"):
        read_image(_png(rgba))
    with pytest.raises(DegenerateImageError, match="fully transparent"):
        read_image(_png(np.dstack([chest, np.zeros_like(chest)]), mode="LA"))
    palette = Image.fromarray(chest).quantize(32)
    palette.info["transparency"] = bytes(32)  # every palette entry transparent
    with pytest.raises(DegenerateImageError, match="fully transparent"):
        read_image(hostile.encode(palette, "PNG", transparency=bytes(32)))
    rgba[:10, :, 3] = 0
    rgba[10:, :, 3] = 255
    image = read_image(_png(rgba))
    assert any("transparency ignored: 4% of the pixels" in w for w in image.metadata.warnings)
    np.testing.assert_allclose(image.pixels, chest / 255.0, atol=1e-5)  # ignored, not composited


def test_large_palette_image_is_read_through_its_palette() -> None:
    small = Image.fromarray(hostile.chest_like(64, 64)).quantize(40)
    big = small.resize((640, 640), Image.Resampling.NEAREST)
    image = read_image(hostile.encode(big, "PNG"))
    expected = np.asarray(big.convert("RGB"), dtype=np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(image.pixels, expected / 255.0, atol=1e-5)


# ---------------------------------------------------------------------------------- valid, uncommon files


def test_twelve_bit_lossless_jpeg_is_decoded_exactly() -> None:
    values = hostile.chest_like(128, 160).astype(np.uint16) * 16  # 12-bit range
    image = read_image(hostile.jpeg_lossless(values, precision=12), keep_raw=True)
    np.testing.assert_array_equal(image.raw, values.astype(np.float32))
    np.testing.assert_allclose(image.pixels, values / 4095.0, atol=1e-6)
    assert (image.metadata.format, image.metadata.bits_stored) == ("JPEG", 16)


def test_twelve_bit_lossless_jpeg_inside_dicom() -> None:
    values = hostile.chest_like(128, 160).astype(np.uint16) * 16
    ds = pydicom.dcmread(io.BytesIO(hostile.dicom_native(hostile.chest_like(128, 160))))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pydicom.encaps.encapsulate([hostile.jpeg_lossless(values, precision=12)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = read_image(buffer.getvalue(), keep_raw=True)
    np.testing.assert_array_equal(image.raw, values.astype(np.float32))


def test_standalone_jpeg_ls_is_decoded() -> None:
    """The JPEG-LS codestream of a real DICOM, saved as a .jls file, reads as the DICOM's stored values."""
    ds = pydicom.dcmread(JPEG_LS)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    image = read_image(frame, keep_raw=True)
    np.testing.assert_array_equal(image.raw, ds.pixel_array.astype(np.float32))
    assert image.metadata.format == "JPEG-LS"


@pytest.mark.parametrize("name", sorted(hostile.valid_files()))
def test_every_supported_format_is_read(name: str) -> None:
    image = read_image(hostile.valid_files()[name])
    assert image.pixels.shape == (160, 160)
    reference = hostile.chest_like(160, 160) / 255.0
    assert np.corrcoef(image.pixels.ravel(), reference.ravel())[0, 1] > 0.98


# ------------------------------------------------------------------------------------- paths and messages


def test_fifo_broken_link_and_link_loop_are_named(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block: it must be refused from its stat alone
    with pytest.raises(UnsupportedFormatError, match=r"named pipe \(FIFO\), not a regular file") as info:
        read_image(tmp_path / "pipe.png")
    assert "empty" not in str(info.value)
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="broken link"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(UnsupportedFormatError, match="symbolic link loop"):
        read_image(tmp_path / "loop.png")


def test_unexpected_decoder_exceptions_become_file_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.imaging import reader

    def explode(*_args: object, **_kwargs: object) -> None:
        raise KeyError("PatientName 'DOE^JOHN'")

    monkeypatch.setattr(reader, "read_pillow", explode)
    with pytest.raises(CorruptImageError, match="could not be read") as info:
        read_image(_png(hostile.chest_like()))
    assert "DOE" not in str(info.value) and "KeyError" in str(info.value)
    monkeypatch.setattr(reader, "read_pillow", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(ImageError, match="memory"):
        read_image(_png(hostile.chest_like()))


# -------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_no_real_radiograph_is_refused_or_warned_about() -> None:
    """The degenerate-image rule on every radiograph in shared/data: nothing refused, no content warning.

    Three NIH films of young children (ages 2, 2 and 7: 00019534_000, 66% black border, and two 256 px films added on
    2026-12-01 with wide black borders) are legitimately over the 'more than half black' warning line.
    """
    files = sorted(DATA.glob("nih/images/*.png")) + sorted(DATA.glob("other/*/*.png"))
    files += sorted(DATA.glob("other/kermany/images/*.jpeg")) + sorted(DATA.glob("dicom/*.dcm"))
    assert len(files) > 6_800
    warned = []
    for path in files:
        image = read_image(path)
        if any("of the image is" in w for w in image.metadata.warnings):
            warned.append(path.name)
    assert warned == ["00019534_000.png", "00029627_000.png", "00029774_002.png"]
