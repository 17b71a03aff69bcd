"""The Analysis tab: the radiograph (zoom, window/level), the taxonomy tree and table, and Grad-CAM views.

Display controls live in fragments, so moving them reruns only their own panel; the analysis itself comes from the
session cache and is never recomputed for a display change.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from core.calls import card_rule
from core.imaging import XrayImage
from core.ood import is_technical_note
from dashboard.components.cam import COLORMAPS, cam_caption, cam_overlay, gallery_labels
from dashboard.components.image_view import (
    display_pixels,
    image_figure,
    is_dicom_metadata,
    metadata_table,
    window_range,
)
from dashboard.components.tree import label_from_selection, taxonomy_figure
from dashboard.ui.state import SELECTED_LABEL, Context

PLOT_CONFIG = {"displaylogo": False, "scrollZoom": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
TREE_CONFIG = {"displaylogo": False, "displayModeBar": False}

def _value(analysis, label: str) -> str:
    """``P = mean ± std`` with the record's call on it, or "not learnt"."""
    if not analysis.learnt(label):
        return "not learnt (no meaningful output)"
    i = analysis.index(label)
    text = f"P = {analysis.mc_mean[i]:.2f} ± {analysis.mc_std[i]:.2f}"
    decision, threshold = analysis.call(label), analysis.operating_points.get(label)
    if decision in ("above", "below"):
        text += f" ({'called: at/above' if decision == 'above' else 'below'} operating point {threshold:.2f})"
    elif decision == "no call":
        text += " (no call)"
    else:
        text += " (does not apply: out of population)"
    return text


def population_banner(analysis) -> None:
    """The banner at the top of the page when the image is outside the training population: the outputs do not
    apply, which check fired, and that nothing is called."""
    if not analysis.out_of_population:
        return
    checks = "; ".join(c.message for c in analysis.population_checks)
    st.error(f"**The outputs do not apply to this image.** It is outside the population the model was trained on "
             f"(adult frontal chest radiographs): {checks} No finding is called; the probabilities below are "
             "greyed and shown for reference only.", icon=":material/block:")


def render_analysis(ctx: Context) -> None:
    """Draw the Analysis tab for the current image and variant."""
    population_banner(ctx.analysis)
    _explain_panel(ctx)
    st.divider()
    left, right = st.columns([1.0, 1.2], gap="medium")
    with left:
        st.subheader("Radiograph" + (" · SAMPLE" if ctx.analysis.sample else ""))
        if ctx.analysis.sample:
            st.caption(f":orange-badge[SAMPLE IMAGE] {ctx.analysis.sample}: a bundled public image, not a patient's "
                       "film.")
        _image_panel(ctx.image, ctx.digest)
        _metadata_panel(ctx.image)
    with right:
        st.subheader("All outputs")
        _findings_table(ctx)


@st.fragment
def _explain_panel(ctx: Context) -> None:
    """Tree, label picker and Grad-CAM in one fragment: a click or a display control reruns only this panel."""
    tree_col, cam_col = st.columns([1.8, 1.0], gap="medium")
    with tree_col:
        st.subheader("Findings in the clinical taxonomy")
        _tree(ctx)
    with cam_col:
        st.subheader("Grad-CAM")
        _cam(ctx)


@st.fragment
def _image_panel(image: XrayImage, digest: str) -> None:
    meta = image.metadata.to_dict()
    center = width = None
    controls = st.columns([1, 1, 0.6]) if is_dicom_metadata(meta) else st.columns([1])
    bounds = window_range(image) if is_dicom_metadata(meta) else None
    if bounds is not None:
        span = bounds.high - bounds.low
        # Keys carry the image hash, so a new image starts from its own default window.
        center = controls[0].slider(
            "Level (window centre)", min_value=min(bounds.low, bounds.center), step=bounds.step,
            max_value=max(bounds.high, bounds.center), value=bounds.center, key=f"level_{digest[:12]}",
        )
        width = controls[1].slider(
            "Window width", min_value=bounds.step, max_value=max(2.0 * span, bounds.width), step=bounds.step,
            value=bounds.width, key=f"width_{digest[:12]}",
        )
    invert = controls[-1].toggle(
        "Invert", key="invert", help="Display only: the model always sees the file's own grey scale."
    )
    st.plotly_chart(
        image_figure(display_pixels(image, center, width, invert), height=480),
        key="image_view", config=PLOT_CONFIG,
    )
    st.caption("Scroll or drag to zoom and pan; double-click to reset. Window/level changes the display only.")


def _metadata_panel(image: XrayImage) -> None:
    meta = image.metadata.to_dict()
    # Technical notes about the file, once and in grey; clinical warnings are shown above the tree.
    for note in meta.get("warnings") or []:
        if is_technical_note(note):
            st.caption(f":material/description: File note: {note}")
    # DICOM headers say more (modality, view, bits, photometric), so their details start open.
    with st.expander("Image details", expanded=is_dicom_metadata(meta)):
        st.table(metadata_table(meta).set_index("field"))
        st.caption("Technical attributes only; patient, study, date and institution fields are never read out.")


def _on_tree_click(labels: list[str]) -> None:
    label = label_from_selection(st.session_state.get("tree"), labels)
    if label is not None:
        st.session_state[SELECTED_LABEL] = label


def _on_label_pick() -> None:
    st.session_state[SELECTED_LABEL] = st.session_state["label_pick"]


def _tree(ctx: Context) -> None:
    analysis = ctx.analysis
    selected = ctx.selected_label()
    in_banner = {c.message for c in analysis.population_checks}
    for warning in analysis.warnings:
        if warning not in in_banner:  # the banner already says it
            st.warning(warning, icon=":material/warning:")
    card = ctx.get_variant(ctx.variant).card
    st.plotly_chart(
        taxonomy_figure(analysis, ctx.taxonomy, auroc_notes=ctx.auroc_notes(), selected=selected,
                        training_positives=card.training_positives),
        key="tree", on_select=partial(_on_tree_click, list(analysis.labels)), selection_mode="points",
        config=TREE_CONFIG,
    )
    # The fallback picker shares the fragment with the tree, so the highlighted node follows it.
    st.session_state["label_pick"] = selected
    st.selectbox("Label shown in Grad-CAM", analysis.labels, key="label_pick", on_change=_on_label_pick)
    rule = card_rule(ctx.get_variant(ctx.variant).card)
    st.caption(
        "Node colour: probability (mean of the MC dropout samples). Halo: uncertainty (their standard deviation). "
        f"▲ and a dark outline: the model calls the label positive. {rule.describe()} Hover a node for its call "
        "or the reason it has none. Hollow grey: not learnt (too few positive training images). Red dashed edge: "
        f"a violation, the child above {analysis.threshold:.1f} while its parent is below "
        f"{analysis.threshold:.1f}. Click a node to see its map."
    )
    if analysis.violations:
        pairs = ", ".join(f"{v.parent} → {v.child}" for v in analysis.violations)
        st.warning(f"Taxonomy violations (child above {analysis.threshold:.2f}, parent below): {pairs}")


def _findings_table(ctx: Context) -> None:
    analysis = ctx.analysis
    auroc = ctx.auroc_notes()
    card = ctx.get_variant(ctx.variant).card
    learnt = [analysis.learnt(label) for label in analysis.labels]

    def shown(values, ok):
        return [float(v) if k else None for v, k in zip(values, ok, strict=True)]

    def auroc_cell(label: str) -> str:
        if not analysis.learnt(label):
            n = card.training_positives.get(label)
            return f"n/a: not learnt ({n or 0} positive training images)"
        return auroc.get(label, "n/a: not reported")

    table = pd.DataFrame(
        {
            "label": analysis.labels,
            "P (MC mean)": shown(analysis.mc_mean, learnt),
            "± std": shown(analysis.mc_std, learnt),
            "operating point": [analysis.operating_points.get(label, float("nan")) for label in analysis.labels],
            "call": [analysis.call(label) for label in analysis.labels],
            "why": [analysis.call_reason(label) for label in analysis.labels],
            "test AUROC": [auroc_cell(label) for label in analysis.labels],
            "parents": [", ".join(ctx.taxonomy.parents(label)) for label in analysis.labels],
        }
    ).sort_values("P (MC mean)", ascending=False, na_position="last")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=560,
        column_config={
            "P (MC mean)": st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0),
            "± std": st.column_config.NumberColumn(format="%.3f"),
            "operating point": st.column_config.NumberColumn(
                format="%.3f", help="Only for labels the model separates on held-out images: at or above it, "
                "the model calls the label positive (see the model card's call rule)."),
            "call": st.column_config.TextColumn(
                help="above / below the operating point; 'no call' where the model cannot separate the finding; "
                "empty when not learnt or out of population."),
            "why": st.column_config.TextColumn(help="Why a label has no call, or how a group came to be called."),
        },
        key="findings_table",
    )
    st.caption("Empty probability: the label was not learnt, so its output is not shown. "
               + ("The image is outside the training population: no label is called and the probabilities do not "
                  "apply. " if analysis.out_of_population else "")
               + f"{card_rule(ctx.get_variant(ctx.variant).card).describe()} The model saw a "
               f"{analysis.extra.get('input_size', '?')} px copy of the image.")


def _cam(ctx: Context) -> None:
    analysis = ctx.analysis
    selected = ctx.selected_label()
    image_slot = st.empty()  # the overlay goes above its controls, but is drawn once they have values
    c1, c2, c3 = st.columns(3)
    colormap = c1.selectbox("Colour map", COLORMAPS, key="cam_colormap",
                            help="Perceptually uniform, colour-blind-safe maps only.")
    opacity = c2.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    threshold = c3.slider(
        "Hide below", 0.0, 1.0, 0.2, 0.05, key="cam_threshold",
        help="Activation values below this are transparent, so only the strongest regions are coloured.",
    )
    image_slot.image(
        cam_overlay(analysis, selected, colormap=colormap, opacity=opacity, threshold=threshold),
        caption=f"{selected} · {_value(analysis, selected)}",
        width="stretch",
    )
    st.caption(cam_caption(analysis, selected))
    gallery = st.expander("Gallery: every label above a probability", key="gallery", on_change="rerun")
    if gallery.open is False:  # lazy: the tiles are only drawn while the gallery is open
        return
    with gallery:
        min_p = st.slider("Probability at least", 0.0, 1.0, 0.5, 0.05, key="gallery_min_p")
        chosen = gallery_labels(analysis, min_p)
        if not chosen:
            st.info(f"No label reaches {min_p:.2f}.")
            return
        columns = st.columns(3)
        for n, label in enumerate(chosen):
            j = analysis.index(label)
            with columns[n % 3]:
                st.image(
                    cam_overlay(analysis, label, colormap=colormap, opacity=opacity, threshold=threshold,
                                max_side=256),
                    caption=f"{label} · {analysis.mc_mean[j]:.2f} ± {analysis.mc_std[j]:.2f}"
                    + ("" if analysis.cams[j].any() else " · relative map (dashed): not evidence"),
                    width="stretch",
                )
