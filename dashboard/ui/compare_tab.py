"""The Compare variants tab: the same image through 2–4 variants, where they disagree, and their Grad-CAMs."""

from __future__ import annotations

import streamlit as st

from dashboard.access import record_analysis
from dashboard.components.cam import cam_overlay
from dashboard.components.compare import comparison_frame, grouped_bar_figure, violations_frame
from dashboard.components.tree import taxonomy_figure
from dashboard.ui.state import SELECTED_LABEL, Context

MAX_COMPARED = 4
MAP_TILE_PX = 340
TREE_TILE_PX = 740


def render_compare(ctx: Context) -> None:
    """Draw the comparison of the chosen variants on the current image."""
    names = ctx.scan.distinct_names()
    for name in ctx.scan.names():
        same = ctx.scan.same_as(name)
        if same and name in names:
            st.info(f"**{' ≡ '.join([name, *same])}** are one model: the paper's hard penalty "
                    "1[p_parent < 0.5 < p_child] has no gradient, so training with it gives exactly the BCE model "
                    "(identical tensors). It is listed once.", icon=":material/info:")
    if len(names) < 2:
        st.info("Only one distinct model is available in the weights folder; a comparison needs at least two.")
        return
    current = ctx.variant if ctx.variant in names else names[0]
    default = [current] + [n for n in names if n != current]
    chosen = st.multiselect(
        "Variants to compare", names, default=default[:MAX_COMPARED], max_selections=MAX_COMPARED,
        key="compare_variants", help="Pick two to four distinct models; the image is analysed once per variant.",
    )
    if len(chosen) < 2:
        st.info("Pick at least two variants to compare.")
        return
    with st.spinner(f"Analysing with {len(chosen)} variants…"):
        outcome = ctx.cache.analyses(ctx.predictor, ctx.data, ctx.digest, chosen, ctx.mc_samples)
    if not all(record_analysis(ctx.scan, ctx.digest, name, ctx.mc_samples, outcome.kind) for name in chosen):
        return  # fail closed: the audit log could not be written (the message is on the page)
    if not outcome.ok:
        st.error(outcome.error)
        return
    analyses = outcome.analyses
    frame = comparison_frame(analyses)

    st.subheader("Probabilities by variant")
    st.plotly_chart(grouped_bar_figure(analyses, labels=frame["label"].tolist()), key="compare_bars",
                    config={"displaylogo": False})
    st.caption("Bars: MC mean; whiskers: ± one standard deviation. Labels sorted by disagreement, largest first; "
               "labels a variant never learnt are left out.")

    st.markdown("**Where the variants disagree most** (max − min of the MC means; ▲: called positive)")
    # One column per variant (its MC mean, ▲ when called), so the table fits the page with every column shown.
    means = {name: [f"{m:.3f}{' ▲' if c == 'above' else ''}" for m, c in zip(frame[f"{name} mean"],
                                                                               frame[f"{name} call"], strict=True)]
             for name in analyses}
    table = frame[["label"]].assign(**means, disagreement=frame["disagreement"]).head(8)
    st.dataframe(table, hide_index=True, width="stretch", key="compare_table",
                 column_config={"disagreement": st.column_config.NumberColumn(format="%.3f")})
    threshold = next(iter(analyses.values())).threshold
    st.markdown(f"**Taxonomy violations** (child above {threshold:.2f} while its parent is below)")
    violations = violations_frame(analyses)
    if violations.empty:
        st.success("None of these variants puts a child above the threshold while its parent is below it.")
    else:
        st.dataframe(violations, hide_index=True, width="stretch", key="compare_violations",
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("parent P", "child P")})

    st.subheader("Grad-CAM side by side")
    labels = list(ctx.analysis.labels)
    top = frame["label"].iloc[0]
    current = st.session_state.get(SELECTED_LABEL, top)
    label = st.selectbox("Label", labels, index=labels.index(current if current in labels else top),
                         key="compare_label")
    # Fixed-width tiles in a wrapping row: four side by side on a wide screen, two per row at 1,280 px, never
    # overlapping; each map on the image as windowed in the viewer.
    base = ctx.display_copy_pixels()
    with st.container(horizontal=True, gap="medium", key="compare_maps"):
        for name in chosen:
            analysis = analyses[name]
            i = analysis.index(label)
            with st.container(width=MAP_TILE_PX):
                if not analysis.learnt(label):
                    st.info(f"{name} never learnt {label}: no map.")
                    continue
                st.image(cam_overlay(analysis, label, opacity=0.45, threshold=0.2, base=base, max_side=MAP_TILE_PX),
                         width="stretch",
                         caption=f"{name} · {label} · {analysis.mc_mean[i]:.2f} ± {analysis.mc_std[i]:.2f}"
                         + ("" if analysis.cams[i].any() else " · relative map (dashed): not evidence"))

    if st.toggle("Show the taxonomy trees side by side", key="compare_trees"):
        # A tree needs about 760 px for its 12 px captions: two per row on a wide screen, one below that.
        with st.container(horizontal=True, gap="medium", key="compare_tree_row"):
            for name in chosen:
                with st.container(width=TREE_TILE_PX):
                    st.plotly_chart(
                        taxonomy_figure(analyses[name], ctx.taxonomy, auroc_notes=ctx.auroc_notes(name),
                                        selected=label, height=560, title=name,
                                        training_positives=ctx.get_variant(name).card.training_positives),
                        key=f"compare_tree_{name}", config={"displaylogo": False, "displayModeBar": False},
                    )
