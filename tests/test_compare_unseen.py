"""core.compare_unseen (which images count as unseen) and core.paired (the paired comparison's numbers, against
scikit-learn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.compare_unseen import unseen_rows
from core.paired import ComparisonError, paired_comparison

GROWN_BY = ["muhammedtalo/COVID-19", "MichaelNoya/nih-chest-xray-webdataset-subset"]


def test_unseen_rows_on_the_real_table_leave_out_patients_with_older_images(shared_data) -> None:
    table = pd.read_csv(shared_data / "nih" / "labels.csv")
    table = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    rows, dropped = unseen_rows(table, "train+val", GROWN_BY)
    chosen = table.iloc[rows]
    new = table[table["source_repo"].isin(GROWN_BY)]
    old_patients = set(table.loc[~table["source_repo"].isin(GROWN_BY), "Patient ID"].astype(str))
    assert set(chosen["source_repo"]) <= set(GROWN_BY)
    assert not set(chosen["Patient ID"].astype(str)) & old_patients  # nobody the old model may have seen
    left_out = new[~new.index.isin(rows)]
    assert len(left_out) == dropped > 0
    assert set(left_out["Patient ID"].astype(str)) <= old_patients  # and nothing dropped without that reason
    assert len(chosen) + dropped == len(new)


def test_unseen_rows_say_what_is_wrong() -> None:
    table = pd.DataFrame({"source_repo": ["a", "b"], "Patient ID": [1, 1], "split": ["train", "val"]})
    with pytest.raises(ComparisonError, match="no cross-validated image comes from c"):
        unseen_rows(table, "train+val", ["c"])
    with pytest.raises(ComparisonError, match="patient who also has an older image"):
        unseen_rows(table, "train+val", ["b"])
    with pytest.raises(ComparisonError, match="'source_repo'"):
        unseen_rows(table.drop(columns="source_repo"), "train+val", ["b"])
    # A model trained on train only never saw the older validation images either: they count as unseen too.
    older_val = pd.DataFrame({"source_repo": ["a", "a", "b"], "Patient ID": [1, 2, 3],
                              "split": ["train", "val", "train"]})
    assert unseen_rows(older_val, "train", ["b"])[0].tolist() == [1, 2]
    assert unseen_rows(older_val, "train+val", ["b"])[0].tolist() == [2]
    # Either kind alone: the new images, or the older validation image a train-only model never saw.
    assert unseen_rows(older_val, "train", ["b"], kind="new")[0].tolist() == [2]
    assert unseen_rows(older_val, "train", ["b"], kind="older")[0].tolist() == [1]
    with pytest.raises(ComparisonError, match="no older image is unseen by a model trained on train\\+val"):
        unseen_rows(older_val, "train+val", ["b"], kind="older")
    with pytest.raises(ComparisonError, match="unknown kind of image 'old'"):
        unseen_rows(older_val, "train", ["b"], kind="old")


def test_the_older_unseen_images_of_a_train_only_model_are_the_older_validation_split(shared_data) -> None:
    table = pd.read_csv(shared_data / "nih" / "labels.csv")
    table = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    rows, _ = unseen_rows(table, "train", GROWN_BY, kind="older")
    chosen = table.iloc[rows]
    older_val = table[(table["split"] == "val") & ~table["source_repo"].isin(GROWN_BY)]
    older_train_patients = set(table.loc[(table["split"] == "train") & ~table["source_repo"].isin(GROWN_BY),
                                         "Patient ID"].astype(str))
    assert set(chosen.index) == set(older_val.index[~older_val["Patient ID"].astype(str).isin(older_train_patients)])
    assert 0 < len(chosen) <= 81 and set(chosen["split"]) == {"val"}
    new_rows, _ = unseen_rows(table, "train", GROWN_BY, kind="new")
    all_rows, _ = unseen_rows(table, "train", GROWN_BY)
    assert sorted([*rows, *new_rows]) == sorted(all_rows)


def test_a_model_trained_on_the_grown_split_is_told_apart_by_its_image_count(shared_data) -> None:
    """core.card_evidence must not fit a grown-data model's call evidence on the new films it trained on: the
    card's image count says whether the model trained on more than its splits held before the growth."""
    from core.growth import trained_after_growth

    table = pd.read_csv(shared_data / "nih" / "labels.csv")
    older = ~table["source_repo"].isin(GROWN_BY)
    before = {"train": int((older & (table["split"] == "train")).sum()),
              "train+val": int((older & table["split"].isin(["train", "val"])).sum())}
    assert before == {"train": 1368, "train+val": 1449}  # the shipped older cards' counts (data README)
    assert not trained_after_growth(table, "train", 1368) and not trained_after_growth(table, "train+val", 1449)
    assert trained_after_growth(table, "train+val", 2234) and trained_after_growth(table, "train", 2079)
    assert not trained_after_growth(table, "train", None)


def _data(seed: int = 3, n: int = 300):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.3, 0.1, 0.02]).astype(np.float32)
    mask = np.ones_like(targets, dtype=bool)
    mask[::7, 0] = False  # unknown entries are left out of that label only
    weak = targets * 0.3 + rng.random((n, 3))
    strong = targets * 1.5 + rng.random((n, 3))
    groups = np.repeat(np.arange(n // 2), 2)
    return targets, mask, weak, strong, groups


def test_compare_matches_scikit_learn_and_skips_rare_or_unlearnt_labels() -> None:
    targets, mask, weak, strong, groups = _data()
    learnt = np.array([True, True, True])
    result = paired_comparison(weak, strong, targets, mask, groups, ["A", "B", "C"], learnt, n_boot=200)
    # C is rare (2%): whether it reaches 5 positives and 5 negatives is counted here independently.
    counted = [name for j, name in enumerate("ABC")
               if min(targets[mask[:, j], j].sum(), (1 - targets[mask[:, j], j]).sum()) >= 5]
    assert [r.label for r in result.labels] == counted
    for r in result.labels:
        j = "ABC".index(r.label)
        known = mask[:, j]
        assert r.a_auroc == pytest.approx(roc_auc_score(targets[known, j], weak[known, j]), abs=1e-12)
        assert r.b_auroc == pytest.approx(roc_auc_score(targets[known, j], strong[known, j]), abs=1e-12)
        assert r.positives == int(targets[known, j].sum())
    assert result.difference == pytest.approx(result.b_macro - result.a_macro)
    assert result.difference > 0.1
    low, high = result.difference_ci
    assert 0 < low < result.difference < high
    unlearnt = paired_comparison(weak, strong, targets, mask, groups, ["A", "B", "C"], np.array([False, True, True]),
                       n_boot=0)
    assert "A" not in [r.label for r in unlearnt.labels] and unlearnt.difference_ci is None


def test_the_same_predictions_differ_by_exactly_zero() -> None:
    targets, mask, weak, _, groups = _data()
    result = paired_comparison(weak, weak, targets, mask, groups, ["A", "B", "C"], np.ones(3, bool), n_boot=100)
    assert result.difference == 0 and result.difference_ci == (0.0, 0.0)
    with pytest.raises(ComparisonError, match="no label has 500 positives"):
        paired_comparison(weak, weak, targets, mask, groups, ["A", "B", "C"], np.ones(3, bool), min_positives=500)
