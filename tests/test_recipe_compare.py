"""core.recipe_compare: two cross-validations compared fold by fold on the same held-out patients (real NIH rows,
held-out logits written as the trainer writes them; the numbers checked against scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_nih_csv
from sklearn.metrics import roc_auc_score

from core.config import config_from_dict
from core.crossval import CVError, cv_probabilities, fold_config
from core.data import load_splits
from core.paired import ComparisonError
from core.recipe_compare import compare_recipes, finished_folds, native_side
from core.taxonomy import load_taxonomy

FOLDS, EPOCH, GROWN = 3, 2, "grown/repo"


@pytest.fixture
def two_cvs(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, object]:
    csv = write_tiny_nih_csv(shared_data, tmp_path / "labels.csv", 30, 40, 20, 4)
    table = pd.read_csv(csv)
    table.loc[table.index % 3 == 0, "source_repo"] = GROWN  # a third of the rows "came with the growth"
    table.to_csv(csv, index=False)
    config = config_from_dict({"name": "tiny", "data": {"csv": str(csv), "images": str(shared_data / "nih" / "images")},
                               "train": {"out_dir": str(tmp_path / "runs")}})
    rng = np.random.default_rng(0)
    for name, signal in (("a", 0.3), ("b", 3.0)):  # b's logits carry much more of the label than a's
        for k in range(FOLDS):
            fold = fold_config(config, FOLDS, k)
            held = load_splits(fold)["val"]
            folder = tmp_path / name / f"fold{k}" / "val_logits"
            folder.mkdir(parents=True)
            fold.save(folder.parent / "config.yaml")
            (folder / "rows.txt").write_text("\n".join(held.paths) + "\n", encoding="utf-8")
            for epoch in (1, EPOCH):
                logits = rng.normal(size=held.targets.shape) + signal * held.targets
                np.save(folder / f"epoch_{epoch:03d}.npy", logits.astype(np.float32))
    return tmp_path / "a", tmp_path / "b", config


def test_each_fold_and_the_pooled_difference_are_scored_on_the_same_images(two_cvs) -> None:
    a, b, config = two_cvs
    assert finished_folds(a) == {k: [1, EPOCH] for k in range(FOLDS)}
    result = compare_recipes(a, b, EPOCH, min_positives=2, n_boot=200)
    assert result.folds == [0, 1, 2] and result.epoch == EPOCH
    assert all(y > x for x, y in zip(result.fold_macro_a, result.fold_macro_b, strict=True))
    # Fold 0's macro of recipe b, computed here independently.
    held = load_splits(fold_config(config, FOLDS, 0))["val"]
    probs = cv_probabilities(np.load(b / "fold0" / "val_logits" / f"epoch_{EPOCH:03d}.npy"), config, load_taxonomy())
    values = []
    for j in range(held.targets.shape[1]):
        known = held.mask[:, j]
        y = held.targets[known, j]
        if y.sum() >= 2 and (1 - y).sum() >= 1:
            values.append(roc_auc_score(y, probs[known, j]))
    assert result.fold_macro_b[0] == pytest.approx(np.mean(values), abs=1e-12)
    pooled = result.pooled
    assert pooled.images == sum(len(load_splits(fold_config(config, FOLDS, k))["val"]) for k in range(FOLDS))
    assert pooled.difference > 0.2 and pooled.difference_ci[0] > 0
    assert "folds 0, 1, 2, all sources" in pooled.note


def test_sources_select_images_and_unfinished_folds_are_left_out(two_cvs) -> None:
    a, b, config = two_cvs
    held = [load_splits(fold_config(config, FOLDS, k))["val"] for k in range(FOLDS)]
    grown = sum(int((h.metadata["source_repo"] == GROWN).sum()) for h in held)
    only = compare_recipes(a, b, EPOCH, sources=[GROWN], min_positives=2, n_boot=0)
    without = compare_recipes(a, b, EPOCH, exclude_sources=[GROWN], min_positives=2, n_boot=0)
    assert only.pooled.images == grown and without.pooled.images == sum(map(len, held)) - grown
    assert f"from {GROWN}" in only.pooled.note and f"not from {GROWN}" in without.pooled.note
    (b / "fold2" / "val_logits" / f"epoch_{EPOCH:03d}.npy").unlink()  # recipe b has not finished fold 2
    assert compare_recipes(a, b, EPOCH, min_positives=2, n_boot=0).folds == [0, 1]
    with pytest.raises(ComparisonError, match="no fold that both finished to epoch 5"):
        compare_recipes(a, b, 5)


def test_runs_whose_held_out_rows_changed_are_refused(two_cvs) -> None:
    a, b, _ = two_cvs
    rows = b / "fold0" / "val_logits" / "rows.txt"
    rows.write_text("\n".join(reversed(rows.read_text().splitlines())) + "\n")
    with pytest.raises(CVError, match="held-out rows differ from fold 0"):
        compare_recipes(a, b, EPOCH, min_positives=2, n_boot=0)


def test_native_resolution_selects_thumbnails_or_full_resolution_films(two_cvs) -> None:
    a, b, config = two_cvs
    held = [load_splits(fold_config(config, FOLDS, k))["val"] for k in range(FOLDS)]
    sides = np.concatenate([native_side(h.metadata["native_size"].tolist()) for h in held])
    assert (sides <= 64).any() and (sides > 64).any(), "the tiny table should mix thumbnails and full films"
    small = compare_recipes(a, b, EPOCH, native_at_most=64, min_positives=1, n_boot=0)
    large = compare_recipes(a, b, EPOCH, native_above=64, min_positives=1, n_boot=0)
    assert small.pooled.images == int((sides <= 64).sum()) and large.pooled.images == int((sides > 64).sum())
    assert "native <= 64 px" in small.pooled.note and "native > 64 px" in large.pooled.note
    assert list(native_side(["1024x1024", "64x64", "256x224"])) == [1024, 64, 224]
    with pytest.raises(ComparisonError, match="native_size: a value is not WxH"):
        native_side(["1024 px"])
