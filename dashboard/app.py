"""HiCXR clinician dashboard: ``streamlit run dashboard/app.py [-- --weights-dir DIR]``.

The weights folder comes from ``--weights-dir`` (after ``--``), else ``$HICXR_WEIGHTS_DIR``, else ``weights/`` in
the repository. The page renders :class:`core.analysis.Analysis` records produced by :mod:`core.inference`; it has
no ML logic of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))
if __name__ != "__main__":  # imported by `streamlit run` to serve the st.App below: refuse an unsafe address first
    from dashboard.serving import refuse_unsafe_start

    refuse_unsafe_start()

import streamlit as st  # noqa: E402

from core.registry import RegistryScan  # noqa: E402
from dashboard import access, serving  # noqa: E402
from dashboard.components.model_card import DISCLAIMER  # noqa: E402
from dashboard.pipeline import GENERIC_ERROR, sha256  # noqa: E402
from dashboard.ui import worklist  # noqa: E402
from dashboard.ui.analysis_tab import render_analysis  # noqa: E402
from dashboard.ui.card_tab import render_card  # noqa: E402
from dashboard.ui.compare_tab import render_compare  # noqa: E402
from dashboard.ui.export_tab import render_export  # noqa: E402
from dashboard.ui.sidebar import render_sidebar  # noqa: E402
from dashboard.ui.state import (  # noqa: E402
    Context,
    current_weights_dir,
    get_predictor,
    get_scan,
    get_taxonomy,
    session_cache,
    warm_variants,
)

logger = logging.getLogger("hicxr.dashboard")

TABS = ("Analysis", "Compare variants", "Model card", "Export")
FOOTER = (
    "HiCXR is a research prototype. " + DISCLAIMER + " Sample images: NIH ChestX-ray14, courtesy of the NIH "
    "Clinical Center (https://nihcc.app.box.com/v/ChestXray-NIHCC; Wang X. et al., ChestX-ray8, CVPR 2017); "
    "DICOM sample: torchxrayvision test data (Apache-2.0). See dashboard/samples/ATTRIBUTION.md."
)


def _footer(scan: RegistryScan | None = None) -> None:
    """Disclaimer, the samples' attribution, and each model's training-data attribution from its card."""
    st.divider()
    st.caption(FOOTER)
    attributions = dict.fromkeys(v.card.attribution for v in (scan.variants if scan else []) if v.card.attribution)
    for text in attributions:
        st.caption(f"Models' training data: {text}")


def _pacs_digest(data: bytes) -> str:
    """The hash of the study opened from the PACS, computed once per study and session (not on every rerun)."""
    known = st.session_state.get("pacs_digest")
    if known is None or known[0] is not data:
        known = (data, sha256(data))
        st.session_state["pacs_digest"] = known
    return known[1]


def main() -> None:
    """Render one run of the page."""
    st.set_page_config(page_title="HiCXR", page_icon=":material/radiology:", layout="wide")
    access.gate()  # login, access list and idle timeout when [auth] is configured; else "local mode: no login"
    # Less empty space above the title, so the viewer starts higher on the screen.
    st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem}</style>")
    st.title("HiCXR · hierarchical chest X-ray findings")
    st.warning(f"**{DISCLAIMER}** Every output is a model estimate with its uncertainty, to be read by a clinician.",
               icon=":material/info:")

    weights_dir = current_weights_dir()
    scan = get_scan(str(weights_dir))
    if not scan.variants:
        st.error(
            f"No trained model is available in `{weights_dir}`, so no image can be analysed. Put a "
            "`<variant>.safetensors` file with its `<variant>.json` model card there (see the README), or start "
            "the dashboard with `streamlit run dashboard/app.py -- --weights-dir DIR`."
        )
        for problem in scan.problems:
            st.caption(f"Skipped: {problem}")
        _footer(scan)
        return

    source = worklist.render_source_picker()  # upload/sample, or the PACS worklist when a PACS is configured
    choice = render_sidebar(scan, uploads=source != worklist.SOURCE_PACS)
    opened = None
    if source == worklist.SOURCE_PACS:
        opened = worklist.render_worklist(get_predictor(str(weights_dir)), session_cache(), choice.variant,
                                          choice.mc_samples, scan)
        if opened is None:
            _footer(scan)
            return
        choice = replace(choice, data=opened.data, source="pacs", digest=_pacs_digest(opened.data))
    if choice.data is None:
        st.info("Upload a chest radiograph in the sidebar, or pick one of the bundled samples. Nothing is analysed "
                "until you do.", icon=":material/upload_file:")
        _footer(scan)
        return

    digest = choice.digest
    cache = session_cache()
    predictor = get_predictor(str(weights_dir))
    with st.spinner("Analysing the image…"):
        outcome = cache.analyses(predictor, choice.data, digest, [choice.variant], choice.mc_samples)
    if not access.record_analysis(scan, digest, choice.variant, choice.mc_samples, outcome.kind):
        _footer(scan)
        return  # fail closed: an analysis that cannot be audited is not shown
    if not outcome.ok or outcome.image is None:
        st.error(outcome.error or GENERIC_ERROR, icon=":material/error:")
        _footer(scan)
        return

    warm_variants(str(weights_dir), tuple(scan.distinct_names()))  # after the first analysis, once per process
    analysis = outcome.analyses[choice.variant]
    if choice.sample is not None:  # a copy: the cached record stays as the engine made it
        analysis = dataclasses.replace(analysis, sample=choice.sample)
    ctx = Context(
        weights_dir=weights_dir, scan=scan, predictor=predictor, cache=cache, data=choice.data, digest=digest,
        variant=choice.variant, mc_samples=choice.mc_samples, analysis=analysis,
        image=outcome.image, taxonomy=get_taxonomy(),
    )
    if analysis.sample:
        st.info(f"**Sample image** ({analysis.sample}): a bundled public radiograph, not a patient's film. Results "
                "and exports are labelled as a sample.", icon=":material/science:")
    if opened is not None:
        worklist.render_send(opened, ctx)
    renderers = (render_analysis, render_compare, render_card, render_export)
    # Lazy tabs: only the open tab runs, so the comparison's extra analyses happen only when it is opened.
    for tab, render in zip(st.tabs(TABS, key="tab", on_change="rerun"), renderers, strict=True):
        if tab.open is False:
            continue
        with tab:
            try:
                render(ctx)
            except Exception:  # noqa: BLE001 - one broken panel must not take the page down with a traceback
                logger.exception("error while rendering the %s tab", render.__name__)
                st.error(GENERIC_ERROR, icon=":material/error:")
    _footer(scan)


if __name__ == "__main__":
    main()
else:  # `streamlit run dashboard/app.py` serves this app: security headers, no server name, no external lookup
    serving.disable_external_ip_lookup()
    serving.drop_server_header()
    app = st.App(__file__, **serving.app_options())
