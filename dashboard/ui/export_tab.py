"""The Export tab: the current analysis as JSON, CSV and a one-page PDF report."""

from __future__ import annotations

from functools import partial

import streamlit as st

from dashboard.access import audit_writable, audited_download, model_version
from dashboard.audit import Subject
from dashboard.report import analysis_csv, analysis_json, pdf_report
from dashboard.ui.state import Context


def render_export(ctx: Context) -> None:
    """Offer the downloads for the current analysis (the PDF is built only when asked for)."""
    analysis = ctx.analysis
    variant = ctx.get_variant(ctx.variant)
    stem = f"hicxr_{analysis.model_id}_{analysis.image_sha256[:10]}"
    st.write(
        "The exports hold the model's outputs, the image's technical metadata and a hash of the file: no file "
        "name and no patient data. The PDF shows the label selected in the Analysis tab "
        f"(**{ctx.selected_label()}**) on the image as you windowed it there."
    )
    summary = {"variant": variant.name, "test_macro_auroc": variant.test_macro_auroc,
               "loss": variant.card.loss.to_dict()}
    # Each file is built when clicked, after its "export downloaded" audit entry is written (none, no file).
    writable = audit_writable()
    audited = partial(audited_download, subject=Subject.image(ctx.digest),
                      model_version=model_version(ctx.scan, variant.name), variant=variant.name)
    row = st.container(horizontal=True, gap="medium")
    row.download_button(
        "Download JSON", audited(partial(analysis_json, analysis, summary), kind="json"), file_name=f"{stem}.json",
        mime="application/json", key="download_json", on_click="ignore", icon=":material/data_object:",
        disabled=not writable,
    )
    row.download_button(
        "Download CSV", audited(partial(analysis_csv, analysis), kind="csv"), file_name=f"{stem}.csv",
        mime="text/csv", key="download_csv", on_click="ignore", icon=":material/table:", disabled=not writable,
    )
    row.download_button(
        "Download PDF report",
        audited(partial(pdf_report, analysis, auroc_notes=ctx.auroc_notes(), attribution=variant.card.attribution,
                        label=ctx.selected_label(), display_image=ctx.display_image()), kind="pdf"),
        file_name=f"{stem}.pdf", mime="application/pdf", key="download_pdf", on_click="ignore",
        icon=":material/picture_as_pdf:", type="primary", disabled=not writable,
    )
    with st.expander("Timings of this analysis (seconds)"):
        st.json({k: round(float(v), 4) for k, v in analysis.timings.items()})
