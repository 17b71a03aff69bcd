"""The taxonomy DAG as a plotly figure: nodes coloured by probability, halos sized by MC uncertainty.

Layout: one row per topological layer (``Taxonomy.layers()``, roots on top), nodes ordered inside each row by the
barycentre heuristic (a few down/up sweeps) so that edges cross as little as possible, then x positions pulled
towards the mean of their neighbours with a minimum gap. The taxonomy is a DAG (Cardiomegaly and Pneumonia have
two parents), so every parent -> child edge is drawn; none is dropped to make it look like a tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from core.analysis import Analysis
from core.taxonomy import Taxonomy

COLORSCALE = "Viridis"
NODE_SIZE = 22
# Halo ring thickness in px per unit of MC standard deviation: linear, so the visual reads as a measure.
HALO_PX_PER_STD = 120.0
HALO_MAX_RING = 22.0
REFERENCE_STDS = (0.02, 0.05, 0.10)
EDGE_COLOR = "#9aa5b1"
OUTRANK_COLOR = "#d62728"
SELECTED_COLOR = "#111111"

_MIN_GAP = 1.0
# In row units: how far above a node's centre its marker starts.
_MARKER_TOP = 0.1


def _rows(taxonomy: Taxonomy) -> dict[str, int]:
    """Row of each label: its topological generation (longest path from a root), roots in row 0."""
    return {node: r for r, layer in enumerate(taxonomy.layers()) for node in layer}


def _spanning_children(taxonomy: Taxonomy, row: Mapping[str, int]) -> dict[str, list[str]]:
    """Each label under one parent only (its deepest one), children in taxonomy-file order.

    A label with two parents (Cardiomegaly, Pneumonia) hangs under the deeper one, so chains such as
    Enlarged Cardiomediastinum -> Cardiomegaly stay vertical; the other parent's edge is still drawn.
    """
    children: dict[str, list[str]] = {node: [] for node in taxonomy.labels}
    for parent, child in taxonomy.edges:
        primary = max(taxonomy.graph.predecessors(child), key=lambda p: (row[p], -taxonomy.edges.index((p, child))))
        if parent == primary:
            children[parent].append(child)
    return children


def tree_positions(taxonomy: Taxonomy, gap: float = 1.0) -> dict[str, tuple[float, float]]:
    """``label -> (x, y)`` for a top-down layered drawing of the DAG (roots at the largest y).

    A tidy-tree layout over a spanning tree: subtrees are packed left to right, each shifted just enough to keep
    ``gap`` between neighbours on every row they share; a parent sits over the middle of its children.
    """
    row = _rows(taxonomy)
    children = _spanning_children(taxonomy, row)

    def layout(node: str) -> tuple[dict[str, float], dict[int, tuple[float, float]]]:
        xs: dict[str, float] = {}
        contour: dict[int, tuple[float, float]] = {}
        last_root: float | None = None
        for kid in children[node]:
            kx, kc = layout(kid)
            # Siblings keep their order and spacing; their subtrees only need to clear each other row by row.
            shift = 0.0 if last_root is None else last_root + gap - kx[kid]
            for r, (lo, _) in kc.items():
                if r in contour:
                    shift = max(shift, contour[r][1] + gap - lo)
            for n, v in kx.items():
                xs[n] = v + shift
            for r, (lo, hi) in kc.items():
                old = contour.get(r)
                contour[r] = (lo + shift, hi + shift) if old is None else (min(old[0], lo + shift), hi + shift)
            last_root = kx[kid] + shift
        kids = children[node]
        xs[node] = (xs[kids[0]] + xs[kids[-1]]) / 2.0 if kids else 0.0
        contour[row[node]] = (xs[node], xs[node])
        return xs, contour

    roots = [n for n in taxonomy.labels if taxonomy.graph.in_degree(n) == 0]
    virtual = "\0root"
    children[virtual] = roots
    row[virtual] = -1
    xs, _ = layout(virtual)
    xs.pop(virtual)
    lo = min(xs.values())
    top = max(row.values())
    return {node: (xs[node] - lo, float(top - row[node])) for node in taxonomy.labels}


def halo_size(std: np.ndarray | float) -> np.ndarray:
    """Marker diameter (px) of the uncertainty halo for a given MC standard deviation."""
    ring = np.minimum(np.asarray(std, dtype=float) * HALO_PX_PER_STD, HALO_MAX_RING)
    return NODE_SIZE + 2.0 * ring


def outranking_edges(taxonomy: Taxonomy, mean: Mapping[str, float]) -> list[tuple[str, str]]:
    """Edges whose child has a higher MC mean than its parent (drawn red and dashed)."""
    return [(p, c) for p, c in taxonomy.edges if mean[c] > mean[p]]


def _wrap(label: str, width: int = 12) -> str:
    words, lines, line = label.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "<br>".join(lines)


def _caption_depth(label: str) -> float:
    """How far (row units) below a node its caption ends: marker radius plus one step per caption line."""
    return _MARKER_TOP + 0.135 * (_wrap(label).count("<br>") + 2) + 0.03


def _edge_path(
    p0: tuple[float, float], p1: tuple[float, float], depth: float = 0.42, bend: float = 0.45
) -> tuple[list, list]:
    """Parent -> child path from below the parent's caption to the top of the child's marker.

    An edge that skips a row bows sideways, so it never hides behind the node in between.
    """
    (x0, y0), (x1, y1) = p0, p1
    y0, y1 = y0 - depth, y1 + _MARKER_TOP
    if abs(p0[1] - p1[1]) <= 1.0 + 1e-9:
        return [x0, x1], [y0, y1]
    t = np.linspace(0.0, 1.0, 24)
    cx, cy = (x0 + x1) / 2.0 + bend * abs(p0[1] - p1[1]), (y0 + y1) / 2.0
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1
    ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1
    return xs.tolist(), ys.tolist()


def _edge_trace(edges: list[tuple[str, str]], pos: Mapping[str, tuple[float, float]], **line) -> go.Scatter:
    xs: list[float | None] = []
    ys: list[float | None] = []
    for parent, child in edges:
        ex, ey = _edge_path(pos[parent], pos[child], depth=_caption_depth(parent))
        xs += ex + [None]
        ys += ey + [None]
    return go.Scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip")


def taxonomy_figure(
    analysis: Analysis,
    taxonomy: Taxonomy,
    auroc: Mapping[str, float | None] | None = None,
    selected: str | None = None,
    height: int = 560,
    title: str | None = None,
) -> go.Figure:
    """Plotly figure of the taxonomy for one analysis.

    Args:
        analysis: Supplies ``mc_mean`` (node colour), ``mc_std`` (halo) and ``probability`` (hover).
        taxonomy: The DAG; its labels must be the analysis labels.
        auroc: Optional per-label test AUROC from the model card, shown on hover.
        selected: Label drawn with a heavy outline (the one whose Grad-CAM is shown).
        height: Figure height in px.
        title: Optional title (e.g. the variant name in the comparison view).

    The node trace carries ``customdata = label`` so a plotly click selection names the label.
    """
    if list(analysis.labels) != list(taxonomy.labels):
        raise ValueError("the analysis labels do not match the taxonomy: was the model trained on another one?")
    pos = tree_positions(taxonomy)
    labels = list(taxonomy.labels)
    mean = {lab: float(analysis.mc_mean[i]) for i, lab in enumerate(labels)}
    std = np.array([float(analysis.mc_std[i]) for i in range(len(labels))])
    xs = [pos[lab][0] for lab in labels]
    ys = [pos[lab][1] for lab in labels]

    outrank = outranking_edges(taxonomy, mean)
    normal = [e for e in taxonomy.edges if e not in outrank]
    fig = go.Figure()
    edge = _edge_trace(normal, pos, color=EDGE_COLOR, width=1.5)
    edge.update(name="parent → child", showlegend=True)
    fig.add_trace(edge)
    bad = _edge_trace(outrank, pos, color=OUTRANK_COLOR, width=2.5, dash="dash")
    bad.update(name="child outranks parent", showlegend=True, visible=True if outrank else "legendonly")
    fig.add_trace(bad)

    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            marker=dict(size=halo_size(std), color="rgba(230, 126, 34, 0.35)", line=dict(width=0)),
            hoverinfo="skip",
            showlegend=False,
            name="uncertainty halo",
            unselected=dict(marker=dict(opacity=1.0)),
        )
    )

    hover = []
    for i, lab in enumerate(labels):
        lines = [
            f"<b>{lab}</b>",
            f"P = {mean[lab]:.3f} ± {std[i]:.3f} (MC mean ± std, n={analysis.mc_samples})",
            f"deterministic P = {float(analysis.probability[i]):.3f}",
        ]
        value = (auroc or {}).get(lab)
        lines.append(f"test AUROC = {value:.3f}" if value is not None else "test AUROC: not reported")
        hover.append("<br>".join(lines))
    line_width = [4.0 if lab == selected else 1.0 for lab in labels]
    line_color = [SELECTED_COLOR if lab == selected else "#ffffff" for lab in labels]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers+text",
            text=[f"{_wrap(lab)}<br><b>{mean[lab]:.2f}</b>" for lab in labels],
            textposition="bottom center",
            textfont=dict(size=10, color="#1a202c"),
            customdata=labels,
            hovertext=hover,
            hoverinfo="text",
            marker=dict(
                size=NODE_SIZE,
                color=[mean[lab] for lab in labels],
                colorscale=COLORSCALE,
                cmin=0.0,
                cmax=1.0,
                line=dict(width=line_width, color=line_color),
                colorbar=dict(title=dict(text="P (MC mean)", side="right"), thickness=10, len=0.7, x=1.0, xpad=0),
            ),
            name="labels",
            showlegend=False,
            # A click selects a point; plotly would otherwise fade every other node.
            selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=1.0), textfont=dict(color="#1a202c")),
        )
    )

    # Uncertainty key in the lower-left corner, drawn with the same size mapping as the halos.
    x_max = max(xs)
    key_x = [x_max - 2.0 * _MIN_GAP + 0.7 * k for k in range(len(REFERENCE_STDS))]
    key_y = [min(ys)] * len(REFERENCE_STDS)
    fig.add_trace(
        go.Scatter(
            x=key_x,
            y=key_y,
            mode="markers+text",
            marker=dict(size=halo_size(np.array(REFERENCE_STDS)), color="rgba(230, 126, 34, 0.35)"),
            text=[f"σ={s:.2f}" for s in REFERENCE_STDS],
            textposition="bottom center",
            textfont=dict(size=9, color="#1a202c"),
            hoverinfo="skip",
            showlegend=False,
            name="uncertainty key",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=key_x,
            y=key_y,
            mode="markers",
            marker=dict(size=NODE_SIZE * 0.6, color="#bbbbbb"),
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.add_annotation(
        x=key_x[0] - 0.35, y=key_y[0] + 0.42, xanchor="left", showarrow=False, font=dict(size=10, color="#1a202c"),
        text="halo = MC uncertainty (std)",
    )

    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        title=dict(text=title) if title else None,
        xaxis=dict(visible=False, range=[min(xs) - 0.7, x_max + 0.7]),
        yaxis=dict(visible=False, range=[min(ys) - 0.75, max(ys) + 0.35]),
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
        clickmode="event+select",
        dragmode=False,
        hoverlabel=dict(bgcolor="white"),
    )
    return fig


def label_from_selection(selection: Mapping | None, labels: Sequence[str]) -> str | None:
    """The label a plotly click selected (from ``st.plotly_chart(on_select=...)``'s state), if any."""
    if not selection:
        return None
    points = (selection.get("selection") or {}).get("points") or []
    for point in points:
        value = point.get("customdata")
        if isinstance(value, list):  # plotly sends customdata as a list when it is array-valued
            value = value[0] if value else None
        if isinstance(value, str) and value in labels:
            return value
    return None
