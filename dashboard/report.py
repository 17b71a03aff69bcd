"""Exports of one analysis: JSON, CSV, and a one-page PDF report.

Nothing identifying a patient goes into any of them: the analysis carries only technical image metadata and a
hash of the file, and the upload's file name is never passed here. The PDF is drawn with matplotlib's object API
(``Figure`` + Agg/PDF canvases, no ``pyplot`` global state), so reports can be built from several sessions at once.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from core.analysis import Analysis
from dashboard.components.cam import cam_overlay
from dashboard.components.image_view import downsample
from dashboard.components.model_card import DISCLAIMER

ATTRIBUTION = (
    "Models trained on NIH ChestX-ray14 (NIH Clinical Center; Wang X. et al., ChestX-ray8, CVPR 2017; "
    "https://nihcc.app.box.com/v/ChestXray-NIHCC)."
)
_REPORT_EXCLUDE = ("No Finding", "Uncertain", "Abnormal")
# Keeps the text block on one page; the JSON/CSV exports list every violation.
_MAX_VIOLATIONS_LISTED = 5


def analysis_json(analysis: Analysis, model_summary: Mapping[str, Any] | None = None) -> bytes:
    """UTF-8 JSON of :meth:`Analysis.to_dict` (no CAMs, no image) plus the disclaimer and top findings."""
    out = analysis.to_dict(include_cams=False)
    out["top_findings"] = analysis.top_findings(5)
    out["disclaimer"] = DISCLAIMER
    if model_summary:
        out["model"] = dict(model_summary)
    return json.dumps(out, indent=2, default=_json_default).encode("utf-8")


def analysis_csv(analysis: Analysis) -> bytes:
    """CSV with one row per label: ``model_id, label, probability, mc_mean, mc_std, violates_parent``."""
    table = analysis.table()
    children = {v.child for v in analysis.violations}
    table.insert(0, "model_id", analysis.model_id)
    table["violates_parent"] = [label in children for label in table["label"]]
    return table.to_csv(index=False, float_format="%.6f").encode("utf-8")


def pdf_report(
    analysis: Analysis,
    *,
    display_image: np.ndarray | None = None,
    test_auroc: Mapping[str, float | None] | None = None,
    top_k: int = 5,
) -> bytes:
    """A one-page A4 PDF of :func:`report_figure` (same arguments)."""
    fig = report_figure(analysis, display_image=display_image, test_auroc=test_auroc, top_k=top_k)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", metadata={"Title": "HiCXR analysis report", "Creator": "HiCXR dashboard"})
    return buf.getvalue()


def report_figure(
    analysis: Analysis,
    *,
    display_image: np.ndarray | None = None,
    test_auroc: Mapping[str, float | None] | None = None,
    top_k: int = 5,
) -> Figure:
    """The report page (A4 portrait): image, Grad-CAM of the top finding, probabilities with std whiskers, text.

    Args:
        analysis: The analysis to report.
        display_image: The image as the user viewed it (e.g. re-windowed); the analysed image otherwise.
        test_auroc: Per-label test AUROC from the model card, quoted next to the top findings.
        top_k: How many findings to list.
    """
    image = downsample(np.asarray(display_image if display_image is not None else analysis.image), 768)
    top = analysis.top_findings(top_k, exclude=_REPORT_EXCLUDE)
    fig = Figure(figsize=(8.27, 11.69))
    # Fixed rectangles (figure fractions) rather than a grid: the bar chart needs a wide left margin for names.
    head = fig.add_axes((0.06, 0.9, 0.9, 0.07))
    head.axis("off")
    head.text(0, 1.0, "HiCXR: hierarchical chest X-ray findings", fontsize=15, fontweight="bold", va="top")
    meta = analysis.image_metadata
    image_desc = ", ".join(
        str(x) for x in (meta.get("format"), meta.get("modality"), meta.get("view_position")) if x
    ) + f", {meta.get('width', '?')} × {meta.get('height', '?')} px"
    head.text(
        0, 0.15,
        f"Model {analysis.model_id}  |  MC dropout samples {analysis.mc_samples}  |  "
        f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"Image: {image_desc}  |  SHA-256 {analysis.image_sha256[:16] or 'n/a'}",
        fontsize=8, va="top", color="#333333",
    )

    ax_img = fig.add_axes((0.06, 0.53, 0.43, 0.31))
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax_img.set_title("Radiograph", fontsize=10)
    ax_img.axis("off")
    ax_cam = fig.add_axes((0.52, 0.53, 0.43, 0.31))
    if top:
        ax_cam.imshow(cam_overlay(analysis, top[0], base=image, max_side=768))
        i = analysis.index(top[0])
        ax_cam.set_title(
            f"Grad-CAM: {top[0]} (P = {analysis.mc_mean[i]:.2f} ± {analysis.mc_std[i]:.2f})", fontsize=10
        )
    ax_cam.axis("off")

    ax_bar = fig.add_axes((0.3, 0.23, 0.64, 0.27))
    order = np.argsort(-np.asarray(analysis.mc_mean, dtype=float), kind="stable")
    names = [analysis.labels[i] for i in order]
    violators = {v.child for v in analysis.violations}
    colours = ["#d62728" if n in violators else "#2b6cb0" for n in names]
    ax_bar.barh(
        range(len(names)), [analysis.mc_mean[i] for i in order], xerr=[analysis.mc_std[i] for i in order],
        color=colours, error_kw=dict(ecolor="#222222", elinewidth=0.8, capsize=2),
    )
    ax_bar.set_yticks(range(len(names)), names, fontsize=7)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1)
    ax_bar.axvline(analysis.threshold, color="#888888", linestyle=":", linewidth=0.8)
    ax_bar.set_xlabel("Probability (MC mean ± std); red: above threshold while a parent is below it", fontsize=8)
    ax_bar.tick_params(axis="x", labelsize=7)
    ax_bar.set_title("All outputs", fontsize=10)

    ax_txt = fig.add_axes((0.06, 0.03, 0.9, 0.16))
    ax_txt.axis("off")
    lines = ["Top findings (MC mean ± std; deterministic P; model's test AUROC):"]
    for label in top:
        i = analysis.index(label)
        auroc = (test_auroc or {}).get(label)
        auroc_txt = f"{auroc:.3f}" if auroc is not None else "n/a"
        lines.append(
            f"  {label}: {analysis.mc_mean[i]:.2f} ± {analysis.mc_std[i]:.2f}  "
            f"(P {analysis.probability[i]:.2f}; AUROC {auroc_txt})"
        )
    if analysis.violations:
        shown = analysis.violations[:_MAX_VIOLATIONS_LISTED]
        pairs = "; ".join(f"{v.parent} {v.parent_probability:.2f} < {v.child} {v.child_probability:.2f}"
                          for v in shown)
        if len(analysis.violations) > len(shown):
            pairs += f"; and {len(analysis.violations) - len(shown)} more"
        lines.append(f"Taxonomy violations at {analysis.threshold:.2f}: {pairs}")
    else:
        lines.append(f"No taxonomy violations at threshold {analysis.threshold:.2f}.")
    ax_txt.text(0, 1.0, "\n".join(textwrap.fill(x, 112, subsequent_indent="    ") for x in lines), fontsize=8, va="top")
    ax_txt.text(0, 0.12, textwrap.fill(DISCLAIMER + " Probabilities are model outputs, not diagnoses.", 100),
                fontsize=8.5, fontweight="bold", color="#9b2c2c", va="top")
    ax_txt.text(0, -0.08, ATTRIBUTION, fontsize=6.5, color="#555555", va="top")
    return fig


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
