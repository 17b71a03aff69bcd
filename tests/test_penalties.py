"""Data-driven penalties against a hand-computed table."""

from __future__ import annotations

import numpy as np
import pytest

from core.penalties import data_driven_penalties, edge_counts, fixed_penalties, penalty_table
from core.taxonomy import taxonomy_from_dict


@pytest.fixture()
def tiny():
    return taxonomy_from_dict({"chexpert_labels": ["C1", "C2"], "derived_labels": ["P"], "edges": {"P": ["C1", "C2"]}})


def test_hand_computed_table(tiny):
    # columns C1, C2, P; nan = unknown
    rows = np.array([
        [1, 0, 0],        # P->C1 inconsistent, P->C2 consistent
        [0, 0, 0],
        [0, 1, 0],        # P->C2 inconsistent
        [1, 1, 1],        # parent positive: not counted
        [0, np.nan, 0],   # C2 unknown: only P->C1 counted
        [1, 0, np.nan],   # parent unknown: not counted
    ])
    mask = ~np.isnan(rows)
    targets = np.nan_to_num(rows)
    n_neg, n_inc = edge_counts(targets, mask, tiny)
    assert n_neg.tolist() == [4, 3] and n_inc.tolist() == [1, 1]
    # 1 - (1 + 1) / (4 + 2) = 2/3 ; 1 - (1 + 1) / (3 + 2) = 0.6
    np.testing.assert_allclose(data_driven_penalties(targets, mask, tiny, alpha=1.0), [2 / 3, 0.6], rtol=1e-6)
    # alpha = 0.5: 1 - 1.5/5 = 0.7 ; 1 - 1.5/4 = 0.625
    np.testing.assert_allclose(data_driven_penalties(targets, mask, tiny, alpha=0.5), [0.7, 0.625], rtol=1e-6)
    table = penalty_table(data_driven_penalties(targets, mask, tiny), tiny, targets, mask)
    assert [(r.parent, r.child, r.n_parent_negative, r.n_inconsistent) for r in table] == [
        ("P", "C1", 4, 1), ("P", "C2", 3, 1)]


def test_fixed_and_invalid_alpha(tiny):
    assert fixed_penalties(tiny, 0.5).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="alpha"):
        data_driven_penalties(np.zeros((1, 3)), np.ones((1, 3), bool), tiny, alpha=0)


def test_real_nih_training_labels_give_penalties_in_range(shared_data, taxonomy):
    import pandas as pd

    from core.labels import nih_labels

    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    ls = nih_labels(df[df["split"] == "train"], taxonomy)
    pen = data_driven_penalties(ls.targets, ls.mask, taxonomy)
    assert pen.shape == (20,) and np.all((pen > 0) & (pen < 1))
    # Derived parents are never 0 with a positive child, so those edges sit near 1; Consolidation -> Pneumonia
    # is violated in NIH labels (pneumonia without consolidation is common) and must weigh clearly less.
    n_neg, _ = edge_counts(ls.targets, ls.mask, taxonomy)
    observed = n_neg > 0
    e = taxonomy.edges.index(("Consolidation", "Pneumonia"))
    assert pen[e] < 0.99 and pen[e] == pen[observed].min()
    # NIH never labels Support Devices, so "Other" is never known: no evidence, the smoothed estimate is 1/2.
    for edge in (("Other", "Fracture"), ("Other", "Support Devices"), ("Abnormal", "Other")):
        e = taxonomy.edges.index(edge)
        assert n_neg[e] == 0 and pen[e] == pytest.approx(0.5)
    # Enlarged Cardiomediastinum is known 0 only on "No Finding" images, where Cardiomegaly is 0 too.
    ecm = taxonomy.edges.index(("Enlarged Cardiomediastinum", "Cardiomegaly"))
    assert n_neg[ecm] == 936 and pen[ecm] == pytest.approx(1 - 1 / 938)
