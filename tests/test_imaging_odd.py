"""Hostile and odd inputs, third round (issue 22): each class of bench/hostile.py's ODD_CASES, read through the one
entry point, plus the rules behind them: windows that cannot overflow, header text never quoted or printed, file
names of any bytes in the CLI's CSV and JSON, and no non-finite analysis reaching a view.

Files are built at test time (small and seeded); nothing hostile is committed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_weights_dir

from bench import hostile
from core.imaging import CorruptImageError, ImageError, apply_window, read_image
from core.imaging.checks import nothing_to_read
from core.serialize import file_bytes, file_text

CASES = hostile.ODD_CASES


@pytest.mark.parametrize("name", sorted(CASES))
def test_odd_case(name: str) -> None:
    _suffix, build, outcome, phrase = CASES[name]
    data = build()
    if outcome == "refused":
        with pytest.raises(ImageError) as info:
            read_image(data)
        message = str(info.value)
        assert phrase in message, message
        texts = [message]
    else:
        image = read_image(data)
        assert np.isfinite(image.pixels).all() and image.pixels.dtype == np.float32
        assert 0.0 <= float(image.pixels.min()) < float(image.pixels.max()) <= 1.0
        warnings = " | ".join(image.metadata.warnings)
        if outcome == "warned":
            assert phrase in warnings, warnings
        else:
            assert "colour" not in warnings, warnings
        texts = list(image.metadata.warnings)
    for text in texts:  # a header value never reaches a message or a warning
        assert hostile.LEAK_TOKEN not in text and "ISO_IR " not in text and "'\"" not in text


def test_odd_cases_cover_every_class() -> None:
    outcomes = {outcome for *_, outcome, _phrase in CASES.values()}
    assert outcomes == {"refused", "warned", "read"}
    assert len(CASES) >= 20


def test_images_with_dicm_at_128_keep_their_pixels() -> None:
    png = read_image(hostile.png_with_dicm_at_128())
    assert png.metadata.format == "PNG" and png.pixels.shape == (128, 128)
    np.testing.assert_allclose(png.pixels * 255.0, hostile.chest_like(128, 128), atol=0.01)
    assert read_image(hostile.jpeg_with_dicm_at_128()).metadata.format == "JPEG"
    assert read_image(hostile.dicom_no_preamble()).metadata.format == "DICOM"
    assert read_image(hostile.dicom_tiff_preamble()).metadata.format == "DICOM"  # DICOM-TIFF dual: DICOM first


def test_float_pixel_data_is_read_with_its_values() -> None:
    values = hostile.chest_like().astype(np.float64) * 3.5 - 100.0
    image = read_image(hostile.dicom_float_pixels(values, double=True), keep_raw=True)
    np.testing.assert_allclose(image.raw, values, rtol=1e-6)
    assert image.metadata.format == "DICOM" and image.metadata.warnings == ()


def test_windows_never_overflow() -> None:
    raw = np.linspace(-3e38, 3e38, 64 * 64, dtype=np.float32).reshape(64, 64)
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        out = apply_window(raw, 0.0, 3.4e38 * 4, function=function)
        assert out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError):
        apply_window(raw, 0.0, float("inf"))
    image = read_image(hostile.dicom_window_overflow(), keep_raw=True)
    assert np.isfinite(image.rewindow(128.0, 1e39)).all()


def test_nothing_to_read_names_non_finite_values() -> None:
    pixels = np.full((64, 64), np.nan, dtype=np.float32)
    assert "not finite" in nothing_to_read(pixels)
    with pytest.raises(CorruptImageError, match="not finite"):
        from core.imaging.checks import check_content

        check_content(pixels, [])


CHILD = r"""
import logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.DEBUG)  # a server log that shows everything
from bench import hostile
from core.imaging import read_image
for build in (hostile.dicom_charset_leak, hostile.dicom_frames_leak):
    print(read_image(build()).metadata.warnings)
"""


def test_pydicom_messages_never_print_header_text() -> None:
    """pydicom's own warning quotes the unknown character set; it is captured, rephrased, and never printed."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO_ROOT)], capture_output=True, text=True,
                          timeout=120, check=True)
    assert hostile.LEAK_TOKEN not in proc.stderr + proc.stdout, proc.stderr
    assert "Specific Character Set (0008,0005)" in proc.stdout and "Number of Frames (0028,0008)" in proc.stdout


@pytest.mark.parametrize("raw", [*hostile.ODD_NAMES, "ü.png".encode(), b"plain.png", b"a\\b.png"])
def test_file_names_round_trip(raw: bytes) -> None:
    text = file_text(os.fsdecode(raw))
    text.encode("utf-8")  # any UTF-8 writer takes it
    assert file_bytes(text) == raw
    json.loads(json.dumps(text, ensure_ascii=False))


def test_a_non_finite_analysis_never_reaches_a_view() -> None:
    from types import SimpleNamespace

    from dashboard.pipeline import analyse_bytes

    class Predictor:  # the engine's two calls, returning what a model fed NaN would (finite probabilities aside)
        def load(self, name: str) -> None:
            pass

        def analyse_all(self, image, variants, **kwargs) -> dict[str, SimpleNamespace]:
            return {v: SimpleNamespace(probability=np.array([0.1, 0.2]), mc_mean=np.array([0.1, np.nan]),
                                       mc_std=np.array([0.0, 0.0])) for v in variants}

    image = read_image(hostile.encode(hostile.Image.fromarray(hostile.chest_like()), "PNG"))
    outcome = analyse_bytes(Predictor(), b"png", ["m"], 2, image=image)  # type: ignore[arg-type]
    assert not outcome.ok and outcome.analyses == {} and "invalid numbers (not finite)" in outcome.error


# --------------------------------------------------------------------------------------------- the batch CLI


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("odd"))


def _odd_folder(root: Path) -> Path:
    """Odd names (bytes that are not UTF-8) around good and hostile files, so every later file must get a row."""
    folder = root / "odd"
    folder.mkdir()
    good = hostile.encode(hostile.Image.fromarray(hostile.chest_like(160, 160)), "PNG")
    for raw in hostile.ODD_NAMES:
        os.makedirs(os.fsencode(folder), exist_ok=True)
        with open(os.fsencode(folder) + b"/" + raw, "wb") as f:
            f.write(good)
    (folder / "z_nan.dcm").write_bytes(hostile.dicom_all_nan())
    (folder / "z_window.dcm").write_bytes(hostile.dicom_window_overflow())
    (folder / "zz_last.png").write_bytes(good)
    with open(os.fsencode(folder) + b"/m\xe4sk.png", "wb") as f:  # refused, under a Latin-1 name
        f.write(hostile.bilevel_png())
    return folder


@pytest.mark.parametrize("suffix", [".csv", pytest.param(".json", marks=pytest.mark.slow)])
def test_cli_writes_every_odd_name(tmp_path: Path, weights: Path, suffix: str) -> None:
    folder = _odd_folder(tmp_path)
    out = tmp_path / f"r{suffix}"
    proc = subprocess.run(
        [sys.executable, "-m", "core.predict", str(folder), "--weights-dir", str(weights), "--mc", "2",
         "--no-progress", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, timeout=300,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr  # refused files, every row written
    text = out.read_text(encoding="utf-8")  # strict UTF-8: no lone surrogate, no undecodable byte
    if suffix == ".json":
        rows = json.loads(text)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    found = {file_bytes(r["file"]).rsplit(b"/", 1)[-1]: r for r in rows}
    expected = {*hostile.ODD_NAMES, b"z_nan.dcm", b"z_window.dcm", b"zz_last.png", b"m\xe4sk.png"}
    assert set(found) == expected and len(rows) == len(expected)
    assert all(file_bytes(r["file"]).startswith(os.fsencode(folder)) for r in rows)  # the whole path, lossless
    for raw in (*hostile.ODD_NAMES, b"zz_last.png", b"z_window.dcm"):
        assert not found[raw].get("error"), (raw, found[raw].get("error"))
    assert "not numbers" in found[b"z_nan.dcm"]["error"]
    assert "only two grey levels" in found[b"m\xe4sk.png"]["error"]
    assert any(r["file"].endswith(r"/m\xe4sk.png") for r in rows)  # readable: the undecodable byte spelt out
