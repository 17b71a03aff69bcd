"""Login against a real OpenID Connect provider, in Chromium: gate, allow-list, group claim, logout, idle timeout,
and the audit trail of the whole scripted session (with no PHI in it).

One provider (``oidc-provider-mock``, a Flask OIDC server on loopback in this process) and one
``streamlit run dashboard/app.py`` server (its own ``secrets.toml`` with ``[auth]`` and ``[access]``, a short idle
timeout, ``--audit-log`` in a temporary folder) serve the whole module. The tests run in file order: the last one
reads the audit log the others produced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import dashboard_server

pytestmark = [pytest.mark.browser, pytest.mark.auth, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000
IDLE_MINUTES = 0.2  # 12 s; the timer checks every 3 s
CLIENT_SECRET = "client-secret-NEVER-SHOWN-5c1e"
COOKIE_SECRET = "cookie-secret-NEVER-SHOWN-9b7d"
ALICE = ("alice-sub-7f3a", "alice@hospital.example")      # on the allow-list by e-mail
BOB = ("bob-sub-22c8", "bob@hospital.example")            # let in by the group claim
MALLORY = ("mallory-sub-0c1d", "mallory@elsewhere.example")  # neither
PHI_TOKEN = "ZZPHITOKEN"
PHI_DATE = "19010203"
PHI_STUDY_UID = "1.2.826.0.1.3680043.2.1143.990077"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The OIDC provider on loopback with three predefined users; its own login form decides who logs in."""
    from oidc_provider_mock import User, run_server_in_thread

    mp = pytest.MonkeyPatch()
    mp.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    users = [
        User(sub=ALICE[0], claims={"email": ALICE[1], "email_verified": True, "groups": ["cardiology"]}),
        User(sub=BOB[0], claims={"email": BOB[1], "email_verified": True, "groups": ["radiology"]}),
        User(sub=MALLORY[0], claims={"email": MALLORY[1], "email_verified": True, "groups": ["cardiology"]}),
    ]
    with run_server_in_thread(user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"
    mp.undo()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("login")


@pytest.fixture(scope="module")
def server(provider, run_dir) -> Iterator[str]:
    port = dashboard_server.free_port()
    url = f"http://127.0.0.1:{port}"
    secrets = run_dir / "secrets.toml"
    secrets.write_text(f"""
[auth]
redirect_uri = "{url}/oauth2callback"
cookie_secret = "{COOKIE_SECRET}"
client_id = "hicxr-test"
client_secret = "{CLIENT_SECRET}"
server_metadata_url = "{provider}/.well-known/openid-configuration"

[access]
allowed_users = ["{ALICE[1]}"]
required_claim = "groups"
required_values = ["radiology"]
idle_timeout_minutes = {IDLE_MINUTES}
""")
    # The secrets' redirect URI names the server's port, so the port is chosen before the server starts.
    with dashboard_server.running(
            run_dir / "streamlit.log", port=port, server_args=["--secrets.files", str(secrets)],
            app_args=["--weights-dir", str(REPO_ROOT / "weights"), "--audit-log", str(run_dir / "audit.jsonl")],
            env={"AUTHLIB_INSECURE_TRANSPORT": "1"}) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no cookies) on the dashboard."""
    context = browser.new_context(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def phi_dicom(run_dir, shared_data) -> Path:
    """A real chest DICOM whose every identifying field holds a recognisable token."""
    import pydicom

    ds = pydicom.dcmread(shared_data / "dicom" / "txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm")
    for keyword in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName",
                    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                    "StudyDescription", "SeriesDescription", "StudyID", "PatientComments", "ImageComments",
                    "DeviceSerialNumber", "PatientAddress", "RequestingPhysician"):
        setattr(ds, keyword, f"{PHI_TOKEN}_{keyword}")
    ds.PatientBirthDate = PHI_DATE
    ds.StudyInstanceUID = PHI_STUDY_UID
    ds.SeriesInstanceUID = PHI_STUDY_UID + ".1"
    ds.SOPInstanceUID = PHI_STUDY_UID + ".1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = run_dir / "phi_token.dcm"
    ds.save_as(path)
    return path


def _audit(run_dir: Path) -> list[dict]:
    path = run_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_entry(run_dir: Path, timeout: float = 120, **match) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in _audit(run_dir):
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
        time.sleep(0.3)
    raise AssertionError(f"no audit entry {match}: {_audit(run_dir)}")


def _login(page, provider: str, server: str, sub: str) -> None:
    """The app's button, then the provider's own form (type the subject, Authorize), then back to the app."""
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{provider}/oauth2/authorize*")
    page.locator("input[name='sub']").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(lambda url: url.startswith(server))


UPLOADER = "[data-testid='stFileUploader'] input[type='file']"


def test_before_login_the_app_shows_nothing(page, server):
    page.get_by_role("button", name="Log in").wait_for()
    page.wait_for_timeout(1000)
    html = page.content()
    assert page.locator(UPLOADER).count() == 0 and page.locator("[data-testid='stFileUploader']").count() == 0
    for text in ("bundled sample", "Model card", "Export", "Download", "local mode"):
        assert text not in html, text
    assert CLIENT_SECRET not in html and COOKIE_SECRET not in html


def test_login_analyse_export_logout(page, provider, server, run_dir, phi_dicom):
    _login(page, provider, server, ALICE[0])
    page.get_by_text(f"Logged in as {ALICE[1]}").wait_for()
    page.locator(UPLOADER).set_input_files(str(phi_dicom))
    import hashlib

    digest = hashlib.sha256(phi_dicom.read_bytes()).hexdigest()
    _wait_for_entry(run_dir, action="image analysed", user=ALICE[0], subject={"image_sha256": digest})
    page.get_by_role("tab", name="Export").click()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download JSON").click()
    payload = json.loads(Path(info.value.path()).read_text())
    assert payload["image_sha256"] == digest
    assert PHI_TOKEN not in json.dumps(payload)
    _wait_for_entry(run_dir, action="export downloaded", user=ALICE[0], detail="json")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{provider}/oauth2/end_session*")  # the provider's own logout, then back
    page.get_by_role("button", name="End session").click()
    page.get_by_role("button", name="Log in").wait_for()
    assert page.locator(UPLOADER).count() == 0
    _wait_for_entry(run_dir, action="logout", user=ALICE[0], detail="user")


def test_user_outside_the_access_list_is_refused_and_logged_out(page, provider, server, run_dir):
    _login(page, provider, server, MALLORY[0])
    page.get_by_text("Access refused").wait_for()
    assert page.locator(UPLOADER).count() == 0
    page.wait_for_url(f"{provider}/oauth2/end_session*")  # logged out after the refusal was shown
    page.get_by_role("button", name="End session").click()
    page.get_by_role("button", name="Log in").wait_for()  # back at the login screen: no identity cookie left
    assert "Access refused" not in page.content()
    _wait_for_entry(run_dir, action="refusal", user=MALLORY[0], outcome="refused")


def test_group_claim_lets_in_and_idle_session_ends(page, provider, server, run_dir):
    _login(page, provider, server, BOB[0])
    page.locator(UPLOADER).wait_for(state="attached")
    entry = _wait_for_entry(run_dir, action="login", user=BOB[0])
    start = time.monotonic()
    page.wait_for_url(f"{provider}/oauth2/end_session*", timeout=90_000)  # nobody touches the page
    idle = time.monotonic() - start
    assert idle >= IDLE_MINUTES * 60 - 1, idle
    logout = _wait_for_entry(run_dir, action="logout", user=BOB[0], detail="idle timeout")
    assert logout["time"] > entry["time"]
    page.get_by_role("button", name="End session").click()
    page.get_by_role("button", name="Log in").wait_for()  # a new login is needed


def test_audit_log_of_the_session(run_dir, server):
    entries = _audit(run_dir)
    by_user = {}
    for e in entries:
        by_user.setdefault(e["user"], []).append(e["action"])
    # One entry per action, each with the user who did it.
    assert by_user[ALICE[0]].count("login") == 1 and by_user[ALICE[0]].count("logout") == 1
    assert by_user[ALICE[0]].count("export downloaded") == 1
    assert by_user[MALLORY[0]] == ["refusal"]
    # Bob only looked (the page may analyse its default sample on opening) until the idle timeout logged him out.
    bob = [a for a in by_user[BOB[0]] if a != "image analysed"]
    assert bob == ["login", "logout"]
    analysed = [e["subject"]["image_sha256"] for e in entries if e["action"] == "image analysed"]
    assert len(analysed) == len(set((e["user"], e["subject"]["image_sha256"], e["variant"]) for e in entries
                                    if e["action"] == "image analysed")), "an analysis was recorded twice"
    assert "local" not in by_user
    for e in entries:
        if e["action"] in ("image analysed", "export downloaded"):
            assert len(e["model_version"]) == 64 and e["variant"]
    text = (run_dir / "audit.jsonl").read_text()
    server_log = (run_dir / "streamlit.log").read_text()
    for secret_or_phi in (PHI_TOKEN, PHI_DATE, PHI_STUDY_UID, CLIENT_SECRET, COOKIE_SECRET):
        assert secret_or_phi not in text, secret_or_phi
        assert secret_or_phi not in server_log, secret_or_phi
    assert oct((run_dir / "audit.jsonl").stat().st_mode & 0o777) == "0o600"
