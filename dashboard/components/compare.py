"""Side-by-side views of several variants' analyses of the same image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.analysis import Analysis

_PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795")


def _check_same_labels(analyses: Mapping[str, Analysis]) -> list[str]:
    if not analyses:
        raise ValueError("no analyses to compare")
    first = next(iter(analyses.values()))
    for name, analysis in analyses.items():
        if list(analysis.labels) != list(first.labels):
            raise ValueError(f"variant {name!r} has different output labels; it cannot be compared label by label")
    return list(first.labels)


def comparison_frame(analyses: Mapping[str, Analysis]) -> pd.DataFrame:
    """One row per label that every variant learnt: each variant's MC mean and std, and ``disagreement`` = max - min
    of the means. Labels some variant never learnt are left out (their outputs carry no meaning to compare).

    Rows are sorted by disagreement, largest first (ties keep taxonomy order).
    """
    all_labels = _check_same_labels(analyses)
    labels = [lab for lab in all_labels if all(a.learnt(lab) for a in analyses.values())]
    keep = [all_labels.index(lab) for lab in labels]
    data: dict[str, list] = {"label": labels}
    means = []
    for name, analysis in analyses.items():
        mean = np.asarray(analysis.mc_mean, dtype=float)[keep]
        means.append(mean)
        data[f"{name} mean"] = mean.tolist()
        data[f"{name} std"] = np.asarray(analysis.mc_std, dtype=float)[keep].tolist()
        data[f"{name} call"] = [analysis.call(lab) for lab in labels]
    stacked = np.vstack(means) if labels else np.zeros((len(analyses), 0))
    data["disagreement"] = (stacked.max(axis=0) - stacked.min(axis=0)).tolist()
    frame = pd.DataFrame(data)
    return frame.sort_values("disagreement", ascending=False, kind="stable").reset_index(drop=True)


def grouped_bar_figure(
    analyses: Mapping[str, Analysis], labels: Sequence[str] | None = None, height: int = 460
) -> go.Figure:
    """Grouped bars of MC mean per label and variant, with ±std whiskers; ``labels`` fixes the order shown."""
    all_labels = _check_same_labels(analyses)
    shown = list(labels) if labels is not None else all_labels
    fig = go.Figure()
    for k, (name, analysis) in enumerate(analyses.items()):
        idx = [all_labels.index(lab) for lab in shown]
        fig.add_trace(
            go.Bar(
                name=name,
                x=shown,
                y=[float(analysis.mc_mean[i]) for i in idx],
                error_y=dict(type="data", array=[float(analysis.mc_std[i]) for i in idx], visible=True, thickness=1.2),
                marker_color=_PALETTE[k % len(_PALETTE)],
                hovertemplate="%{x}<br>" + name + ": %{y:.3f} ± %{error_y.array:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=height,
        yaxis=dict(title="P (MC mean ± std)", range=[0, 1.05], tickfont=dict(size=12)),
        xaxis=dict(tickangle=-40, tickfont=dict(size=12)),
        font=dict(size=12),
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def violations_frame(analyses: Mapping[str, Analysis]) -> pd.DataFrame:
    """Every variant's taxonomy violations: ``variant, parent, child, parent P, child P``."""
    rows = [
        {
            "variant": name,
            "parent": v.parent,
            "child": v.child,
            "parent P": float(v.parent_probability),
            "child P": float(v.child_probability),
        }
        for name, analysis in analyses.items()
        for v in analysis.violations
    ]
    return pd.DataFrame(rows, columns=["variant", "parent", "child", "parent P", "child P"])
