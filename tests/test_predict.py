"""Batch CLI over a folder of real PNGs, a real DICOM and a corrupt file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_weights_dir
from PIL import Image

from core.inference import Predictor
from core.predict import collect_files, main


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("cli"))


@pytest.fixture
def image_dir(tmp_path: Path, shared_data: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(shared_data / "nih/images/00000317_003.png", folder / "a.png")
    shutil.copy(shared_data / "nih/images/00000344_002.png", folder / "sub" / "b.png")
    shutil.copy(shared_data / "dicom/fodicom_CR-MONO1-10-chest.dcm", folder / "sub" / "c")  # no extension
    data = (shared_data / "nih/images/00000348_000.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 3])  # truncated PNG
    (folder / "notes.txt").write_text("not an image, skipped in folders")
    (folder / ".hidden.png").write_bytes(b"skipped")
    return folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_collect_files(image_dir: Path) -> None:
    names = [p.relative_to(image_dir).as_posix() for p in collect_files([image_dir])]
    assert names == ["a.png", "broken.png", "sub/b.png", "sub/c"]
    assert collect_files([image_dir / "notes.txt"]) == [image_dir / "notes.txt"]  # named explicitly: tried


def test_csv_all_variants_with_a_bad_file(image_dir: Path, weights: Path, tmp_path: Path, taxonomy,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res" / "results.csv"
    code = main([str(image_dir), "--weights-dir", str(weights), "--variant", "all", "--out", str(out),
                 "--no-progress"])
    assert code == 1
    rows = _read_csv(out)
    assert len(rows) == 4 * 2
    labels = list(taxonomy.labels)
    expected_columns = ["file", "variant", "error", "warnings"] + [
        c for label in labels for c in (label, f"{label}_std")]
    assert list(rows[0].keys()) == expected_columns
    assert {r["variant"] for r in rows} == {"bce", "hbce_soft"}
    bad = [r for r in rows if r["file"].endswith("broken.png")]
    assert len(bad) == 2 and all(r["error"] and r["Cardiomegaly"] == "" for r in bad)
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6
    predictor = Predictor(weights, "all")
    for r in good:
        a = predictor.analyse(r["file"], r["variant"])
        np.testing.assert_allclose([float(r[label]) for label in labels], a.mc_mean, atol=2e-6)
        np.testing.assert_allclose([float(r[f"{label}_std"]) for label in labels], a.mc_std, atol=2e-6)
    assert "3 of 4 file(s) analysed" in capsys.readouterr().err


def test_json_default_variant_and_cams(image_dir: Path, weights: Path, tmp_path: Path) -> None:
    out, cams = tmp_path / "r.json", tmp_path / "cams"
    files = [str(image_dir / "a.png"), str(image_dir / "sub" / "c")]
    code = main([*files, "--weights-dir", str(weights), "--out", str(out), "--cams", str(cams), "--mc", "3",
                 "--no-progress"])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["file"] for r in records] == files
    assert all(r["model_id"] == "hbce_soft" and r["mc_samples"] == 3 for r in records)  # the default variant
    assert set(records[1]["labels"]["Cardiomegaly"]) == {"probability", "mc_mean", "mc_std"}
    assert records[1]["image_metadata"]["format"] == "DICOM"
    sheets = sorted(p.name for p in cams.iterdir())
    assert sheets == ["0000_a_hbce_soft.png", "0001_c_hbce_soft.png"]
    with Image.open(cams / sheets[0]) as im:
        assert im.mode == "RGB" and im.width == 7 * 192 and im.height == 3 * (192 + 16)
    text = out.read_text()
    for identifying in ("PatientName", "PatientID", "StudyDate", "InstitutionName"):
        assert identifying not in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variant", "nope"], "no variant 'nope'"),
        (["--out", "x.txt"], "must end in .csv or .json"),
        (["--mc", "0"], "--mc must be at least 1"),
    ],
)
def test_usage_errors_exit_2(image_dir: Path, weights: Path, extra, message, capsys) -> None:
    code = main([str(image_dir / "a.png"), "--weights-dir", str(weights), "--no-progress", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_path_and_no_weights(tmp_path: Path, image_dir: Path, capsys) -> None:
    assert main([str(tmp_path / "nothing_here"), "--no-progress"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(image_dir / "a.png"), "--weights-dir", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no usable model variant" in capsys.readouterr().err


def test_module_entry_point(image_dir: Path, weights: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "core.predict", str(image_dir / "a.png"), str(image_dir / "broken.png"),
         "--weights-dir", str(weights), "--variant", "bce", "--mc", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    assert [(Path(r["file"]).name, r["variant"], bool(r["error"])) for r in rows] == [
        ("a.png", "bce", False), ("broken.png", "bce", True)]
    assert "usage" not in proc.stderr.lower()


def test_help_documents_outputs(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert "contact sheet" in help_text and "Exit status" in help_text and "'<label>_std'" in help_text
