"""The DICOMweb client and the local Orthanc: search, retrieve, plan, and every failure a clear message.

Against a real Orthanc (``dev_pacs`` in conftest.py): run with ``pytest -m pacs``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.imaging import read_image
from core.pacs.client import (
    PacsAuthError,
    PacsClient,
    PacsTimeoutError,
    PacsTooLargeError,
    PacsUnavailableError,
)
from core.pacs.credentials import PacsSettings, PacsSettingsError, load_settings
from core.pacs.devserver import settings_for
from core.pacs.orthanc import OrthancServer
from core.pacs.studies import plan_study
from core.pacs.wrap import all_datasets, demo_studies

pytestmark = pytest.mark.pacs


def test_orthanc_runs_locked_down(dev_pacs) -> None:
    server = dev_pacs.server
    config = server.config()
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is True
    assert config["DicomServerEnabled"] is False
    assert config["RegisteredUsers"] == {server.user: server.password} and len(server.password) >= 20
    assert config["Plugins"][0].endswith("libOrthancDicomWeb.so")
    with pytest.raises(urllib.error.HTTPError) as info:  # no credentials: refused
        urllib.request.urlopen(f"{server.dicomweb_url}/studies", timeout=5)
    assert info.value.code == 401
    request = urllib.request.Request(f"{server.url}/plugins", headers={"Authorization": server.basic_auth_header()})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert "dicom-web" in json.load(response)


def test_search_by_modality_date_and_accession(dev_pacs) -> None:
    client = dev_pacs.client()
    chest = client.search_studies()
    uids = {s.study_uid for s in chest}
    assert dev_pacs.study("ct").study_uid not in uids and dev_pacs.study("sr_only").study_uid not in uids
    assert all(set(s.modalities) & {"CR", "DX"} for s in chest)
    real = {s.study_uid for s in dev_pacs.studies if s.source.endswith(".dcm")}
    assert real <= uids  # every real chest DICOM is found
    everything = client.search_studies(modalities=None)
    assert {s.study_uid for s in dev_pacs.studies} == {s.study_uid for s in everything}
    recent = client.search_studies(since="20261104", modalities=None)
    assert {s.accession for s in recent} == {"HCX00002", "HCX00003", "HCX00004", "HCX00005", "HCX00006"}
    assert [s.date for s in recent] == sorted((s.date for s in recent), reverse=True)
    window = client.search_studies(since="20261102", until="20261104")
    assert {s.accession for s in window} == {"HCX00001", "HCX00002"}
    (ct,) = client.search_studies(accession=dev_pacs.study("ct").accession, modalities=None)
    assert ct.modalities == ("CT",) and ct.patient_name == ""  # identity only when the site turns it on
    (named,) = client.search_studies(accession="HCX00001", with_patient=True)
    assert named.patient_name.startswith("HICXR^DEMO") and named.patient_id.startswith("HICXR-DEMO")
    with pytest.raises(ValueError, match="YYYYMMDD"):
        client.search_studies(since="2026-11-01")


def test_retrieved_instance_reads_like_the_file(dev_pacs, shared_data: Path) -> None:
    client = dev_pacs.client()
    for seed in [s for s in dev_pacs.studies if s.source.endswith(".dcm")][:3]:
        path = shared_data / "dicom" / seed.source
        refs = client.instances(seed.study_uid)
        ref = next(r for r in refs if r.sop_uid == str(seed.datasets[0].SOPInstanceUID))
        from_pacs, from_file = read_image(client.retrieve(ref)), read_image(path)
        # An old ACR-NEMA file is given a DICOM header when stored: only that warning may differ.
        file_warnings = tuple(w for w in from_file.metadata.warnings if "ACR-NEMA" not in w)
        assert from_pacs.metadata == dataclasses.replace(from_file.metadata, warnings=file_warnings)
        np.testing.assert_array_equal(from_pacs.pixels, from_file.pixels)


def test_plans_say_why_a_study_is_not_analysed(dev_pacs) -> None:
    client = dev_pacs.client()
    ct = plan_study(dev_pacs.study("ct").study_uid, client.instances(dev_pacs.study("ct").study_uid))
    assert not ct.analyse and "not a chest radiograph study" in ct.reason and "CT" in ct.reason
    sr = plan_study(dev_pacs.study("sr_only").study_uid, client.instances(dev_pacs.study("sr_only").study_uid))
    assert not sr.analyse and "SR only" in sr.reason
    lateral = dev_pacs.study("lateral_only")
    plan = plan_study(lateral.study_uid, client.instances(lateral.study_uid))
    assert not plan.analyse and plan.reason.startswith("no frontal image") and "LL" in plan.reason
    chest = dev_pacs.study("chest")
    plan = plan_study(chest.study_uid, client.instances(chest.study_uid))
    assert len(plan.analyse) == len(chest.datasets) and plan.reason == ""


def test_wrong_credentials_are_a_clear_refusal_without_the_password(dev_pacs) -> None:
    client = PacsClient(settings_for(dev_pacs.server, password="wrong-password-123"))
    with pytest.raises(PacsAuthError) as info:
        client.search_studies()
    assert "refused HiCXR's credentials (HTTP 401)" in str(info.value)
    assert "wrong-password-123" not in str(info.value) and dev_pacs.server.password not in str(info.value)
    token_client = PacsClient(PacsSettings(url=dev_pacs.settings.url, token="not-a-token-456"))
    with pytest.raises(PacsAuthError):
        token_client.ping()


def test_credentials_never_reach_the_logs(dev_pacs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = dev_pacs.client()
    client.search_studies(accession="HCX00001")
    ref = client.instances(dev_pacs.study("chest").study_uid)[0]
    client.retrieve(ref)
    assert caplog.records  # the libraries did log (urllib3, dicomweb_client)
    assert dev_pacs.server.password not in caplog.text and dev_pacs.server.basic_auth_header() not in caplog.text
    assert dev_pacs.server.password not in repr(client) + str(dev_pacs.settings)


def test_pacs_down_is_a_clear_message() -> None:
    server = OrthancServer().start()
    client = PacsClient(settings_for(server))
    client.ping()
    server.kill()  # as a crash would
    with pytest.raises(PacsUnavailableError, match="cannot be reached.*nothing was lost"):
        client.search_studies()
    server.restart()
    try:
        client.ping()  # back on the same port with the same credentials
    finally:
        server.stop()
    assert server.pid is None


def test_a_pacs_that_does_not_answer_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = PacsClient(PacsSettings(url=f"http://127.0.0.1:{port}/dicom-web", timeout_s=0.5))
        t0 = time.monotonic()
        with pytest.raises(PacsTimeoutError, match=r"did not answer within 0 s|did not answer within 1 s"):
            client.search_studies()
        assert time.monotonic() - t0 < 10


def test_an_instance_over_the_upload_limit_is_refused(dev_pacs) -> None:
    client = dev_pacs.client(max_bytes=100_000)
    ref = client.instances(dev_pacs.study("lateral_only").study_uid)[0]  # a 512 x 512 8-bit film: ~263 kB
    with pytest.raises(PacsTooLargeError, match="limit is 0 MB|limit is"):
        client.retrieve(ref)


def test_a_failed_store_is_retried_and_nothing_is_lost(shared_data: Path) -> None:
    server = OrthancServer().start()
    try:
        studies = demo_studies(shared_data, nih_count=1, real_dicoms=False)
        client = PacsClient(settings_for(server), store_attempts=4, retry_wait_s=0.4)
        server.kill()
        # The PACS comes back after the client library's own quick retries gave up: HiCXR's store retry gets it in.
        threading.Timer(1.2, server.restart).start()
        outcome = client.store(all_datasets(studies))
        assert outcome.ok and outcome.attempts >= 2
        assert len(outcome.stored) == len(all_datasets(studies))
        down = PacsClient(settings_for(server), store_attempts=2, retry_wait_s=0.05)
        server.kill()
        failed = down.store(all_datasets(studies))
        assert not failed.ok and set(failed.failed) == {str(d.SOPInstanceUID) for d in all_datasets(studies)}
        assert all("cannot be reached" in why for why in failed.failed.values())
    finally:
        server.stop()


def test_settings_come_from_the_secrets_file_or_the_environment(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[pacs]\nurl = "http://127.0.0.1:1/dicom-web/"\nuser = "reader"\npassword = "s3cret"\n')
    secrets.chmod(0o600)
    settings = load_settings(environ={}, secrets_file=secrets)
    assert (settings.url, settings.user, settings.password, settings.warnings) == (
        "http://127.0.0.1:1/dicom-web", "reader", "s3cret", ())
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    env = {"HICXR_PACS_URL": "https://pacs.example.org/dicom-web", "HICXR_PACS_TOKEN": "tok",
           "HICXR_PACS_SHOW_PATIENT_IDENTITY": "yes"}
    from_env = load_settings(environ=env, secrets_file=tmp_path / "none.toml")
    assert from_env.auth_kind == "token" and from_env.show_patient_identity
    secrets.chmod(0o644)
    assert "other users" in load_settings(environ={}, secrets_file=secrets).warnings[0]
    with pytest.raises(PacsSettingsError, match="never in the URL"):
        load_settings("https://u:p@pacs.example.org/dicom-web", environ={}, secrets_file=tmp_path / "none.toml")
    with pytest.raises(PacsSettingsError, match="No PACS URL"):
        load_settings(environ={}, secrets_file=tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[pacs\npassword = 'x'")
    with pytest.raises(PacsSettingsError, match="not valid TOML"):
        load_settings(environ={}, secrets_file=tmp_path / "bad.toml")


def test_an_instance_the_answer_does_not_list_as_stored_is_retried_then_reported(shared_data: Path) -> None:
    """A STOW-RS answer lists what was stored (Referenced SOP Sequence); an instance it neither lists nor refuses is
    not counted as sent: it is sent again, and reported if no answer ever lists it."""
    datasets = all_datasets(demo_studies(shared_data, nih_count=1, real_dicoms=False))[:2]
    first, second = (str(ds.SOPInstanceUID) for ds in datasets)
    answers = []

    def store_instances(sent: list[pydicom.Dataset]) -> pydicom.Dataset:
        answers.append([str(ds.SOPInstanceUID) for ds in sent])
        answer = pydicom.Dataset()
        item = pydicom.Dataset()
        item.ReferencedSOPInstanceUID = first
        answer.ReferencedSOPSequence = [item] if first in answers[-1] else []
        answer.FailedSOPSequence = []
        return answer

    client = PacsClient(PacsSettings(url="http://127.0.0.1:1/dicom-web"), store_attempts=3, retry_wait_s=0.01)
    client._client.store_instances = store_instances  # the answer of a PACS that silently drops `second`
    outcome = client.store(datasets)
    assert outcome.stored == [first] and not outcome.ok and outcome.attempts == 3
    assert outcome.failed == {second: "the PACS's answer did not list it as stored"}
    assert answers == [[first, second], [second], [second]]
    empty = PacsClient(PacsSettings(url="http://127.0.0.1:1/dicom-web"), store_attempts=3, retry_wait_s=0.01)
    empty._client.store_instances = lambda sent: pydicom.Dataset()  # a lax server: success with an empty body
    assert empty.store(datasets).ok
