"""Screenshot the dashboard comparing an imported torchxrayvision model with ``bce`` on one image.

Usage, after ``python -m core.import_model txv:densenet121-res224-all --random-init --export
TMP/txv_all_random_init``::

    python bench/screenshot_import.py TMP OUT_DIR

TMP gets links to ``weights/bce.*`` beside the imported variant; the dashboard is started on TMP (loopback, free
port), the Compare tab and the imported variant's model card are captured into OUT_DIR, and the server is stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import dashboard_server  # noqa: E402 - importable once the repository root is on the path
from bench.browser_steps import pick_sample  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def main(weights: Path, out: Path) -> int:
    for path in (REPO / "weights").glob("bce*"):
        link = weights / path.name
        if not link.exists():
            link.symlink_to(path)
    out.mkdir(parents=True, exist_ok=True)
    with dashboard_server.running(out / "streamlit.log", server_args=["--server.address", "127.0.0.1"],
                                  app_args=["--weights-dir", str(weights)]) as server:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            page.set_default_timeout(300_000)
            page.goto(server.url)
            pick_sample(page, "Cardiomegaly · NIH PNG")  # nothing is analysed before an image is picked
            page.get_by_role("tab", name="Compare variants").click()
            page.locator(".st-key-compare_bars .js-plotly-plot").wait_for()
            time.sleep(3)
            page.screenshot(path=str(out / "compare_txv_random_vs_bce.png"), full_page=True)
            page.get_by_role("tab", name="Model card").click()
            page.locator(".st-key-card_variant").wait_for()
            page.locator(".st-key-card_variant").click()
            page.get_by_role("option", name="txv_all_random_init").click()
            page.locator(".st-key-card_label_map").wait_for()
            time.sleep(3)
            page.screenshot(path=str(out / "card_txv_random.png"), full_page=True)
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
