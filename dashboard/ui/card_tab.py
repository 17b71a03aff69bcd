"""The Model card tab: what each variant was trained on, how well it did, and what it must not be used for."""

from __future__ import annotations

import streamlit as st

from core.calls import card_evidence
from dashboard.components.model_card import (
    DISCLAIMER,
    auroc_figure,
    auroc_frame,
    calibration_frame,
    call_frame,
    data_sources,
    label_map_frame,
    or_unknown,
    penalty_frame,
    plot_paths,
    pointing_frame,
    population_frame,
    summary_table,
)
from dashboard.ui.state import Context


def render_card(ctx: Context) -> None:
    """Draw the model card of a variant (the sidebar's by default)."""
    names = ctx.scan.names()
    name = st.selectbox("Variant", names, index=names.index(ctx.variant), key="card_variant")
    variant = ctx.get_variant(name)
    card = variant.card
    labels = variant.labels

    st.warning(DISCLAIMER)
    imported = card.imported
    if imported is not None:
        random = (" — RANDOMLY INITIALISED: not the trained weights; every number and map is meaningless"
                  if imported.randomly_initialised else "")
        st.info(f"Imported from {imported.source or '?'} ({imported.weights or '?'}){random}. "
                "Its test figures are measured here like every variant's.")
    left, right = st.columns([1.0, 1.2], gap="medium")
    with left:
        st.subheader("Summary")
        st.table(summary_table(card).set_index("field"))
        st.subheader("Intended use")
        st.write(card.intended_use or "Not stated in the model card.")
        st.subheader("Limitations")
        st.write(card.limitations or "Not stated in the model card.")
    with right:
        frame = auroc_frame(card, labels, "test")
        if frame["auroc"].notna().any():
            st.plotly_chart(auroc_figure(frame), key="card_auroc", config={"displaylogo": False})
        else:
            st.info("This model card reports no per-label test AUROC.")
        with st.expander("Per-label test metrics (table)"):
            st.dataframe(frame, hide_index=True, width="stretch", key="card_auroc_table",
                         column_config={c: st.column_config.NumberColumn(format="%.3f")
                                        for c in ("auroc", "ci_low", "ci_high", "average_precision", "ece")})

    st.subheader("When the model makes a call")
    rule, evidence = card_evidence(card)
    st.write(rule.describe())
    if evidence is not None:
        st.caption(f"Measured on: {evidence.source}. Interval: "
                   f"{', '.join(sorted({e.ci_method for e in evidence.labels.values()}))}. The test split is never "
                   "used to decide a call.")
        st.dataframe(call_frame(card), hide_index=True, width="stretch", key="card_calls",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("held-out AUROC", "CI low", "CI high", "operating point", "sensitivity",
                                     "specificity")})
    else:
        st.info("This model card gives no held-out evidence for calls: the model calls nothing.")

    plots = plot_paths(card, ctx.weights_dir)
    if plots:
        st.subheader("ROC and calibration")
        # The ROC plot gets twice the width of the others: its legend (one line per label) must stay readable.
        columns = st.columns([2.0 if title == "roc" else 1.0 for title in plots])
        for column, (title, path) in zip(columns, plots.items(), strict=True):
            column.image(str(path), caption=title, width="stretch")

    st.subheader("Training data and attribution")
    data = card.data
    st.write(
        f"Images: {or_unknown(data.train_images)} train, {or_unknown(data.val_images)} validation, "
        f"{or_unknown(data.test_images)} test (split by patient)."
    )
    for source in data_sources(card):
        line = f"**{source['name']}**"
        if source["url"]:
            line += f" — {source['url']}"
        if source["licence"]:
            line += f" — licence: {source['licence']}"
        if source["citation"]:
            line += f" — cite: {source['citation']}"
        st.markdown(line)
    pretraining = card.training.pretraining
    if pretraining is not None:
        st.markdown(f"**Initialised from a pretrained backbone** — {pretraining.describe()}")
    if card.attribution:
        st.caption(card.attribution)

    pointing = pointing_frame(card)
    st.subheader("Where the maps point")
    if pointing is None:
        st.info("No pointing game in this model card (`python -m core.pointing --write` measures it).")
    else:
        frame, verdict = pointing
        st.write(verdict)
        st.dataframe(frame, hide_index=True, key="card_pointing",
                     column_config={"share": st.column_config.NumberColumn(format="%.3f")})
        st.caption("Pointing game against NIH's radiologist boxes: a hit is the map's maximum inside a box of that "
                   "finding. Most boxed images here are training images.")
    population = population_frame(card)
    if population is not None:
        st.subheader("When the outputs do not apply")
        st.dataframe(population, hide_index=True, width="stretch", key="card_population",
                     column_config={c: st.column_config.NumberColumn(format="percent") for c in
                                    ("child-film check", "feature distance", "header", "any check")})
        st.caption("Share of films flagged as outside the training population, on films the model never trained "
                   "on: on adults' films a flag is a false alarm, on children's a detection. Any flag puts an image "
                   "out of population: a banner, a grey tree, no calls.")
    mapping = label_map_frame(card)
    if mapping is not None:
        st.subheader("How its outputs map onto the taxonomy")
        st.dataframe(mapping, hide_index=True, key="card_label_map")

    penalties = penalty_frame(card)
    calibration = calibration_frame(card, labels)
    left, right = st.columns(2, gap="medium")
    with left:
        st.subheader("Hierarchy penalties")
        st.caption(f"Loss: {card.loss.describe()}.")
        if penalties.empty:
            st.info("No edge penalties (flat BCE, or none reported).")
        else:
            st.dataframe(penalties, hide_index=True, width="stretch", key="card_penalties")
    with right:
        st.subheader("Calibration")
        if calibration is None:
            st.info("No temperature scaling reported: probabilities are the raw sigmoid outputs.")
        else:
            fit = card.calibration
            shared = f" (shared value {fit.shared_temperature:.3f})" if fit.shared_temperature else ""
            st.caption(
                f"{fit.method}{shared}; fitted on {fit.fitted_on or '?'}; "
                + ("applied to every probability shown." if fit.applied else "not applied.")
            )
            st.dataframe(calibration, hide_index=True, width="stretch", key="card_calibration")
    if card.reproduce:
        st.subheader("Reproduce")
        st.code(card.reproduce, language="bash")
