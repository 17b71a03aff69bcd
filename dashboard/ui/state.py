"""What every part of the page shares: the weights folder, cached resources, session keys and the run context."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.analysis import Analysis
from core.display import DisplayImage, display_image
from core.explain import warm as warm_contours
from core.imaging import XrayImage
from core.imaging.dicom_codecs import warm as warm_decoders
from core.inference import Predictor
from core.registry import RegistryScan, Variant, resolve_weights_dir, scan_weights
from core.taxonomy import Taxonomy, load_taxonomy
from dashboard.components.model_card import auroc_text
from dashboard.pipeline import AnalysisCache

ENV_WEIGHTS_DIR = "HICXR_WEIGHTS_DIR"
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
# Display name -> file in dashboard/samples (see its ATTRIBUTION.md).
SAMPLES: dict[str, str] = {
    "Cardiomegaly · NIH PNG": "nih_cardiomegaly_00003015_000.png",
    "Effusion · NIH PNG": "nih_effusion_00012708_000.png",
    "No finding · NIH PNG": "nih_no_finding_00004077_000.png",
    "Chest PA · CR DICOM": "siim_cr_chest_pa.dcm",
}

# Session-state keys shared between parts of the page.
CACHE_KEY = "analysis_cache"
SELECTED_LABEL = "selected_label"
VIEWER_KEY = "viewer"
#: The map controls the reader last set in the viewer (:class:`dashboard.components.viewer.MapSettings`).
MAP_SETTINGS = "map_settings"
MEMO_KEY = "display_memo"
#: Display products memoised per session (display copies ~2 MB each, map layers and figures far less).
MEMO_LIMITS = {"display": 2, "layer": 16, "tree": 8, "table": 8}


def weights_dir_from(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The weights folder: ``--weights-dir`` after ``--`` on the command line, else ``$HICXR_WEIGHTS_DIR``,
    else ``weights/`` in the repository. Relative paths are taken relative to the repository root."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--weights-dir", default=None)
    args, _ = parser.parse_known_args(list(argv))
    return resolve_weights_dir(args.weights_dir or environ.get(ENV_WEIGHTS_DIR) or "weights")


def current_weights_dir() -> Path:
    """:func:`weights_dir_from` applied to this process's arguments and environment (read at run time)."""
    import sys

    return weights_dir_from(sys.argv[1:], os.environ)


@st.cache_resource(show_spinner=False)
def get_predictor(weights_dir: str) -> Predictor:
    """One predictor per weights folder and process; variants are loaded into it on first use."""
    return Predictor(weights_dir, variants=[])


@st.cache_resource(show_spinner=False)
def warm_variants(weights_dir: str, names: tuple[str, ...]) -> threading.Thread:
    """Load every distinct variant into the shared predictor in the background, once per process, so the first
    variant switch and the Compare tab do not wait for weights files to be read (loading is thread-safe); then
    the DICOM decoders and scikit-image's contours, so the first compressed film and the first relative map do not
    wait for their imports."""

    def load_all() -> None:
        predictor = get_predictor(weights_dir)
        for name in names:
            try:
                predictor.load(name)
            except Exception:  # noqa: BLE001 - a broken variant is reported when it is chosen, not here
                logging.getLogger("hicxr.dashboard").warning("could not preload a variant", exc_info=True)
        for what, warm in (("the DICOM decoders", warm_decoders), ("scikit-image's contours", warm_contours)):
            try:
                warm()
            except Exception:  # noqa: BLE001 - a library that cannot load is reported when a view needs it
                logging.getLogger("hicxr.dashboard").warning("could not preload %s", what, exc_info=True)
        settle_heap()

    thread = threading.Thread(target=load_all, name="hicxr-warm-variants", daemon=True)
    thread.start()
    return thread


def settle_heap() -> None:
    """Move the process's long-lived objects (libraries, models, the first analysis's imports) out of the way of
    Python's cyclic garbage collector, once they are all loaded.

    The server holds millions of such objects (torch, Plotly's validators, Streamlit); every full collection walked
    them all, a 0.4-0.7 s pause every second or two while a reader worked (measured with ``gc.callbacks`` while
    uploading films), which landed in whichever page run was going. Frozen objects are still freed when their last
    reference goes; they are only no longer searched for reference cycles.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False)
def get_scan(weights_dir: str) -> RegistryScan:
    """The usable variants and skipped files of a weights folder, scanned once per process (the sidebar's
    "Rescan" button clears it): a rerun of the page reads no file."""
    return scan_weights(weights_dir)


@st.cache_resource(show_spinner=False)
def get_taxonomy() -> Taxonomy:
    """The packaged taxonomy (the one every shipped model follows)."""
    return load_taxonomy()


def session_cache() -> AnalysisCache:
    """This session's analysis cache (created on first use)."""
    if CACHE_KEY not in st.session_state:
        st.session_state[CACHE_KEY] = AnalysisCache()
    return st.session_state[CACHE_KEY]


@dataclass
class Context:
    """Everything a tab needs to render the current image.

    Attributes:
        weights_dir: The weights folder in use.
        scan: Its usable variants and skipped files.
        predictor: The shared predictor.
        cache: This session's analysis cache.
        data: The file bytes (in memory only).
        digest: SHA-256 of ``data``.
        variant: The variant chosen in the sidebar.
        mc_samples: MC dropout samples chosen in the sidebar.
        analysis: That variant's analysis of the image.
        image: The decoded image (raw values kept for window/level).
        taxonomy: The label DAG.
    """

    weights_dir: Path
    scan: RegistryScan
    predictor: Predictor
    cache: AnalysisCache
    data: bytes
    digest: str
    variant: str
    mc_samples: int
    analysis: Analysis
    image: XrayImage
    taxonomy: Taxonomy

    def get_variant(self, name: str) -> Variant:
        """The registry entry of a usable variant."""
        return next(v for v in self.scan.variants if v.name == name)

    def auroc_notes(self, name: str | None = None) -> dict[str, str]:
        """Per-label test AUROC from a variant's model card (the sidebar's variant by default), as every view quotes
        it: with the number of test positives it rests on."""
        variant = self.get_variant(name or self.variant)
        auroc, positives = variant.per_label_auroc("test"), variant.per_label_positives("test")
        return {label: auroc_text(auroc[label], positives[label]) for label in variant.labels}

    @property
    def view_key(self) -> str:
        """Session key of the window/invert the reader chose for this image in the viewer."""
        return f"view_{self.digest[:12]}"

    def memo(self, kind: str, key: Any, build: Callable[[], Any]) -> Any:
        """A display product (map layer, figure, display copy) built once per ``key`` and session, so a display-only
        rerun reuses it; at most :data:`MEMO_LIMITS` of each kind are kept."""
        store = st.session_state.setdefault(MEMO_KEY, {}).setdefault(kind, OrderedDict())
        if key in store:
            store.move_to_end(key)
            return store[key]
        value = store[key] = build()
        while len(store) > MEMO_LIMITS.get(kind, 8):
            store.popitem(last=False)
        return value

    def display_copy(self) -> DisplayImage:
        """The bounded 16-bit display copy of the image the viewer windows (made once per image and session)."""
        return self.memo("display", self.digest, lambda: display_image(self.image))

    def display_copy_pixels(self) -> np.ndarray:
        """The display copy with the reader's window and invert (the file's own window until they change it)."""
        display = self.display_copy()
        view = st.session_state.get(self.view_key)
        center, width = (view.center, view.width) if view is not None else display.presets["file"]
        pixels = display.window(center, width)
        return 1.0 - pixels if view is not None and view.invert else pixels

    def display_image(self) -> np.ndarray:
        """The image as the reader displays it in the viewer (window/level and invert), for the PDF report."""
        from dashboard.components.image_view import display_pixels

        view = st.session_state.get(self.view_key)
        if view is None:
            return self.image.pixels
        return display_pixels(self.image, view.center, view.width, view.invert)

    def selected_label(self) -> str:
        """The label whose map is shown (the top learnt finding until the user picks one)."""
        label = st.session_state.get(SELECTED_LABEL)
        if label not in self.analysis.labels:
            label = (self.analysis.top_findings(1) or [self.analysis.labels[0]])[0]
            st.session_state[SELECTED_LABEL] = label
        return label
