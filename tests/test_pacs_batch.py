"""``python -m core.predict --pacs``: analyse studies from a real Orthanc, send SR + secondary capture, read them
back, idempotency, a CT asked for by accession, wrong credentials, the PACS killed mid-run and the resumed run.

The shipped default model analyses (64 px: quick); one predictor is shared by the module's runs.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import REPO_ROOT

import core.pacs.batch as batch
from core.inference import Predictor
from core.pacs.devserver import start_seeded
from core.pacs.results import read_sr
from core.predict import main

pytestmark = [pytest.mark.pacs, pytest.mark.slow]  # real Orthanc + model analyses through it

REAL = "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm"  # a real CR chest film, 440 x 440 JPEG-LS


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(REPO_ROOT / "weights")


@pytest.fixture(scope="module")
def pacs(shared_data: Path):
    dev = start_seeded(shared_data, nih_count=2, real_dicoms=[REAL])
    yield dev
    dev.stop()


def _env(monkeypatch: pytest.MonkeyPatch, pacs, predictor: Predictor, password: str | None = None) -> None:
    monkeypatch.setenv("HICXR_PACS_USER", pacs.server.user)
    monkeypatch.setenv("HICXR_PACS_PASSWORD", pacs.server.password if password is None else password)
    monkeypatch.setenv("HICXR_PACS_SECRETS", str(REPO_ROOT / "no-such-secrets.toml"))
    monkeypatch.setattr(batch, "Predictor", lambda *args, **kwargs: predictor)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _results(pacs, study_uid: str, kind: str) -> list[pydicom.Dataset]:
    client = pacs.client()
    refs = [r for r in client.instances(study_uid) if r.series_description.startswith(f"HiCXR {kind}")]
    return [client.retrieve_dataset(r) for r in refs]


@pytest.fixture(scope="module")
def first_run(pacs, predictor: Predictor, tmp_path_factory: pytest.TempPathFactory):
    """One ``--send`` run over the PACS: (exit status, CSV rows, stderr)."""
    out = tmp_path_factory.mktemp("pacs") / "results.csv"
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, pacs, predictor)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = main(["--pacs", pacs.settings.url, "--send", "--out", str(out), "--no-progress"])
    return status, _rows(out), err.getvalue()


def test_studies_are_analysed_sent_and_read_back_as_the_csv_says(first_run, pacs, predictor, tmp_path) -> None:
    status, rows, err = first_run
    analysed = [r for r in rows if not r["error"]]
    chest = [s for s in pacs.studies if s.kind == "chest"]
    assert len(analysed) == len(chest) == 3, err
    assert all(r["sent"].startswith("SR + map stored") for r in analysed)
    (lateral,) = [r for r in rows if r["error"]]
    assert lateral["file"] == pacs.study("lateral_only").study_uid and "no frontal image" in lateral["error"]
    assert status == 1  # a study was skipped (its row says why)
    assert "3 image(s) analysed, 6 result(s) stored" in err
    card = predictor.get().card
    evidence_of = predictor.get().call_evidence.labels  # the call rule's held-out decision inputs (core/calls.py)
    not_learnt = set(card.labels_not_learnt)
    for row in analysed:
        study_uid, series_uid, sop_uid = row["file"].split("/")
        held = [r.series_description for r in pacs.client().instances(study_uid)]
        assert sorted(d.split()[1] for d in held if d.startswith("HiCXR")) == ["SR", "map"], (study_uid, held, err)
        (sr,) = _results(pacs, study_uid, "SR")
        (sc,) = _results(pacs, study_uid, "map")
        source = next(ds for s in chest for ds in s.datasets if str(ds.SOPInstanceUID) == sop_uid)
        for result in (sr, sc):  # filed in the source study, under the same patient, in new series
            assert result.StudyInstanceUID == study_uid and result.PatientID == source.PatientID
            assert result.SeriesInstanceUID not in (series_uid,) and result.SOPInstanceUID != sop_uid
            assert result.SeriesDescription.startswith("HiCXR")
        reading = read_sr(sr)
        assert (reading.model_name, reading.model_version) == ("HiCXR bce", card.tensor_sha256)
        assert set(reading.findings) == set(predictor.taxonomy.labels) - not_learnt
        for label, found in reading.findings.items():
            assert f"{found['probability']:.6f}" == row[label] and f"{found['std']:.6f}" == row[f"{label}_std"]
            if found["operating_point"] is not None:  # a callable label: the call rule's operating point
                assert found["operating_point"] == pytest.approx(evidence_of[label].threshold)
                assert evidence_of[label].callable
            if f"{label}_call" in row:  # the record's call, as the CSV has it (core/calls.py's one rule)
                assert found["call"] == row[f"{label}_call"]
            else:
                assert found["call"] == ("above" if found["probability"] >= found["operating_point"] else "below")
        for label in not_learnt:
            assert row[label] == "" and label in reading.not_learnt
        assert reading.notes == ["Research use only, not for diagnosis. HiCXR is not a medical device."]
        assert sr.ContentSequence and sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == study_uid
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == series_uid
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop_uid
        assert sc.BurnedInAnnotation == "YES" and "not localisations" in sc.ImageComments
        assert sc.Modality == "OT"  # a picture of a result is never read back as a radiograph


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed: run make system-deps")
def test_sr_and_secondary_capture_pass_dciodvfy(first_run, pacs, tmp_path: Path) -> None:
    study_uid = next(r for r in first_run[1] if not r["error"])["file"].split("/")[0]
    for kind in ("SR", "map"):
        (ds,) = _results(pacs, study_uid, kind)
        path = tmp_path / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        out = report.stdout + report.stderr
        assert ("ComprehensiveSR" if kind == "SR" else "SCImage") in out
        assert not [line for line in out.splitlines() if line.startswith("Error")], out


def test_a_second_send_skips_studies_holding_this_model_version(first_run, pacs, predictor, tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:
    before = {s.study_uid: len(pacs.client().instances(s.study_uid)) for s in pacs.studies}
    _env(monkeypatch, pacs, predictor)
    out = tmp_path / "again.csv"
    assert main(["--pacs", pacs.settings.url, "--send", "--out", str(out), "--no-progress"]) == 1
    rows = _rows(out)
    already = [r for r in rows if r["error"].startswith("Skipped: already analysed")]
    assert len(already) == 3 and all("same model version" in r["error"] for r in already)
    assert "3 studies already held this model's SR" in capsys.readouterr().err
    assert before == {s.study_uid: len(pacs.client().instances(s.study_uid)) for s in pacs.studies}


@pytest.mark.parametrize("kind, reason", [("ct", "not a chest radiograph study: it holds CT only"),
                                          ("sr_only", "not a chest radiograph study: it holds SR only")])
def test_a_study_that_is_not_a_chest_film_is_skipped_with_the_reason(pacs, predictor, tmp_path: Path, monkeypatch,
                                                                     kind: str, reason: str) -> None:
    _env(monkeypatch, pacs, predictor)
    out = tmp_path / "one.csv"
    status = main(["--pacs", pacs.settings.url, "--accession", pacs.study(kind).accession, "--out", str(out),
                   "--no-progress"])
    (row,) = _rows(out)
    assert status == 1 and row["file"] == pacs.study(kind).study_uid and reason in row["error"]


def test_refused_credentials_stop_the_run_with_a_clear_message(pacs, predictor, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    _env(monkeypatch, pacs, predictor, password="not-the-password-789")
    assert main(["--pacs", pacs.settings.url, "--out", str(tmp_path / "x.csv"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "refused HiCXR's credentials (HTTP 401)" in captured.err
    assert "not-the-password-789" not in captured.err + captured.out


def test_credentials_on_the_command_line_are_refused(pacs, predictor, monkeypatch, capsys) -> None:
    _env(monkeypatch, pacs, predictor)
    url = pacs.settings.url.replace("http://", f"http://{pacs.server.user}:secret@")
    assert main(["--pacs", url, "--no-progress"]) == 2
    assert "never in the URL" in capsys.readouterr().err


def test_the_pacs_killed_mid_run_loses_nothing_and_the_run_resumes(shared_data: Path, predictor, tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    dev = start_seeded(shared_data, nih_count=3, real_dicoms=False)
    try:
        _env(monkeypatch, dev, predictor)
        out = tmp_path / "resumable.csv"
        original = batch.PacsRun._study

        def study_then_crash(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if self.counts.analysed == 1:
                dev.server.kill()  # Orthanc dies (SIGKILL) once the first image is analysed and sent

        monkeypatch.setattr(batch.PacsRun, "_study", study_then_crash)
        assert main(["--pacs", dev.settings.url, "--send", "--out", str(out), "--no-progress"]) == 2
        rows = _rows(out)
        assert len([r for r in rows if not r["error"]]) == 1
        pending = [r for r in rows if r["error"].startswith("Not analysed yet: the PACS stopped")]
        assert len(pending) == 2 and len(rows) == 4  # + the lateral-only study, skipped with its reason
        assert "cannot be reached" in capsys.readouterr().err

        monkeypatch.setattr(batch.PacsRun, "_study", original)
        dev.server.restart()
        assert main(["--pacs", dev.settings.url, "--send", "--out", str(out), "--no-progress"]) == 1  # lateral
        rows = _rows(out)
        analysed = [r for r in rows if not r["error"]]
        assert len(analysed) == 3 and len({r["file"] for r in analysed}) == 3
        assert not [r for r in rows if r["error"].startswith("Not analysed yet")]
        err = capsys.readouterr().err
        assert "resuming: 2 row(s)" in err and "2 image(s) analysed, 4 result(s) stored" in err
        assert "already held" not in err  # the study finished before the crash is not even asked again
        for study in [s for s in dev.studies if s.kind == "chest"]:
            assert len(_results(dev, study.study_uid, "SR")) == 1  # one SR each, none twice
    finally:
        dev.stop()


def test_pacs_down_at_start_is_exit_2(predictor, tmp_path: Path, monkeypatch, capsys) -> None:
    from core.pacs.orthanc import free_port

    monkeypatch.setattr(batch, "Predictor", lambda *args, **kwargs: predictor)
    monkeypatch.setenv("HICXR_PACS_SECRETS", str(tmp_path / "none.toml"))
    assert main(["--pacs", f"http://127.0.0.1:{free_port()}/dicom-web", "--no-progress"]) == 2
    assert "cannot be reached" in capsys.readouterr().err
