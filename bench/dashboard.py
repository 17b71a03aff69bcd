"""Dashboard speed, measured in Chromium against a real ``streamlit run`` server on the shipped weights.

    .venv/bin/python bench/dashboard.py [--reps 5] [--weights-dir weights]

Prints one line per figure (medians over ``--reps`` repeats, each repeat in a fresh browser session so nothing is
served from a previous repeat's session cache), then the goals:

- ``warm_page_load_s``: a new session opens the page (server already warm) until its first screen is ready;
- ``sample_to_tree_s``: then picking a bundled 1,024 px NIH PNG sample until its tree shows;
- ``upload_png_to_tree_s``: a 512 px NIH PNG (a different test-split film each repeat) through the real file input
  until its tree shows;
- ``upload_dicom_<kind>_to_tree_s``: the same for compressed DICOMs (JPEG 2000 lossless 2128 x 2000 and JPEG-LS
  1955 x 1841 chest films from ``../shared/data/dicom``), and ``upload_dicom_<kind>_server_s`` the server's script
  time within it (the rest is the browser: sending the file, drawing the page);
- ``variant_switch_cached_s``: choosing a variant already analysed in this session until its tree shows;
- ``compare_tab_s``: opening the Compare tab (every distinct variant, none analysed yet) until every map is drawn;
- ``node_click_to_map_s``: clicking a tree node until its map and caption show (a display-only interaction);
- ``display_rerun_s`` / ``analysis_rerun_s``: the server's script time (``bench/timed_streamlit.py`` times every
  run) for a display-only change made in the browser (the map opacity by keyboard in the viewer's toolbar, a label
  picked in the tree's keyboard list) and for an upload of a 512 px PNG new to the session;
  ``display_rerun_fragment_only`` is 1 where the change reran only the viewer's ``st.fragment``, not the page;
- ``display_over_analysis``: their medians' ratio, both measured in the same run. Goal <= 0.05.
  ``analysis_run_only_s`` is the analysing run alone (an upload that replaces a file first runs once without any
  file, waiting for the new one) and ``display_over_analysing_run`` the ratio against it.

Uploads and variant switches are timed in the page (``performance.now()``): from the file input's change, or the
press on the variant, until the new tree shows and the page's last script run has finished. Beside each, the
``*_wall_s`` figure is the driver's clock, which adds what no reader waits for (Playwright's checks before a click,
the file's transfer from the driver into the browser, the driver's polling; about 0.1-0.3 s here).

Wall-clock figures on a shared machine vary with its load; run with nothing else busy for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import dashboard_server  # noqa: E402 - importable once the repository root is on the path
from bench.browser_steps import TREE, sample_option, settled, still_box  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 180_000
VIEWER = "iframe[title*='hicxr_viewer']"
GOALS = {"warm_page_load_s": 5.0, "upload_png_to_tree_s": 1.0, "upload_dicom_j2k_to_tree_s": 1.5,
         "upload_dicom_jpegls_to_tree_s": 1.5, "variant_switch_cached_s": 0.3, "compare_tab_s": 3.0,
         "display_over_analysis": 0.05}


def timed_streamlit(runs_log: Path, profile: bool = False) -> list[str]:
    """The command that stands for ``streamlit``: every script run timed into ``runs_log`` (and profiled)."""
    return [sys.executable, str(REPO_ROOT / "bench" / "timed_streamlit.py"), str(runs_log),
            *(["--profile"] if profile else [])]


def _tree_text(page) -> str:
    return page.locator(TREE).first.text_content() or ""


def _wait_tree_changed(page, before: str) -> None:
    page.wait_for_function(
        """([sel, before]) => {
            const el = document.querySelector(sel);
            return el !== null && el.textContent.includes('Pneumonia') && el.textContent !== before;
        }""",
        arg=[TREE, before],
    )


SAMPLE = "Cardiomegaly · NIH PNG"


def _new_page(browser, url: str, width: int = 1600):
    """A new session: seconds until the first screen is ready (sidebar drawn, script finished), then until the
    first bundled sample's tree shows."""
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    start = time.perf_counter()
    page.goto(url)
    page.locator(".st-key-sample").wait_for()
    settled(page)
    load = time.perf_counter() - start
    target = sample_option(page, SAMPLE)
    start = time.perf_counter()
    target.click()
    page.wait_for_selector(TREE)
    sample = time.perf_counter() - start
    settled(page)
    return context, page, load, sample


def _settled_at(page, runs_log: Path, quiet: float = 0.5) -> float:
    """``perf_counter()`` when the page last went idle, once no further script run has started for ``quiet``
    seconds: an upload can cause two runs (the first redraws the previous image), so the first idle page is not
    yet the new image's page."""
    while True:
        settled(page)
        idle_at = time.perf_counter()
        count = _lines(runs_log)
        time.sleep(quiet)
        if _lines(runs_log) == count and page.evaluate(
                "() => document.querySelector(\"[data-testid='stApp']\")?.dataset.testScriptState") == "notRunning":
            return idle_at


#: Records, in the page, when the reader's action happened (the first ``event`` on the document, seen before any
#: handler of the page) and every change of the app's script state, from ``performance.now()``: the timings then
#: hold only what the reader waits for, not the latency of the driver (Playwright's checks before a click, a
#: file's transfer from the driver to the browser, its polling).
_ARM_TIMELINE = """([event, sel]) => {
  const app = document.querySelector("[data-testid='stApp']");
  const tl = {start: null, tree: null, states: []};
  window.__hicxrTimeline = tl;
  document.addEventListener(event, () => { if (tl.start === null) tl.start = performance.now(); }, {capture: true});
  const before = document.querySelector(sel)?.textContent;
  let state = app.dataset.testScriptState;
  new MutationObserver(() => {
    const now = performance.now();
    if (app.dataset.testScriptState !== state) { state = app.dataset.testScriptState; tl.states.push([state, now]); }
    const text = document.querySelector(sel)?.textContent;
    if (tl.tree === null && text !== undefined && text !== before && text.includes("Pneumonia")) tl.tree = now;
  }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def _in_page_seconds(page) -> float:
    """Seconds, measured in the page, from the reader's action until the new tree showed and the page's last
    script run had finished (whichever came later)."""
    tl = page.evaluate("() => window.__hicxrTimeline")
    if tl["start"] is None or tl["tree"] is None:
        raise RuntimeError(f"the page recorded no action or no new tree: {tl}")
    idle = [t for state, t in tl["states"] if state == "notRunning"]
    return (max([tl["tree"], *idle]) - tl["start"]) / 1000.0


def upload(page, path: Path, runs_log: Path) -> tuple[float, float]:
    """Seconds from the file input's change until the tree shows the new analysis and the page is idle: measured in
    the page, and by the driver's clock from handing it the file (which adds the file's transfer to the browser)."""
    before = _tree_text(page)
    page.evaluate(_ARM_TIMELINE, ["change", TREE])
    start = time.perf_counter()
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(path))
    _wait_tree_changed(page, before)
    wall = _settled_at(page, runs_log) - start
    return _in_page_seconds(page), wall


def choose_variant(page, option: str, runs_log: Path) -> tuple[float, float]:
    """Seconds from the press on ``option`` in the sidebar's Variant box until the tree shows it and the page is
    idle: measured in the page, and by the driver's clock (which adds Playwright's checks before the click)."""
    before = _tree_text(page)
    page.locator(".st-key-variant").click()
    target = page.get_by_role("option", name=option, exact=True)
    target.wait_for()
    page.evaluate(_ARM_TIMELINE, ["pointerdown", TREE])  # the press, not the click that follows its release
    start = time.perf_counter()
    target.click()
    _wait_tree_changed(page, before)
    wall = _settled_at(page, runs_log) - start
    return _in_page_seconds(page), wall


def open_compare(page, expected: int) -> float:
    """Seconds from clicking the Compare tab until the bars and ``expected`` maps are drawn."""
    start = time.perf_counter()
    page.get_by_role("tab", name="Compare variants").click()
    page.locator(".st-key-compare_bars .js-plotly-plot").wait_for()
    page.wait_for_function(
        """n => [...document.querySelectorAll(".st-key-compare_maps [data-testid='stImage'] img")]
                .filter(img => img.complete && img.naturalWidth > 0).length >= n""",
        arg=expected,
    )
    seconds = time.perf_counter() - start
    settled(page)
    return seconds


def click_node(page, label: str, learnt: list[str]) -> float:
    """Seconds from clicking ``label``'s node until the map caption names it."""
    nodes = None
    deadline = time.monotonic() + 30
    while nodes is None:  # the chart may still be drawing its traces
        traces = page.locator(f"{TREE} .scatterlayer .trace")
        for i in range(traces.count()):
            trace = traces.nth(i)
            points = trace.locator("path.point").count()
            if points == len(learnt) and trace.locator(".textpoint").count() == len(learnt):
                nodes = trace.locator("path.point")
        if nodes is None and time.monotonic() > deadline:
            counts = [traces.nth(i).locator("path.point").count() for i in range(traces.count())]
            raise RuntimeError(f"tree nodes not found: {len(learnt)} learnt labels, traces with {counts} points")
        time.sleep(0.2)
    box = still_box(nodes.nth(learnt.index(label)))
    start = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(
        """label => document.querySelector(".st-key-viewer_caption")?.innerText.startsWith(label + " ·")""",
        arg=label,
    )
    seconds = time.perf_counter() - start
    settled(page)
    return seconds


def _runs_since(runs_log: Path, start: int) -> list[dict]:
    """The script runs the server finished after line ``start`` of the timing log."""
    lines = runs_log.read_text().splitlines() if runs_log.exists() else []
    return [json.loads(line) for line in lines[start:]]


def _lines(runs_log: Path) -> int:
    return len(runs_log.read_text().splitlines()) if runs_log.exists() else 0


def timed_runs(page, runs_log: Path, action) -> tuple[float, bool, float]:
    """Do ``action(page)`` and wait for the page to settle; returns the server's script time for the runs it caused
    (summed), whether every one of them was a fragment-only run, and the longest single run."""
    start = _lines(runs_log)
    action(page)
    # The browser may send the change a moment after it shows it (a slider is debounced): wait for the server's
    # run to be logged, then for the page to settle.
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while _lines(runs_log) == start:
        if time.monotonic() > deadline:
            raise RuntimeError("the action caused no script run")
        time.sleep(0.05)
    _settled_at(page, runs_log)  # a run may ask for another
    runs = _runs_since(runs_log, start)
    return sum(r["seconds"] for r in runs), all(r["fragment"] for r in runs), max(r["seconds"] for r in runs)


def _nudge_opacity(page) -> None:
    """A display-only change: the map opacity one step up (or down at the top), by keyboard as a reader would, in
    the viewer's toolbar (the browser redraws the map at once; the setting then goes back to the server)."""
    slider = page.frame_locator(VIEWER).locator("#m-opacity")
    before = float(slider.input_value())
    slider.focus()
    page.keyboard.press("ArrowRight" if before < 1.0 else "ArrowLeft")
    page.frame_locator(VIEWER).locator("#m-opacity-v").filter(has_not_text=f"{before:.2f}").wait_for()


def _pick_label(label: str):
    def action(page) -> None:
        page.locator(".st-key-label_pick label").filter(has_text=label).first.click()
        page.wait_for_function(
            """label => document.querySelector(".st-key-viewer_caption")?.innerText.startsWith(label + " ·")""",
            arg=label)
    return action


def _upload(path: Path, runs_log: Path):
    def action(page) -> None:
        upload(page, path, runs_log)
    return action


def _nih_pngs(data: Path, n: int) -> list[Path]:
    import pandas as pd

    labels = pd.read_csv(data / "nih" / "labels.csv")
    rows = labels[(labels["split"] == "test") & (labels["stored_size"] == "512x512")]
    return [data / "nih" / "images" / name for name in rows["Image Index"].tolist()[:n]]


def browser_figures(url: str, reps: int, data: Path, weights_dir: Path, runs_log: Path,
                    only_reruns: bool = False) -> dict[str, list[float]]:
    """Every browser figure, ``reps`` times each (fresh session per repeat); with ``only_reruns`` just the
    server-side script time of display-only and new-image reruns."""
    from playwright.sync_api import sync_playwright

    from core.registry import scan_weights

    scan = scan_weights(weights_dir)
    distinct = scan.distinct_names()
    default = scan.default_name
    other = next(n for n in distinct if n != default)
    option = {n: " ≡ ".join([n, *scan.same_as(n)]) for n in distinct}
    learnt = [lab for lab in scan.variants[0].labels
              if lab not in next(v for v in scan.variants if v.name == default).card.labels_not_learnt]
    pngs = _nih_pngs(data, 4 * reps)
    dicoms = {"j2k": data / "dicom" / "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm",
              "jpegls": data / "dicom" / "pljd_RG1_JLSN_CR_MONO1_JPEGLS_near_lossless_chest.dcm"}
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)
        print(f"  {key} = {value:.3f}", flush=True)

    def add_pair(key: str, seconds: tuple[float, float]) -> None:
        # The in-page figure is the goal's; the driver's wall clock beside it (``_wall``) for comparison.
        add(key, seconds[0])
        add(key.removesuffix("_s") + "_wall_s", seconds[1])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context, page, _, _ = _new_page(browser, url)  # the very first load warms the server (models, imports)
        context.close()
        for rep in range(reps):
            context, page, load, sample = _new_page(browser, url)
            add("warm_page_load_s", load)
            add("sample_to_tree_s", sample)
            add_pair("upload_png_to_tree_s", upload(page, pngs[rep], runs_log))
            # Server-side script time: display-only changes (map opacity, the selected label) against a rerun
            # that analyses an image new to the session. Each display change reruns only the viewer's fragment.
            for action in (_nudge_opacity, _pick_label("Pleural Effusion"), _nudge_opacity,
                           _pick_label("Cardiomegaly")):
                seconds, fragment_only, _ = timed_runs(page, runs_log, action)
                add("display_rerun_s", seconds)
                add("display_rerun_fragment_only", float(fragment_only))
            seconds, _, longest = timed_runs(page, runs_log, _upload(pngs[3 * reps + rep], runs_log))
            add("analysis_rerun_s", seconds)
            add("analysis_run_only_s", longest)
            if only_reruns:
                context.close()
                continue
            for kind, path in dicoms.items():
                start = _lines(runs_log)
                add_pair(f"upload_dicom_{kind}_to_tree_s", upload(page, path, runs_log))
                time.sleep(0.5)
                add(f"upload_dicom_{kind}_server_s", sum(r["seconds"] for r in _runs_since(runs_log, start)))
            add_pair("upload_png_to_tree_s", upload(page, pngs[reps + rep], runs_log))
            shown = page.locator(".st-key-viewer_caption").inner_text().split(" ·")[0]
            target = next(lab for lab in ("Cardiomegaly", "Pleural Effusion", "Atelectasis") if lab != shown)
            add("node_click_to_map_s", click_node(page, target, learnt))
            choose_variant(page, option[other], runs_log)  # analyses it once
            add_pair("variant_switch_cached_s", choose_variant(page, option[default], runs_log))
            add_pair("variant_switch_cached_s", choose_variant(page, option[other], runs_log))
            choose_variant(page, option[default], runs_log)
            add("compare_tab_s", open_compare(page, min(4, len(distinct))))
            context.close()
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--weights-dir", default=str(REPO_ROOT / "weights"))
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--only-reruns", action="store_true",
                        help="only the server-side display-only / new-image rerun figures (quicker)")
    args = parser.parse_args(argv)
    weights_dir = Path(args.weights_dir).resolve()
    medians: dict[str, float] = {}

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: run `make system-deps`")
    tmp = Path(tempfile.mkdtemp(prefix="hicxr_bench_"))
    runs_log = tmp / "runs.jsonl"
    try:
        with dashboard_server.running(tmp / "streamlit.log", server_args=["--server.address", "127.0.0.1"],
                                      app_args=["--weights-dir", str(weights_dir)],
                                      streamlit=timed_streamlit(runs_log)) as server:
            figures = browser_figures(server.url, args.reps, Path(args.data), weights_dir, runs_log,
                                      args.only_reruns)
    except dashboard_server.DashboardStartError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for key, values in figures.items():
        medians[key] = statistics.median(values)
        print(f"{key}={medians[key]:.3f} (median of {len(values)}; min {min(values):.3f}, max {max(values):.3f})")
    medians["display_over_analysis"] = medians["display_rerun_s"] / medians["analysis_rerun_s"]
    # The same against the analysing run alone: an upload that replaces a file also has a short run without any
    # file, which waits for the new one (dashboard/ui/sidebar.py), counted above.
    medians["display_over_analysing_run"] = medians["display_rerun_s"] / medians["analysis_run_only_s"]

    load = os.getloadavg()[0]
    print(f"load_average_1min={load:.2f} cpus={os.cpu_count()}")
    for key, value in medians.items():
        goal = GOALS.get(key)
        verdict = "" if goal is None else f" goal <= {goal:g}: {'met' if value <= goal else 'NOT met'}"
        print(f"{key}={value:.3f}{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
