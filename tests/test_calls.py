"""The call rule (core/calls.py): the interval, the operating point, the decision, coherence, out of population."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.calls import (
    ABOVE,
    BELOW,
    NO_CALL,
    NONE,
    CallEvidence,
    CallRule,
    LabelEvidence,
    decide_calls,
    fit_call_evidence,
    hanley_mcneil_ci,
    rule_operating_point,
)
from core.card import CardError, ModelCard
from core.labels import LabelSet
from core.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
LABELS = list(TAXONOMY.labels)


def test_hanley_mcneil_matches_the_spread_of_simulated_aurocs() -> None:
    # Binormal scores with AUROC about 0.75: the analytic SE must match the spread over repeated samples.
    rng = np.random.default_rng(0)
    n1, n0, shift = 60, 240, 0.95
    aucs = [roc_auc_score(np.r_[np.ones(n1), np.zeros(n0)], np.r_[rng.normal(shift, 1, n1), rng.normal(0, 1, n0)])
            for _ in range(400)]
    mean, sd = float(np.mean(aucs)), float(np.std(aucs))
    low, high = hanley_mcneil_ci(mean, n1, n0, 0.95)
    assert (high - low) / (2 * 1.959964) == pytest.approx(sd, rel=0.15)
    assert low < mean < high
    # More data, narrower; clipped to [0, 1]; no interval without both classes.
    assert np.diff(hanley_mcneil_ci(0.75, 600, 2400)) < np.diff(hanley_mcneil_ci(0.75, 60, 240))
    assert hanley_mcneil_ci(0.99, 5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        hanley_mcneil_ci(0.7, 0, 10)


def test_operating_point_meets_the_specificity_floor_when_sensitivity_alone_would_not() -> None:
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.6, 0.15, 200), rng.normal(0.45, 0.15, 800)  # a weak separator
    scores, y = np.r_[pos, neg], np.r_[np.ones(200, bool), np.zeros(800, bool)]
    rule = CallRule(target_sensitivity=0.8, specificity_floor=0.8)
    threshold, sens, spec = rule_operating_point(scores, y, rule)
    assert spec >= 0.8 and spec == pytest.approx((neg < threshold).mean())
    assert sens == pytest.approx((pos >= threshold).mean()) and sens < 0.8  # the floor binds, sensitivity drops
    # A strong separator reaches the target sensitivity with the floor met: the threshold is the sensitivity one.
    strong = np.r_[rng.normal(0.9, 0.03, 200), rng.normal(0.2, 0.05, 800)]
    t2, s2, p2 = rule_operating_point(strong, y, rule)
    assert s2 >= 0.8 and p2 == 1.0 and t2 == pytest.approx(np.sort(strong[:200])[200 - 160])


def _evidence(**callable_thresholds: float) -> CallEvidence:
    labels = {}
    for label in LABELS:
        key = label.replace(" ", "_")
        if key in callable_thresholds:
            labels[label] = LabelEvidence(label, 0.8, (0.7, 0.9), "test", 50, 500, callable_thresholds[key], 0.8,
                                          0.8, True)
        else:
            labels[label] = LabelEvidence(label, 0.55, (0.45, 0.65), "test", 50, 500, None, None, None, False,
                                          "the model cannot separate this finding (AUROC 0.55 [0.45, 0.65] ...)")
    return CallEvidence("test", labels)


def _probs(**values: float) -> np.ndarray:
    p = np.full(len(LABELS), 0.3)
    for key, v in values.items():
        p[LABELS.index(key.replace("_", " "))] = v
    return p


def test_decisions_per_label() -> None:
    evidence = _evidence(Cardiomegaly=0.4, Pleural_Effusion=0.5, Cardiac=0.45, Fluid_Accumulation=0.6)
    calls = decide_calls(_probs(Cardiomegaly=0.2, Pleural_Effusion=0.7, Fluid_Accumulation=0.3, Pneumonia=0.9),
                         LABELS, evidence, TAXONOMY, not_learnt=["Fracture"])
    assert calls.decision("Cardiomegaly") == BELOW and calls.decision("Cardiac") == BELOW
    assert calls.decision("Pleural Effusion") == ABOVE
    # Pneumonia at 0.9 is not called: the model cannot separate it; the reason says so with its AUROC.
    assert calls.decision("Pneumonia") == NO_CALL
    assert calls.calls["Pneumonia"].reason.startswith("no call: the model cannot separate this finding (AUROC")
    assert calls.decision("Fracture") == NONE and calls.calls["Fracture"].probability is None
    # Coherence: the group of a called finding is called through it, or says why not.
    assert calls.decision("Fluid Accumulation") == ABOVE and calls.calls["Fluid Accumulation"].via == \
        "Pleural Effusion"
    assert calls.decision("Opacity") == NO_CALL and "its finding Pleural Effusion is called" in \
        calls.calls["Opacity"].reason
    assert calls.above() == ["Pleural Effusion", "Fluid Accumulation"]


def test_no_finding_and_abnormal_are_never_both_called() -> None:
    evidence = _evidence(No_Finding=0.4, Abnormal=0.5, Cardiomegaly=0.35)
    calls = decide_calls(_probs(No_Finding=0.6, Abnormal=0.7), LABELS, evidence, TAXONOMY)
    assert calls.decision("Abnormal") == ABOVE and calls.decision("No Finding") == NO_CALL
    assert "contradicted by the call on Abnormal" in calls.calls["No Finding"].reason
    # A called finding contradicts No Finding even when Abnormal itself is below its point.
    calls = decide_calls(_probs(No_Finding=0.6, Abnormal=0.1, Cardiomegaly=0.5), LABELS, evidence, TAXONOMY)
    assert calls.decision("No Finding") == NO_CALL and calls.decision("Abnormal") == ABOVE
    # Without a contradiction No Finding stands.
    calls = decide_calls(_probs(No_Finding=0.6, Abnormal=0.1, Cardiomegaly=0.1), LABELS, evidence, TAXONOMY)
    assert calls.decision("No Finding") == ABOVE and calls.decision("Abnormal") == BELOW


def test_out_of_population_means_no_calls_at_all() -> None:
    evidence = _evidence(Cardiomegaly=0.1, Abnormal=0.1)
    calls = decide_calls(_probs(Cardiomegaly=0.9, Abnormal=0.9), LABELS, evidence, TAXONOMY,
                         out_of_population=["patient age", "feature distance"])
    assert {calls.decision(label) for label in LABELS} == {NONE}
    assert calls.above() == [] and calls.out_of_population == ("patient age", "feature distance")
    assert "outside the training population (patient age, feature distance)" in calls.calls["Cardiomegaly"].reason


def test_fitted_evidence_gates_on_the_lower_bound() -> None:
    rng = np.random.default_rng(2)
    n = 600
    y = np.zeros((n, len(LABELS)), np.float32)
    y[:, LABELS.index("Cardiomegaly")] = rng.random(n) < 0.2
    y[:, LABELS.index("Pneumonia")] = rng.random(n) < 0.2
    probs = rng.random((n, len(LABELS))).astype(np.float32) * 0.5
    probs[:, LABELS.index("Cardiomegaly")] += 0.4 * y[:, LABELS.index("Cardiomegaly")]  # separable; Pneumonia not
    labels = LabelSet([f"{i}.png" for i in range(n)], y, np.ones_like(y, bool), tuple(LABELS),
                      pd.DataFrame({"Patient ID": np.arange(n) // 2}))
    rule = CallRule()
    evidence = fit_call_evidence(probs, labels, LABELS, rule, not_learnt=["Fracture"], n_boot=200)
    card = evidence.labels["Cardiomegaly"]
    assert card.callable and card.auroc_ci[0] > rule.auroc_floor and card.specificity >= rule.specificity_floor
    pneumonia = evidence.labels["Pneumonia"]
    assert not pneumonia.callable and pneumonia.threshold is None and pneumonia.auroc_ci[0] <= 0.5
    assert "Fracture" not in evidence.labels
    # Labels with no positives in the held-out data are not callable, with a reason naming the counts.
    assert not evidence.labels["Edema"].callable and "too few held-out images" in evidence.labels["Edema"].reason


def test_card_round_trip_and_validation() -> None:
    evidence = _evidence(Cardiomegaly=0.4)
    card = ModelCard(variant="x", call_rule=CallRule(auroc_floor=0.65), call_evidence=evidence)
    again = ModelCard.from_dict(card.to_dict())
    assert again.call_rule == CallRule(auroc_floor=0.65)
    assert again.call_evidence.thresholds() == {"Cardiomegaly": 0.4}
    bad = card.to_dict()
    bad["call_rule"]["auroc_floor"] = 1.5
    with pytest.raises(CardError, match="auroc_floor"):
        ModelCard.from_dict(bad)
    bad = card.to_dict()
    bad["call_evidence"]["labels"]["Cardiomegaly"]["threshold"] = None
    with pytest.raises(CardError, match="needs a threshold"):
        ModelCard.from_dict(bad)
