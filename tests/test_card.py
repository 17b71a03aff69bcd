"""The model card: one typed schema, validated in one place, round-tripped without loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.card import CardError, ModelCard
from core.model import ModelConfig


def _card(**extra) -> dict:
    return {"variant": "v", "model": {"input_size": 64}, "preprocessing": {"input_size": 64, "mean": 0.5},
            "calibration": {"temperature": [1.5] * 21, "applied": True, "method": "shared", "fitted_on": "oof",
                            "shared_temperature": 1.5, "test_ece_calibrated": 0.03},
            "operating_points": {"Cardiomegaly": {"threshold": 0.2, "target_sensitivity": 0.8, "sensitivity": 0.81,
                                                  "specificity": 0.6, "positives": 90, "negatives": 1300}},
            "labels_not_learnt": ["Fracture"], "training_positives": {"Fracture": 0, "Cardiomegaly": 105},
            "metrics": {"test": {"macro_auroc": 0.7, "per_label": {"Cardiomegaly": {"auroc": 0.8}}}},
            "future_key": {"kept": True}, **extra}


def test_round_trip_keeps_everything(tmp_path):
    card = ModelCard.from_dict(_card())
    path = card.write(tmp_path / "v.json")
    again = ModelCard.read(path)
    assert again.to_dict() == card.to_dict()
    assert json.loads(path.read_text())["future_key"] == {"kept": True}
    assert again.temperature() == pytest.approx(np.full(21, 1.5))
    assert again.operating_points["Cardiomegaly"].threshold == 0.2
    assert not again.learnt("Fracture") and again.learnt("Cardiomegaly")
    assert again.per_label_auroc(["Cardiomegaly", "Edema"]) == {"Cardiomegaly": 0.8, "Edema": None}
    assert again.macro_auroc() == 0.7 and again.macro_auroc("val") is None


@pytest.mark.parametrize(("edit", "message"), [
    ({"variant": None}, None),
    ({"metrics": [1]}, "'metrics' must be an object"),
    ({"calibration": {"temperature": [1.0, -1.0]}}, "positive numbers"),
    ({"calibration": "yes"}, "must be an object or null"),
    ({"operating_points": {"Edema": {"threshold": 2.0}}}, r"operating_points\['Edema'\].threshold"),
    ({"labels_not_learnt": "Fracture"}, "must be a list"),
])
def test_malformed_cards_are_refused_with_the_key_named(edit, message):
    data = _card(**edit)
    if message is None:
        data.pop("variant")
        message = "lacks 'variant'"
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data, "v.json")


def test_check_against_the_weights_config():
    config = ModelConfig.for_taxonomy(input_size=64)
    ModelCard.from_dict(_card()).check_against(config, "v.json")
    with pytest.raises(CardError, match="file is named 'w'"):
        ModelCard.from_dict(_card()).check_against(config, "w.json")
    with pytest.raises(CardError, match="must list 21"):
        ModelCard.from_dict(_card(calibration={"temperature": [1.0] * 3, "applied": True})).check_against(
            config, "v.json")
    with pytest.raises(CardError, match="preprocessing.input_size"):
        ModelCard.from_dict(_card(preprocessing={"input_size": 320})).check_against(config, "v.json")


def test_each_test_auroc_is_quoted_with_the_positives_it_rests_on():
    from dashboard.components.model_card import auroc_text

    card = ModelCard.from_dict(_card(metrics={"test": {"per_label": {
        "Cardiomegaly": {"auroc": 0.8, "positives": 24}, "Edema": {"auroc": 1.0, "positives": 1},
        "Fracture": {"auroc": None, "positives": 0}}}}))
    labels = ["Cardiomegaly", "Edema", "Fracture", "Hernia"]
    positives = card.per_label_positives(labels)
    assert positives == {"Cardiomegaly": 24, "Edema": 1, "Fracture": 0, "Hernia": None}
    auroc = card.per_label_auroc(labels)
    assert auroc_text(auroc["Cardiomegaly"], positives["Cardiomegaly"]) == "0.800 (24 test positives)"
    assert auroc_text(auroc["Edema"], positives["Edema"]) == "1.000 from only 1 test positive: unreliable"
    assert auroc_text(auroc["Fracture"], positives["Fracture"]) == "n/a: no test positives"
    assert auroc_text(auroc["Hernia"], positives["Hernia"]) == "n/a: not reported"


def test_shipped_cards_round_trip_to_the_same_json():
    from pathlib import Path

    cards = sorted(p for p in (Path(__file__).parents[1] / "weights").glob("*.json") if p.name != "default.json")
    assert len(cards) >= 4
    for path in cards:
        data = json.loads(path.read_text())
        card = ModelCard.read(path)
        assert json.loads(json.dumps(card.to_dict())) == data, path.name
        assert card.model.input_size == card.preprocessing.input_size == data["model"]["input_size"]
        assert card.split_metrics("test").label("Cardiomegaly").positives > 0


def test_sections_are_typed_and_keep_unknown_keys():
    data = _card(loss={"name": "hbce", "lambda": 1, "penalty_source": "fixed", "violation": "soft", "new": 3},
                 aliases=["b"], data={"sources": [{"name": "NIH", "licence": "CC0", "doi": "x"}], "train_images": 9})
    data["metrics"]["test"]["per_label"]["Cardiomegaly"]["brier"] = 0.1
    card = ModelCard.from_dict(data)
    assert card.loss.lam == 1.0 and card.loss.unknown == {"new": 3} and card.aliases == ["b"]
    assert card.loss.describe() == "BCE + soft penalty, fixed, λ = 1"
    assert card.data.sources[0].licence == "CC0" and card.data.train_images == 9
    again = card.to_dict()
    assert again["loss"]["lambda"] == 1 and again["loss"]["new"] == 3 and again["aliases"] == ["b"]
    assert again["data"]["sources"][0]["doi"] == "x"
    assert again["metrics"]["test"]["per_label"]["Cardiomegaly"]["brier"] == 0.1
    assert "aliases" not in ModelCard.from_dict(_card()).to_dict()  # absent stays absent
    with pytest.raises(CardError, match=r"v.json: loss.lambda must be float, got 'one'"):
        ModelCard.from_dict(_card(loss={"lambda": "one"}), "v.json")
    with pytest.raises(CardError, match=r"metrics\['test'\].per_label\['Cardiomegaly'\].positives must be int"):
        ModelCard.from_dict(_card(metrics={"test": {"per_label": {"Cardiomegaly": {"positives": "many"}}}}), "v.json")


def test_a_pretrained_backbone_is_recorded_shown_and_attributed(tmp_path):
    from core.pretrain import backbone_provenance
    from dashboard.components.model_card import initialisation, summary_table

    pretraining = {"backbone": "runs/pt/backbone.safetensors", "sha256": "ab" * 32, "run": "pt",
                   "method": "supervised", "epochs": 5, "holdout_accuracy": 0.8208,
                   "sources": [{"name": "kermany", "patient_half": 0, "attribution": "Kermany D. et al. (CC BY 4.0)"},
                               {"name": "covid_shenzhen", "patient_half": 0, "attribution": ""}]}
    data = _card(training={"config": {"model": {"pretrained": "runs/pt/backbone.safetensors"}},
                           "pretraining": pretraining}, data={"attribution": "NIH Clinical Center."})
    card = ModelCard.from_dict(data)
    assert json.loads(json.dumps(card.to_dict()))["training"]["pretraining"] == pretraining  # round trip
    line = ("supervised pretraining on kermany (patient half 0), covid_shenzhen (patient half 0), 5 epochs, "
            "held-out accuracy 0.821 (backbone sha256 abababababab)")
    assert initialisation(card) == line
    assert dict(zip(summary_table(card)["field"], summary_table(card)["value"], strict=True))["Initialisation"] == line
    # pretrain.py's `both` (NT-Xent and the supervised heads together) reads as what it did.
    both = ModelCard.from_dict(_card(training={"pretraining": {**pretraining, "method": "both"}}))
    assert initialisation(both).startswith("SimCLR + supervised pretraining on kermany (patient half 0), ")
    # Every method pretrain.py accepts has its words (a new method would otherwise read as its raw name).
    from core.card_sections import _METHOD_WORDS
    from core.pretrain import METHODS

    assert set(_METHOD_WORDS) == set(METHODS)
    # The pretraining images shaped the weights: their licence's attribution goes wherever the card's goes.
    assert card.attribution == "NIH Clinical Center. Pretraining data (kermany): Kermany D. et al. (CC BY 4.0)"
    # A card trained from random weights says so; one with no training record does not pretend to know.
    assert initialisation(ModelCard.from_dict(_card(training={"config": {"model": {}}}))) == "random (no pretraining)"
    assert initialisation(ModelCard.from_dict({"variant": "v"})) == "not reported"
    # A backbone that is gone by the time of the export is recorded by name only, never refused.
    gone = backbone_provenance(tmp_path / "nope.safetensors")
    assert gone.backbone == str(tmp_path / "nope.safetensors") and gone.sha256 is None and gone.run is None
    with pytest.raises(CardError, match=r"training.pretraining.epochs must be int"):
        ModelCard.from_dict(_card(training={"pretraining": {**pretraining, "epochs": "five"}}), "v.json")
