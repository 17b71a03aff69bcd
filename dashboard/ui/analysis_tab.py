"""The Analysis tab: the viewer (radiograph and map, one window/level), the taxonomy tree and table, the gallery.

Display changes rerun only a fragment, never the page: picking a label reruns the workspace (viewer, gallery,
tree), a map control or a window reruns only the viewer panel inside it. The analysis comes from the session
cache and is never recomputed for a display change; the figures drawn from it are memoised, and the tree's
selection frame is moved, not the tree redrawn. ``python bench/dashboard.py`` measures what such a rerun costs.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from core.calls import card_rule
from core.imaging import XrayImage
from core.ood import is_technical_note
from dashboard.components.cam import cam_caption, cam_overlay, gallery_labels, map_layer
from dashboard.components.image_view import is_dicom_metadata, metadata_table
from dashboard.components.tree import PreparedTree, label_from_selection, taxonomy_spec, tree_order
from dashboard.components.viewer import MapSettings, ViewerState, radiograph_viewer
from dashboard.ui.state import MAP_SETTINGS, SELECTED_LABEL, VIEWER_KEY, Context

TREE_CONFIG = {"displaylogo": False, "displayModeBar": False}
VIEWER_HEIGHT = 560
TREE_HEIGHT = 600


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
    # One line per check that fired, named, so the reader sees which one (each message is a whole sentence).
    checks = "\n".join(f"- **{c.name}**: {c.message}" for c in analysis.population_checks)
    st.error(f"**The outputs do not apply to this image.** It is outside the population the model was trained on "
             f"(adult frontal chest radiographs). No finding is called; the probabilities below are greyed and "
             f"shown for reference only. Checks that fired:\n{checks}", icon=":material/block:")


def render_analysis(ctx: Context) -> None:
    """Draw the Analysis tab for the current image and variant: the viewer first (above the fold), then the tree
    and the table of every output, then the image's details."""
    # The notices live in one container, so the viewer below keeps its place in the page whatever their number: a
    # variant with one warning more would otherwise move it, and Streamlit would draw its frame anew (the browser
    # then asks for the image's pixels again, a second run and a few MB per variant switch).
    with st.container(key="notices"):
        population_banner(ctx.analysis)
        in_banner = {c.message for c in ctx.analysis.population_checks}
        for warning in ctx.analysis.warnings:
            if warning not in in_banner:  # the banner already says it
                st.warning(warning, icon=":material/warning:")
    _workspace(ctx)
    # Outside the fragments: what depends on the analysis only (the tree's legend, the table) is not sent again
    # when a label is picked.
    _tree_legend(ctx)
    st.subheader("All outputs")
    _findings_table(ctx)
    _metadata_panel(ctx.image)


@st.fragment
def _workspace(ctx: Context) -> None:
    """Viewer, gallery and tree in one fragment: picking a label (a node click or the keyboard list) reruns only
    this panel, from cached records and figures (no hashing, no file read, no network pass)."""
    _viewer_panel(ctx)
    # Full width for the tree, so its 12 px captions never collide at 1,280 px.
    st.subheader("Findings in the clinical taxonomy")
    _tree(ctx)


@st.fragment
def _viewer_panel(ctx: Context) -> None:
    """The viewer and the gallery, a fragment inside the workspace: the viewer applies its map controls (colours,
    opacity, threshold) and window in the browser, and the settings it reports back rerun only this, not the tree
    and table."""
    if _take_viewer_value(ctx):
        # The reader picked another label with the viewer's [ ] keys: the tree's frame must follow, so the whole
        # page runs again (rare, unlike the map controls).
        st.rerun(scope="app")
    _viewer(ctx)
    _gallery(ctx)


def _take_viewer_value(ctx: Context) -> bool:
    """Keep the window the reader chose for this image and the map settings they chose, and follow a label picked
    with the viewer's [ ] keys; True when that changed the selected label."""
    value = st.session_state.get(VIEWER_KEY)
    settings = MapSettings.from_value(value)
    if settings is not None:
        st.session_state[MAP_SETTINGS] = settings
    state = ViewerState.from_value(value, ctx.digest)
    if state is None:
        return False
    st.session_state[ctx.view_key] = state
    nonce, label = state.nonce, state.select
    if nonce is not None and nonce != st.session_state.get("_viewer_nonce") and label in ctx.analysis.labels:
        st.session_state["_viewer_nonce"] = nonce
        changed = st.session_state.get(SELECTED_LABEL) != label
        st.session_state[SELECTED_LABEL] = label
        return changed
    return False


def _map_settings() -> MapSettings:
    return st.session_state.get(MAP_SETTINGS) or MapSettings()


def _viewer(ctx: Context) -> None:
    analysis = ctx.analysis
    selected = ctx.selected_label()
    display = ctx.display_copy()
    # A label the model never learnt has no map worth drawing: its pane shows the image alone, and says so. The
    # layer does not depend on the map controls (the browser applies them), so it is made once per label.
    layer_key = (ctx.digest, ctx.variant, ctx.mc_samples, selected)
    layer = ctx.memo("layer", layer_key, lambda: map_layer(analysis, selected, display.levels.shape)) \
        if analysis.learnt(selected) else None
    radiograph_viewer(
        display, ctx.digest, key=VIEWER_KEY, initial=st.session_state.get(ctx.view_key),
        layer=layer, layer_id=repr(layer_key), map_settings=_map_settings(),
        map_title=f"{selected} · {_value(analysis, selected)}" + ("" if analysis.learnt(selected) else ": no map"),
        labels=tree_order(ctx.taxonomy), selected=selected, height=VIEWER_HEIGHT,
        image_title="Radiograph · SAMPLE IMAGE (not a patient's film)" if analysis.sample else "Radiograph",
    )
    about = cam_caption(analysis, selected) if analysis.learnt(selected) else "No map: the model never learnt " \
        "this label (too few positive training images), so neither its output nor its map means anything."
    with st.container(key="viewer_caption"):
        st.caption(f"{selected} · {_value(analysis, selected)} — {about} Window/level, invert and zoom change the "
                   "display only: the model saw the file's own window.")


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
    card = ctx.get_variant(ctx.variant).card
    # Built once per analysis; a click only moves the selection frame (in place, this session's own copy).
    figure = ctx.memo("tree", (ctx.digest, ctx.variant, ctx.mc_samples), lambda: PreparedTree(taxonomy_spec(
        analysis, ctx.taxonomy, auroc_notes=ctx.auroc_notes(), training_positives=card.training_positives,
        height=TREE_HEIGHT), ctx.taxonomy)).select(selected)
    st.plotly_chart(figure, key="tree", on_select=partial(_on_tree_click, list(analysis.labels)),
                    selection_mode="points", config=TREE_CONFIG)
    # Keyboard route to every node: the same labels, in the tree's order, as a radio group (Tab to it, then the
    # arrow keys move the selection); it shares the fragment with the tree, so the ring follows it.
    st.session_state["label_pick"] = selected
    st.radio("Findings in tree order (keyboard: Tab here, then the arrow keys)", tree_order(ctx.taxonomy),
             key="label_pick", on_change=_on_label_pick, horizontal=True,
             format_func=lambda label: _pick_text(analysis, label))


def _tree_legend(ctx: Context) -> None:
    analysis = ctx.analysis
    rule = card_rule(ctx.get_variant(ctx.variant).card)
    st.caption(
        "Node colour: probability (mean of the MC dropout samples). Orange halo: uncertainty (their standard "
        f"deviation). ▲ and a pink ring around the node: the model calls the label positive. {rule.describe()} "
        "Hover a node for its call or the reason it has none. Blue box: the label shown in the viewer. Hollow grey "
        "ring: not learnt (too few positive training images). Red dashed edge: "
        f"a violation, the child above {analysis.threshold:.1f} while its parent is below "
        f"{analysis.threshold:.1f}. Click a node to see its map."
    )
    if analysis.violations:
        pairs = ", ".join(f"{v.parent} → {v.child}" for v in analysis.violations)
        st.warning(f"Taxonomy violations (child above {analysis.threshold:.2f}, parent below): {pairs}")


def _pick_text(analysis, label: str) -> str:
    if not analysis.learnt(label):
        return f"{label} (not learnt)"
    mark = " ▲" if analysis.call(label) == "above" else ""
    return f"{label} {analysis.mc_mean[analysis.index(label)]:.2f}{mark}"


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

    table = ctx.memo("table", (ctx.digest, ctx.variant, ctx.mc_samples), lambda: pd.DataFrame(
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
    ).sort_values("P (MC mean)", ascending=False, na_position="last"))
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=36 * (len(table) + 1) + 4,  # every row, no inner scroll bar
        column_config={
            # Fixed widths that add up to less than the page at 1,280 px: every column is shown, none is cut.
            "label": st.column_config.TextColumn(width=190),
            "P (MC mean)": st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0, width=120),
            "± std": st.column_config.NumberColumn(format="%.3f", width=60),
            "test AUROC": st.column_config.TextColumn(width=185),
            "operating point": st.column_config.NumberColumn(
                format="%.3f", width=85, help="Only for labels the model separates on held-out images: at or "
                "above it, the model calls the label positive (see the model card's call rule)."),
            "call": st.column_config.TextColumn(
                help="above / below the operating point; 'no call' where the model cannot separate the finding; "
                "empty when not learnt or out of population.", width=75),
            "why": st.column_config.TextColumn(help="Why a label has no call, or how a group came to be called."),
        },
        key="findings_table",
    )
    st.caption("Empty probability: the label was not learnt, so its output is not shown. "
               + ("The image is outside the training population: no label is called and the probabilities do not "
                  "apply. " if analysis.out_of_population else "")
               + f"{card_rule(ctx.get_variant(ctx.variant).card).describe()} The model saw a "
               f"{analysis.extra.get('input_size', '?')} px copy of the image.")


def _gallery(ctx: Context) -> None:
    analysis = ctx.analysis
    gallery = st.expander("Gallery: every label above a probability", key="gallery", on_change="rerun")
    if gallery.open is False:  # lazy: the tiles are only drawn while the gallery is open
        return
    settings = _map_settings()  # the viewer's map controls
    base = ctx.display_copy_pixels()
    with gallery:
        min_p = st.slider("Probability at least", 0.0, 1.0, 0.5, 0.05, key="gallery_min_p")
        chosen = gallery_labels(analysis, min_p)
        if not chosen:
            st.info(f"No label reaches {min_p:.2f}.")
            return
        columns = st.columns(4)
        for n, label in enumerate(chosen):
            j = analysis.index(label)
            with columns[n % 4]:
                st.image(
                    cam_overlay(analysis, label, colormap=settings.colormap, opacity=settings.opacity,
                                threshold=settings.threshold, base=base, max_side=256),
                    caption=f"{label} · {analysis.mc_mean[j]:.2f} ± {analysis.mc_std[j]:.2f}"
                    + ("" if analysis.cams[j].any() else " · relative map (dashed): not evidence"),
                    width="stretch",
                )
