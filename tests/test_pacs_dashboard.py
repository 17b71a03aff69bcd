"""The dashboard's PACS worklist (AppTest, real Orthanc): list, triage, open a study, send, see it in the PACS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from streamlit.testing.v1 import AppTest

from core.pacs.devserver import start_seeded
from core.pacs.results import read_sr
from dashboard.ui.state import ENV_WEIGHTS_DIR

pytestmark = [pytest.mark.pacs, pytest.mark.slow]  # real Orthanc + model analyses through it

APP = REPO_ROOT / "dashboard" / "app.py"


@pytest.fixture(scope="module")
def pacs(shared_data: Path):
    dev = start_seeded(shared_data, nih_count=2, real_dicoms=False)
    yield dev
    dev.stop()


def _app(pacs, monkeypatch, show_identity: bool = False) -> AppTest:
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(REPO_ROOT / "weights"))
    monkeypatch.setenv("HICXR_PACS_URL", pacs.settings.url)
    monkeypatch.setenv("HICXR_PACS_USER", pacs.server.user)
    monkeypatch.setenv("HICXR_PACS_PASSWORD", pacs.server.password)
    monkeypatch.setenv("HICXR_PACS_WORKLIST_DAYS", "0")
    monkeypatch.setenv("HICXR_PACS_SHOW_PATIENT_IDENTITY", "1" if show_identity else "0")
    monkeypatch.setenv("HICXR_PACS_SECRETS", str(REPO_ROOT / "no-such-secrets.toml"))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    at.radio(key="source").set_value("PACS worklist").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_worklist_lists_studies_without_patient_identity_and_sends_results(pacs, monkeypatch, tmp_path) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("HICXR_AUDIT_LOG", str(log))
    at = _app(pacs, monkeypatch)
    table = at.dataframe[0].value
    assert {"date", "accession", "modality", "view", "description", "triage", "HiCXR"} <= set(table.columns)
    assert "patient" not in table.columns and not table.astype(str).apply(
        lambda col: col.str.contains("HICXR^DEMO", regex=False)).any().any()
    assert set(table["accession"]) == {"HCX00001", "HCX00002", "HCX00005"}  # CR/DX only: no CT, no SR-only
    lateral = table[table["accession"] == "HCX00005"].iloc[0]
    assert "no frontal image" in lateral["triage"]

    at.button(key="triage").click().run()  # triage: analyse every listed study
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    calls = [t for t in table["triage"] if t.startswith("Abnormal")]
    assert len(calls) == 2
    assert list(table["accession"])[-1] == "HCX00005"  # not analysable: after the analysed ones
    # Every triage analysis is audited with the model version; no study UID or patient name in the log.
    analysed = [e for e in map(json.loads, log.read_text().splitlines()) if e["action"] == "image analysed"]
    assert len(analysed) == 2 and all(e["model_version"] and e["outcome"] == "ok" for e in analysed)

    chest = pacs.study("chest")
    option = next(o for o in at.selectbox(key="study_pick").options if chest.accession in o)
    at.selectbox(key="study_pick").set_value(next(
        uid for uid in [s.study_uid for s in pacs.studies] if uid == chest.study_uid)).run()
    assert chest.accession in option
    at.button(key="open_study").click().run()
    assert not at.exception, [e.value for e in at.exception]
    # The only error allowed on the page: the record's out-of-population notice (issue 16's rule), not a PACS error.
    assert all("outside the population" in e.value for e in at.error), [e.value for e in at.error]
    at.button(key="send_pacs").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Stored 2 objects in the study" in s.value for s in at.success)

    client = pacs.client()
    results = [r for r in client.instances(chest.study_uid) if r.series_description.startswith("HiCXR")]
    assert sorted(r.modality for r in results) == ["OT", "SR"]
    sr = client.retrieve_dataset(next(r for r in results if r.modality == "SR"))
    assert read_sr(sr).model_name == "HiCXR bce"
    text = log.read_text()
    actions = [json.loads(line)["action"] for line in text.splitlines()]
    assert actions.count("study opened") == 1 and "results sent to PACS" in actions
    assert chest.study_uid not in text and "HICXR^DEMO" not in text


def test_patient_identity_only_when_the_site_turns_it_on(pacs, monkeypatch) -> None:
    table = _app(pacs, monkeypatch, show_identity=True).dataframe[0].value
    assert {"patient", "patient ID"} <= set(table.columns)
    assert all(name.startswith("HICXR^DEMO") for name in table["patient"])
