"""Load: 8 concurrent dashboard sessions analysing different images each get their own correct result.

Each session is what the app holds per browser tab: its own :class:`~dashboard.pipeline.AnalysisCache` (in
``st.session_state``), on the one :class:`~core.inference.Predictor` every session shares (``st.cache_resource``,
variants loaded lazily on first use, as the app does). Eight threads start together on a barrier, each with a
different input (NIH PNGs of 64, 256 and 512 px, two DICOMs, a file that must be refused), ask for two variants,
then ask again. Every result must equal a sequential analysis of the same bytes by an independent predictor.

The browser test does the same end to end: eight Chromium tabs on one real ``streamlit run`` server (the
``server`` fixture of ``test_browser.py``, shipped weights) upload eight different images at the same moment, and
each tab's taxonomy tree must show the numbers of its own image.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_weights_dir
from test_browser import CHROMIUM, CHROMIUM_ARGS, RENDER_TIMEOUT_MS, TREE, server  # noqa: F401

from bench import hostile
from core.imaging import read_image
from core.inference import Predictor
from dashboard.pipeline import AnalysisCache, Outcome, analyse_bytes, sha256

SESSIONS = 8
VARIANTS = ["hbce_soft", "bce"]
MC = 10
INPUTS = [
    "nih/images/00000001_000.png",  # 256 px
    "nih/images/00000001_001.png",  # 512 px
    "nih/images/00000003_001.png",  # 64 px thumbnail
    "nih/images/00000038_006.png",
    "nih/images/00000047_005.png",
    "dicom/fodicom_CR-MONO1-10-chest.dcm",
    "dicom/highdicom_dx_image_DX_MONO1_canine_thorax.dcm",
    None,  # a hostile file: the TIFF whose second directory points past the end
]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("load"))


def _inputs(shared_data: Path) -> list[bytes]:
    return [(shared_data / name).read_bytes() if name else hostile.tiff_bad_second_ifd() for name in INPUTS]


def _session(predictor: Predictor, data: bytes, barrier: threading.Barrier) -> tuple[list[Outcome], int]:
    cache = AnalysisCache()  # one browser session's cache
    barrier.wait()
    outcomes = [cache.analyses(predictor, data, sha256(data), VARIANTS, MC) for _ in range(2)]
    return outcomes, cache.network_runs


@pytest.mark.slow  # eight full analyses at once
@pytest.mark.timeout(600)
def test_eight_sessions_in_parallel_each_get_their_own_correct_result(weights_dir: Path, shared_data: Path) -> None:
    inputs = _inputs(shared_data)
    assert len(inputs) == SESSIONS and len({sha256(d) for d in inputs}) == SESSIONS

    reference_predictor = Predictor(weights_dir, "all")
    expected = [analyse_bytes(reference_predictor, data, VARIANTS, MC) for data in inputs]
    assert [e.ok for e in expected] == [True] * 7 + [False]

    shared = Predictor(weights_dir, variants=[])  # as the app's get_predictor: empty, variants loaded on first use
    barrier = threading.Barrier(SESSIONS)
    with ThreadPoolExecutor(SESSIONS) as pool:
        futures = [pool.submit(_session, shared, data, barrier) for data in inputs]
        results = [f.result(timeout=540) for f in futures]

    for data, reference, (outcomes, network_runs) in zip(inputs, expected, results, strict=True):
        for outcome in outcomes:
            assert outcome.ok == reference.ok
            if not reference.ok:
                assert outcome.error == reference.error and "TIFF file is damaged" in outcome.error
                continue
            np.testing.assert_array_equal(outcome.image.pixels, read_image(data, keep_raw=True).pixels)
            for name in VARIANTS:
                got, want = outcome.analyses[name], reference.analyses[name]
                assert got.model_id == name and got.image_sha256 == sha256(data)
                np.testing.assert_allclose(got.mc_mean, want.mc_mean, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(got.mc_std, want.mc_std, rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(got.cams, want.cams, atol=1e-5)
                assert got.image.shape == outcome.image.pixels.shape
        assert network_runs == (1 if reference.ok else 0)  # the second request came from the session's cache
    assert sorted(shared.variant_names) == sorted(VARIANTS)


# ----------------------------------------------------------------------------- real server, real browsers


def _tree_means(texts: list[str], labels: list[str]) -> dict[str, str]:
    """Label -> the 2-decimal MC mean printed under its node (node text is the wrapped label, then the mean)."""
    names = sorted(((re.sub(r"\s", "", lab), lab) for lab in labels), key=lambda x: -len(x[0]))
    out = {}
    for text in texts:
        squashed = re.sub(r"\s", "", text)
        key, label = next((k, lab) for k, lab in names if squashed.startswith(k))
        out[label] = squashed[len(key):].replace("▲", "")  # ▲ marks a call above the operating point
    return out


async def _browser_session(browser, url: str, path: Path, labels: list[str]) -> dict[str, str]:
    context = await browser.new_context(viewport={"width": 1600, "height": 2000})
    try:
        page = await context.new_page()
        page.set_default_timeout(RENDER_TIMEOUT_MS)
        await page.goto(url)
        # Nothing is analysed before an upload: the first screen has no tree.
        await page.locator("[data-testid='stFileUploader']").wait_for()
        before = ""
        await page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(path))
        await page.wait_for_function(
            "([sel, before]) => { const el = document.querySelector(sel);"
            " return el !== null && el.textContent.includes('Pneumonia') && el.textContent !== before; }",
            arg=[TREE, before],
        )
        traces = page.locator(f"{TREE} .scatterlayer .trace")
        for i in range(await traces.count()):  # the learnt labels' trace: one caption per learnt label
            texts = await traces.nth(i).locator(".textpoint").all_text_contents()
            if len(texts) == len(labels):
                return _tree_means(texts, labels)
        raise AssertionError("no tree trace with one caption per learnt label")
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eight_browser_sessions_in_parallel(server: str, shared_data: Path, tmp_path: Path) -> None:  # noqa: F811
    """Eight tabs on one real ``streamlit run`` server upload different images at once; each shows its own tree."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    from playwright.async_api import async_playwright

    paths = []
    for i, name in enumerate(n for n in INPUTS if n):
        paths.append(tmp_path / f"{i}_{Path(name).name}")
        paths[-1].write_bytes((shared_data / name).read_bytes())
    paths.append(tmp_path / "7_plain.png")
    paths[-1].write_bytes(hostile.valid_files()["plain.png"])
    predictor = Predictor(REPO_ROOT / "weights")  # the shipped default variant, as the server shows it
    not_learnt = set(predictor.get().not_learnt)  # drawn in their own trace, without a number
    labels = [lab for lab in predictor.taxonomy.labels if lab not in not_learnt]
    all_labels = list(predictor.taxonomy.labels)
    expected = [{lab: f"{m:.2f}" for lab, m in zip(all_labels, predictor.analyse(p, mc_samples=MC).mc_mean,
                                                     strict=True) if lab not in not_learnt} for p in paths]
    assert len({tuple(e.values()) for e in expected}) == SESSIONS  # the eight trees differ, so a mix-up shows

    async def drive() -> list[dict[str, str]]:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                return await asyncio.gather(*(_browser_session(browser, server, path, labels) for path in paths))
            finally:
                await browser.close()

    shown = asyncio.run(drive())
    for path, want, got in zip(paths, expected, shown, strict=True):
        assert got == want, path.name
