"""The shipped models' calls: what a radiologist sees on the NIH test split (never used to choose anything)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.calls import ABOVE, BELOW
from core.growth import trained_after_growth
from core.inference import Predictor
from core.registry import default_variant, list_variants

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
NIH = REPO.parent / "shared" / "data" / "nih"


def test_every_shipped_card_carries_the_rule_and_its_held_out_inputs() -> None:
    table = pd.read_csv(NIH / "labels.csv")
    for variant in list_variants(WEIGHTS):
        card = variant.card
        assert card.call_rule is not None and card.call_rule.auroc_floor >= 0.6
        assert card.call_evidence is not None
        if trained_after_growth(table, str(card.data.trained_on), card.data.train_images):
            # Trained on the grown data: the new films are its training images, so its evidence stays the CV's.
            assert card.call_evidence.source.startswith("out-of-fold predictions"), variant.name
        else:
            assert "never trained on" in card.call_evidence.source, variant.name
        assert "test" not in card.call_evidence.source.replace("outside the test split", "")
        learnt = [label for label in variant.labels if card.learnt(label)]
        assert sorted(card.call_evidence.labels) == sorted(learnt)
        for label, e in card.call_evidence.labels.items():
            # A label whose held-out interval reaches the floor (let alone 0.5) is never callable.
            if e.auroc_ci is None or e.auroc_ci[0] <= card.call_rule.auroc_floor:
                assert not e.callable and e.threshold is None and e.reason, (variant.name, label)
            if e.callable:
                assert e.specificity >= card.call_rule.specificity_floor, (variant.name, label)
        # The out-of-population figures are measured, on adult films (false alarms) and held-out children.
        measured = card.ood.measured
        assert {"nih_test", "dicom_adult", "covid", "shenzhen", "kermany_heldout"} <= set(measured)
        # No adult DICOM film is called a child's (the header clears the Canon DX film), and children still are.
        assert measured["dicom_adult"]["population"] == 0, variant.name
        assert measured["kermany_heldout"]["population"] >= 0.95, variant.name
        # Nor the other adult collections' films the classifier was not fitted on (9.5-58% before it also learnt
        # half of their patients' films as adults; 0-1.4% since).
        assert measured["covid"]["population"] <= 0.03 and measured["covid"]["images"] > 100, variant.name


@pytest.mark.slow
def test_default_model_on_the_nih_test_split() -> None:
    """Median calls on No Finding films at most 1; No Finding and Abnormal never both called; no call on a label
    whose held-out interval includes 0.5."""
    table = pd.read_csv(NIH / "labels.csv")
    test = table[table["split"] == "test"]
    name = default_variant(WEIGHTS)
    predictor = Predictor(WEIGHTS, name)
    evidence = predictor.get(name).call_evidence
    chance = {label for label, e in evidence.labels.items() if e.auroc_ci is None or e.auroc_ci[0] <= 0.5}
    calls, findings, both, no_finding = [], [], 0, test["Finding Labels"].eq("No Finding").to_numpy()
    paths = [NIH / "images" / f for f in test["Image Index"]]
    for item in predictor.iter_analyses(paths, batch_size=16):
        assert item.error is None
        a = item.analyses[name]
        calls.append(len(a.calls.above()))
        findings.append(len([label for label in a.calls.above() if label != "No Finding"]))
        both += a.call("No Finding") == ABOVE and a.call("Abnormal") == ABOVE
        assert not any(a.call(label) in (ABOVE, BELOW) for label in chance)
    calls, findings = np.asarray(calls), np.asarray(findings)
    assert np.median(calls[no_finding]) <= 1
    assert both == 0
    # The calls discriminate: films with a finding get more finding calls than films labelled No Finding.
    assert findings[~no_finding].mean() > findings[no_finding].mean()
