"""Dashboard tests: the pure view builders on hand-made and real analyses, and the app's flows through AppTest.

The app runs against small random-init variants written by ``make_weights_dir`` (64 px, so an analysis takes
well under a second) and real images: the bundled samples, NIH PNGs and DICOMs from ``shared/data``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_weights_dir
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.analysis import Analysis, Violation
from core.card import ModelCard
from core.explain import RELATIVE_LEVELS, contour_paths, upsample
from core.imaging import ImageError, read_image
from core.inference import Predictor
from core.registry import scan_weights
from dashboard.components.cam import (
    COLORMAPS,
    cam_caption,
    cam_map,
    cam_overlay,
    colormap_tables,
    gallery_labels,
    map_layer,
    shows_relative_map,
)
from dashboard.components.compare import comparison_frame, grouped_bar_figure, violations_frame
from dashboard.components.image_view import (
    display_pixels,
    downsample,
    image_figure,
    metadata_table,
    window_range,
)
from dashboard.components.model_card import (
    auroc_figure,
    auroc_frame,
    calibration_frame,
    plot_paths,
    population_frame,
    summary_table,
)
from dashboard.components.tree import (
    REFERENCE_STDS,
    PreparedTree,
    halo_size,
    label_from_selection,
    taxonomy_figure,
    taxonomy_spec,
    tree_positions,
)
from dashboard.pipeline import GENERIC_ERROR, AnalysisCache, analyse_bytes, sha256
from dashboard.report import analysis_csv, analysis_json, pdf_report
from dashboard.ui.state import ENV_WEIGHTS_DIR, SAMPLES, SAMPLES_DIR, weights_dir_from

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "dashboard" / "app.py"
PNG_SAMPLE = next(name for name, f in SAMPLES.items() if f.endswith(".png"))
DICOM_SAMPLE = next(name for name, f in SAMPLES.items() if f.endswith(".dcm"))
APP_TIMEOUT = 120


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Two random 64 px variants, ``bce`` and ``hbce_soft`` (the latter is the default by metric)."""
    return make_weights_dir(tmp_path_factory.mktemp("dash"))


@pytest.fixture(scope="module")
def predictor(weights_dir: Path) -> Predictor:
    """An independent predictor on the same weights, to check what the app shows."""
    return Predictor(weights_dir, "all")


@pytest.fixture(scope="module")
def nih_test_png(shared_data: Path) -> Path:
    """A real NIH test-split PNG that is not one of the bundled samples."""
    labels = pd.read_csv(shared_data / "nih" / "labels.csv")
    row = labels[(labels["split"] == "test") & (labels["stored_size"] == "512x512")].iloc[-1]
    return shared_data / "nih" / "images" / row["Image Index"]


def _analysis(taxonomy, mean, std, model_id="m", image=None) -> Analysis:
    labels = list(taxonomy.labels)
    rng = np.random.default_rng(0)
    image = image if image is not None else rng.uniform(0, 1, (96, 80)).astype(np.float32)
    cams = rng.uniform(0, 1, (len(labels), 4, 4)).astype(np.float32)
    return Analysis(
        model_id=model_id, labels=labels, probability=np.asarray(mean, np.float32),
        mc_mean=np.asarray(mean, np.float32),
        mc_std=np.asarray(std, np.float32), mc_samples=10, cams=cams, image=image,
        image_metadata={"format": "PNG", "width": image.shape[1], "height": image.shape[0]}, violations=[],
        timings={"total": 0.1}, image_sha256="0" * 64,
    )


def _app(weights_dir: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(weights_dir))
    at = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT)
    at.run()
    if any(getattr(s, "key", None) == "sample" for s in at.selectbox):  # a page with models: pick a sample
        _first_screen_is_empty(at)
        at.selectbox(key="sample").set_value(PNG_SAMPLE).run()
    return at


def _first_screen_is_empty(at: AppTest) -> None:
    """The first screen analyses nothing: no tree, no table, only the invitation to upload or pick a sample."""
    assert not at.exception and not at.dataframe and at.selectbox(key="sample").value is None
    assert not any(getattr(c, "key", None) == "tree" for c in at.get("plotly_chart"))
    assert any("Nothing is analysed until you do" in i.value for i in at.info)


def _no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _findings(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "P (MC mean)" in d.value.columns).set_index("label")


def _chart(at: AppTest, key: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(chart.proto.spec)


def _viewer_args(at: AppTest) -> dict:
    """The JSON arguments the page sent to the radiograph viewer component."""
    (viewer,) = [c for c in at.get("component_instance") if c.proto.component_name.endswith("hicxr_viewer")]
    return json.loads(json.loads(viewer.proto.json_args)["spec"])


def _node_trace(spec: dict) -> dict:
    return next(t for t in spec["data"] if t.get("name") == "labels")


# ------------------------------------------------------------------------------------------- tree figure


def test_tree_layout_is_layered_and_uncluttered(taxonomy):
    pos = tree_positions(taxonomy)
    rows = {node: r for r, layer in enumerate(taxonomy.layers()) for node in layer}
    top = max(rows.values())
    assert set(pos) == set(taxonomy.labels)
    for node, (_, y) in pos.items():
        assert y == top - rows[node]  # one row per topological layer, roots on top
    for parent, child in taxonomy.edges:
        assert pos[parent][1] > pos[child][1]  # every edge points down
    for r in range(top + 1):
        xs = sorted(x for node, (x, _) in pos.items() if rows[node] == r)
        assert all(b - a >= 1.0 - 1e-9 for a, b in zip(xs, xs[1:], strict=False))  # nothing overlaps in a row


def test_tree_figure_encodes_mean_std_operating_points_not_learnt_and_violations(taxonomy):
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 1, taxonomy.num_labels)
    std = rng.uniform(0, 0.15, taxonomy.num_labels)
    analysis = _analysis(taxonomy, mean, std)
    labels = list(taxonomy.labels)
    analysis.not_learnt = ["Fracture", "Support Devices", "Other"]
    analysis.operating_points = {"Cardiomegaly": float(mean[labels.index("Cardiomegaly")]) - 0.01,
                                 "Edema": float(mean[labels.index("Edema")]) + 0.01}
    analysis.violations = [Violation("Opacity", "Lung Opacity", 0.3, 0.7)]
    fig = taxonomy_figure(analysis, taxonomy, auroc_notes={"Cardiomegaly": "0.812 (30 test positives)"},
                          selected="Cardiomegaly",
                          training_positives={"Fracture": 0, "Support Devices": 0, "Other": 0})
    nodes = next(t for t in fig.data if t.name == "labels")
    hidden = next(t for t in fig.data if t.name == "not learnt")
    halo = next(t for t in fig.data if t.name == "uncertainty halo")
    called = next(t for t in fig.data if t.name == "called")
    learnt = [lab for lab in labels if lab not in analysis.not_learnt]
    assert list(nodes.customdata) == learnt and list(hidden.customdata) == analysis.not_learnt
    np.testing.assert_allclose(nodes.marker.color, [mean[labels.index(lab)] for lab in learnt], rtol=1e-6)
    assert (nodes.marker.cmin, nodes.marker.cmax) == (0.0, 1.0)
    # Not-learnt nodes: truly hollow grey (an open ring, no halo behind it), no probability, the reason on hover.
    assert hidden.marker.symbol == "circle-open" and all("not learnt" in t for t in hidden.text)
    assert all(np.asarray(halo.marker.size)[labels.index(lab)] == 0 for lab in analysis.not_learnt)
    assert not any(f"{mean[labels.index(lab)]:.2f}" in t for lab, t in zip(analysis.not_learnt, hidden.text,
                                                                           strict=True))
    assert "no positive training images" in hidden.hovertext[0]
    # Halo grows with the std (learnt labels); the key shows the same mapping at the reference values.
    sizes = np.asarray(halo.marker.size)
    for lab in learnt:
        assert sizes[labels.index(lab)] == pytest.approx(halo_size(std[labels.index(lab)]))
    key = next(t for t in fig.data if t.name == "uncertainty key")
    np.testing.assert_allclose(key.marker.size, halo_size(np.array(REFERENCE_STDS)))
    # Operating points: the caption marks a positive call with ▲; hover says which side and the card's AUROC.
    i = learnt.index("Cardiomegaly")
    assert "▲" in nodes.text[i] and "▲" not in nodes.text[learnt.index("Edema")]
    assert "operating point" in nodes.hovertext[i] and "at or above" in nodes.hovertext[i]
    assert "0.812" in nodes.hovertext[i] and "not reported" in nodes.hovertext[learnt.index("Edema")]
    # Called: a ring of its own around exactly the called nodes; selected: a box around the node and its caption,
    # so neither can pass for the other.
    assert list(called.customdata) == [lab for lab in labels if analysis.call(lab) == "above"]
    assert called.marker.symbol == "circle-open" and called.hoverinfo == "skip"
    (box,) = [shape for shape in fig.layout.shapes if shape.name == "selected"]
    x, y = tree_positions(taxonomy)["Cardiomegaly"]
    assert box.type == "rect" and box.x0 < x < box.x1 and box.y0 < y < box.y1
    # Red dashed edges: exactly the record's violations (the one rule), one None-separated segment each.
    bad = next(t for t in fig.data if t.name and t.name.startswith("violation"))
    assert bad.line.dash == "dash" and list(bad.x).count(None) == 1
    normal = next(t for t in fig.data if t.name == "parent → child")
    assert list(normal.x).count(None) == len(taxonomy.edges) - 1


def _plain_json(figure) -> object:
    """A figure's JSON with Plotly's base64 typed arrays written out as numbers (the same figure either way)."""
    import base64

    import plotly.io as pio

    def expand(value):
        if isinstance(value, dict) and set(value) == {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"]).tolist()
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        return value

    return expand(json.loads(pio.to_json(figure, validate=False)))


def test_prepared_tree_moves_only_its_frame(taxonomy):
    import plotly.graph_objects as go

    n = taxonomy.num_labels
    analysis = _analysis(taxonomy, np.linspace(0.05, 0.95, n), np.full(n, 0.02))
    prepared = PreparedTree(taxonomy_spec(analysis, taxonomy), taxonomy)
    for label in ("Edema", "Cardiomegaly", None):
        # What st.plotly_chart sends is a valid figure, the one Plotly's objects build with that frame.
        want = taxonomy_figure(analysis, taxonomy, selected=label)
        want.layout.shapes = want.layout.shapes or ()  # no frame: no shapes at all draws the same as an empty list
        got = go.Figure(prepared.select(label).to_dict())
        assert _plain_json(got) == _plain_json(want)
    (box,) = prepared.select("Edema").to_dict()["layout"]["shapes"]
    x, y = tree_positions(taxonomy)["Edema"]
    assert box["name"] == "selected" and box["x0"] < x < box["x1"] and box["y0"] < y < box["y1"]


def test_tree_refuses_other_labels(taxonomy):
    analysis = _analysis(taxonomy, np.full(taxonomy.num_labels, 0.5), np.zeros(taxonomy.num_labels))
    analysis.labels = list(reversed(analysis.labels))
    with pytest.raises(ValueError, match="do not match the taxonomy"):
        taxonomy_figure(analysis, taxonomy)


def test_label_from_selection_reads_plotly_click_state():
    labels = ["Atelectasis", "Cardiomegaly"]
    state = {"selection": {"points": [{"curve_number": 3, "point_index": 1, "customdata": "Cardiomegaly"}]}}
    assert label_from_selection(state, labels) == "Cardiomegaly"
    assert label_from_selection({"selection": {"points": [{"customdata": ["Atelectasis"]}]}}, labels) == "Atelectasis"
    # Clicks on halos or edges carry no label; an empty selection selects nothing.
    assert label_from_selection({"selection": {"points": [{"point_index": 0}]}}, labels) is None
    assert label_from_selection({"selection": {"points": []}}, labels) is None
    assert label_from_selection(None, labels) is None


# ------------------------------------------------------------------------------------- other components


def test_comparison_sorted_by_disagreement(taxonomy):
    n = taxonomy.num_labels
    a = _analysis(taxonomy, np.linspace(0.1, 0.9, n), np.full(n, 0.01), "a")
    b = _analysis(taxonomy, np.full(n, 0.5), np.full(n, 0.02), "b")
    b.violations = [Violation("Opacity", "Lung Opacity", 0.3, 0.7)]
    frame = comparison_frame({"a": a, "b": b})
    expected = np.abs(np.linspace(0.1, 0.9, n) - 0.5)
    assert list(frame["disagreement"]) == sorted(frame["disagreement"], reverse=True)
    got = frame.set_index("label")["disagreement"]
    np.testing.assert_allclose([got[lab] for lab in taxonomy.labels], expected, atol=1e-6)
    fig = grouped_bar_figure({"a": a, "b": b}, labels=frame["label"].tolist())
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].x) == frame["label"].tolist()
    np.testing.assert_allclose(fig.data[1].error_y.array, 0.02, atol=1e-6)
    violations = violations_frame({"a": a, "b": b})
    assert violations.to_dict("records") == [
        {"variant": "b", "parent": "Opacity", "child": "Lung Opacity", "parent P": pytest.approx(0.3),
         "child P": pytest.approx(0.7)}
    ]


def test_cam_overlay_and_gallery(taxonomy):
    n = taxonomy.num_labels
    image = np.tile(np.linspace(0, 1, 1200, dtype=np.float32), (900, 1))
    mean = np.linspace(0.0, 1.0, n)
    analysis = _analysis(taxonomy, mean, np.zeros(n), image=image)
    label = taxonomy.labels[3]
    plain = cam_overlay(analysis, label, opacity=0.0)
    assert plain.shape == (576, 768, 3) and plain.dtype == np.uint8  # display-sized, aspect kept
    assert np.all(plain[..., 0] == plain[..., 1])  # opacity 0: the grey image only
    coloured = cam_overlay(analysis, label, opacity=0.8)
    assert np.abs(coloured.astype(int) - plain.astype(int)).mean() > 10
    hidden = cam_overlay(analysis, label, opacity=0.8, threshold=1.01)  # everything below threshold: transparent
    np.testing.assert_array_equal(hidden, plain)
    with pytest.raises(KeyError):
        cam_overlay(analysis, "Not a label")
    chosen = gallery_labels(analysis, 0.5)
    assert chosen == [taxonomy.labels[i] for i in np.argsort(-mean) if mean[i] >= 0.5]


def test_empty_grad_cam_falls_back_to_the_relative_map(taxonomy):
    n = taxonomy.num_labels
    analysis = _analysis(taxonomy, np.full(n, 0.1), np.zeros(n))
    empty, full = taxonomy.labels[2], taxonomy.labels[5]
    analysis.cams[analysis.index(empty)] = 0.0  # evidence negative everywhere: Grad-CAM has nothing to show
    assert not shows_relative_map(analysis, empty)  # no relative maps in the record: plain (empty) map
    analysis.relative_cams = np.random.default_rng(1).uniform(0, 1, analysis.cams.shape).astype(np.float32)
    assert shows_relative_map(analysis, empty) and not shows_relative_map(analysis, full)
    np.testing.assert_array_equal(cam_map(analysis, empty), analysis.relative_cams[analysis.index(empty)])
    np.testing.assert_array_equal(cam_map(analysis, full), analysis.cams[analysis.index(full)])
    # The relative map is a different kind of picture: dashed contours, not a heat map, and captioned as such.
    gray = np.rint(np.clip(analysis.image, 0, 1) * 255).astype(int)
    contours = cam_overlay(analysis, empty).astype(int)
    assert contours.shape == (*analysis.image.shape, 3)
    changed = np.abs(contours - gray[..., None]).max(axis=2) > 30
    assert 0.005 < changed.mean() < 0.5  # thin lines over the image, not a wash of colour
    heat = cam_overlay(analysis, full, opacity=0.8).astype(int)
    assert (np.abs(heat - gray[..., None]).max(axis=2) > 30).mean() > 0.5
    assert "Not evidence" in cam_caption(analysis, empty) and "Grad-CAM" in cam_caption(analysis, full)


def test_viewer_map_layers_leave_the_controls_to_the_browser(taxonomy):
    import matplotlib

    n = taxonomy.num_labels
    image = np.zeros((900, 1200), np.float32)
    analysis = _analysis(taxonomy, np.full(n, 0.3), np.zeros(n), image=image)
    heat_label, relative_label = taxonomy.labels[4], taxonomy.labels[6]
    analysis.cams[analysis.index(relative_label)] = 0.0
    analysis.relative_cams = np.random.default_rng(2).uniform(0, 1, analysis.cams.shape).astype(np.float32)
    # A Grad-CAM: the smoothed map itself as a grey PNG at most 256 px, in the image's aspect; 0..255 for 0..1.
    heat = map_layer(analysis, heat_label, image.shape)
    assert (heat.kind, heat.width, heat.height, heat.paths) == ("heat", 256, 192, ())
    grey = np.asarray(Image.open(io.BytesIO(heat.png)))
    assert grey.shape == (192, 256) and grey.dtype == np.uint8
    expected = upsample(analysis.cams[analysis.index(heat_label)], (192, 256)) * 255
    assert np.abs(grey - expected).max() <= 0.5 + 1e-3
    # A relative map: its dashed lines as paths on a 160 px grid, the same lines the gallery draws.
    rel = map_layer(analysis, relative_label, image.shape)
    assert (rel.kind, rel.width, rel.height, rel.png) == ("relative", 160, 120, b"")
    traced = contour_paths(upsample(analysis.relative_cams[analysis.index(relative_label)], (120, 160)))
    assert len(rel.paths) == len(traced) > 0
    for path, (k, points) in zip(rel.paths, traced, strict=True):
        assert path[0] == k and 0 <= k < len(RELATIVE_LEVELS)
        np.testing.assert_allclose(np.asarray(path[1:]).reshape(-1, 2), points, atol=0.051)
    # The browser colours a heat layer through these tables: the colour maps' own colours.
    tables = np.frombuffer(colormap_tables(), np.uint8).reshape(len(COLORMAPS), 256, 3)
    for table, name in zip(tables, COLORMAPS, strict=True):
        want = np.rint(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
        np.testing.assert_array_equal(table, want)
    with pytest.raises(KeyError):
        map_layer(analysis, "Not a label", image.shape)


def test_contour_paths_follow_the_levels():
    yy, xx = np.mgrid[0:101, 0:101].astype(np.float32)
    cone = np.clip(1.0 - np.hypot(xx - 50, yy - 50) / 50.0, 0, 1)  # level v lies on the circle of radius 50 (1 - v)
    paths = contour_paths(cone)
    assert sorted({k for k, _ in paths}) == [0, 1, 2]
    for k, points in paths:
        radius = np.hypot(points[:, 0] - 50, points[:, 1] - 50)
        np.testing.assert_allclose(radius, 50 * (1 - sorted(RELATIVE_LEVELS)[k]), atol=0.6)
    assert contour_paths(np.full((20, 20), 0.7, np.float32)) == []  # a flat map has no lines


def test_image_view_windowing_and_metadata(shared_data):
    image = read_image(SAMPLES_DIR / SAMPLES[DICOM_SAMPLE], keep_raw=True)
    bounds = window_range(image)
    assert bounds is not None and bounds.low < bounds.high
    np.testing.assert_array_equal(display_pixels(image), image.pixels)  # default view = what the model saw
    narrow = display_pixels(image, bounds.center, bounds.width / 4)
    np.testing.assert_array_equal(narrow, image.rewindow(bounds.center, bounds.width / 4))
    np.testing.assert_allclose(display_pixels(image, invert=True), 1.0 - image.pixels)
    small = downsample(image.pixels, 256)
    assert small.shape == (256, 256) and 0.0 <= small.min() and small.max() <= 1.0
    assert image_figure(image.pixels).data[0].source.startswith("data:image/png;base64,")
    meta = dict(image.metadata.to_dict(), patient_name="Doe^Jane", patient_id="123")
    table = metadata_table(meta)
    assert dict(zip(table["field"], table["value"], strict=True))["Modality"] == "CR"
    assert not table["value"].str.contains("Doe|123").any()  # only allow-listed fields are shown


def test_model_card_views(tmp_path, taxonomy):
    labels = list(taxonomy.labels)
    per_label = {lab: {"auroc": 0.6 + 0.01 * i, "auroc_ci": [0.5 + 0.01 * i, 0.7 + 0.01 * i], "positives": i}
                 for i, lab in enumerate(labels[:5])}
    card = ModelCard.from_dict({
        "variant": "v", "metrics": {"test": {"macro_auroc": 0.65, "macro_auroc_ci": [0.6, 0.7],
                                             "per_label": per_label}},
        "calibration": {"temperature": [1.5] * len(labels), "fitted_on": "val", "applied": True},
        "plots": {"roc": "plots/roc.png", "escape": "../secret.png"}})
    frame = auroc_frame(card, labels)
    assert len(frame) == len(labels) and frame["auroc"].notna().sum() == 5
    assert frame.loc[2, "ci_low"] == pytest.approx(0.52)
    fig = auroc_figure(frame)
    assert len(fig.data[0].x) == 5
    np.testing.assert_allclose(fig.data[0].error_x.array, 0.1, atol=1e-9)
    # An AUROC of 1.000 from one test positive is drawn apart, hollow and marked unreliable, below every reliable
    # label however high it is; each bar names its test positives and its CI.
    frame = pd.DataFrame({"label": ["Edema", "Cardiomegaly", "Effusion"], "auroc": [1.0, 0.81, 0.70],
                          "ci_low": [np.nan, 0.7, 0.6], "ci_high": [np.nan, 0.9, 0.8], "positives": [1, 30, 21]})
    bars = auroc_figure(frame).data[0]
    assert list(bars.y) == ["Edema (1 test +)", "Effusion (21 test +)", "Cardiomegaly (30 test +)"]  # bottom up
    assert bars.marker.color[0] == "rgba(0,0,0,0)" and "unreliable" in bars.text[0]
    assert bars.text[2] == "0.810 (CI 0.70–0.90)"
    summary = dict(zip(summary_table(card)["field"], summary_table(card)["value"], strict=True))
    assert summary["Test macro AUROC"] == "0.650 (95% CI 0.600–0.700)"
    assert calibration_frame(card, labels)["temperature"].tolist() == [1.5] * len(labels)
    assert calibration_frame(ModelCard.from_dict({"variant": "v", "calibration": None}), labels) is None
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "plots" / "roc.png")
    Image.new("RGB", (4, 4)).save(tmp_path.parent / "secret.png")
    assert plot_paths(card, tmp_path) == {"roc": (tmp_path / "plots" / "roc.png").resolve()}


# ------------------------------------------------------------------------------- pipeline and exports


def test_analyse_bytes_real_image_and_bad_files(predictor, nih_test_png):
    data = nih_test_png.read_bytes()
    outcome = analyse_bytes(predictor, data, ["bce", "hbce_soft"], mc_samples=5)
    assert outcome.ok and set(outcome.analyses) == {"bce", "hbce_soft"}
    direct = predictor.analyse(data, "bce", mc_samples=5)
    np.testing.assert_allclose(outcome.analyses["bce"].mc_mean, direct.mc_mean, rtol=1e-5)
    assert outcome.analyses["bce"].image_sha256 == sha256(data) == direct.image_sha256

    for bad in (b"", b"hello, this is not an image", data[: len(data) // 3]):
        with pytest.raises(ImageError) as expected:
            read_image(bad)
        outcome = analyse_bytes(predictor, bad, ["bce"], mc_samples=5)
        assert not outcome.ok and outcome.kind == "image" and outcome.error == str(expected.value)

    outcome = analyse_bytes(predictor, data, ["no_such_variant"], mc_samples=5)
    assert outcome.kind == "model" and "no_such_variant" in outcome.error


def test_analyse_bytes_hides_unexpected_errors(predictor, nih_test_png, caplog):
    outcome = analyse_bytes(predictor, nih_test_png.read_bytes(), ["bce"], mc_samples=-3)
    assert outcome.kind == "internal" and outcome.error == GENERIC_ERROR
    assert "unexpected error" in caplog.text


def test_cache_runs_the_network_once_per_setting(predictor, nih_test_png):
    cache = AnalysisCache()
    data = nih_test_png.read_bytes()
    digest = sha256(data)
    first = cache.analyses(predictor, data, digest, ["bce"], 5)
    again = cache.analyses(predictor, data, digest, ["bce"], 5)
    assert cache.network_runs == 1 and again.analyses["bce"] is first.analyses["bce"]
    both = cache.analyses(predictor, data, digest, ["bce", "hbce_soft"], 5)  # only hbce_soft is new
    assert cache.network_runs == 2 and both.analyses["bce"] is first.analyses["bce"]
    cache.analyses(predictor, data, digest, ["bce"], 7)  # another MC setting is another analysis
    assert cache.network_runs == 3
    bad = cache.analyses(predictor, b"junk", sha256(b"junk"), ["bce"], 5)
    assert not bad.ok and cache.network_runs == 3


def test_exports(predictor, nih_test_png):
    data = nih_test_png.read_bytes()
    analysis = predictor.analyse(data, "hbce_soft", mc_samples=5)
    payload = json.loads(analysis_json(analysis, {"variant": "hbce_soft"}))
    assert payload["model_id"] == "hbce_soft" and payload["image_sha256"] == sha256(data)
    for i, label in enumerate(analysis.labels):
        assert payload["labels"][label]["mc_mean"] == pytest.approx(float(analysis.mc_mean[i]))
    assert payload["top_findings"] == analysis.top_findings(5)
    assert "not a medical device" in payload["disclaimer"].lower()
    assert nih_test_png.name not in json.dumps(payload)  # no file name (NIH names carry the patient number)

    csv = pd.read_csv(io.BytesIO(analysis_csv(analysis)))
    assert csv["label"].tolist() == analysis.labels
    np.testing.assert_allclose(csv["mc_std"], analysis.mc_std, atol=1e-6)
    assert csv["violates_parent"].sum() == len({v.child for v in analysis.violations})

    pdf = pdf_report(analysis, auroc_notes={label: "0.700 (20 test positives)" for label in analysis.labels})
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + pdf.count(b"/Type /Page>") == 1
    assert b"HiCXR analysis report" in pdf and nih_test_png.stem.encode() not in pdf


def test_weights_dir_precedence(tmp_path):
    explicit = tmp_path / "a"
    assert weights_dir_from(["--weights-dir", str(explicit)], {ENV_WEIGHTS_DIR: "/elsewhere"}) == explicit
    assert weights_dir_from(["-q", "tests"], {ENV_WEIGHTS_DIR: str(tmp_path)}) == tmp_path
    assert weights_dir_from([], {}) == REPO_ROOT / "weights"


# --------------------------------------------------------------------------------------- app (AppTest)


def test_app_png_sample_matches_the_engine(weights_dir, predictor, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    _no_failure(at)
    assert [t.label for t in at.tabs] == ["Analysis", "Compare variants", "Model card", "Export"]
    assert at.selectbox(key="variant").value == "hbce_soft"  # the registry's default (best test AUROC)
    assert at.selectbox(key="sample").value == PNG_SAMPLE
    expected = predictor.analyse((SAMPLES_DIR / SAMPLES[PNG_SAMPLE]).read_bytes(), "hbce_soft", mc_samples=10)
    table = _findings(at)
    np.testing.assert_allclose(table.loc[expected.labels, "P (MC mean)"], expected.mc_mean, rtol=1e-5)
    np.testing.assert_allclose(table.loc[expected.labels, "± std"], expected.mc_std, rtol=1e-5, atol=1e-7)
    nodes = _node_trace(_chart(at, "tree"))
    np.testing.assert_allclose(nodes["marker"]["color"], expected.mc_mean, rtol=1e-5)
    top = expected.top_findings(1)[0]
    assert at.radio(key="label_pick").value == top
    assert any(c.value.startswith(f"{top} · P = ") for c in at.caption)  # the viewer's map caption
    viewer = _viewer_args(at)
    assert viewer["selected"] == top and viewer["map_title"].startswith(f"{top} · ")
    assert "not a medical device" in at.warning[0].value.lower()
    assert any("NIH Clinical Center" in c.value for c in at.caption)


def test_app_display_controls_never_rerun_the_network(weights_dir, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    runs = at.session_state["analysis_cache"].network_runs
    assert runs == 1
    # The map controls live in the viewer (applied in the browser); what it reports back reruns no network, the
    # next viewer drawn anew starts from it, and the gallery's tiles use it.
    viewer = _viewer_args(at)
    assert viewer["map"] == {"colormap": "inferno", "opacity": 0.45, "threshold": 0.2, "show_map": True}
    first_layer = viewer["layer_id"]
    settings = {"colormap": "viridis", "opacity": 0.9, "threshold": 0.5, "show_map": False}
    at.session_state["viewer"] = {"image_id": viewer["image_id"], "center": viewer["presets"][0]["center"],
                                  "width": viewer["presets"][0]["width"], "invert": False, "preset": "file",
                                  "map": settings}
    at.run()
    assert _viewer_args(at)["map"] == settings
    assert _viewer_args(at)["layer_id"] == first_layer  # the layer does not depend on the settings: not remade
    assert at.session_state["map_settings"].colormap == "viridis"
    # A malformed value (a colour map not offered, an opacity out of range, a window that is not a number) changes
    # nothing and breaks nothing.
    view = at.session_state[f"view_{viewer['image_id'][:12]}"]
    at.session_state["viewer"] = {"image_id": viewer["image_id"], "center": "wide", "width": None, "invert": False,
                                  "map": {"colormap": "jet", "opacity": 2.0, "threshold": 0.5, "show_map": True}}
    at.run()
    _no_failure(at)
    assert _viewer_args(at)["map"] == settings
    assert at.session_state[f"view_{viewer['image_id'][:12]}"] == view
    assert "gallery_min_p" not in [s.key for s in at.slider]  # the gallery is lazy: closed, nothing drawn
    at.session_state["gallery"] = True
    at.run()
    at.slider(key="gallery_min_p").set_value(0.1).run()
    tiles = [c for image in at.image for c in image.captions if "P = " not in c]
    assert len(tiles) == int((_findings(at)["P (MC mean)"] >= 0.1).sum())
    at.radio(key="label_pick").set_value("Edema").run()
    _no_failure(at)
    assert at.session_state["analysis_cache"].network_runs == runs
    assert any(c.value.startswith("Edema · P = ") for c in at.caption)
    assert _viewer_args(at)["selected"] == "Edema"
    # ...but a new MC setting is a new analysis.
    at.slider(key="mc_samples").set_value(3).run()
    assert at.session_state["analysis_cache"].network_runs == runs + 1


def test_app_dicom_sample_has_window_level(weights_dir, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    at.selectbox(key="sample").set_value(DICOM_SAMPLE).run()
    _no_failure(at)
    image = read_image(SAMPLES_DIR / SAMPLES[DICOM_SAMPLE], keep_raw=True)
    viewer = _viewer_args(at)
    presets = {p["name"]: (p["center"], p["width"]) for p in viewer["presets"]}
    assert list(presets) == ["file", "lung", "mediastinum", "bone", "full"]
    assert presets["file"] == pytest.approx(image.default_window)  # the file's own window comes first
    assert (viewer["raw_low"], viewer["raw_high"]) == pytest.approx((image.raw.min(), image.raw.max()))
    # The reader drags the window in the browser; the value comes back, is kept for the PDF, and runs nothing.
    runs = at.session_state["analysis_cache"].network_runs
    digest = viewer["image_id"]
    at.session_state["viewer"] = {"image_id": digest, "center": 60.0, "width": 40.0, "invert": True,
                                  "preset": "custom"}
    at.run()
    _no_failure(at)
    assert at.session_state["analysis_cache"].network_runs == runs
    assert _viewer_args(at)["initial"] == {"center": 60.0, "width": 40.0, "invert": True, "preset": "custom"}
    view = at.session_state[f"view_{digest[:12]}"]
    assert (view.center, view.width, view.invert) == (60.0, 40.0, True)
    details = at.table[0].value
    assert details.loc["Modality", "value"] == "CR" and details.loc["View", "value"] == "PA"


def test_app_dicom_upload_without_extension(weights_dir, predictor, shared_data, monkeypatch):
    data = (shared_data / "dicom" / "fodicom_CR-MONO1-10-chest.dcm").read_bytes()
    at = _app(weights_dir, monkeypatch)
    at.file_uploader(key="upload").upload("CR-MONO1-10-chest", data).run()
    _no_failure(at)
    assert at.selectbox(key="sample").disabled
    expected = predictor.analyse(data, "hbce_soft", mc_samples=10)
    np.testing.assert_allclose(_findings(at).loc[expected.labels, "P (MC mean)"], expected.mc_mean, rtol=1e-5)
    details = at.table[0].value
    assert details.loc["Inverted on read", "value"].startswith("yes")  # MONOCHROME1


def test_app_bad_uploads_show_their_message(weights_dir, monkeypatch, shared_data, nih_test_png):
    truncated = nih_test_png.read_bytes()[:5000]
    at = _app(weights_dir, monkeypatch)
    for name, data in (("notes.txt", b"this is a referral letter, not an image"), ("cut.png", truncated),
                       ("empty.dcm", b"")):
        with pytest.raises(ImageError) as expected:
            read_image(data)
        at.file_uploader(key="upload").set_value((name, data, "application/octet-stream")).run()
        assert not at.exception
        assert [e.value for e in at.error] == [str(expected.value)]
        assert not at.get("plotly_chart")  # no stale result from the previous image


def test_app_variant_choice(weights_dir, predictor, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    at.selectbox(key="variant").set_value("bce").run()
    _no_failure(at)
    expected = predictor.analyse((SAMPLES_DIR / SAMPLES[PNG_SAMPLE]).read_bytes(), "bce", mc_samples=10)
    np.testing.assert_allclose(_findings(at).loc[expected.labels, "P (MC mean)"], expected.mc_mean, rtol=1e-5)
    assert "bce |" in " ".join(c.value for c in at.sidebar.caption)


@pytest.mark.slow  # every tab of the page, with analyses of several variants
def test_app_compare_model_card_and_export_tabs(weights_dir, predictor, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    at.session_state["tab"] = "Compare variants"
    at.run()
    _no_failure(at)
    assert at.multiselect(key="compare_variants").value == ["hbce_soft", "bce"]
    data = (SAMPLES_DIR / SAMPLES[PNG_SAMPLE]).read_bytes()
    expected = comparison_frame({n: predictor.analyse(data, n, mc_samples=10) for n in ("hbce_soft", "bce")})
    shown = next(d.value for d in at.dataframe if "disagreement" in d.value.columns)
    assert shown["label"].tolist() == expected["label"].head(8).tolist()
    np.testing.assert_allclose(shown["disagreement"], expected["disagreement"].head(8), rtol=1e-5)
    bars = _chart(at, "compare_bars")
    assert [t["name"] for t in bars["data"]] == ["hbce_soft", "bce"]
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("hbce_soft ·") for c in captions) and any(c.startswith("bce ·") for c in captions)

    at.session_state["tab"] = "Model card"
    at.run()
    _no_failure(at)
    summary = at.table[0].value
    assert summary.loc["Variant", "value"] == "hbce_soft" and summary.loc["Test macro AUROC", "value"] == "0.710"
    assert any("research use only" in w.value.lower() for w in at.warning)

    at.session_state["tab"] = "Export"
    at.run()
    _no_failure(at)
    assert {b.label for b in at.get("download_button")} >= {"Download JSON", "Download CSV", "Download PDF report"}


def test_model_card_page_says_what_the_population_checks_flag(tmp_path, monkeypatch):
    """The shipped `bce`'s measured population checks on its model-card page: five sets, adults' flags called false
    alarms and children's detections, the numbers the card holds."""
    import shutil

    card = ModelCard.read(REPO_ROOT / "weights" / "bce.json")
    frame = population_frame(card)
    measured = card.ood.measured
    assert len(frame) == 5 and frame["images"].tolist() == [int(m["images"]) for m in measured.values()]
    children = frame[frame["a flag is"] == "a detection"]
    assert len(children) == 1 and "children" in children["films"].iloc[0]
    assert children["child-film check"].iloc[0] == measured["kermany_heldout"]["population"] >= 0.95
    adults = frame[frame["a flag is"] == "a false alarm"]
    assert len(adults) == 4 and (adults["child-film check"] <= 0.03).all()
    card.ood.measured = {}
    assert population_frame(card) is None

    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(REPO_ROOT / "weights" / f"bce{suffix}", folder / f"bce{suffix}")
    at = _app(folder, monkeypatch)
    at.session_state["tab"] = "Model card"
    at.run()
    _no_failure(at)
    shown = next(d.value for d in at.dataframe if "a flag is" in d.value.columns)
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), population_frame(ModelCard.read(folder / "bce.json")))
    assert any(h.value == "When the outputs do not apply" for h in at.subheader)


def test_app_without_weights_says_so(tmp_path, monkeypatch):
    at = _app(tmp_path / "empty", monkeypatch)
    assert not at.exception
    assert len(at.error) == 1 and "No trained model is available" in at.error[0].value


def test_app_names_skipped_weights(tmp_path, monkeypatch):
    folder = make_weights_dir(tmp_path, variants=("bce",))
    (folder / "broken.json").write_text("{not json")
    at = _app(folder, monkeypatch)
    _no_failure(at)
    problems = [str(p) for p in scan_weights(folder).problems]
    assert len(problems) == 1 and "broken" in problems[0]
    assert problems[0] in [c.value for c in at.sidebar.caption]


def test_pdf_lists_findings_before_groups(taxonomy):
    from dashboard.report import report_figure

    n = taxonomy.num_labels
    labels = list(taxonomy.labels)
    mean = np.full(n, 0.1)
    for group, p in (("Abnormal", 0.9), ("Opacity", 0.8), ("Fluid Accumulation", 0.7)):
        mean[labels.index(group)] = p
    mean[labels.index("Pleural Effusion")] = 0.4
    analysis = _analysis(taxonomy, mean, np.full(n, 0.01))
    fig = report_figure(analysis, label="Pleural Effusion")
    bars = next(ax for ax in fig.axes if ax.get_title() == "All learnt outputs")
    names = [t.get_text() for t in bars.get_yticklabels()]
    # The finding comes first although its groups are more probable; groups come after it, marked as groups.
    assert names[0] == "Pleural Effusion"
    groups = [i for i, name in enumerate(names) if name.endswith("(group)")]
    assert groups and min(groups) > max(i for i, name in enumerate(names) if not name.endswith("(group)"))
    assert "Abnormal (group)" in names and "Opacity (group)" in names
    text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "  Pleural Effusion: 0.40" in text and "  Opacity:" not in text
