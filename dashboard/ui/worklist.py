"""The PACS worklist: a second source of images beside upload, and "Send to PACS".

Configured from the ``[pacs]`` table of Streamlit's secrets (``.streamlit/secrets.toml``) or the environment
(``HICXR_PACS_URL``, ``HICXR_PACS_USER`` / ``HICXR_PACS_PASSWORD`` or ``HICXR_PACS_TOKEN``; see
:mod:`core.pacs.credentials`), plus two dashboard settings in the same table: ``worklist_days`` (how far back the
list goes; 0 = every date; default 30) and ``show_patient_identity`` (patient names and IDs are hidden unless the
site turns this on). Without a URL the PACS source is not offered.

The list shows recent CR/DX studies (date, accession, modalities, view, description, what HiCXR did: analysed in
this session, results sent, HiCXR results already in the PACS) sorted by the model's triage call once analysed:
Abnormal at or above its operating point first, then by its probability; studies not analysed yet follow by date.
Opening a study retrieves its frontal images in memory (the same readers and limits as an upload) and the page
shows them in the usual tabs; "Send to PACS" stores the TID 1500 SR and the selected label's map.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from io import BytesIO

import pydicom
import streamlit as st

from core.pacs.client import InstanceRef, PacsClient, PacsError, StudySummary
from core.pacs.credentials import PacsSettings, PacsSettingsError, load_settings
from core.pacs.results import ModelIdentity, build_sc, build_sr
from core.pacs.studies import StudyPlan, plan_study
from dashboard import access
from dashboard.audit import Action, AuditError, Subject
from dashboard.pipeline import sha256

logger = logging.getLogger("hicxr.dashboard")

SOURCE_UPLOAD = "Upload or sample"
SOURCE_PACS = "PACS worklist"
STATE = "hicxr_worklist"
TRIAGE_LABEL = "Abnormal"
DEFAULT_DAYS = 30


@dataclass
class OpenStudy:
    """The study open in the page: what the tabs render and what "Send to PACS" needs."""

    study: StudySummary
    plan: StudyPlan
    ref: InstanceRef
    data: bytes


def _state() -> dict:
    """This session's worklist memory: triage results, what was sent, the open study (no pixels of other studies)."""
    return st.session_state.setdefault(STATE, {"triage": {}, "sent": {}, "open": None, "images": {}})


def pacs_settings() -> PacsSettings | str | None:
    """The PACS settings, a message when they are unusable, or ``None`` when no PACS is configured at all."""
    import os

    table = access.secrets_section("pacs")
    if not table.get("url") and not os.environ.get("HICXR_PACS_URL"):
        return None
    try:  # read each run (a file and a few variables): a changed secret applies without a restart
        return load_settings(overrides={k: v for k, v in table.items() if isinstance(v, (str, int, float, bool))})
    except PacsSettingsError as exc:
        return str(exc)


def _days() -> int:
    import os

    value = access.secrets_section("pacs").get("worklist_days", os.environ.get("HICXR_PACS_WORKLIST_DAYS", ""))
    try:
        return max(0, int(value)) if str(value).strip() else DEFAULT_DAYS
    except ValueError:
        return DEFAULT_DAYS


@st.cache_resource(show_spinner=False)
def _client(settings: PacsSettings) -> PacsClient:
    return PacsClient(settings)


def render_source_picker() -> str:
    """The sidebar's choice of source; the PACS worklist only when a PACS is configured."""
    settings = pacs_settings()
    if settings is None:
        return SOURCE_UPLOAD
    return st.sidebar.radio("Source", [SOURCE_UPLOAD, SOURCE_PACS], key="source", horizontal=True,
                            help="Images from your PACS (DICOMweb) or a file you upload.")


# ------------------------------------------------------------------------------------------------- the list


def _studies(client: PacsClient, settings: PacsSettings, days: int) -> list[StudySummary]:
    since = None if days == 0 else (dt.date.today() - dt.timedelta(days=days)).strftime("%Y%m%d")
    return client.search_studies(since=since, with_patient=settings.show_patient_identity, limit=200)


def _plan(client: PacsClient, study_uid: str) -> StudyPlan:
    plans = _state().setdefault("plans", {})
    if study_uid not in plans:
        plans[study_uid] = plan_study(study_uid, client.instances(study_uid))
    return plans[study_uid]


def _sort_key(study: StudySummary, position: int, triage: dict) -> tuple:
    """Triaged studies first (called Abnormal, then the rest, each by probability), then the others in the PACS
    search's order (newest first, undated last)."""
    found = triage.get(study.study_uid)
    if found is None:
        return (2, 0.0, position)
    rank = {"above": 0, "below": 1}.get(found["call"], 1)  # no call: ranked among the below, by probability
    return (rank, -found["probability"], position)


def _rows(studies: list[StudySummary], client: PacsClient, settings: PacsSettings) -> list[dict]:
    state = _state()
    rows = []
    for study in studies:
        plan = _plan(client, study.study_uid)
        triage = state["triage"].get(study.study_uid)
        views = sorted({r.view_position or "none given" for r in plan.analyse})
        row = {
            "date": f"{study.date[:4]}-{study.date[4:6]}-{study.date[6:]}" if len(study.date) == 8 else study.date,
            "accession": study.accession, "modality": ", ".join(study.modalities),
            "view": ", ".join(views) or "-", "description": study.description,
        }
        if settings.show_patient_identity:
            row = {"patient": study.patient_name, "patient ID": study.patient_id, **row}
        if triage is not None and triage["call"] in ("above", "below") and triage["operating_point"] is not None:
            row["triage"] = (f"{TRIAGE_LABEL} {triage['probability']:.2f} "
                             f"{'≥' if triage['call'] == 'above' else '<'} {triage['operating_point']:.2f}")
        elif triage is not None:
            row["triage"] = (f"{TRIAGE_LABEL} {triage['probability']:.2f}, no call"
                             + (f": {triage['reason']}" if triage["reason"] else ""))
        else:
            row["triage"] = "not analysed" if plan.analyse else f"not analysed: {plan.reason}"
        held = sorted({r.series_description for r in plan.results})
        row["HiCXR"] = "; ".join(filter(None, [state["sent"].get(study.study_uid, ""),
                                               f"in PACS: {len(plan.results)} result(s)" if held else ""]))
        rows.append(row)
    return rows


def _triage(ctx_predictor, cache, client: PacsClient, studies: list[StudySummary], variant: str,
            mc_samples: int, scan=None) -> None:
    """Analyse the first frontal image of every listed study not triaged yet (same cache as opening one); each
    analysis is audited ("image analysed") before its result is used, and an unwritable log stops the triage."""
    state = _state()
    todo = [s for s in studies if s.study_uid not in state["triage"] and _plan(client, s.study_uid).analyse]
    bar = st.progress(0.0, text=f"Analysing {len(todo)} studies…")
    for k, study in enumerate(todo, start=1):
        ref = _plan(client, study.study_uid).analyse[0]
        try:
            data = client.retrieve(ref)
        except PacsError as exc:
            st.error(str(exc), icon=":material/cloud_off:")
            break
        digest = sha256(data)
        outcome = cache.analyses(ctx_predictor, data, digest, [variant], mc_samples)
        if not access.record_analysis(scan, digest, variant, mc_samples, None if outcome.ok else outcome.kind):
            break
        if outcome.ok:
            _remember_triage(study.study_uid, outcome.analyses[variant])
        bar.progress(k / len(todo), text=f"Analysed {k} of {len(todo)} studies")
    bar.empty()


def _remember_triage(study_uid: str, analysis) -> None:
    """The study's triage: the record's call on Abnormal (never re-derived here) and its probability."""
    if TRIAGE_LABEL not in analysis.labels or not analysis.learnt(TRIAGE_LABEL):
        return
    reason = getattr(analysis, "call_reason", None)
    _state()["triage"][study_uid] = {
        "call": analysis.call(TRIAGE_LABEL), "probability": float(analysis.mc_mean[analysis.index(TRIAGE_LABEL)]),
        "operating_point": analysis.operating_points.get(TRIAGE_LABEL), "variant": analysis.model_id,
        "reason": str(reason(TRIAGE_LABEL)) if callable(reason) else ""}


def render_worklist(predictor, cache, variant: str, mc_samples: int, scan=None) -> OpenStudy | None:
    """The worklist page; returns the open study (its selected frontal image retrieved), or ``None``. ``scan`` (the
    registry scan) gives the audit log each triage analysis's model version."""
    settings = pacs_settings()
    if not isinstance(settings, PacsSettings):
        st.error(settings or "No PACS is configured.", icon=":material/settings:")
        return None
    for note in settings.warnings:
        st.warning(note)
    state = _state()
    client = _client(settings)
    if state["open"] is not None:
        opened = _render_open(client, state["open"])
        if opened is not None:
            return opened
    days = _days()
    st.subheader("PACS worklist")
    st.caption(f"CR/DX studies {'of every date' if days == 0 else f'of the last {days} days'} at {settings.url}. "
               "Sorted by the model's triage call once analysed: Abnormal at or above its operating point first, "
               "then by its probability; studies not analysed yet follow, newest first. A call is a model's "
               "estimate, not a diagnosis.")
    try:
        studies = _studies(client, settings, days)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return None
    if not studies:
        st.info("No CR/DX study in this period.")
        return None
    actions = st.container(horizontal=True)
    if actions.button("Refresh", key="refresh_worklist", icon=":material/refresh:",
                      help="Ask the PACS again (new studies, results stored since)."):
        state["plans"] = {}
    if actions.button("Analyse the listed studies (triage)", key="triage", icon=":material/sort:"):
        try:
            _triage(predictor, cache, client, studies, variant, mc_samples, scan)
        except PacsError as exc:
            st.error(str(exc), icon=":material/cloud_off:")
    try:
        order = {s.study_uid: k for k, s in enumerate(studies)}
        studies = sorted(studies, key=lambda s: _sort_key(s, order[s.study_uid], state["triage"]))
        rows = _rows(studies, client, settings)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return None
    st.dataframe(rows, key="worklist_table", hide_index=True, width="stretch")
    names = {s.study_uid: f"{k + 1}. {s.date or 'no date'} · {s.accession or 'no accession'} · "
                          f"{s.description or '-'}" for k, s in enumerate(studies)}
    pick = st.selectbox("Study to open", list(names), format_func=names.get, key="study_pick",
                        help="In the order of the list above.")
    study = next(s for s in studies if s.study_uid == pick)
    plan = _plan(client, study.study_uid)
    if not plan.analyse:
        st.warning(f"This study cannot be analysed: {plan.reason}.")
    elif st.button("Open study", key="open_study", type="primary", icon=":material/folder_open:"):
        state["open"] = study
        st.session_state.pop("open_image", None)
        st.rerun()
    return None


def _render_open(client: PacsClient, study: StudySummary) -> OpenStudy | None:
    state = _state()
    top = st.container(horizontal=True)
    if top.button("Back to the worklist", key="back", icon=":material/arrow_back:"):
        state["open"] = None
        state["images"] = {}
        st.rerun()
    try:
        plan = _plan(client, study.study_uid)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return None
    labels = {r.sop_uid: f"series {r.series_number or '?'} image {r.instance_number or '?'} "
                         f"({r.view_position or 'view not given'})" for r in plan.analyse}
    sop = st.selectbox("Frontal image", list(labels), format_func=labels.get, key="open_image")
    ref = next(r for r in plan.analyse if r.sop_uid == sop)
    top.markdown(f"**Study** {study.date} · accession {study.accession or '-'} · {study.description or '-'}")
    for ref_skipped, why in plan.skipped:
        st.caption(f"Not shown: series {ref_skipped.series_number or '?'}: {why}.")
    images = state["images"]
    if sop not in images:
        try:
            with st.spinner("Retrieving the image from the PACS…"):
                images.clear()  # one study's image in memory at a time
                images[sop] = client.retrieve(ref)
        except PacsError as exc:
            st.error(str(exc), icon=":material/cloud_off:")
            return None
    if not access.record_study_opened(study.study_uid):  # an unwritable log or salt: the study is not shown
        return None
    return OpenStudy(study, plan, ref, images[sop])


def render_send(opened: OpenStudy, ctx) -> None:
    """The "Send to PACS" panel of an open study: stores the SR and the selected label's map, shows what was stored."""
    settings = pacs_settings()
    if not isinstance(settings, PacsSettings):
        return
    analysis = ctx.analysis
    _remember_triage(opened.study.study_uid, analysis)
    label = ctx.selected_label()
    variant = ctx.get_variant(ctx.variant)
    version = getattr(variant.card, "tensor_sha256", None) or "unknown"
    model = ModelIdentity(ctx.variant, version, {"mc_samples": str(ctx.mc_samples), "seed": "0"})
    with st.container(border=True):
        st.markdown(f"**Send to PACS**: a structured report (DICOM SR, TID 1500) of every learnt label and a "
                    f"secondary capture of the map of **{label}**, filed as new series in this study.")
        if not analysis.learnt(label):
            st.info(f"{label} was not learnt by this model: pick a learnt label in the Analysis tab to send its map.")
            return
        if st.button("Send to PACS", key="send_pacs", icon=":material/send:", type="primary"):
            _send(opened, analysis, label, model, settings)
        sent = _state()["sent_detail"].get(opened.study.study_uid) if "sent_detail" in _state() else None
        if sent:
            st.success(sent["message"], icon=":material/check_circle:")
            st.dataframe(sent["stored"], hide_index=True, width="stretch")


def _send(opened: OpenStudy, analysis, label: str, model: ModelIdentity, settings: PacsSettings) -> None:
    state = _state()
    client = _client(settings)
    try:
        subject = Subject.study(opened.study.study_uid, access.study_salt())
    except AuditError as err:  # fail closed: nothing is sent that cannot be audited
        st.error(str(err), icon=":material/block:")
        return
    try:
        source = pydicom.dcmread(BytesIO(opened.data))
        datasets = [build_sr(analysis, source, model), build_sc(analysis, source, model, label)]
    except Exception:  # noqa: BLE001 - a header highdicom cannot copy is a message, not a traceback
        logger.exception("building the DICOM results failed")
        st.error("HiCXR could not build DICOM results from this image's header, so nothing was sent.")
        return
    if not access.record(Action.RESULTS_SENT, subject=subject, model_version=model.version, variant=model.name,
                         outcome="attempt"):
        return
    try:
        with st.spinner("Storing in the PACS…"):
            outcome = client.store(datasets)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        access.record(Action.RESULTS_SENT, subject=subject, model_version=model.version, variant=model.name,
                      outcome="failed", detail="credentials")
        return
    access.record(Action.RESULTS_SENT, subject=subject, model_version=model.version, variant=model.name,
                  outcome="ok" if outcome.ok else "failed", detail=f"{len(outcome.stored)} of {len(datasets)}")
    state.get("plans", {}).pop(opened.study.study_uid, None)  # the study now holds new series
    stored = [{"what": "structured report (TID 1500)" if ds.Modality == "SR" else f"map of {label}",
               "series": ds.SeriesDescription, "SOP instance UID": ds.SOPInstanceUID,
               "status": "stored" if ds.SOPInstanceUID in outcome.stored else
               f"NOT stored: {outcome.failed.get(ds.SOPInstanceUID, '')}"} for ds in datasets]
    if outcome.ok:
        message = f"Stored {len(outcome.stored)} objects in the study (after {outcome.attempts} attempt(s))."
        state["sent"][opened.study.study_uid] = f"sent: SR + map of {label}"
    else:
        message = (f"{len(outcome.failed)} of {len(datasets)} objects could not be stored after {outcome.attempts} "
                   "attempts; the analysis is kept on this page: press Send to PACS again.")
        st.error(message, icon=":material/error:")
    state.setdefault("sent_detail", {})[opened.study.study_uid] = {"message": message, "stored": stored}
