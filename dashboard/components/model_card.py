"""Model-card views: per-label AUROC with confidence intervals, penalties, calibration and provenance.

Cards are read leniently: the registry has already checked the parts inference relies on, and a section that is
missing or oddly shaped is shown as "not reported" instead of breaking the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

DISCLAIMER = "Research use only. Not a medical device: not for diagnosis, triage or treatment decisions."


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _ci(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _number(value[0]), _number(value[1])
    return None, None


def auroc_frame(card: Mapping[str, Any], labels: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per-label metrics of ``split``: ``label, auroc, ci_low, ci_high, average_precision, ece, positives, known``.

    Labels the card does not report get empty (NaN) cells, so the table always has one row per output.
    """
    per_label = (((card.get("metrics") or {}).get(split) or {}).get("per_label")) or {}
    rows = []
    for label in labels:
        entry = per_label.get(label) or {}
        low, high = _ci(entry.get("auroc_ci"))
        rows.append(
            {
                "label": label,
                "auroc": _number(entry.get("auroc")),
                "ci_low": low,
                "ci_high": high,
                "average_precision": _number(entry.get("average_precision")),
                "ece": _number(entry.get("ece")),
                "positives": entry.get("positives"),
                "known": entry.get("known"),
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("auroc", "ci_low", "ci_high", "average_precision", "ece"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def auroc_figure(frame: pd.DataFrame, title: str = "Per-label test AUROC (95% CI)", height: int = 560) -> go.Figure:
    """Horizontal bars of AUROC with CI whiskers, from :func:`auroc_frame`; labels without AUROC are left out."""
    shown = frame.dropna(subset=["auroc"]).iloc[::-1]
    upper = (shown["ci_high"] - shown["auroc"]).clip(lower=0).fillna(0)
    lower = (shown["auroc"] - shown["ci_low"]).clip(lower=0).fillna(0)
    fig = go.Figure(
        go.Bar(
            x=shown["auroc"],
            y=shown["label"],
            orientation="h",
            marker_color="#2b6cb0",
            error_x=dict(type="data", symmetric=False, array=upper, arrayminus=lower, thickness=1.2),
            hovertemplate="%{y}: AUROC %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0.5, line=dict(color="#a0aec0", dash="dot"), annotation_text="chance", annotation_position="top")
    fig.update_layout(
        title=dict(text=title),
        height=height,
        xaxis=dict(title="AUROC", range=[0.0, 1.0]),
        margin=dict(l=10, r=10, t=50, b=10),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def summary_table(card: Mapping[str, Any]) -> pd.DataFrame:
    """Key facts of a card as ``field, value`` rows (variant, date, loss, training, data sizes, headline metrics)."""
    loss = card.get("loss") or {}
    training = card.get("training") or {}
    data = card.get("data") or {}
    test = (card.get("metrics") or {}).get("test") or {}
    model = card.get("model") or {}

    def fmt(value: Any, digits: int = 3) -> str:
        number = _number(value)
        if number is not None and not float(number).is_integer():
            return f"{number:.{digits}f}"
        return "not reported" if value is None or value == "" else str(value)

    ci_low, ci_high = _ci(test.get("macro_auroc_ci"))
    macro = fmt(test.get("macro_auroc"))
    if ci_low is not None and ci_high is not None:
        macro += f" (95% CI {ci_low:.3f}–{ci_high:.3f})"
    rows = [
        ("Variant", card.get("variant")),
        ("Created", card.get("created")),
        ("Backbone", model.get("backbone")),
        ("Input", f"{model.get('input_size', '?')} px, {model.get('in_channels', '?')} channel(s)"),
        ("Loss", f"penalty {loss.get('penalty_source', '?')}, λ = {loss.get('lambda', '?')}, "
         f"violation {loss.get('violation', '?')}"),
        ("Epochs run (best)", f"{training.get('epochs_run', '?')} ({training.get('best_epoch', '?')})"),
        ("Training time (s)", fmt(training.get("seconds"), 0)),
        ("Images train / val / test",
         f"{data.get('train_images', '?')} / {data.get('val_images', '?')} / {data.get('test_images', '?')}"),
        ("Test macro AUROC", macro),
        ("Test weighted AUROC (paper's figure)", fmt(test.get("weighted_auroc"))),
        ("Test macro AUROC, 14 CheXpert labels", fmt(test.get("macro_auroc_chexpert"))),
        ("Test ECE", fmt(test.get("ece"))),
        ("Test violation rate", fmt(test.get("violation_rate"))),
        ("Reproduce", card.get("reproduce")),
    ]
    return pd.DataFrame([{"field": k, "value": fmt(v) if not isinstance(v, str) else v} for k, v in rows])


def penalty_frame(card: Mapping[str, Any]) -> pd.DataFrame:
    """The card's edge penalties: ``parent, child, n_parent_negative, n_inconsistent, penalty``."""
    columns = ["parent", "child", "n_parent_negative", "n_inconsistent", "penalty"]
    rows = [r for r in card.get("penalty_table") or [] if isinstance(r, Mapping)]
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def calibration_frame(card: Mapping[str, Any], labels: Sequence[str]) -> pd.DataFrame | None:
    """Per-label temperature (``label, temperature``), or ``None`` when the card reports no calibration."""
    calibration = card.get("calibration")
    if not isinstance(calibration, Mapping):
        return None
    temps = calibration.get("temperature")
    if not isinstance(temps, list) or len(temps) != len(labels):
        return None
    return pd.DataFrame({"label": list(labels), "temperature": [_number(t) for t in temps]})


def data_sources(card: Mapping[str, Any]) -> list[dict[str, str]]:
    """The card's data sources (name, url, licence, citation), as strings."""
    sources = (card.get("data") or {}).get("sources") or []
    keys = ("name", "url", "licence", "citation")
    return [{k: str(s.get(k) or "") for k in keys} for s in sources if isinstance(s, Mapping)]


def plot_paths(card: Mapping[str, Any], weights_dir: str | Path) -> dict[str, Path]:
    """Existing plot images named in ``card["plots"]``, resolved inside ``weights_dir``.

    A path that points outside the weights folder is ignored: a card must not make the dashboard read other files.
    """
    folder = Path(weights_dir).resolve()
    plots = card.get("plots") or {}
    found: dict[str, Path] = {}
    if not isinstance(plots, Mapping):
        return found
    for name, rel in plots.items():
        if not isinstance(rel, str) or not rel:
            continue
        path = (folder / rel).resolve()
        if path.is_relative_to(folder) and path.is_file():
            found[str(name)] = path
    return found
