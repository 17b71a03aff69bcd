"""What the screen shows is true (issue 9): not-learnt labels, operating points, one model per set of identical
weights, honest maps, warnings next to the tree, and a PDF of the label the reader selected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_weights_dir
from matplotlib.figure import Figure
from streamlit.testing.v1 import AppTest

from core.inference import Predictor
from dashboard.report import analysis_csv, analysis_json, pdf_report, report_figure
from dashboard.ui.state import ENV_WEIGHTS_DIR, SAMPLES, SAMPLES_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "dashboard" / "app.py"
NOT_LEARNT = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices", "Uncertain", "Other")
PNG_SAMPLE = next(name for name, f in SAMPLES.items() if f.endswith(".png"))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """``bce`` (also named ``hbce_data`` by alias), an identical copy ``hbce_fixed``, and ``hbce_soft_data``."""
    folder = make_weights_dir(tmp_path_factory.mktemp("truth"), variants=("bce", "hbce_soft_data"),
                              not_learnt=NOT_LEARNT, operating_points={"Cardiomegaly": 0.3, "Edema": 0.99})
    shutil.copy(folder / "bce.safetensors", folder / "hbce_fixed.safetensors")
    card = json.loads((folder / "bce.json").read_text())
    (folder / "hbce_fixed.json").write_text(json.dumps({**card, "variant": "hbce_fixed"}))
    (folder / "bce.json").write_text(json.dumps({**card, "aliases": ["hbce_data"]}))
    for path in folder.glob("*.json"):  # how many test positives each AUROC rests on
        data = json.loads(path.read_text())
        if "metrics" in data:
            data["metrics"]["test"]["per_label"]["Edema"]["positives"] = 1
            data["metrics"]["test"]["per_label"]["Cardiomegaly"]["positives"] = 30
            path.write_text(json.dumps(data))
    return folder


def _app(weights_dir: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(weights_dir))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="sample").set_value(PNG_SAMPLE).run()  # nothing is analysed before a pick
    assert not at.exception, [e.value for e in at.exception]
    return at


def _tree(at: AppTest, key: str = "tree") -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(chart.proto.spec)


def test_not_learnt_labels_and_operating_points_on_the_page(weights_dir, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    spec = _tree(at)
    hidden = next(t for t in spec["data"] if t.get("name") == "not learnt")
    assert sorted(hidden["customdata"]) == sorted(NOT_LEARNT)
    assert all("not learnt" in text for text in hidden["text"])
    nodes = next(t for t in spec["data"] if t.get("name") == "labels")
    assert not set(nodes["customdata"]) & set(NOT_LEARNT)
    table = next(d.value for d in at.dataframe if "P (MC mean)" in d.value.columns).set_index("label")
    for label in NOT_LEARNT:
        assert np.isnan(table.loc[label, "P (MC mean)"]) and table.loc[label, "call"] == ""
        assert "not learnt" in table.loc[label, "test AUROC"]
    assert table.loc["Edema", "call"] == "below"  # operating point 0.99
    # An AUROC from one test positive is 0 or 1 by luck: it is quoted as such, and every AUROC with its count.
    assert "only 1 test positive: unreliable" in table.loc["Edema", "test AUROC"]
    assert table.loc["Cardiomegaly", "test AUROC"].endswith("(30 test positives)")
    hover = dict(zip(nodes["customdata"], nodes["hovertext"], strict=True))
    assert "only 1 test positive" in hover["Edema"] and "30 test positives" in hover["Cardiomegaly"]
    assert table.loc["Cardiomegaly", "operating point"] == pytest.approx(0.3)
    assert any("operating point" in c.value for c in at.caption)
    # The label shown first is a learnt one, and the map's caption says what kind of picture it is.
    assert at.radio(key="label_pick").value not in NOT_LEARNT
    assert any("Grad-CAM" in c.value or "relative map" in c.value for c in at.caption)
    # Picking a label the model never learnt draws no map over the image, and says why.
    at.radio(key="label_pick").set_value("Fracture").run()
    (viewer,) = [c for c in at.get("component_instance") if c.proto.component_name.endswith("hicxr_viewer")]
    args = json.loads(json.loads(viewer.proto.json_args)["spec"])
    assert args["layer_id"] == "none" and args["layer"] is None and args["map_title"].endswith(": no map")
    assert not [a for a in viewer.proto.special_args if a.key == "layer_png" and a.bytes]
    assert any(c.value.startswith("Fracture · not learnt") and "No map" in c.value for c in at.caption)


def test_identical_variants_are_one_entry(weights_dir, monkeypatch):
    at = _app(weights_dir, monkeypatch)
    variant = at.selectbox(key="variant")
    assert variant.options == ["bce ≡ hbce_data ≡ hbce_fixed", "hbce_soft_data"]
    at.session_state["tab"] = "Compare variants"
    at.run()
    assert not at.exception
    assert at.multiselect(key="compare_variants").options == ["bce", "hbce_soft_data"]
    assert any("bce ≡ hbce_data ≡ hbce_fixed" in i.value and "no gradient" in i.value for i in at.info)
    frame = next(d.value for d in at.dataframe if "disagreement" in d.value.columns)
    assert not set(frame["label"]) & set(NOT_LEARNT)


def test_exports_and_pdf_follow_the_reader(weights_dir):
    predictor = Predictor(weights_dir, variants=["bce"], mc_samples=4)
    analysis = predictor.analyse((SAMPLES_DIR / SAMPLES[PNG_SAMPLE]).read_bytes())
    assert analysis.not_learnt == list(NOT_LEARNT)
    payload = json.loads(analysis_json(analysis))
    assert payload["labels"]["Fracture"]["call"] == "" and payload["not_learnt"] == list(NOT_LEARNT)
    assert payload["labels"]["Cardiomegaly"]["operating_point"] == pytest.approx(0.3)
    assert not set(payload["top_findings"]) & set(NOT_LEARNT)
    rows = analysis_csv(analysis).decode().splitlines()
    fracture = next(r for r in rows if ",Fracture," in r)
    # No number for a label never learnt: probability, MC mean, std, operating point and call are empty.
    assert ",Fracture,False,,,,,,not learnt" in fracture
    dark = np.zeros_like(analysis.image)  # what the reader displayed (here: windowed to black)
    fig: Figure = report_figure(analysis, label="Edema", display_image=dark)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("Edema" in t for t in titles)
    assert fig.axes[1].images[0].get_array().max() == 0  # the reader's window/level, not the file's
    assert not any(label in " ".join(t.get_text() for t in fig.axes[-1].texts) for label in ("Fracture:",))
    pdf = pdf_report(analysis, label="Edema")
    assert pdf.startswith(b"%PDF") and b"map of Edema" in pdf  # the PDF's Subject names the map it shows
    assert b"map of " + analysis.top_findings(1)[0].encode() in pdf_report(analysis, label="Fracture")
