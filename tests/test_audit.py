"""The audit trail: append-only JSON lines, mode 0600, fail closed; the dashboard's entries in local mode (AppTest)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.audit import (
    DEFAULT_PATH,
    Action,
    AuditError,
    AuditLog,
    Subject,
    audit_path_from,
    load_salt,
)
from dashboard.ui.state import SAMPLES

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "dashboard" / "app.py"
PNG_SAMPLE = next(name for name, f in SAMPLES.items() if f.endswith(".png"))
DIGEST = "ab" * 32


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_appends_json_lines_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "audit.jsonl"
    log = AuditLog(path)
    log.record("local", Action.IMAGE_ANALYSED, subject=Subject.image(DIGEST), model_version="f" * 64,
               variant="bce")
    log.record("alice-sub", Action.EXPORT_DOWNLOADED, subject=Subject.image(DIGEST), detail="pdf")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first, second = _lines(path)
    assert first["user"] == "local" and first["action"] == "image analysed" and first["outcome"] == "ok"
    assert first["subject"] == {"image_sha256": DIGEST} and first["model_version"] == "f" * 64
    assert first["time"].endswith("Z") and first["time"] <= second["time"]
    assert second["action"] == "export downloaded" and second["detail"] == "pdf"


def test_existing_file_is_tightened_and_appended(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    path.chmod(0o644)
    AuditLog(path).record("local", Action.LOGIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().splitlines()) == 2 and path.read_text().startswith('{"earlier": true}')


def test_rotation_by_rename_starts_a_new_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("local", Action.LOGIN)
    path.rename(tmp_path / "audit.jsonl.1")
    log.record("local", Action.LOGOUT)
    assert [e["action"] for e in _lines(path)] == ["logout"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwritable_log_raises(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(AuditError, match="refused"):
            AuditLog(folder / "audit.jsonl").record("local", Action.IMAGE_ANALYSED)
        with pytest.raises(AuditError):
            AuditLog(folder / "audit.jsonl").check_writable()
    finally:
        folder.chmod(0o700)


def test_a_directory_in_the_way_raises(tmp_path):
    """Also as root: a folder where the file should be cannot be appended to."""
    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(AuditError, match="cannot be written"):
        AuditLog(tmp_path / "audit.jsonl").record("local", Action.LOGIN)


def test_concurrent_records_are_whole_lines(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    threads = [threading.Thread(target=lambda: [log.record("u", Action.IMAGE_ANALYSED, subject=Subject.image(DIGEST))
                                                for _ in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_lines(tmp_path / "audit.jsonl")) == 80


def test_study_subject_is_a_salted_hash(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.12345"
    salt = load_salt(tmp_path / "audit.jsonl")
    assert load_salt(tmp_path / "audit.jsonl") == salt  # kept beside the log
    assert stat.S_IMODE((tmp_path / "audit.jsonl.salt").stat().st_mode) == 0o600
    subject = Subject.study(uid, salt)
    assert uid not in json.dumps(subject.to_dict())
    assert subject == Subject.study(uid, salt) and subject != Subject.study(uid, b"another site")
    assert load_salt(tmp_path / "x.jsonl", "configured") == b"configured"
    with pytest.raises(ValueError):
        Subject.image("Patient^Name")


def test_audit_path(tmp_path):
    assert audit_path_from([], {}) == DEFAULT_PATH
    assert audit_path_from(["--weights-dir", "w", "--audit-log", str(tmp_path / "a.jsonl")], {}) == tmp_path / "a.jsonl"
    assert audit_path_from([], {"HICXR_AUDIT_LOG": str(tmp_path / "b.jsonl")}) == tmp_path / "b.jsonl"
    assert audit_path_from(["--audit-log", "logs/x.jsonl"], {}) == REPO_ROOT / "logs" / "x.jsonl"


# ------------------------------------------------------------------------------------------------ the dashboard


def _run(monkeypatch, weights: Path, log: Path) -> AppTest:
    monkeypatch.setenv("HICXR_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("HICXR_AUDIT_LOG", str(log))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    # The first screen analyses nothing (issue 16): the analysis the log must record starts when a sample is picked.
    if any(getattr(s, "key", None) == "sample" for s in at.selectbox):
        at.selectbox(key="sample").set_value(PNG_SAMPLE).run()
    return at


def test_local_mode_records_one_analysis_per_image(tiny_weights_dir, tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    for card_path in tiny_weights_dir.glob("*.json"):  # the model version is the card's hash of the tensors
        card = json.loads(card_path.read_text())
        card["tensor_sha256"] = card_path.stem.ljust(64, "0")[:64]
        card_path.write_text(json.dumps(card))
    at = _run(monkeypatch, tiny_weights_dir, log)
    assert not at.exception, [e.value for e in at.exception]
    assert any("local mode: no login" in c.value for c in at.caption)
    at.run()  # a rerun of the same analysis is not a new action
    entries = _lines(log)
    assert [e["action"] for e in entries] == ["image analysed"]
    entry = entries[0]
    assert entry["user"] == "local" and entry["outcome"] == "ok" and len(entry["subject"]["image_sha256"]) == 64
    assert entry["model_version"] == entry["variant"].ljust(64, "0")[:64]


def test_analysis_is_refused_when_the_log_cannot_be_written(tiny_weights_dir, tmp_path, monkeypatch):
    blocked = tmp_path / "audit.jsonl"
    blocked.mkdir()  # a folder where the log file should be
    at = _run(monkeypatch, tiny_weights_dir, blocked)
    assert not at.exception
    assert any("audit log" in e.value and "refused" in e.value for e in at.error)
    assert not at.tabs, "results were shown although the analysis could not be audited"
