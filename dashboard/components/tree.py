"""The taxonomy DAG as a plotly figure: nodes coloured by probability, halos sized by MC uncertainty.

What each mark claims: the node colour is the MC-mean probability (perceptually uniform, colour-blind-safe
viridis scale); a pink ring around the node and "▲" mean the record's call is ``above`` (:mod:`core.calls`: a label the
model separates on held-out data, at or above its operating point), i.e. the model calls it positive; out of
population every node is grey and nothing is marked; a
hollow grey node marked "not learnt" is an output the model had too few positive training images to learn (no
number is shown for it); a red dashed edge is a hierarchy violation by the project's one rule (child above 0.5
while its parent is below 0.5, on the MC means; edges touching a not-learnt label are never flagged).

Layout: one row per topological layer (``Taxonomy.layers()``, roots on top), nodes ordered inside each row by the
barycentre heuristic (a few down/up sweeps) so that edges cross as little as possible, then x positions pulled
towards the mean of their neighbours with a minimum gap. The taxonomy is a DAG (Cardiomegaly and Pneumonia have
two parents), so every parent -> child edge is drawn; none is dropped to make it look like a tree.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from core.analysis import Analysis
from core.taxonomy import Taxonomy

COLORSCALE = "Viridis"
#: Out of population: probabilities drawn in light greys only, so no colour reads as a finding.
GREYED_SCALE = [[0.0, "#e5e7eb"], [1.0, "#9ca3af"]]
NODE_SIZE = 22
# Halo ring thickness in px per unit of MC standard deviation: linear, so the visual reads as a measure.
HALO_PX_PER_STD = 120.0
HALO_MAX_RING = 22.0
REFERENCE_STDS = (0.02, 0.05, 0.10)
EDGE_COLOR = "#9aa5b1"
VIOLATION_COLOR = "#d62728"
SELECTED_COLOR = "#1e3a8a"
SELECTED_FILL = "rgba(43, 108, 176, 0.14)"
#: The "called" ring: a separate ring around the node, visible on any node colour (it sits on the page background).
POSITIVE_COLOR = "#c2185b"
NOT_LEARNT_COLOR = "#9ca3af"
HALO_COLOR = "rgba(230, 126, 34, 0.35)"
LABEL_FONT_PX = 12
CALLED_RING = NODE_SIZE + 5  # just outside the node's white outline, clear of its caption
# Words too long for one caption line break here (a hyphen is added), so no caption runs into its neighbour's.
_BREAKS = {"Cardiomediastinum": 6}

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


def tree_order(taxonomy: Taxonomy) -> list[str]:
    """Labels as the tree shows them: row by row from the roots, left to right (the keyboard and PDF order)."""
    pos = tree_positions(taxonomy)
    return sorted(taxonomy.labels, key=lambda label: (-pos[label][1], pos[label][0]))


def halo_size(std: np.ndarray | float) -> np.ndarray:
    """Marker diameter (px) of the uncertainty halo for a given MC standard deviation."""
    ring = np.minimum(np.asarray(std, dtype=float) * HALO_PX_PER_STD, HALO_MAX_RING)
    return NODE_SIZE + 2.0 * ring


def violation_edges(analysis: Analysis) -> list[tuple[str, str]]:
    """The analysis's violations (the taxonomy's one rule, not-learnt labels left out), drawn red and dashed."""
    return [(v.parent, v.child) for v in analysis.violations]


def node_text(analysis: Analysis, label: str) -> str:
    """The caption under a node: name, then the MC mean with ▲ when at/above the operating point, or
    "not learnt"."""
    if not analysis.learnt(label):
        return f"{_wrap(label)}<br><i>not learnt</i>"
    mean = float(analysis.mc_mean[analysis.index(label)])
    mark = " ▲" if analysis.call(label) == "above" else ""
    return f"{_wrap(label)}<br><b>{mean:.2f}</b>{mark}"


def node_hover(analysis: Analysis, label: str, auroc_note: str | None, training_positives: int | None) -> str:
    """Hover text: the numbers, the operating point and what it means, the label's test AUROC note."""
    i = analysis.index(label)
    if not analysis.learnt(label):
        count = "no" if not training_positives else f"only {training_positives}"
        return (f"<b>{label}</b><br>Not learnt: {count} positive training images, so the model's output for this "
                "label carries no meaning and is not shown.")
    lines = [
        f"<b>{label}</b>",
        f"P = {float(analysis.mc_mean[i]):.3f} ± {float(analysis.mc_std[i]):.3f} (MC mean ± std, "
        f"n={analysis.mc_samples})",
        f"deterministic P = {float(analysis.probability[i]):.3f}",
    ]
    # The decision is the record's (core.calls): never re-derived here.
    decision, reason = analysis.call(label), analysis.call_reason(label)
    threshold = analysis.operating_points.get(label)
    if decision == "above":
        lines.append(f"▲ called positive: at or above its operating point {threshold:.3f}"
                     + (f" ({reason})" if reason else ""))
    elif decision == "below":
        lines.append(f"below its operating point {threshold:.3f}: not called")
    else:
        lines.append(_wrap_hover(reason or "no call"))
    if analysis.cam_labels and analysis.cam_labels[i] != label:
        lines.append(f"probability (and map) from its descendant {analysis.cam_labels[i]} (max constraint)")
    lines.append(f"test AUROC {auroc_note}" if auroc_note else "test AUROC: not reported")
    return "<br>".join(lines)


def _wrap_hover(text: str, width: int = 70) -> str:
    return "<br>".join(textwrap.wrap(text, width))


def _wrap(label: str, width: int = 12) -> str:
    words, lines, line = [], [], ""
    for word in label.split():
        if len(word) > width + 1:
            cut = _BREAKS.get(word, len(word) // 2)
            words += [word[:cut] + "-", word[cut:]]
        else:
            words.append(word)
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line}{word}" if line.endswith("-") else f"{line} {word}".strip()
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


def _edge_trace(edges: list[tuple[str, str]], pos: Mapping[str, tuple[float, float]], **line) -> dict:
    xs: list[float | None] = []
    ys: list[float | None] = []
    for parent, child in edges:
        ex, ey = _edge_path(pos[parent], pos[child], depth=_caption_depth(parent))
        xs += ex + [None]
        ys += ey + [None]
    return dict(type="scatter", x=xs, y=ys, mode="lines", line=line, hoverinfo="skip")


def taxonomy_figure(analysis: Analysis, taxonomy: Taxonomy, **options: Any) -> go.Figure:
    """Plotly figure of the taxonomy for one analysis (see the module docstring for what each mark means): the
    validated :func:`taxonomy_spec`, whose keyword arguments ``options`` are."""
    return go.Figure(taxonomy_spec(analysis, taxonomy, **options))


def taxonomy_spec(
    analysis: Analysis,
    taxonomy: Taxonomy,
    auroc_notes: Mapping[str, str] | None = None,
    selected: str | None = None,
    height: int = 560,
    title: str | None = None,
    training_positives: Mapping[str, int] | None = None,
) -> dict:
    """The taxonomy figure as Plotly's plain form (``data`` and ``layout``), built without Plotly's objects: a
    tenth of the time, which every new analysis pays (see :class:`PreparedTree`).

    Args:
        analysis: Supplies ``mc_mean`` (node colour), ``mc_std`` (halo), operating points, not-learnt labels and
            violations.
        taxonomy: The DAG; its labels must be the analysis labels.
        auroc_notes: Optional per-label test AUROC from the model card, as quoted text (with its test positives),
            shown on hover.
        training_positives: Optional per-label training positives from the card (explains "not learnt").
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

    violating = violation_edges(analysis)
    normal = [e for e in taxonomy.edges if e not in violating]
    learnt = [analysis.learnt(lab) for lab in labels]
    data: list[dict] = []
    edge = _edge_trace(normal, pos, color=EDGE_COLOR, width=1.5)
    edge.update(name="parent → child", showlegend=True)
    data.append(edge)
    bad = _edge_trace(violating, pos, color=VIOLATION_COLOR, width=2.5, dash="dash")
    # Always drawn (possibly empty), so the key lists what a red edge would mean and trace order stays fixed.
    bad.update(name=f"violation: child > {analysis.threshold:.1f} > parent", showlegend=True)
    data.append(bad)

    data.append(
        dict(
            type="scatter",
            x=xs,
            y=ys,
            mode="markers",
            # No halo under a not-learnt node: it must stay truly hollow (a halo behind it would tint it).
            marker=dict(size=np.where(learnt, halo_size(std), 0.0), color=HALO_COLOR, line=dict(width=0)),
            hoverinfo="skip",
            showlegend=False,
            name="uncertainty halo",
            unselected=dict(marker=dict(opacity=1.0)),
        )
    )

    hover = [node_hover(analysis, lab, (auroc_notes or {}).get(lab), (training_positives or {}).get(lab))
             for lab in labels]
    above = [analysis.call(lab) == "above" for lab in labels]
    shown = [i for i, ok in enumerate(learnt) if ok]
    hidden = [i for i, ok in enumerate(learnt) if not ok]
    # Three marks that must not be confused: "called" is a pink ring around the node, "selected" a tinted box
    # around node and caption, "not learnt" a hollow grey ring with no fill. Rings sit under the nodes, no clicks.
    called = [i for i, up in enumerate(above) if up]
    data.append(dict(
        type="scatter",
        x=[xs[i] for i in called], y=[ys[i] for i in called], mode="markers", hoverinfo="skip", showlegend=False,
        name="called", customdata=[labels[i] for i in called],
        marker=dict(size=CALLED_RING, symbol="circle-open", color=POSITIVE_COLOR, line=dict(width=3)),
    ))

    def nodes(rows: list[int], name: str, text_color: str, marker: dict) -> dict:
        return dict(
            type="scatter", x=[xs[i] for i in rows], y=[ys[i] for i in rows], mode="markers+text",
            text=[node_text(analysis, labels[i]) for i in rows], textposition="bottom center",
            textfont=dict(size=LABEL_FONT_PX, color=text_color), customdata=[labels[i] for i in rows],
            hovertext=[hover[i] for i in rows], hoverinfo="text", marker=marker, name=name, showlegend=False,
            # A click selects a point; plotly would otherwise fade every other node.
            selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=1.0), textfont=dict(color=text_color)),
        )

    # Out of population the outputs do not apply: the probabilities are greyed (a grey scale, no colour bar).
    greyed = analysis.out_of_population
    data.append(nodes(shown, "labels", "#6b7280" if greyed else "#1a202c", dict(
        size=NODE_SIZE, color=[mean[labels[i]] for i in shown], colorscale=GREYED_SCALE if greyed else COLORSCALE,
        cmin=0.0, cmax=1.0, showscale=not greyed, line=dict(width=1.5, color="#ffffff"),
        colorbar=dict(title=dict(text="P (MC mean)", side="right"), thickness=10, len=0.7, x=1.0, xpad=0,
                      tickfont=dict(size=LABEL_FONT_PX)))))
    # Not-learnt outputs: a hollow grey ring, no number; their output is not a probability worth reading.
    data.append(nodes(hidden, "not learnt", "#4b5563", dict(
        size=NODE_SIZE, color=NOT_LEARNT_COLOR, symbol="circle-open", line=dict(width=2.5))))
    # Legend entries for the marks (dummy points outside the view).
    for name, marker in (
        ("called positive: ring, and a triangle after the value (a label the model separates, at/above its "
         "operating point)",
         dict(size=14, symbol="circle-open", color=POSITIVE_COLOR, line=dict(width=3))),
        ("selected (shown in the viewer)", dict(size=14, symbol="square", color=SELECTED_FILL,
                                                line=dict(width=2, color=SELECTED_COLOR))),
        ("not learnt (no meaningful output)", dict(size=12, color=NOT_LEARNT_COLOR, symbol="circle-open",
                                                   line=dict(width=2.5))),
    ):
        data.append(dict(type="scatter", x=[None], y=[None], mode="markers", marker=marker, name=name,
                         showlegend=True, hoverinfo="skip"))

    # Uncertainty key in the lower-left corner, drawn with the same size mapping as the halos.
    x_max = max(xs)
    key_x = [x_max - 2.0 * _MIN_GAP + 0.7 * k for k in range(len(REFERENCE_STDS))]
    key_y = [min(ys)] * len(REFERENCE_STDS)
    data.append(
        dict(
            type="scatter",
            x=key_x,
            y=key_y,
            mode="markers+text",
            marker=dict(size=halo_size(np.array(REFERENCE_STDS)), color=HALO_COLOR),
            text=[f"σ={s:.2f}" for s in REFERENCE_STDS],
            textposition="bottom center",
            textfont=dict(size=LABEL_FONT_PX, color="#1a202c"),
            hoverinfo="skip",
            showlegend=False,
            name="uncertainty key",
        )
    )
    data.append(
        dict(
            type="scatter",
            x=key_x,
            y=key_y,
            mode="markers",
            marker=dict(size=NODE_SIZE * 0.6, color="#bbbbbb"),
            hoverinfo="skip",
            showlegend=False,
        )
    )
    layout = dict(
        shapes=selection_shapes(taxonomy, selected),
        annotations=[dict(x=key_x[0] - 0.35, y=key_y[0] + 0.42, xanchor="left", showarrow=False,
                          font=dict(size=LABEL_FONT_PX, color="#1a202c"), text="halo = MC uncertainty (std)")],
        height=height,
        margin=dict(l=10, r=10, t=70 if title else 10, b=10),
        # The title sits at the very top of the figure, the legend between it and the tree: they never overlap.
        **({"title": dict(text=title, x=0.01, xanchor="left", y=1.0, yref="container", yanchor="top",
                          pad=dict(t=6), font=dict(size=15))} if title else {}),
        xaxis=dict(visible=False, range=[min(xs) - 0.7, x_max + 0.7]),
        yaxis=dict(visible=False, range=[min(ys) - 0.75, max(ys) + 0.35]),
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0, font=dict(size=LABEL_FONT_PX)),
        clickmode="event+select",
        dragmode=False,
        # Dark text on white with a dark border: readable, unlike plotly's default light grey on white.
        hoverlabel=dict(bgcolor="#ffffff", bordercolor="#1a202c", font=dict(size=13, color="#1a202c")),
    )
    return {"data": data, "layout": layout}


def selection_shapes(taxonomy: Taxonomy, selected: str | None) -> list[dict]:
    """The frame around ``selected``'s node and caption (a tinted box, unlike any ring) as layout shapes; none for
    ``None`` or an unknown label."""
    if selected not in taxonomy.labels:
        return []
    x, y = tree_positions(taxonomy)[selected]
    return [dict(type="rect", x0=x - 0.48, x1=x + 0.48, y0=y - _caption_depth(selected) - 0.03, y1=y + 0.2,
                 line=dict(color=SELECTED_COLOR, width=2), fillcolor=SELECTED_FILL, layer="below", name="selected")]


class PreparedTree(go.Figure):
    """A tree figure drawn again and again with only its selection frame moved (a label pick in the dashboard).

    ``st.plotly_chart`` turns a figure into its plain form on every run (``to_dict``: a deep copy of the whole
    figure, 20-35 ms for a tree), and building the figure from Plotly's objects costs about 0.1 s per analysis. This
    figure holds the plain form of :func:`taxonomy_spec` (with the default template a built figure would carry),
    and :meth:`select` edits the frame in it, so neither an analysis nor a label pick pays for Plotly's objects.
    """

    def __init__(self, spec: dict, taxonomy: Taxonomy) -> None:
        super().__init__()  # an empty figure: the plain form below is what is drawn
        self._plain = {"data": spec["data"], "layout": {**spec["layout"], "template": _default_template()}}
        self._taxonomy = taxonomy

    def select(self, selected: str | None) -> PreparedTree:
        """Frame ``selected`` (see :func:`selection_shapes`); returns the figure."""
        self._plain["layout"]["shapes"] = selection_shapes(self._taxonomy, selected)
        return self

    def to_dict(self) -> dict:  # noqa: D102 - the plain form, made once
        return self._plain


@functools.cache
def _default_template() -> dict:
    # The template Plotly puts in every figure it builds (Streamlit's, once Streamlit is imported), in plain form.
    return go.Figure().to_dict()["layout"].get("template", {})


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
