"""Steps a browser takes on the dashboard (Playwright), shared by the browser tests and the dashboard benchmarks.

Each step waits for what a reader would wait for: the page's script run to finish, the sample list to open (a
click on a select box that is being redrawn is lost), a tree node to stop moving before it is clicked at its
coordinates. Lives under ``bench/`` beside ``dashboard_server.py`` for the same reason: the tests import the
benchmarks' tooling, never the other way round.
"""

from __future__ import annotations

import time

#: The taxonomy tree's Plotly chart on the Analysis tab.
TREE = ".st-key-tree .js-plotly-plot"
_NOT_RUNNING = "() => document.querySelector(\"[data-testid='stApp']\")?.dataset.testScriptState === 'notRunning'"


def settled(page) -> None:
    """Wait until the page's script run has finished (Streamlit marks the app ``notRunning``)."""
    page.wait_for_function(_NOT_RUNNING)


def sample_option(page, name: str):
    """Open the sidebar's sample list once the first screen has finished its run; the option ``name``, ready to
    click. About one first click in four after a fresh page load opens nothing (the box is drawn again just then),
    so the list is opened again after a short wait, up to eight times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".st-key-sample").wait_for()
    settled(page)
    option = page.get_by_role("option", name=name, exact=True)
    for attempt in range(8):
        page.locator(".st-key-sample").click()
        try:
            option.wait_for(timeout=3_000 if attempt < 7 else 30_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            settled(page)
    return option


def pick_sample(page, name: str) -> None:
    """Pick the bundled sample ``name`` and wait for its tree."""
    sample_option(page, name).click()
    page.wait_for_selector(TREE)


def still_box(locator) -> dict:
    """The element's box once it is in the viewport and has stopped moving: a click at coordinates lands only
    inside the viewport, and the page below the viewer moves (and Plotly redraws the tree, replacing its nodes)
    once the viewer has drawn its image and set its height."""
    from playwright.sync_api import Error as PlaywrightError

    box = None
    for _ in range(100):
        try:
            locator.scroll_into_view_if_needed(timeout=5_000)
            now = locator.bounding_box(timeout=5_000)
        except PlaywrightError:  # the node was replaced while we looked: look again
            now = None
        if now is not None and now == box:
            return box
        box = now
        time.sleep(0.2)
    raise AssertionError("the element never stopped moving")
