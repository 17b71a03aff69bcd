"""Metrics: the official release's reference figures, hand-computed ECE, bootstrap by patient, violations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.metrics import (
    bootstrap_ci,
    evaluate_predictions,
    expected_calibration_error,
    macro_mean,
    per_label_auroc,
    positive_counts,
    resampled_auroc,
    violation_rate,
    weighted_mean,
)


@pytest.fixture(scope="module")
def reference(reference_dir, taxonomy):
    df = pd.read_csv(reference_dir / "cihmlc_test_predictions.csv")
    labels = list(taxonomy.labels)
    return df, df[[f"{x}_GT" for x in labels]].to_numpy(), df[[f"{x}_Pred" for x in labels]].to_numpy()


def test_reference_figures_of_the_official_release(reference, taxonomy):
    _, y, p = reference
    aucs = per_label_auroc(y, p)
    assert all(a is not None for a in aucs)
    assert weighted_mean(aucs, positive_counts(y)) == pytest.approx(0.9047, abs=5e-5)
    chexpert = [taxonomy.index(x) for x in taxonomy.chexpert_labels]
    assert macro_mean(aucs, chexpert) == pytest.approx(0.8800, abs=5e-5)
    assert macro_mean(aucs) == pytest.approx(0.8823, abs=5e-5)
    assert aucs[taxonomy.index("Uncertain")] == pytest.approx(0.7782, abs=5e-5)
    summary = evaluate_predictions(y, p, taxonomy)
    assert summary.weighted_auroc == pytest.approx(0.9047, abs=5e-5)
    assert summary.macro_auroc_chexpert == pytest.approx(0.8800, abs=5e-5)
    # 18 violations over 668 x 20 edge checks (paper_brief.md section 8.2)
    assert violation_rate(p, taxonomy) == pytest.approx(18 / (668 * 20))


def test_bootstrap_by_study_contains_the_estimate(reference, taxonomy):
    df, y, p = reference
    study = df["Path"].str.extract(r"(patient\d+/study\d+)", expand=False)
    chexpert = [taxonomy.index(x) for x in taxonomy.chexpert_labels]
    ci = bootstrap_ci(lambda r: macro_mean(per_label_auroc(y[r], p[r]), chexpert), study, n_boot=60, seed=1)
    assert ci is not None and ci[0] < 0.8800 < ci[1]
    assert 0.83 < ci[0] and ci[1] < 0.92


def test_bootstrap_draws_whole_groups():
    groups = ["a", "a", "b", "b", "c", "c"]
    seen = []

    def stat(rows):
        assert len(rows) == 6
        ids = rows.tolist()
        for first in (0, 2, 4):
            assert ids.count(first) == ids.count(first + 1)  # a group's two rows always come together
        seen.append(len(set(ids)))
        return float(np.mean(rows))

    lo, hi = bootstrap_ci(stat, groups, n_boot=50, seed=0)
    assert lo <= hi and min(seen) < 6  # some resamples repeat a group


def test_resampled_auroc_is_scikit_learns_auroc_of_the_resample(reference, taxonomy):
    """The fast bootstrap statistic equals ``roc_auc_score`` on the resampled rows (repeats, tied scores counted
    half), and is undefined on a resample of one class; on the official release's scores and on coarse scores."""
    from sklearn.metrics import roc_auc_score

    _, y, p = reference
    rng = np.random.default_rng(3)
    columns = [(y[:, taxonomy.index(x)], p[:, taxonomy.index(x)]) for x in taxonomy.chexpert_labels[:6]]
    columns += [(rng.random(300) < 0.1, np.round(rng.random(300), 1)) for _ in range(3)]  # many ties
    for truth, score in columns:
        truth = truth.astype(bool)
        stat = resampled_auroc(truth, score)
        for _ in range(20):
            rows = rng.integers(0, len(truth), len(truth))
            assert stat(rows) == pytest.approx(roc_auc_score(truth[rows], score[rows]), abs=1e-12)
        assert stat(np.flatnonzero(truth)) is None and stat(np.flatnonzero(~truth)[:5]) is None


def test_one_class_label_has_no_auroc_and_is_skipped():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
    aucs = per_label_auroc(y, s)
    assert aucs == [1.0, None]
    assert macro_mean(aucs) == 1.0
    mask = np.array([[True, True], [False, True], [True, True]])
    assert per_label_auroc(y, s, mask)[0] is None  # only positives left once the unknown row is masked


def test_ece_by_hand():
    # 15 bins: one sample per bin, gaps .1 .1 .4 .4, each weighted 1/4
    assert expected_calibration_error([1, 0, 1, 0], [0.9, 0.1, 0.6, 0.4]) == pytest.approx(0.25)
    # same bin (10/15 <= p < 11/15): |0.5 - 0.705|
    assert expected_calibration_error([1, 0], [0.70, 0.71]) == pytest.approx(0.205)
    assert expected_calibration_error([1, 1, 0, 0], [1.0, 1.0, 0.0, 0.0]) == 0.0


def test_weighted_mean_matches_definition():
    assert weighted_mean([0.5, 1.0, None], [1, 3, 10]) == pytest.approx((0.5 + 3.0) / 4)
