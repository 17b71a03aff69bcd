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
from core.card import strict_json
from core.serialize import LONG_FIELDS, long_rows, record, write_csv
from dashboard.components.cam import cam_caption, cam_overlay
from dashboard.components.image_view import downsample
from dashboard.components.model_card import DISCLAIMER

# Keeps the text block on one page; the JSON/CSV exports list every violation.
_MAX_VIOLATIONS_LISTED = 5


def analysis_json(analysis: Analysis, model_summary: Mapping[str, Any] | None = None) -> bytes:
    """UTF-8 JSON of the analysis record (:func:`core.serialize.record`; no CAMs, no image) plus the disclaimer and
    top findings."""
    out = record(analysis, include_cams=False)
    out["top_findings"] = analysis.top_findings(5)
    out["disclaimer"] = DISCLAIMER
    if model_summary:
        out["model"] = dict(model_summary)
    return json.dumps(strict_json(out), indent=2).encode("utf-8")


def analysis_csv(analysis: Analysis) -> bytes:
    """CSV with one row per label (:func:`core.serialize.long_rows`), formulas neutralised."""
    buffer = io.StringIO()
    write_csv(buffer, LONG_FIELDS, long_rows(analysis))
    return buffer.getvalue().encode("utf-8")


def pdf_report(
    analysis: Analysis,
    *,
    display_image: np.ndarray | None = None,
    auroc_notes: Mapping[str, str] | None = None,
    top_k: int = 5,
    attribution: str = "",
    label: str | None = None,
) -> bytes:
    """A one-page A4 PDF of :func:`report_figure` (same arguments)."""
    fig = report_figure(analysis, display_image=display_image, auroc_notes=auroc_notes, top_k=top_k,
                        attribution=attribution, label=label)
    buf = io.BytesIO()
    shown = _shown_label(analysis, label, top_k)
    subject = f"model {analysis.model_id}; map of {shown}" if shown else f"model {analysis.model_id}"
    fig.savefig(buf, format="pdf", metadata={"Title": "HiCXR analysis report", "Creator": "HiCXR dashboard",
                                             "Subject": subject})
    return buf.getvalue()


def report_figure(
    analysis: Analysis,
    *,
    display_image: np.ndarray | None = None,
    auroc_notes: Mapping[str, str] | None = None,
    top_k: int = 5,
    attribution: str = "",
    label: str | None = None,
) -> Figure:
    """The report page (A4 portrait): image, Grad-CAM of the top finding, probabilities with std whiskers, text.

    Args:
        analysis: The analysis to report.
        display_image: The image as the user viewed it (e.g. re-windowed); the analysed image otherwise.
        auroc_notes: Per-label test AUROC from the model card as quoted text (with its test positives), next to the
            top findings.
        top_k: How many findings to list.
        attribution: The training data's attribution, from the model card.
        label: The label whose map is shown (the one the reader selected); the top finding if ``None``.
    """
    image = downsample(np.asarray(display_image if display_image is not None else analysis.image), 768)
    findings, groups = _findings_then_groups(analysis)
    top = findings[:top_k]
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
        f"Image: {image_desc}  |  SHA-256 {analysis.image_sha256[:16] or 'n/a'}  |  "
        f"the model saw a {analysis.extra.get('input_size', '?')} px copy",
        fontsize=8, va="top", color="#333333",
    )
    if analysis.out_of_population:
        # At the top of the page, not in the small print: nothing below applies to this image.
        checks = " ".join(c.message for c in analysis.population_checks)
        fig.text(0.06, 0.893, textwrap.fill("THE OUTPUTS DO NOT APPLY TO THIS IMAGE: it is outside the population the "
                                            f"model was trained on. {checks} No finding is called.", 118),
                 fontsize=7.5, fontweight="bold", color="#7f1d1d", va="top",
                 bbox=dict(facecolor="#fde8e8", edgecolor="#9b2c2c", boxstyle="round,pad=0.4"))

    ax_img = fig.add_axes((0.06, 0.53, 0.43, 0.31))
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax_img.set_title("Radiograph" + (f" · SAMPLE IMAGE ({analysis.sample})" if analysis.sample else ""), fontsize=10,
                     color="#b45309" if analysis.sample else "black")
    ax_img.axis("off")
    ax_cam = fig.add_axes((0.52, 0.53, 0.43, 0.31))
    shown = _shown_label(analysis, label, top_k)
    if shown is not None:
        ax_cam.imshow(cam_overlay(analysis, shown, base=image, max_side=768))
        i = analysis.index(shown)
        kind = "Grad-CAM" if analysis.cams[i].any() else "Relative map (dashed; not evidence)"
        ax_cam.set_title(f"{kind}: {shown} (P = {analysis.mc_mean[i]:.2f} ± {analysis.mc_std[i]:.2f})",
                         fontsize=9)
        ax_cam.text(0, -0.04, textwrap.fill(cam_caption(analysis, shown), 70), transform=ax_cam.transAxes,
                    fontsize=6.5, va="top", color="#333333")
    ax_cam.axis("off")

    ax_bar = fig.add_axes((0.3, 0.235, 0.64, 0.225))
    # Findings first (most probable first), then the groups and triage outputs (Abnormal, Opacity, ...), so a
    # group's higher probability never pushes the findings it summarises down the page.
    names = findings + groups
    order = [analysis.index(n) for n in names]
    colours = ["#9ca3af" if analysis.out_of_population else "#7b1e1e" if analysis.call(n) == "above" else "#2b6cb0"
               for n in names]
    ax_bar.barh(
        range(len(names)), [analysis.mc_mean[i] for i in order], xerr=[analysis.mc_std[i] for i in order],
        color=colours, error_kw=dict(ecolor="#222222", elinewidth=0.8, capsize=2),
    )
    for row, n in enumerate(names):
        threshold = analysis.operating_points.get(n)
        if threshold is not None:
            ax_bar.plot([threshold, threshold], [row - 0.42, row + 0.42], color="#111111", linewidth=1.2)
    ax_bar.set_yticks(range(len(names)), [n if n in findings else f"{n} (group)" for n in names], fontsize=7)
    if findings and groups:
        ax_bar.axhline(len(findings) - 0.5, color="#888888", linewidth=0.8, linestyle=":")
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("Probability (MC mean ± std); black tick: the operating point of a label the model separates; "
                      "dark red: called positive" + ("; grey: out of population, nothing applies"
                                                     if analysis.out_of_population else ""), fontsize=7.5)
    ax_bar.tick_params(axis="x", labelsize=7)
    ax_bar.set_title("All learnt outputs", fontsize=9)

    ax_txt = fig.add_axes((0.06, 0.03, 0.9, 0.16))
    ax_txt.axis("off")
    in_banner = {c.message for c in analysis.population_checks}
    lines = [f"Warning: {w}" for w in analysis.warnings if w not in in_banner]
    if analysis.not_learnt:
        lines.append(f"Not learnt, so not shown (too few positive training images): {', '.join(analysis.not_learnt)}.")
    lines.append("Top findings, groups left out (MC mean ± std; the call; model's test AUROC):")
    for finding in top:
        i = analysis.index(finding)
        auroc_txt = (auroc_notes or {}).get(finding, "not reported")
        threshold = analysis.operating_points.get(finding)
        decision = analysis.call(finding)  # the record's decision (core.calls), never re-derived
        call = (f"called: at/above operating point {threshold:.2f}" if decision == "above"
                else f"below operating point {threshold:.2f}" if decision == "below"
                else "no call" if decision == "no call" else "does not apply (out of population)")
        mean, std = analysis.mc_mean[i], analysis.mc_std[i]
        lines.append(f"  {finding}: {mean:.2f} ± {std:.2f}; {call}; test AUROC {auroc_txt}")
    if analysis.violations:
        shown = analysis.violations[:_MAX_VIOLATIONS_LISTED]
        pairs = "; ".join(f"{v.parent} {v.parent_probability:.2f} < {v.child} {v.child_probability:.2f}"
                          for v in shown)
        if len(analysis.violations) > len(shown):
            pairs += f"; and {len(analysis.violations) - len(shown)} more"
        lines.append(f"Taxonomy violations (child above {analysis.threshold:.2f}, parent below): {pairs}")
    else:
        lines.append(f"No taxonomy violation (child above {analysis.threshold:.2f} while its parent is below).")
    text = "\n".join(textwrap.fill(x, 112, subsequent_indent="    ") for x in lines)
    # Keep the block clear of the disclaimer below it, however many warnings there are.
    ax_txt.text(0, 1.0, text, fontsize=8 if text.count("\n") < 10 else 6.5, va="top")
    ax_txt.text(0, 0.12, textwrap.fill(DISCLAIMER + " Probabilities are model outputs, not diagnoses.", 100),
                fontsize=8.5, fontweight="bold", color="#9b2c2c", va="top")
    if attribution:
        ax_txt.text(0, -0.08, textwrap.fill(attribution, 150), fontsize=6.5, color="#555555", va="top")
    return fig


def _findings_then_groups(analysis: Analysis) -> tuple[list[str], list[str]]:
    """Learnt outputs split into findings (the CheXpert observations but No Finding) and groups (the taxonomy's
    derived labels and No Finding), each most probable first."""
    from core.taxonomy import load_taxonomy

    chexpert = set(load_taxonomy().chexpert_labels) - {"No Finding"}
    order = [analysis.labels[i] for i in np.argsort(-np.asarray(analysis.mc_mean, dtype=float), kind="stable")
             if analysis.learnt(analysis.labels[i])]
    return [n for n in order if n in chexpert], [n for n in order if n not in chexpert]


def _shown_label(analysis: Analysis, label: str | None, top_k: int) -> str | None:
    """The label whose map the report shows: the reader's choice if it is learnt, else the top finding."""
    if label is not None and analysis.learnt(label):
        return label
    top = analysis.top_findings(top_k)  # learnt findings, not the triage roots
    return top[0] if top else None
