"""Batch CLI: real PNGs and DICOMs, hostile files, folder scans with a reason for every skipped entry, streaming
output, per-file isolation and the exit codes (0 all analysed, 1 some refused or skipped, 2 the tool could not run).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_weights_dir
from PIL import Image

from bench import hostile
from core.inference import BatchItem, Predictor
from core.predict import _invalid_output, collect_files, main

FORMULA = '=HYPERLINK("evil.example","click")'  # no slash: it is a file name


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
    (folder / "notes.txt").write_text("not an image: skipped in folders, with a row saying so")
    (folder / ".hidden.png").write_bytes(b"skipped, with a row saying so")
    return folder


@pytest.fixture
def hostile_dir(tmp_path: Path, shared_data: Path) -> Path:
    """One good NIH PNG beside the hostile files of issue 10, and a good file named like a formula."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    shutil.copy(shared_data / "nih/images/00000317_003.png", folder / "good.png")
    shutil.copy(shared_data / "nih/images/00000344_002.png", folder / f"{FORMULA}.png")
    files = {
        "bad_ifd.tif": hostile.tiff_bad_second_ifd(),
        "inf.tif": hostile.float_tiff(),
        "cut.png": hostile.png_clean_truncation(),
        "sof_bomb.dcm": hostile.dicom_jpeg_sof_bomb(),
        "strip.png": hostile.encode(Image.fromarray(hostile.chest_like(3, 1000)), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {Path(r["file"].lstrip("'")).name: r for r in rows}


# ------------------------------------------------------------------------------------------- folder scan


def test_collect_files(image_dir: Path) -> None:
    entries = collect_files([image_dir])
    names = {e.path.relative_to(image_dir).as_posix(): e.reason for e in entries}
    assert [n for n, reason in names.items() if reason is None] == ["a.png", "broken.png", "sub/b.png", "sub/c"]
    assert "'.txt' files are not an image type" in names["notes.txt"]
    assert "hidden" in names[".hidden.png"]
    assert list(names) == [".hidden.png", "a.png", "broken.png", "notes.txt", "sub/b.png", "sub/c"]  # name order
    named = collect_files([image_dir / "notes.txt"])  # named explicitly: tried whatever its name
    assert [(e.path, e.reason) for e in named] == [(image_dir / "notes.txt", None)]


def test_scan_gives_a_reason_for_every_entry_it_does_not_analyse(tmp_path: Path) -> None:
    folder = tmp_path / "scan"
    (folder / "deep" / "deeper").mkdir(parents=True)
    for name, data in hostile.valid_files().items():
        (folder / name).write_bytes(data)
    (folder / "deep" / "deeper" / "x.png").write_bytes(hostile.valid_files()["plain.png"])
    (folder / "report.pdf").write_bytes(b"%PDF-1.4")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    (folder / "self.png").symlink_to(folder / "self.png")
    (folder / "deep" / "up").symlink_to(folder)  # a folder link back to the top: a loop
    os.mkfifo(folder / "pipe.dcm")
    entries = {e.path.relative_to(folder).as_posix(): e.reason for e in collect_files([folder])}
    analysed = sorted(n for n, reason in entries.items() if reason is None)
    assert analysed == sorted([*hostile.valid_files(), "deep/deeper/x.png"])
    assert "not an image type" in entries["report.pdf"]
    assert "hidden" in entries[".git"] and "HEAD" not in str(entries)  # hidden folders are not searched
    assert "broken link" in entries["gone.png"]
    assert "symbolic link loop" in entries["self.png"]
    assert "already searched" in entries["deep/up"]
    assert "named pipe (FIFO)" in entries["pipe.dcm"]
    assert len(entries) == len(hostile.valid_files()) + 7


def test_folder_of_every_format_is_analysed(tmp_path: Path, weights: Path) -> None:
    for name, data in hostile.valid_files().items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "r.csv"
    assert main([str(tmp_path), "--weights-dir", str(weights), "--out", str(out), "--no-progress"]) == 0
    rows = _read_csv(out)
    assert sorted(Path(r["file"]).name for r in rows) == sorted(hostile.valid_files())
    assert all(r["error"] == "" and 0.0 <= float(r["Cardiomegaly"]) <= 1.0 for r in rows)


# -------------------------------------------------------------------------------------------- CSV / JSON


def test_csv_all_variants_with_a_bad_file(image_dir: Path, weights: Path, tmp_path: Path, taxonomy,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res" / "results.csv"
    code = main([str(image_dir), "--weights-dir", str(weights), "--variant", "all", "--out", str(out),
                 "--no-progress"])
    assert code == 1
    rows = _read_csv(out)
    assert len(rows) == 6 * 2  # four files tried, two entries skipped with a reason: every entry has rows
    labels = list(taxonomy.labels)
    expected_columns = ["file", "variant", "error", "warnings", "file_notes", "out_of_population", "input_size"]
    expected_columns += [c for label in labels for c in (label, f"{label}_std", f"{label}_call")]
    assert list(rows[0].keys()) == expected_columns
    assert {r["variant"] for r in rows} == {"bce", "hbce_soft"}
    bad = [r for r in rows if r["file"].endswith(("broken.png", "notes.txt", ".hidden.png"))]
    assert len(bad) == 6 and all(r["error"] and r["Cardiomegaly"] == "" for r in bad)
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6
    predictor = Predictor(weights, "all")
    for r in good:
        a = predictor.analyse(r["file"], r["variant"])
        np.testing.assert_allclose([float(r[label]) for label in labels], a.mc_mean, atol=2e-6)
        np.testing.assert_allclose([float(r[f"{label}_std"]) for label in labels], a.mc_std, atol=2e-6)
        assert [r[f"{label}_call"] for label in labels] == [a.call(label) for label in labels]
        assert r["input_size"] == "64"
    err = capsys.readouterr().err
    assert "3 of 6 file(s) analysed" in err and "1 refused; 2 skipped" in err


def test_json_default_variant_and_cams(image_dir: Path, weights: Path, tmp_path: Path) -> None:
    out, cams = tmp_path / "r.json", tmp_path / "cams"
    files = [str(image_dir / "a.png"), str(image_dir / "sub" / "c")]
    code = main([*files, "--weights-dir", str(weights), "--out", str(out), "--cams", str(cams), "--mc", "3",
                 "--no-progress"])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["file"] for r in records] == files
    assert all(r["model_id"] == "hbce_soft" and r["mc_samples"] == 3 for r in records)  # the default variant
    assert set(records[1]["labels"]["Cardiomegaly"]) == {"learnt", "probability", "mc_mean", "mc_std",
                                                         "operating_point", "call", "call_reason", "map_of"}
    assert records[1]["image_metadata"]["format"] == "DICOM"
    sheets = sorted(p.name for p in cams.iterdir())
    assert sheets == ["0000_a_hbce_soft.png", "0001_c_hbce_soft.png"]
    with Image.open(cams / sheets[0]) as im:
        assert im.mode == "RGB" and im.width == 7 * 192 and im.height == 3 * (192 + 16)
    text = out.read_text()
    for identifying in ("PatientName", "PatientID", "StudyDate", "InstitutionName"):
        assert identifying not in text


def test_hostile_folder_keeps_every_good_result(hostile_dir: Path, weights: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(hostile_dir)  # scanning "." puts each bare file name at the start of its cell
    out = tmp_path / "r.csv"
    assert main([".", "--weights-dir", str(weights), "--out", str(out), "--no-progress"]) == 1
    table = _read_csv(out)
    assert f"'{FORMULA}.png" in [r["file"] for r in table]  # formula neutralised: stays text in a spreadsheet
    rows = _by_name(table)
    assert len(rows) == 7
    for name in ("good.png", f"{FORMULA}.png"):
        assert rows[name]["error"] == "" and 0.0 <= float(rows[name]["Cardiomegaly"]) <= 1.0
    expected = {
        "bad_ifd.tif": "TIFF file is damaged or incomplete",
        "inf.tif": "not numbers (infinite or NaN)",
        "cut.png": "ends after about 20 of its 1000 rows",
        "sof_bomb.dcm": "inside this DICOM file is too large (20000 x 20000",
        "strip.png": "a side shorter than 64 pixels",
    }
    for name, phrase in expected.items():
        assert phrase in rows[name]["error"] and rows[name]["Cardiomegaly"] == "", name
    assert not any(line.startswith(("=", '"=')) for line in out.read_text(encoding="utf-8").splitlines())


def test_module_entry_point_on_a_hostile_folder_writes_a_csv(hostile_dir: Path, weights: Path) -> None:
    """The issue's failure: one broken TIFF ended the run with a traceback and no CSV at all."""
    proc = subprocess.run(
        [sys.executable, "-m", "core.predict", str(hostile_dir), "--weights-dir", str(weights), "--mc", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "usage" not in proc.stderr.lower()
    rows = _by_name(list(csv.DictReader(proc.stdout.splitlines())))
    assert len(rows) == 7 and rows["good.png"]["error"] == "" and rows["bad_ifd.tif"]["error"]


def test_warnings_reach_the_csv(tmp_path: Path, weights: Path) -> None:
    pixels = hostile.chest_like()
    pixels[:, :160] = 0  # 62% black: analysed, with a warning
    (tmp_path / "dark.png").write_bytes(hostile.encode(Image.fromarray(pixels), "PNG"))
    out = tmp_path / "r.csv"
    assert main([str(tmp_path / "dark.png"), "--weights-dir", str(weights), "--out", str(out), "--no-progress"]) == 0
    row = _read_csv(out)[0]
    assert row["error"] == "" and "62% of the image is black" in row["warnings"]


# --------------------------------------------------------------------------- isolation, streaming, exit codes


def test_an_analysis_failure_sinks_only_its_own_file(image_dir: Path, weights: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original = Predictor._analyse_decoded

    def fail_on_dicom(self, images, *args, **kwargs):
        if any(im.metadata.format == "DICOM" for im in images):
            raise RuntimeError("the model cannot handle this image")
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "_analyse_decoded", fail_on_dicom)
    out = tmp_path / "r.csv"
    files = [str(image_dir / "a.png"), str(image_dir / "sub" / "c"), str(image_dir / "sub" / "b.png")]
    assert main([*files, "--weights-dir", str(weights), "--out", str(out), "--batch-size", "8", "--no-progress"]) == 1
    rows = _by_name(_read_csv(out))
    assert rows["a.png"]["error"] == "" and rows["b.png"]["error"] == ""
    assert "could not be analysed: unexpected RuntimeError" in rows["c"]["error"]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_interrupted_run_keeps_the_rows_done(image_dir: Path, weights: Path, tmp_path: Path, suffix: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    original = Predictor.iter_analyses

    def interrupted(self, *args, **kwargs):
        for n, item in enumerate(original(self, *args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Predictor, "iter_analyses", interrupted)
    out = tmp_path / f"r{suffix}"
    with pytest.raises(KeyboardInterrupt):
        main([str(image_dir), "--weights-dir", str(weights), "--out", str(out), "--batch-size", "1",
              "--no-progress"])
    if suffix == ".csv":
        names = [Path(r["file"]).name for r in _read_csv(out)]
    else:
        names = [Path(r["file"]).name for r in json.loads(out.read_text())]  # the list is closed: valid JSON
    assert names == [".hidden.png", "a.png", "broken.png"]  # scan order, up to the interruption


def test_internal_error_reports_the_files_not_reached(image_dir: Path, weights: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = Predictor.iter_analyses

    def crashing(self, *args, **kwargs):
        for n, item in enumerate(original(self, *args, **kwargs)):
            if n == 1:
                raise RuntimeError("bug")
            yield item

    monkeypatch.setattr(Predictor, "iter_analyses", crashing)
    out = tmp_path / "r.csv"
    assert main([str(image_dir), "--weights-dir", str(weights), "--out", str(out), "--no-progress"]) == 2
    rows = _by_name(_read_csv(out))
    assert len(rows) == 6 and rows["a.png"]["error"] == ""
    for name in ("broken.png", "b.png", "c"):
        assert "stopped on an unexpected internal error (RuntimeError)" in rows[name]["error"]


def test_non_finite_model_output_is_never_scored() -> None:
    class Fake:
        probability = np.array([0.5, 0.4])
        mc_mean = np.array([0.5, np.nan])
        mc_std = np.array([0.1, 0.1])

    assert "invalid numbers" in _invalid_output(BatchItem(0, "x", {"m": Fake()}))  # type: ignore[dict-item]
    Fake.mc_mean = np.array([0.5, 0.4])
    assert _invalid_output(BatchItem(0, "x", {"m": Fake()})) is None  # type: ignore[dict-item]


def test_symlink_loop_on_the_command_line_is_a_row(image_dir: Path, weights: Path, tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    out = tmp_path / "r.csv"
    code = main([str(tmp_path / "loop.png"), str(image_dir / "a.png"), "--weights-dir", str(weights),
                 "--out", str(out), "--no-progress"])
    assert code == 1
    rows = _by_name(_read_csv(out))
    assert "symbolic link loop" in rows["loop.png"]["error"] and rows["a.png"]["error"] == ""


def test_fifo_on_the_command_line_is_refused_without_blocking(image_dir: Path, weights: Path,
                                                              tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    out = tmp_path / "r.csv"
    assert main([str(tmp_path / "pipe.png"), "--weights-dir", str(weights), "--out", str(out), "--no-progress"]) == 1
    assert "named pipe (FIFO)" in _read_csv(out)[0]["error"]


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


def test_missing_path_no_weights_and_unwritable_output(tmp_path: Path, image_dir: Path, weights: Path,
                                                       capsys) -> None:
    assert main([str(tmp_path / "nothing_here"), "--no-progress"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(image_dir / "a.png"), "--weights-dir", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no usable model variant" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main([str(image_dir / "a.png"), "--weights-dir", str(weights), "--out", str(blocker / "r.csv"),
                 "--no-progress"]) == 2
    assert "cannot write the results" in capsys.readouterr().err


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
    assert "row saying why" in help_text and "named pipe (FIFO)" in help_text
