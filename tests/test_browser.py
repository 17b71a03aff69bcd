"""End-to-end: a real ``streamlit run`` server driven by Debian Chromium through Playwright.

Covers what AppTest cannot: the file input of the real uploader, plotly rendering and click selection in the
browser, lazy tabs, and real downloads. Screenshots go to ``tests/artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from bench import dashboard_server
from bench.browser_steps import TREE, pick_sample, settled, still_box
from core.imaging import ImageError, read_image

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
RENDER_TIMEOUT_MS = 120_000


def node_trace(page, n: int):
    """The tree's trace drawing ``n`` captioned nodes: the learnt labels' or the not-learnt ones' (an empty
    violation trace draws nothing, so positions shift; counts do not)."""
    traces = page.locator(f"{TREE} .scatterlayer .trace")
    for i in range(traces.count()):
        trace = traces.nth(i)
        if trace.locator("path.point").count() == n and trace.locator(".textpoint").count() == n:
            return trace
    raise AssertionError(f"no tree trace with {n} captioned nodes")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A dashboard server on a free port with the shipped weights (as `make dashboard`); stopped after the module."""
    log_path = tmp_path_factory.mktemp("log") / "streamlit.log"
    with dashboard_server.running(log_path, server_args=["--server.address", "127.0.0.1"],
                                  app_args=["--weights-dir", str(REPO_ROOT / "weights")], timeout=90) as running:
        yield running.url
    log_text = log_path.read_text()
    assert "Traceback" not in log_text, log_text[-3000:]


@pytest.fixture(scope="module")
def browser():
    """Debian Chromium through Playwright (Playwright's own browser download is not available here)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    """A fresh session (its own analysis cache) on the dashboard, first analysis rendered."""
    context = browser.new_context(viewport={"width": 1600, "height": 2000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(RENDER_TIMEOUT_MS)
    pg.goto(server)
    pick_sample(pg, FIRST_SAMPLE)
    yield pg
    context.close()


#: The sample the page fixture picks (nothing is analysed before a pick).
FIRST_SAMPLE = "Cardiomegaly · NIH PNG"


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _tree_text(page) -> str:
    return page.locator(TREE).first.text_content() or ""


def _cam_caption(page) -> str:
    """The viewer's map caption (label · P = ... — what kind of map)."""
    return page.locator(".st-key-viewer_caption").first.inner_text()


def _viewer(page):
    """The radiograph viewer component's frame (static HTML served by the Streamlit server itself)."""
    return page.frame_locator("iframe[title*='hicxr_viewer']")


def _images_loaded(page) -> None:
    """Wait until every image on the page has finished loading (screenshots would show blanks otherwise)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-testid='stImage'] img\")]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def _upload(page, path: Path) -> float:
    """Upload a file through the real file input; seconds until the tree shows the new analysis."""
    before = _tree_text(page)
    start = time.perf_counter()
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(path))
    _wait_tree_changed(page, before)
    return time.perf_counter() - start


def _wait_tree_changed(page, before: str) -> None:
    """Wait until the tree no longer shows the text ``before`` (the previous image's analysis)."""
    page.wait_for_function(
        """([sel, before]) => {
            const el = document.querySelector(sel);
            return el !== null && el.textContent.includes('Pneumonia') && el.textContent !== before;
        }""",
        arg=[TREE, before],
    )


def _nih_test_png(shared_data: Path) -> Path:
    labels = pd.read_csv(shared_data / "nih" / "labels.csv")
    row = labels[(labels["split"] == "test") & (labels["stored_size"] == "512x512")].iloc[-1]
    return shared_data / "nih" / "images" / row["Image Index"]


def _learnt_labels(variant) -> list[str]:
    return [label for label in variant.labels if variant.card.learnt(label)]


def test_upload_png_click_node_and_see_its_cam(page, shared_data):
    from core.registry import default_variant, get_variant

    default = get_variant(default_variant(REPO_ROOT / "weights"), REPO_ROOT / "weights")
    learnt = _learnt_labels(default)
    seconds = _upload(page, _nih_test_png(shared_data))
    print(f"\nupload_to_tree_seconds={seconds:.2f} (NIH PNG 512 px, shipped default variant, fresh session)")
    assert seconds < 60
    nodes = node_trace(page, len(learnt))
    # Not-learnt outputs are drawn as such: their own hollow nodes captioned "not learnt", no probability.
    not_learnt = default.card.labels_not_learnt
    captions = node_trace(page, len(not_learnt)).locator(".textpoint").all_text_contents()
    assert not_learnt and all("not learnt" in c for c in captions)
    _images_loaded(page)
    _shot(page, "01_png_uploaded")

    nodes = nodes.locator("path.point")
    shown = _cam_caption(page)
    targets = [label for label in ("Cardiomegaly", "Edema", "Pleural Effusion")
               if not shown.startswith(f"{label} ·")][:2]  # clicking the label already shown would deselect it
    for label in targets:
        box = still_box(nodes.nth(learnt.index(label)))
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(
            """label => {
                const caption = document.querySelector(".st-key-viewer_caption");
                return caption !== null && caption.innerText.startsWith(label + " ·");
            }""",
            arg=label,
        )
        caption = _cam_caption(page)
        assert "operating point" in caption or "not learnt" not in caption
        # The viewer's map pane now shows this label, and the text under it says what kind of picture it is.
        _viewer(page).locator("#t1").filter(has_text=f"{label} ·").wait_for()
        assert "Grad-CAM: regions that raise" in caption or "Not evidence for the label" in caption
    # Hovering a node quotes the label's test AUROC with the test positives it rests on; few positives: unreliable.
    positives = default.per_label_positives("test")
    few = min((label for label in learnt if positives.get(label)), key=lambda label: positives[label])
    box = still_box(nodes.nth(learnt.index(few)))
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = page.locator(".hoverlayer .hovertext").first
    hover.wait_for()
    text = hover.text_content() or ""
    assert text.startswith(few) and f"{positives[few]} test positive" in text
    assert ("unreliable" in text) == (positives[few] < 5)
    page.mouse.move(0, 0)
    _images_loaded(page)
    _shot(page, "02_node_clicked")

    # The gallery is lazy: opening it draws one tile per learnt label above the probability slider (0.5).
    page.get_by_text("Gallery: every label above a probability").click()
    page.get_by_text("Probability at least").wait_for()
    page.locator(".st-key-gallery_min_p").wait_for()
    _images_loaded(page)
    tiles = [c for c in page.locator("[data-testid='stImageCaption']").all_inner_texts() if "P = " not in c]
    assert all(float(t.split(" · ")[1].split(" ±")[0]) >= 0.5 for t in tiles)
    assert not any(t.split(" · ")[0] in not_learnt for t in tiles)
    _shot(page, "03_gallery")


def test_upload_dicom_shows_window_level_and_metadata(page, shared_data, tmp_path):
    # A DICOM without extension, as PACS exports often are.
    dicom = tmp_path / "CR-MONO1-10-chest"
    shutil.copyfile(shared_data / "dicom" / "fodicom_CR-MONO1-10-chest.dcm", dicom)
    seconds = _upload(page, dicom)
    print(f"\nupload_to_tree_seconds={seconds:.2f} (DICOM 440 px, fresh session)")
    # The viewer offers the file's own window first, then the presets.
    buttons = _viewer(page).locator("#bar button[data-preset]")
    buttons.first.wait_for()
    assert buttons.all_inner_texts() == ["File's own", "Lung", "Mediastinum", "Bone", "Full range"]
    details = page.locator("[data-testid='stTable']").first
    details.wait_for()  # DICOM details start expanded
    text = details.inner_text()
    assert "CR" in text and "MONOCHROME1" in text
    assert "FUJI" not in text.upper()  # the free-text Manufacturer is no longer shown (issue 10)
    _images_loaded(page)
    _shot(page, "04_dicom_uploaded")


def test_bad_file_shows_its_message(page, tmp_path):
    bad = tmp_path / "letter.pdf"
    bad.write_bytes(b"%PDF-1.4 this is a referral letter, not an X-ray")
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(bad))
    with pytest.raises(ImageError) as expected:
        read_image(bad)
    alert = page.locator("[data-testid='stAlertContentError']").first
    alert.wait_for()
    settled(page)  # the run has finished, so a tree still on the page would be a stale result
    assert str(expected.value) in alert.inner_text()
    assert page.locator(TREE).count() == 0  # no stale result from the previous image
    assert "Traceback" not in page.content()
    _shot(page, "05_bad_file")


def test_non_finite_dicoms_show_plain_messages(page, tmp_path):
    """Issue 22: an all-NaN Float Pixel Data DICOM is refused in words; a window that overflows float32 (which once
    turned every pixel into NaN and raised plotly's ValueError on the page) is analysed from the data range, with
    a warning; neither shows an exception box, and no header text reaches the page."""
    from bench import hostile

    nan = tmp_path / "nan.dcm"
    nan.write_bytes(hostile.dicom_all_nan())
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(nan))
    alert = page.locator("[data-testid='stAlertContentError']").first
    alert.wait_for()
    settled(page)  # the run has finished: the previous image's tree is no longer on the page as a stale element
    assert "pixel value(s) that are not numbers (infinite or NaN)" in alert.inner_text()
    assert page.locator(TREE).count() == 0 and page.locator("[data-testid='stException']").count() == 0
    _shot(page, "05b_nan_dicom")
    window = tmp_path / "window.dcm"
    window.write_bytes(hostile.dicom_window_overflow())
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(window))
    page.wait_for_selector(TREE)
    page.get_by_text("window in the file does not fit the image data").first.wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    leak = tmp_path / "frames.dcm"
    leak.write_bytes(hostile.dicom_frames_leak())
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(leak))
    page.get_by_text("Number of Frames (0028,0008)").first.wait_for()
    assert hostile.LEAK_TOKEN not in page.content()
    assert "Traceback" not in page.content()


def test_compare_variants_and_downloads(page):
    from core.registry import default_variant, scan_weights

    scan = scan_weights(REPO_ROOT / "weights")
    distinct = scan.distinct_names()
    default = default_variant(REPO_ROOT / "weights")
    page.get_by_role("tab", name="Compare variants").click()
    page.locator(".st-key-compare_bars .js-plotly-plot").wait_for()
    page.get_by_text("Where the variants disagree most").wait_for()
    # Identical models are one entry: the paper's hard-penalty variants are named as bce.
    page.get_by_text("bce ≡ hbce_data ≡ hbce_fixed").first.wait_for()
    compared = [default] + [n for n in distinct if n != default]
    compared = compared[:4]
    page.wait_for_function(
        """names => {
            const shown = [...document.querySelectorAll("[data-testid='stImageCaption']")]
                .map(c => c.innerText.split(" ·")[0]);
            return names.every(v => shown.includes(v));
        }""",
        arg=compared,
    )
    captions = page.locator("[data-testid='stImageCaption']").all_inner_texts()
    assert sorted({c.split(" ·")[0] for c in captions} & set(scan.names())) == sorted(compared)
    assert "hbce_fixed ·" not in " ".join(captions) and "hbce_data ·" not in " ".join(captions)
    assert page.locator(".st-key-compare_bars .js-plotly-plot .bars").count() >= 2
    _images_loaded(page)
    _shot(page, "06_compare")

    page.get_by_role("tab", name="Model card").click()
    page.locator(".st-key-card_auroc .js-plotly-plot").wait_for()
    # Where the weights started: the shipped models were trained from random weights, and the card says so.
    page.get_by_text("random (no pretraining)", exact=True).first.wait_for()
    _shot(page, "07_model_card")
    # What the population checks flag, as measured on films the model never trained on.
    heading = page.get_by_role("heading", name="When the outputs do not apply")
    heading.scroll_into_view_if_needed()
    # The grid draws on a canvas; its accessible cells (hidden) carry the rows.
    page.get_by_text("children aged 1-5 (Kermany)").first.wait_for(state="attached")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "07b_model_card_population.png"))

    page.get_by_role("tab", name="Analysis").click()
    page.locator(TREE).wait_for()
    page.locator(".st-key-label_pick label").filter(has_text="Pleural Effusion").click()
    page.wait_for_function(
        "() => document.querySelector('.st-key-viewer_caption')?.innerText.startsWith('Pleural Effusion ·')")
    page.get_by_role("tab", name="Export").click()
    page.get_by_text("Pleural Effusion").first.wait_for()  # the export tab names the label the PDF will show
    with page.expect_download() as info:
        page.get_by_role("button", name="Download JSON").click()
    payload = json.loads(Path(info.value.path()).read_text())
    assert payload["model_id"] == default and len(payload["labels"]) == 21
    assert payload["labels"]["Fracture"]["call"] == "" and "warnings" in payload
    with page.expect_download() as info:
        page.get_by_role("button", name="Download PDF report").click()
    pdf = Path(info.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    assert b"map of Pleural Effusion" in pdf  # the PDF shows the label selected in the Analysis tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.pdf").write_bytes(pdf)
    assert info.value.suggested_filename.endswith(".pdf")
    _shot(page, "08_export")


def test_first_screen_analyses_nothing(browser, server):
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    try:
        pg = context.new_page()
        pg.set_default_timeout(RENDER_TIMEOUT_MS)
        pg.goto(server)
        pg.get_by_text("Nothing is analysed until you do").wait_for()
        assert pg.locator(TREE).count() == 0 and pg.locator("[data-testid='stDataFrame']").count() == 0
        _shot(pg, "00_first_screen")
    finally:
        context.close()


def _banner(page) -> str:
    banner = page.locator("[data-testid='stAlertContentError']")
    banner.first.wait_for()
    return " ".join(banner.all_inner_texts())


def test_out_of_population_dog_has_the_banner_and_no_calls(page, shared_data):
    _upload(page, shared_data / "dicom" / "highdicom_dx_image_DX_MONO1_canine_thorax.dcm")
    text = _banner(page)
    assert "do not apply" in text and "under 18" in text and "No finding is called" in text
    assert "▲" not in _tree_text(page)
    _shot(page, "09_out_of_population_dog")


def test_out_of_population_child_has_the_banner_and_no_calls(page, shared_data):
    from core.card_evidence import kermany_heldout

    # A film of a patient the population classifier never saw.
    kermany = kermany_heldout(pd.read_csv(shared_data / "other" / "kermany" / "labels.csv"))
    child = shared_data / "other" / "kermany" / "images" / kermany["file"].iloc[0]
    _upload(page, child)
    text = _banner(page)
    assert "do not apply" in text and "child" in text
    assert "▲" not in _tree_text(page)
    _shot(page, "10_out_of_population_child")


def test_normal_film_has_no_banner_and_few_calls(page):
    before = _tree_text(page)  # the first sample's tree (Cardiomegaly: `bce` makes six calls on it)
    pick_sample(page, "No finding · NIH PNG")
    page.get_by_text("(No finding · NIH PNG)").first.wait_for()  # the new analysis is on the page
    _wait_tree_changed(page, before)  # and its tree: the caption can come a moment before the chart is redrawn
    settled(page)
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    assert _tree_text(page).count("▲") <= 1
    _shot(page, "11_normal_film")


# ------------------------------------------------------------------------------------- the viewer (issue 18)

CANVAS_MEAN = """id => {
    const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
    return s / (3 * d.length / 4);
}"""


def _viewer_frame(page):
    """The viewer's frame, for evaluating scripts in it (its canvases)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "hicxr_viewer" in frame.url:
                return frame
        time.sleep(0.2)
    raise AssertionError("the viewer component was not found")


def _window_text(page, pane: int) -> str:
    return _viewer(page).locator(f"#wl{pane}").inner_text()


def test_viewer_presets_drag_readout_reset_and_the_map_follows(page, shared_data):
    path = shared_data / "dicom" / "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm"  # 15-bit, MONOCHROME1
    _upload(page, path)
    settled(page)
    image = read_image(path, keep_raw=True)
    viewer, frame = _viewer(page), _viewer_frame(page)
    center, width = image.default_window
    file_window = f"C {round(center)} / W {round(width)}"
    viewer.locator("#wl0").filter(has_text=file_window).wait_for()
    before = [frame.evaluate(CANVAS_MEAN, f"c{k}") for k in (0, 1)]
    _shot(page, "20_viewer_file_window")

    # Presets: each sets both panes to its window; the map pane is redrawn with the radiograph's window.
    viewer.get_by_role("button", name="Lung", exact=True).click()
    assert viewer.get_by_role("button", name="Lung", exact=True).get_attribute("aria-pressed") == "true"
    lung = _window_text(page, 0)
    assert lung.startswith("C ") and not lung.startswith(file_window)
    assert _window_text(page, 1) == lung  # the map pane follows the window
    after = [frame.evaluate(CANVAS_MEAN, f"c{k}") for k in (0, 1)]
    assert abs(after[0] - before[0]) > 5 and abs(after[1] - before[1]) > 2
    _shot(page, "21_viewer_lung_preset")

    # Mouse drag: right widens the window, down moves the level; both panes follow, and the page keeps the window.
    pane = viewer.locator("#p0").bounding_box()
    x, y = pane["x"] + pane["width"] / 2, pane["y"] + pane["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 60, steps=6)
    page.mouse.up()
    dragged = _window_text(page, 0)
    assert dragged != lung and _window_text(page, 1) == dragged
    settled(page)  # the window went back to Streamlit (for the PDF); the viewer keeps it across the rerun
    assert _window_text(page, 0) == dragged

    # Pixel-value readout in the file's own units, at the pixel under the mouse.
    page.mouse.move(x + 7, y - 11)
    readout = viewer.locator("#r0").inner_text()
    match = re.fullmatch(r"x (\d+), y (\d+): value (-?\d+)", readout)
    assert match, readout
    px, py, value = (int(g) for g in match.groups())
    near = image.raw[max(0, py - 3):py + 4, max(0, px - 3):px + 4]
    assert near.min() - 1 <= value <= near.max() + 1  # a box average of the file's values around that pixel

    # Zoom and invert apply to both panes.
    viewer.get_by_role("button", name="+", exact=True).click()
    viewer.get_by_role("button", name="Invert", exact=True).click()
    assert "125%" in _window_text(page, 0) and "125%" in _window_text(page, 1)
    assert "inverted" in _window_text(page, 1)
    _shot(page, "22_viewer_dragged_zoomed_inverted")

    # Reset: the file's own window, no invert, fitted.
    viewer.get_by_role("button", name="Reset", exact=True).click()
    assert _window_text(page, 0).startswith(file_window) and "100%" in _window_text(page, 0)
    assert "inverted" not in _window_text(page, 0)
    assert abs(frame.evaluate(CANVAS_MEAN, "c0") - before[0]) < 1.0
    _shot(page, "23_viewer_reset")


RED_MINUS_BLUE = """id => {
    const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] - d[i + 2];
    return s / (d.length / 4);
}"""


def test_map_controls_apply_in_the_viewer(page):
    from core.taxonomy import load_taxonomy
    from dashboard.components.tree import tree_order

    viewer, frame = _viewer(page), _viewer_frame(page)
    # A label whose map is a Grad-CAM heat map (not the dashed lines of a relative map).
    for label in tree_order(load_taxonomy()):
        if "Grad-CAM" in _cam_caption(page):
            break
        page.locator(".st-key-label_pick label").filter(has_text=label).first.click()
        page.wait_for_function(
            "l => document.querySelector('.st-key-viewer_caption')?.innerText.startsWith(l + ' ·')", arg=label)
        settled(page)
    shown = _cam_caption(page).split(" ·")[0]
    assert "Grad-CAM" in _cam_caption(page)
    viewer.locator("#t1").filter(has_text=f"{shown} ·").wait_for()
    frame.wait_for_function("() => S.overlay !== null")  # the heat layer is decoded and coloured

    def means() -> tuple[float, float]:
        return frame.evaluate(CANVAS_MEAN, "c0"), frame.evaluate(CANVAS_MEAN, "c1")

    # Opacity 0: the map pane is the radiograph; full opacity: the map covers it where it is above the threshold.
    opacity = viewer.locator("#m-opacity")
    opacity.focus()
    page.keyboard.press("Home")
    assert viewer.locator("#m-opacity-v").inner_text() == "0.00"
    image, bare = means()
    assert abs(bare - image) < 0.5
    page.keyboard.press("End")
    _, covered = means()
    assert abs(covered - image) > 5
    # Threshold 1: nothing is coloured any more.
    viewer.locator("#m-threshold").focus()
    page.keyboard.press("End")
    assert abs(means()[1] - image) < 0.5
    page.keyboard.press("Home")
    # The colour map: inferno is red-yellow over the middle values, viridis blue-green.
    warm = frame.evaluate(RED_MINUS_BLUE, "c1")
    viewer.locator("#m-colormap").select_option("viridis")
    assert frame.evaluate(RED_MINUS_BLUE, "c1") < warm - 5
    _shot(page, "26_map_controls_viridis")
    # The settings go back to the server (the gallery draws with them) without a new analysis or a page run.
    settled(page)
    assert viewer.locator("#m-colormap").input_value() == "viridis"  # kept across that rerun
    # The map pane can be hidden (checkbox or M) and shown again.
    viewer.locator("#m-show").uncheck()
    assert viewer.locator("#mapbox").is_hidden()
    viewer.locator("#p0").focus()
    page.keyboard.press("m")
    assert viewer.locator("#mapbox").is_visible() and viewer.locator("#m-show").is_checked()


def test_keyboard_selects_tree_nodes(page):
    from core.taxonomy import load_taxonomy
    from dashboard.components.tree import tree_order

    order = tree_order(load_taxonomy())
    shown = _cam_caption(page).split(" ·")[0]
    # The radio group mirrors the tree: Tab to it and the arrow keys move the selection, node and map follow.
    page.locator(".st-key-label_pick input[type='radio']:checked").focus()
    page.keyboard.press("ArrowRight")
    expected = order[(order.index(shown) + 1) % len(order)]
    page.wait_for_function(
        "label => document.querySelector('.st-key-viewer_caption')?.innerText.startsWith(label + ' ·')",
        arg=expected)
    _viewer(page).locator("#t1").filter(has_text=f"{expected} ·").wait_for()
    settled(page)
    # The viewer's own shortcut: ] selects the next finding in tree order.
    _viewer(page).locator("#p0").focus()
    page.keyboard.press("]")
    following = order[(order.index(expected) + 1) % len(order)]
    page.wait_for_function(
        "label => document.querySelector('.st-key-viewer_caption')?.innerText.startsWith(label + ' ·')",
        arg=following)
    settled(page)
    # The tree's side follows too (its keyboard list is outside the viewer's own panel).
    page.wait_for_function(
        """label => [...document.querySelectorAll(".st-key-label_pick label")]
                       .some(l => l.querySelector("input:checked") && l.innerText.startsWith(label))""",
        arg=following)
    _images_loaded(page)
    _shot(page, "24_keyboard_selection")



def _choose_variant(page, name: str) -> None:
    """Pick ``name`` in the sidebar's Variant box (its option lists identical models after it)."""
    page.locator(".st-key-variant").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(name)}( ≡ .*)?$")).click()


def test_variant_switch_keeps_the_viewer_when_the_notices_change(page, shared_data):
    """A variant that flags the image (a banner and a warning more above the viewer) must not make Streamlit draw
    the viewer anew: a new frame asks for the image's pixels again (a second run, a few MB) on every switch."""
    from core.registry import default_variant

    # The first 512 px test film: the grown-data default finds it like its training images, the three older
    # variants do not (their feature distance), so the notices above the viewer change with the variant.
    film = shared_data / "nih" / "images" / "00000317_003.png"
    _upload(page, film)
    settled(page)
    assert default_variant(REPO_ROOT / "weights") == "bce"
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    _viewer_frame(page).evaluate("() => { window.hicxrMark = 'first frame'; }")
    before = _tree_text(page)
    _choose_variant(page, "chmcnn")
    _wait_tree_changed(page, before)
    settled(page)
    page.locator("[data-testid='stAlertContentError']").first.wait_for()  # the notices did change
    assert _viewer_frame(page).evaluate("() => window.hicxrMark") == "first frame"
    before = _tree_text(page)
    _choose_variant(page, "bce")
    _wait_tree_changed(page, before)
    settled(page)
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    assert _viewer_frame(page).evaluate("() => window.hicxrMark") == "first frame"

@pytest.mark.parametrize("width", [1280, 1920])
def test_compare_grid_never_overlaps(browser, server, width):
    context = browser.new_context(viewport={"width": width, "height": 1400})
    try:
        page = context.new_page()
        page.set_default_timeout(RENDER_TIMEOUT_MS)
        page.goto(server)
        pick_sample(page, FIRST_SAMPLE)
        page.get_by_role("tab", name="Compare variants").click()
        tiles = page.locator(".st-key-compare_maps [data-testid='stImage']")
        page.wait_for_function(
            "() => [...document.querySelectorAll(\".st-key-compare_maps [data-testid='stImage'] img\")]"
            ".filter(img => img.complete && img.naturalWidth > 0).length >= 2")
        settled(page)
        _images_loaded(page)
        main = page.locator("[data-testid='stMainBlockContainer']").bounding_box()
        boxes = [tiles.nth(i).bounding_box() for i in range(tiles.count())]
        captions = [c.bounding_box() for c in page.locator(".st-key-compare_maps [data-testid='stImageCaption']")
                    .all()]
        assert len(boxes) >= 2 and len(captions) == len(boxes)
        for box in boxes + captions:  # nothing cut off at the right edge
            assert box["x"] >= main["x"] - 1 and box["x"] + box["width"] <= main["x"] + main["width"] + 1
        for group in (boxes, captions):
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    overlap_x = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
                    overlap_y = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
                    assert overlap_x <= 0.5 or overlap_y <= 0.5, (a, b)
        page.mouse.move(0, 0)
        page.locator(".st-key-compare_maps").scroll_into_view_if_needed()  # the page scrolls inside its main block
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"25_compare_{width}.png"))
    finally:
        context.close()
