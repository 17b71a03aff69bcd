"""core.recipe_unseen: two recipes' fold models on films no fold trained on (the real test split and Kermany films),
each recipe decoded at its own input contract; the numbers checked against scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_test_model
from sklearn.metrics import roc_auc_score

from core.config import load_config
from core.evaluate import split_labels, variant_probabilities
from core.external_check import LABEL_ON_PNEUMONIA
from core.model import save_model
from core.paired import ComparisonError
from core.recipe_unseen import common_folds, compare_unseen


def _cv(root: Path, name: str, seeds: tuple[int, ...], input_size: int = 64, epochs_done: int = 15) -> Path:
    """A CV folder with the real NIH config and one random fold model per seed, marked as trained ``epochs_done``."""
    cv = root / name
    config = load_config("configs/nih_chmcnn.yaml")
    cv.mkdir(parents=True)
    config.save(cv / "config.yaml")
    for fold, seed in enumerate(seeds):
        ckpt = cv / f"fold{fold}" / "checkpoints"
        save_model(make_test_model(seed=seed, input_size=input_size), ckpt / "last_ema.safetensors")
        config.save(cv / f"fold{fold}" / "config.yaml")
        (ckpt / "last_state.json").write_text(json.dumps({"loop": {"epoch": epochs_done}}))
    return cv


def test_each_recipe_is_its_fold_models_mean_at_its_own_input_size(shared_data, taxonomy, tmp_path):
    a = _cv(tmp_path, "a_cv5", (1, 2))
    b = _cv(tmp_path, "b_cv5", (3, 4), input_size=96)
    assert common_folds(a, b) == [0, 1]
    on_test, fold0, fold1, on_kermany = compare_unseen(a, b, kermany_per_class=10, n_boot=20)
    assert "ensembles of folds 0, 1" in on_test.note and "fold 1 alone" in fold1.note
    assert on_test.images == fold0.images == 122 and on_kermany.images == 20
    assert {row.label for row in on_kermany.labels} == set(LABEL_ON_PNEUMONIA)

    # Recipe b's models one by one through core.evaluate's batch path at 96 px (no card: no temperature).
    test = split_labels("../shared/data/nih/labels.csv", "../shared/data/nih/images", "test", taxonomy)
    images = shared_data / "nih" / "images"
    singles = [next(iter(variant_probabilities([b / f"fold{k}" / "checkpoints" / "last_ema"], test,
                                               images).values())) for k in (0, 1)]
    assert singles[0][1].input_size == 96
    mean = (singles[0][0] + singles[1][0]) / 2
    targets, mask = singles[0][1].labels.targets, singles[0][1].labels.mask
    assert len(on_test.labels) >= 10
    for row in on_test.labels:
        j = taxonomy.labels.index(row.label)
        known = mask[:, j]
        assert row.b_auroc == pytest.approx(roc_auc_score(targets[known, j], mean[known, j]), abs=1e-9)
    row = fold1.labels[0]
    j = taxonomy.labels.index(row.label)
    known = mask[:, j]
    assert row.b_auroc == pytest.approx(roc_auc_score(targets[known, j], singles[1][0][known, j]), abs=1e-9)
    assert np.isfinite(on_test.difference)


def test_only_folds_both_finished_count(tmp_path):
    a = _cv(tmp_path, "a_cv5", (1, 2, 3))
    b = _cv(tmp_path, "b_cv5", (1, 2))
    (b / "fold1" / "checkpoints" / "last_state.json").write_text(json.dumps({"loop": {"epoch": 3}}))  # interrupted
    assert common_folds(a, b) == [0]
    c = _cv(tmp_path, "c_cv5", (5,), epochs_done=2)
    assert common_folds(a, c) == []
    with pytest.raises(ComparisonError, match="no fold that both finished"):
        compare_unseen(a, c, kermany_per_class=0)
