"""Model-card views: per-label AUROC with confidence intervals, penalties, calibration and provenance.

They render a validated :class:`core.card.ModelCard`; a section a card does not report is shown as "not reported".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.calls import card_evidence
from core.card import ModelCard, finite
from core.card_sections import MEASURED_SETS

DISCLAIMER = "Research use only. Not a medical device: not for diagnosis, triage or treatment decisions."


_number = finite

#: Below this many test positives an AUROC is quoted with a warning: one positive gives 0 or 1 by luck.
FEW_TEST_POSITIVES = 5


def auroc_text(auroc: float | None, positives: int | None) -> str:
    """A test AUROC as the reader should weigh it: with the number of test positives it rests on."""
    if auroc is None:
        return "n/a: no test positives" if positives == 0 else "n/a: not reported"
    if positives is None:
        return f"{auroc:.3f}"
    if positives < FEW_TEST_POSITIVES:
        plural = "" if positives == 1 else "s"
        return f"{auroc:.3f} from only {positives} test positive{plural}: unreliable"
    return f"{auroc:.3f} ({positives} test positives)"


def _ci(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _number(value[0]), _number(value[1])
    return None, None


def auroc_frame(card: ModelCard, labels: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per-label metrics of ``split``: ``label, learnt, training positives, auroc, ci_low, ci_high,
    average_precision, ece, positives, known, operating point`` (the threshold where the model calls it positive).

    Labels the card does not report get empty (NaN) cells, so the table always has one row per output.
    """
    metrics = card.split_metrics(split)
    _, evidence = card_evidence(card)
    points = evidence.thresholds() if evidence is not None else {}
    rows = []
    for label in labels:
        entry = metrics.label(label)
        low, high = _ci(entry.auroc_ci)
        point = points.get(label)
        rows.append(
            {
                "label": label,
                "learnt": card.learnt(label),
                "training positives": card.training_positives.get(label),
                "auroc": _number(entry.auroc),
                "ci_low": low,
                "ci_high": high,
                "average_precision": _number(entry.average_precision),
                "ece": _number(entry.ece),
                "positives": entry.positives,
                "known": entry.known,
                "operating point": point,
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("auroc", "ci_low", "ci_high", "average_precision", "ece"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def call_frame(card: ModelCard) -> pd.DataFrame:
    """The call rule's per-label inputs (:mod:`core.calls`): held-out AUROC and interval, counts, whether the label
    can be called, its operating point with the held-out sensitivity and specificity there, or why not."""
    _, evidence = card_evidence(card)
    rows = []
    for label, e in (evidence.labels.items() if evidence is not None else ()):
        rows.append({"label": label, "held-out AUROC": e.auroc,
                     "CI low": e.auroc_ci[0] if e.auroc_ci else None, "CI high": e.auroc_ci[1] if e.auroc_ci else None,
                     "positives": e.positives, "negatives": e.negatives, "callable": e.callable,
                     "operating point": e.threshold, "sensitivity": e.sensitivity, "specificity": e.specificity,
                     "why not": e.reason})
    return pd.DataFrame(rows)


def auroc_figure(frame: pd.DataFrame, title: str = "Per-label test AUROC (95% CI)", height: int | None = None
                 ) -> go.Figure:
    """Horizontal bars of AUROC with CI whiskers and each label's test positives, from :func:`auroc_frame`.

    A label with fewer than :data:`FEW_TEST_POSITIVES` test positives is drawn apart, at the bottom, as a hollow
    grey bar marked "unreliable": an AUROC from one positive is 0 or 1 by luck (Edema's 1.000), and must not look
    like the model's best label. Labels without an AUROC are left out.
    """
    shown = frame.dropna(subset=["auroc"]).copy()
    positives = pd.to_numeric(shown["positives"], errors="coerce")
    shown["few"] = positives.isna() | (positives < FEW_TEST_POSITIVES)
    # Reliable labels best first, then the unreliable ones; plotly draws the first category at the bottom.
    shown = pd.concat([shown[~shown["few"]].sort_values("auroc", ascending=False),
                       shown[shown["few"]].sort_values("auroc", ascending=False)]).iloc[::-1]
    names = [f"{lab} ({int(n)} test +)" if pd.notna(n) else f"{lab} (positives not reported)"
             for lab, n in zip(shown["label"], pd.to_numeric(shown["positives"], errors="coerce"), strict=True)]
    upper = (shown["ci_high"] - shown["auroc"]).clip(lower=0).fillna(0)
    lower = (shown["auroc"] - shown["ci_low"]).clip(lower=0).fillna(0)
    ci = [f"{a:.3f} (CI {lo:.2f}–{hi:.2f})" if pd.notna(lo) and pd.notna(hi) else f"{a:.3f} (no CI)"
          for a, lo, hi in zip(shown["auroc"], shown["ci_low"], shown["ci_high"], strict=True)]
    text = [f"{c} · unreliable" if few else c for c, few in zip(ci, shown["few"], strict=True)]
    fig = go.Figure(
        go.Bar(
            x=shown["auroc"],
            y=names,
            orientation="h",
            marker=dict(color=["rgba(0,0,0,0)" if few else "#2b6cb0" for few in shown["few"]],
                        line=dict(color=["#6b7280" if few else "#2b6cb0" for few in shown["few"]], width=1.5),
                        pattern=dict(shape=["/" if few else "" for few in shown["few"]], fgcolor="#9ca3af")),
            error_x=dict(type="data", symmetric=False, array=upper, arrayminus=lower, thickness=1.5, color="#1a202c"),
            text=text,
            textposition="inside",
            insidetextanchor="start",
            textfont=dict(size=12, color=["#1a202c" if few else "#ffffff" for few in shown["few"]]),
            hovertemplate="%{y}: AUROC %{text}<extra></extra>",
        )
    )
    fig.add_vline(x=0.5, line=dict(color="#a0aec0", dash="dot"), annotation_text="chance", annotation_position="top")
    if shown["few"].any() and (~shown["few"]).any():
        fig.add_hline(y=int(shown["few"].sum()) - 0.5, line=dict(color="#9ca3af", width=1))
    fig.update_layout(
        title=dict(text=title + f"; hollow: fewer than {FEW_TEST_POSITIVES} test positives, unreliable"),
        height=height or 90 + 30 * len(shown),
        xaxis=dict(title="AUROC", range=[0.0, 1.0], tickfont=dict(size=12)),
        yaxis=dict(tickfont=dict(size=12)),
        font=dict(size=12),
        margin=dict(l=10, r=10, t=50, b=10),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def summary_table(card: ModelCard) -> pd.DataFrame:
    """Key facts of a card as ``field, value`` rows (variant, date, loss, training, data sizes, headline metrics)."""
    training, data, model = card.training, card.data, card.model
    test = card.split_metrics("test")
    cv = card.cross_validation

    def fmt(value: Any, digits: int = 3) -> str:
        number = _number(value)
        if number is not None and not float(number).is_integer():
            return f"{number:.{digits}f}"
        return "not reported" if value is None or value == "" else str(value)

    ci_low, ci_high = _ci(test.macro_auroc_ci)
    macro = fmt(test.macro_auroc)
    if ci_low is not None and ci_high is not None:
        macro += f" (95% CI {ci_low:.3f}–{ci_high:.3f})"
    rows = [
        ("Variant", card.variant),
        ("Created", card.created),
        ("Backbone", model.backbone),
        ("Initialisation", initialisation(card)),
        ("Input", f"{or_unknown(model.input_size)} px, {or_unknown(model.in_channels)} channel(s), "
         f"CAM grid {model.cam_grid}"),
        ("Loss", card.loss.describe()),
        ("Epochs run (best)", f"{or_unknown(training.epochs_run)} ({or_unknown(training.best_epoch)})"),
        ("Training time (s)", fmt(training.seconds, 0)),
        ("Images train / val / test",
         f"{or_unknown(data.train_images)} / {or_unknown(data.val_images)} / {or_unknown(data.test_images)}"
         + (" (trained on train+val)" if data.trained_on == "train+val" else "")),
        ("Cross-validation macro AUROC",
         f"{fmt(cv.cv_macro_auroc_mean)} ± {fmt(cv.cv_macro_auroc_std)} over {cv.folds} folds"
         if cv else "not reported"),
        ("Test macro AUROC", macro),
        ("Test weighted AUROC (paper's figure)", fmt(test.weighted_auroc)),
        ("Test macro AUROC, 14 CheXpert labels", fmt(test.macro_auroc_chexpert)),
        ("Test ECE", fmt(test.ece)),
        ("Test violation rate", fmt(test.violation_rate)),
        ("Not learnt", ", ".join(card.labels_not_learnt) or "none"),
        ("Reproduce", card.reproduce),
    ]
    return pd.DataFrame([{"field": k, "value": fmt(v) if not isinstance(v, str) else v} for k, v in rows])


def initialisation(card: ModelCard) -> str:
    """Where the weights started: a pretraining run (its one-line description), imported, or random."""
    if card.training.pretraining is not None:
        return card.training.pretraining.describe()
    if card.imported is not None:
        return f"imported from {card.imported.source or '?'}"
    return "random (no pretraining)" if card.training.config else "not reported"


def or_unknown(value: Any) -> str:
    """``value`` as text, or "?" when the card does not report it."""
    return "?" if value is None else str(value)


def penalty_frame(card: ModelCard) -> pd.DataFrame:
    """The card's edge penalties: ``parent, child, n_parent_negative, n_inconsistent, penalty``."""
    columns = ["parent", "child", "n_parent_negative", "n_inconsistent", "penalty"]
    return pd.DataFrame([{c: getattr(r, c) for c in columns} for r in card.penalty_table], columns=columns)


def calibration_frame(card: ModelCard, labels: Sequence[str]) -> pd.DataFrame | None:
    """Per-label temperature (``label, temperature, note``), or ``None`` when the card reports no calibration."""
    calibration = card.calibration
    if calibration is None or len(calibration.temperature) != len(labels):
        return None
    kept = calibration.kept_shared
    return pd.DataFrame({"label": list(labels), "temperature": list(calibration.temperature),
                         "note": [kept.get(label, "fitted") for label in labels]})


def data_sources(card: ModelCard) -> list[dict[str, str]]:
    """The card's data sources (name, url, licence, citation), as strings."""
    keys = ("name", "url", "licence", "citation")
    return [{k: getattr(s, k) for k in keys} for s in card.data.sources]


def plot_paths(card: ModelCard, weights_dir: str | Path) -> dict[str, Path]:
    """Existing plot images named in the card's ``plots``, resolved inside ``weights_dir``.

    A path that points outside the weights folder is ignored: a card must not make the dashboard read other files.
    """
    folder = Path(weights_dir).resolve()
    found: dict[str, Path] = {}
    for name, rel in card.plots.items():
        if not rel:
            continue
        path = (folder / rel).resolve()
        if path.is_relative_to(folder) and path.is_file():
            found[str(name)] = path
    return found


def pointing_frame(card: ModelCard) -> tuple[pd.DataFrame, str] | None:
    """The pointing game as a table (the map, the centre and a random point) and a one-line verdict; ``None``
    when the card has none."""
    result = card.pointing
    if result is None or not result.pairs:
        return None
    rows = [
        {"pointer": "the model's map (its maximum)", "hits": result.hits, "share": result.rate},
        {"pointer": "the image centre (baseline)", "hits": result.centre_hits, "share": result.centre_rate},
        {"pointer": "a random point (expected)", "hits": None, "share": result.random_rate},
    ]
    for split, entry in sorted(result.by_split.items()):
        if entry.pairs:
            rows.append({"pointer": f"the map, {split} images only ({entry.pairs})", "hits": entry.hits,
                         "share": entry.hits / entry.pairs})
    if result.rate is None or result.centre_rate is None:
        verdict = "Not enough boxed images to judge."
    elif result.rate > result.centre_rate:
        verdict = (f"The maps point into the radiologists' box more often than the image centre does "
                   f"({result.pairs} findings).")
    else:
        verdict = (f"The maps do no better than always pointing at the image centre ({result.pairs} findings): "
                   "they are not evidence of where the finding is.")
    return pd.DataFrame(rows), verdict


def population_frame(card: ModelCard) -> pd.DataFrame | None:
    """What the out-of-population checks flag on films the model never trained on (``ood.measured``): per image
    set, the share flagged by each check and by any, and whether a flag there is a false alarm (adults) or a
    detection (children); ``None`` when the card has no such measurement."""
    measured = card.ood.measured if card.ood is not None else {}
    rows = []
    for key, (title, adults) in MEASURED_SETS.items():
        m = measured.get(key)
        if not m:
            continue
        rows.append({"films": title, "images": int(m["images"]),
                     "a flag is": "a false alarm" if adults else "a detection",
                     "child-film check": m["population"], "feature distance": m["distance"],
                     "header": m["header"], "any check": m["any"]})
    return pd.DataFrame(rows) if rows else None


def label_map_frame(card: ModelCard) -> pd.DataFrame | None:
    """An imported model's label map (taxonomy label, how it is obtained, from which outputs), or ``None``."""
    imported = card.imported
    if imported is None:
        return None
    kinds = {"direct": "its own output", "nih": "NIH class(es) standing in", "derived": "derived, not learnt (max)",
             "none": "no output: not learnt"}
    return pd.DataFrame([{"label": row.label, "from": kinds.get(row.kind, row.kind), "outputs": ", ".join(row.outputs)}
                         for row in imported.label_map])
