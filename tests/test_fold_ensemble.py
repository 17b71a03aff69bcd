"""The fold ensemble against the fitted model on films neither trained on (real test and Kermany films)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_test_model, make_weights_dir
from sklearn.metrics import roc_auc_score

from core.config import load_config
from core.crossval import CVError
from core.evaluate import split_labels, variant_probabilities
from core.external_check import LABEL_ON_PNEUMONIA
from core.fold_ensemble import check_ensemble, ensemble_probabilities, fold_model_paths
from core.model import ModelLoadError, load_model, save_model


def _cv_dir(root: Path, seeds: tuple[int, ...] = (1, 2)) -> Path:
    """A finished-looking CV folder: the real NIH config, a summary, and one random fold model per seed."""
    cv = root / "nih_bce_cv2"
    cv.mkdir(parents=True)
    load_config("configs/nih_bce.yaml").save(cv / "config.yaml")
    (cv / "cv_summary.json").write_text(json.dumps({"folds": len(seeds)}))
    for fold, seed in enumerate(seeds):
        save_model(make_test_model(seed=seed), cv / f"fold{fold}" / "checkpoints" / "last_ema.safetensors")
    return cv


def test_the_ensemble_is_the_mean_of_its_fold_models_and_is_scored_like_scikit_learn(shared_data, taxonomy,
                                                                                  tmp_path):
    cv = _cv_dir(tmp_path)
    fitted = make_weights_dir(tmp_path, ("fitted",)) / "fitted"
    check = check_ensemble(cv, fitted, kermany_per_class=20, n_boot=20)
    on_test, on_kermany = check.comparisons
    assert check.folds == 2 and check.fitted_s_per_image > 0 and check.ensemble_s_per_image > 0

    # Each fold model alone through core.evaluate's batch path (no card: no temperature), averaged here.
    test = split_labels("../shared/data/nih/labels.csv", "../shared/data/nih/images", "test", taxonomy)
    assert on_test.images == len(test) == 122
    images = shared_data / "nih" / "images"
    singles = [next(iter(variant_probabilities([path.with_suffix("")], test, images).values()))
               for path in fold_model_paths(cv)]
    mean = (singles[0][0] + singles[1][0]) / 2
    [(fitted_probs, dataset, _, _)] = variant_probabilities([fitted], test, images).values()
    for row in on_test.labels:
        j = taxonomy.labels.index(row.label)
        known = dataset.labels.mask[:, j]
        y = dataset.labels.targets[known, j]
        assert row.b_auroc == pytest.approx(roc_auc_score(y, mean[known, j]), abs=1e-9)
        assert row.a_auroc == pytest.approx(roc_auc_score(y, fitted_probs[known, j]), abs=1e-9)
    assert len(on_test.labels) >= 10  # the test split's labels with >= 5 positives and negatives

    assert on_kermany.images == 40
    assert {row.label for row in on_kermany.labels} == set(LABEL_ON_PNEUMONIA)
    assert "ensemble" in check.to_text() and "ms/image" in check.to_text()


def test_an_ensemble_of_one_model_twice_is_that_model(shared_data, taxonomy, tmp_path):
    cv = _cv_dir(tmp_path, seeds=(4, 4))
    test = split_labels("../shared/data/nih/labels.csv", "../shared/data/nih/images", "test", taxonomy)
    [(alone, dataset, _, _)] = variant_probabilities([fold_model_paths(cv)[0].with_suffix("")], test,
                                                     shared_data / "nih" / "images").values()
    twice = [load_model(path) for path in fold_model_paths(cv)]
    np.testing.assert_allclose(ensemble_probabilities(twice, dataset), alone, rtol=0, atol=1e-6)


def test_a_missing_fold_or_another_input_size_is_said(shared_data, taxonomy, tmp_path):
    cv = _cv_dir(tmp_path)
    (cv / "fold1" / "checkpoints" / "last_ema.safetensors").unlink()
    with pytest.raises(CVError, match="fold1.*no fold weights"):
        fold_model_paths(cv)
    save_model(make_test_model(seed=2, input_size=96), cv / "fold1" / "checkpoints" / "last_ema.safetensors")
    test = split_labels("../shared/data/nih/labels.csv", "../shared/data/nih/images", "test", taxonomy)
    [(_, dataset, _, _)] = variant_probabilities([fold_model_paths(cv)[0].with_suffix("")], test,
                                                 shared_data / "nih" / "images").values()
    with pytest.raises(ModelLoadError, match="fold model 1: its input contract differs"):
        ensemble_probabilities([load_model(path) for path in fold_model_paths(cv)], dataset)
    with pytest.raises(ModelLoadError, match="no fold model"):
        ensemble_probabilities([], dataset)
