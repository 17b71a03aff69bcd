"""In Chromium: open a study from the PACS worklist, send the results, see them listed in the PACS.

A real Orthanc (seeded) and a real ``streamlit run`` server pointed at it; Debian's chromium via Playwright.
The screenshot goes to ``tests/artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from bench import dashboard_server
from core.pacs.devserver import start_seeded

pytestmark = [pytest.mark.pacs, pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TREE = ".st-key-tree .js-plotly-plot"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"


def test_open_a_study_from_the_worklist_send_and_see_it_in_the_pacs(shared_data: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps`")
    from playwright.sync_api import sync_playwright

    pacs = start_seeded(shared_data, nih_count=2, real_dicoms=False)
    env = {"HICXR_PACS_URL": pacs.settings.url, "HICXR_PACS_USER": pacs.server.user,
           "HICXR_PACS_PASSWORD": pacs.server.password, "HICXR_PACS_WORKLIST_DAYS": "0",
           "HICXR_PACS_SECRETS": str(tmp_path / "none.toml")}
    log_path = tmp_path / "streamlit.log"
    try:
        with dashboard_server.running(log_path, server_args=["--server.address", "127.0.0.1"],
                                      app_args=["--weights-dir", str(REPO_ROOT / "weights")], env=env) as server:
            chest = pacs.study("chest")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 2000})
                page.set_default_timeout(180_000)
                page.goto(server.url)
                page.get_by_text("PACS worklist").click()
                page.get_by_text("Study to open").wait_for()
                page.locator(".st-key-study_pick").click()
                page.get_by_role("option", name=chest.accession).click()
                page.locator(".st-key-open_study button").click()
                page.wait_for_selector(TREE)
                page.locator(".st-key-send_pacs button").click()
                page.get_by_text("Stored 2 objects in the study").wait_for()
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "pacs_sent.png"), full_page=True)
                browser.close()
            client = pacs.client()
            stored = sorted(r.series_description.split()[1] for r in client.instances(chest.study_uid)
                            if r.series_description.startswith("HiCXR"))
            assert stored == ["SR", "map"]
    finally:
        pacs.stop()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]
