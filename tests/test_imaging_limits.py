"""Memory stays bounded before any decode: codec header parsers, header bombs, DICOM stream/header checks, Deflate.

Hostile files are built at test time by ``bench/hostile.py`` (small and seeded). Memory is measured where it
matters, in a fresh process with its peak RSS reset before each read (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO_ROOT
from PIL import Image

from bench import hostile
from core.imaging import CorruptImageError, ImageTooLargeError, read_image
from core.imaging import headers as hdr

DICOM_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
W, H = 96, 80  # unequal, so a swapped width and height is caught


def _minmax(values: np.ndarray) -> np.ndarray:
    """What a DICOM without a window shows: its values stretched to [0, 1]."""
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def _gray(width: int = W, height: int = H) -> Image.Image:
    return Image.fromarray(hostile.chest_like(height, width))


# ------------------------------------------------------------------------------------------ header parsers


@pytest.mark.parametrize(
    ("fmt", "params", "mode", "expected"),
    [
        ("PNG", {}, "L", ("PNG", 1, 8)),
        ("PNG", {}, "RGB", ("PNG", 3, 8)),
        ("PNG", {}, "P", ("PNG", 1, 8)),
        ("PNG", {}, "I;16", ("PNG", 1, 16)),
        ("JPEG", {"quality": 80}, "L", ("JPEG", 1, 8)),
        ("JPEG", {"progressive": True}, "RGB", ("JPEG", 3, 8)),
        ("JPEG2000", {"no_jp2": True}, "L", ("JPEG 2000", 1, 8)),
        ("JPEG2000", {}, "RGB", ("JPEG 2000", 3, 8)),
        ("GIF", {}, "P", ("GIF", 1, 8)),
        ("TIFF", {}, "L", ("TIFF", 1, 8)),
        ("TIFF", {"compression": "tiff_lzw"}, "RGB", ("TIFF", 3, 8)),
        ("TIFF", {"big_tiff": True}, "L", ("TIFF", 1, 8)),
        ("TIFF", {}, "I;16", ("TIFF", 1, 16)),
        ("WEBP", {"lossless": True}, "RGB", ("WebP", 4, 8)),
        ("WEBP", {"quality": 80}, "RGB", ("WebP", 3, 8)),
    ],
)
def test_header_parsers_read_what_pillow_wrote(fmt: str, params: dict, mode: str, expected: tuple) -> None:
    image = _gray().convert(mode) if mode != "I;16" else Image.fromarray(hostile.chest_like(H, W).astype(np.uint16))
    declared = hdr.sniff(hostile.encode(image, fmt, **params))
    assert declared is not None
    assert (declared.width, declared.height) == (W, H)
    codec, components, bits = expected
    assert declared.codec == codec and declared.bits == bits
    if codec != "WebP":  # a lossless WebP declares no channel count; 4 is the worst case
        assert declared.components == components


def test_header_parsers_big_endian_tiff_animated_webp_and_lossless_jpeg() -> None:
    entries = [(256, 3, 1, struct.pack(">HH", W, 0)), (257, 4, 1, struct.pack(">I", H)),
               (258, 3, 3, struct.pack(">I", 62)), (277, 3, 1, struct.pack(">HH", 3, 0))]
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHI", *e[:3]) + e[3] for e in entries)
    big_endian = b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + struct.pack(">HHH", 16, 16, 16)
    assert len(big_endian) == 62 + 6  # BitsPerSample's three values sit at offset 62, after the directory
    assert hdr.tiff(big_endian) == hdr.Declared("TIFF", W, H, 3, 16)
    animated = hostile.encode(_gray(), "WEBP", save_all=True, append_images=[_gray()], lossless=True)
    assert (hdr.webp(animated).width, hdr.webp(animated).height) == (W, H)  # VP8X canvas
    lossless = hdr.jpeg(hostile.jpeg_lossless(np.zeros((H, W), np.uint16), precision=12))
    assert (lossless.width, lossless.height, lossless.bits, lossless.marker) == (W, H, 12, 0xC3)


def test_jpeg_parser_skips_segments_and_exif_thumbnails() -> None:
    """The SOF of an embedded EXIF thumbnail (inside APP1) must not be taken for the image's own."""
    thumb = hostile.encode(_gray(16, 8), "JPEG")
    app1 = b"Exif\x00\x00" + thumb
    main = hostile.encode(_gray(), "JPEG")
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + main[2:]
    assert (hdr.jpeg(data).width, hdr.jpeg(data).height) == (W, H)
    assert hdr.jpeg(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame header
    assert hdr.sniff(b"not an image at all") is None
    assert hdr.sniff(hostile.encode(_gray(), "PNG")[:20]) is None  # cut inside IHDR


def test_gif_size_covers_every_frame() -> None:
    data = bytearray(hostile.encode(_gray().convert("P"), "GIF"))
    # The image descriptor follows the global colour table; make its frame overflow the logical screen.
    start = data.index(b"\x2c", 13 + 3 * 256)
    data[start + 5 : start + 9] = struct.pack("<HH", 5000, 6000)
    assert (hdr.gif(bytes(data)).width, hdr.gif(bytes(data)).height) == (5000, 6000)


# ---------------------------------------------------------------------------------------------- bombs


BOMBS = {
    "png_ihdr": (hostile.png_ihdr_bomb, "30000 x 30000"),
    "jpeg_sof": (hostile.jpeg_sof_bomb, "20000 x 20000"),
    "j2k_siz": (hostile.j2k_siz_bomb, "20000 x 20000"),
    "jp2_siz": (lambda: hostile.j2k_siz_bomb(jp2=True), "20000 x 20000"),
    "gif_screen": (hostile.gif_screen_bomb, "65535 x 65535"),
    "webp_canvas": (hostile.webp_canvas_bomb, "16384 x 16384"),
    "tiff_ifd": (hostile.tiff_size_bomb, "100000 x 100000"),
    "dicom_jpeg_sof": (hostile.dicom_jpeg_sof_bomb, "inside this DICOM file is too large (20000 x 20000"),
    "dicom_j2k_siz": (hostile.dicom_j2k_siz_bomb, "inside this DICOM file is too large (20000 x 20000"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_header_bombs_are_refused_at_once(name: str) -> None:
    build, size = BOMBS[name]
    data = build()
    assert len(data) < 10_000
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        read_image(data)
    assert time.perf_counter() - started < 1.0
    assert size in str(info.value) and "million pixels" in str(info.value)


_CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core.imaging import ImageError, read_image
def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024.0
read_image(sys.argv[2])  # warm up: codecs load lazily
out = {}
for path in sys.argv[3:]:
    Path("/proc/self/clear_refs").write_text("5")
    idle = status("VmRSS")
    try:
        read_image(path)
        outcome = "ok"
    except ImageError as exc:
        outcome = type(exc).__name__
    out[Path(path).stem] = [status("VmHWM") - idle, outcome]
print(json.dumps(out))
"""


def _peaks(tmp_path: Path, files: dict[str, bytes]) -> dict[str, list]:
    """Peak RSS over idle (MB) and outcome of reading each file, in a fresh process."""
    warm = tmp_path / "warm.dcm"
    warm.write_bytes(hostile.dicom_native(hostile.chest_like(96, 96)))
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO_ROOT), str(warm), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout)


def test_bombs_allocate_nothing_measured_in_a_fresh_process(tmp_path: Path) -> None:
    files = {f"{name}.bin": build() for name, (build, _) in BOMBS.items()}
    files["dicom_deflated_256mib.bin"] = hostile.dicom_deflate_bomb(256 << 20)
    peaks = _peaks(tmp_path, files)
    for name, (peak_mb, outcome) in peaks.items():
        assert outcome == "ImageTooLargeError", name
        assert peak_mb < 50, f"{name} took {peak_mb:.0f} MB"


@pytest.mark.slow
def test_largest_accepted_images_stay_under_a_gigabyte(tmp_path: Path) -> None:
    """Palette and 16-bit PNGs of 49 MP (just under the limit) decode in < 1 GB over idle (bench/robustness.py)."""
    peaks = _peaks(tmp_path, {"palette.png": hostile.palette_png(), "deep.png": hostile.png16()})
    for name, (peak_mb, outcome) in peaks.items():
        assert outcome == "ok", name
        assert peak_mb < 1000, f"{name} took {peak_mb:.0f} MB"


# ---------------------------------------------------------------------------------------------- DICOM


def _jpeg_dicom(frame: bytes, rows: int, cols: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(hostile.dicom_native(hostile.chest_like(rows, cols))))
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_dicom_codestream_must_match_the_header() -> None:
    pixels = hostile.chest_like(96, 96)
    frame = hostile.encode(Image.fromarray(pixels), "JPEG", quality=95)
    image = read_image(_jpeg_dicom(frame, 96, 96))  # consistent: decodes
    assert image.pixels.shape == (96, 96)
    assert np.corrcoef(image.pixels.ravel(), pixels.ravel())[0, 1] > 0.99  # min-max windowed: no window in header
    with pytest.raises(CorruptImageError, match=r"image declares 96 x 96 pixels but its header says 80 x 80"):
        read_image(_jpeg_dicom(frame, 80, 80))


def test_deflated_dicom_is_refused_by_its_inflated_size() -> None:
    small = hostile.dicom_deflate_bomb(inflated_bytes=300_000)  # a valid Deflated file inflating to 300 kB
    image = read_image(small)
    np.testing.assert_allclose(image.pixels, _minmax(hostile.chest_like(256, 256)), atol=1e-6)
    assert image.metadata.transfer_syntax == "Deflated Explicit VR Little Endian"
    bomb = hostile.dicom_deflate_bomb(inflated_bytes=8 << 20)
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError, match=r"expands to more than 4 MB"):
        read_image(bomb, max_bytes=4 << 20)
    read_image(bomb, max_bytes=16 << 20)  # under the limit it is an ordinary valid file


def test_rle_segment_count_must_match_the_header() -> None:
    ds = pydicom.dcmread(io.BytesIO(hostile.dicom_native(hostile.chest_like(96, 96))))
    ds.compress(pydicom.uid.RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_allclose(read_image(buffer.getvalue()).pixels, _minmax(hostile.chest_like(96, 96)), atol=1e-6)
    frame = bytearray(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1))
    frame[:4] = struct.pack("<I", 3)  # three byte planes for one 8-bit sample
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(CorruptImageError, match="wrong number of segments"):
        read_image(buffer.getvalue())


def test_dicom_stored_size_budget() -> None:
    """Rows x Columns within the pixel limit, but 3 samples of 32 bits each would take 12 bytes a pixel."""
    ds = pydicom.dcmread(io.BytesIO(hostile.dicom_native(hostile.chest_like(64, 64))))
    ds.Rows = ds.Columns = 1000
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ImageTooLargeError, match=r"too large to decode: 1000 x 1000 pixels with 3 sample\(s\) of 32"):
        read_image(buffer.getvalue(), max_pixels=1_000_000)


@pytest.mark.parametrize(
    "name", ["pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm", "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm",
             "txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm"],
)
def test_real_compressed_dicoms_declare_their_header_size(name: str) -> None:
    ds = pydicom.dcmread(DICOM_DIR / name)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    declared = hdr.jpeg(frame) or hdr.j2k(frame)
    assert (declared.width, declared.height) == (ds.Columns, ds.Rows)
