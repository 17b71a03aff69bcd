"""The sidebar: the image to analyse (upload or bundled sample), the model variant and the MC sample count."""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from core.contract import DEFAULT_MC_SAMPLES
from core.registry import RegistryScan
from dashboard.pipeline import sha256
from dashboard.ui.state import SAMPLES, SAMPLES_DIR, get_scan

# Session key of the hash of the uploaded file, computed once per upload (not on every rerun).
UPLOAD_DIGEST = "upload_digest"

UPLOAD_HELP = (
    "PNG, JPEG or DICOM (with or without the .dcm extension), up to 64 MB. The file stays in memory for this "
    "session only; it is never written to disk."
)


@dataclass(frozen=True)
class Choice:
    """The sidebar's answers for this run.

    Attributes:
        data: File bytes to analyse, or ``None`` if nothing is chosen.
        source: ``"upload"`` or the sample's display name (never the uploaded file's name).
        sample: The bundled sample's display name when the image is one (labelled as a sample everywhere), else
            ``None``.
        variant: Chosen model variant.
        mc_samples: Monte-Carlo dropout samples.
        digest: SHA-256 of ``data`` (hashed once per file, not per rerun); ``""`` without data.
    """

    data: bytes | None
    source: str
    variant: str
    mc_samples: int
    digest: str = ""
    sample: str | None = None


@st.cache_resource(show_spinner=False, max_entries=16)
def _sample(file_name: str) -> tuple[bytes, str]:
    """A bundled sample's bytes and hash, read once per process."""
    data = (SAMPLES_DIR / file_name).read_bytes()
    return data, sha256(data)


def _upload_digest(upload) -> str:
    """The upload's hash, computed once per uploaded file (Streamlit gives each upload its own ``file_id``)."""
    known = st.session_state.get(UPLOAD_DIGEST)
    if known is None or known[0] != upload.file_id:
        known = (upload.file_id, sha256(upload.getvalue()))
        st.session_state[UPLOAD_DIGEST] = known
    return known[1]


#: How long a run without the file waits for the run with the reader's next file (see :func:`_await_next_file`).
NEXT_FILE_WAIT_S = 0.8


def _await_next_file() -> None:
    """Called when the uploaded file has just gone: wait a moment for the run that brings the next one.

    A file dropped on the uploader while another is loaded comes in two runs: Streamlit's uploader first drops the
    old file (one run, without any file), then sends the new one (another run). Drawing the first screen in between
    would tear the whole page down in the browser (viewer, tree, table), only to build it again a moment later,
    which costs more than the analysis. Waiting here lets the run with the new file interrupt this one (a session-
    state read is a point where Streamlit does that), so the page goes from one analysis to the next. A reader who
    only removed the file sees the first screen after this wait.
    """
    deadline = time.monotonic() + NEXT_FILE_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.02)
        st.session_state.get(UPLOAD_DIGEST)  # where a rerun with the new file ends this run
    st.session_state[UPLOAD_DIGEST] = None


def _forget_sample() -> None:
    # An upload replaces the sample for good: removing the file goes back to the first screen, not to a sample
    # picked long before (and not to a sample's whole page drawn between an old file and a new one).
    st.session_state["sample"] = None


def render_sidebar(scan: RegistryScan, uploads: bool = True) -> Choice:
    """Draw the sidebar and return what the user chose (``uploads=False``: the image comes from the PACS worklist,
    so neither uploader nor samples are drawn and ``data`` is ``None``)."""
    upload = sample = None
    with st.sidebar:
        if uploads:
            st.header("Image")
            # No type filter: DICOM files often have no extension, and core.imaging names the problem with any
            # other file better than the uploader's generic refusal would.
            upload = st.file_uploader("Upload a chest radiograph", type=None, key="upload", help=UPLOAD_HELP,
                                      on_change=_forget_sample)
            # No sample is preselected: nothing is analysed until the user uploads an image or picks a sample.
            sample = st.selectbox(
                "…or try a bundled sample", list(SAMPLES), index=None, key="sample", disabled=upload is not None,
                placeholder="Choose a sample image",
                help="Real, public, de-identified images; see dashboard/samples/ATTRIBUTION.md.",
            )
        st.header("Model")
        names = scan.distinct_names()
        default = scan.default_name
        descriptions = {v.name: v.description for v in scan.variants}
        variant = st.selectbox(
            "Variant", names, index=names.index(default) if default in names else 0, key="variant",
            format_func=lambda n: " ≡ ".join([n, *scan.same_as(n)]),
            help="Each variant is a model trained with a different loss; names joined by ≡ are one model (identical "
                 "weights). The Model card tab describes each.",
        )
        st.caption(descriptions.get(variant, ""))
        mc = st.slider(
            "Monte-Carlo dropout samples", min_value=1, max_value=50, value=DEFAULT_MC_SAMPLES, key="mc_samples",
            help="More samples give a steadier uncertainty estimate (the halo and ± values); 1 turns it off.",
        )
        if scan.problems:
            with st.expander(f"{len(scan.problems)} weights file(s) skipped"):
                for problem in scan.problems:
                    st.caption(str(problem))
        # The folder is scanned once per process (no file I/O on a rerun); new or changed weights need a rescan.
        if st.button("Rescan the weights folder", key="rescan_weights", type="tertiary",
                     help="Read the weights folder again (after adding or replacing a variant)."):
            get_scan.clear()
            st.rerun()
    if not uploads:
        return Choice(data=None, source="pacs", variant=variant, mc_samples=int(mc))
    if upload is None and st.session_state.get(UPLOAD_DIGEST) is not None:
        _await_next_file()
    if upload is not None:
        return Choice(data=upload.getvalue(), source="upload", variant=variant, mc_samples=int(mc),
                      digest=_upload_digest(upload))
    if sample is None:
        return Choice(data=None, source="", variant=variant, mc_samples=int(mc))
    data, digest = _sample(SAMPLES[sample])
    return Choice(data=data, source=sample, variant=variant, mc_samples=int(mc), digest=digest, sample=sample)
