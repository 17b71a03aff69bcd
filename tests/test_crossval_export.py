"""Cross-validation, fitting from it, and exporting a card whose held-out facts come from the folds (real images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CARD_KEYS, write_tiny_nih_csv

from core.calls import CallRule, card_evidence
from core.card import ModelCard
from core.card_evidence import card_call_evidence
from core.config import config_from_dict
from core.crossval import CVError, cv_dir, fit_overrides, fold_config, load_oof, run_cv
from core.data import cv_folds, load_splits
from core.export import export_model
from core.heldout import output_probs
from core.inference import Predictor
from core.trainer import train


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_folds_are_patient_disjoint_balanced_and_stable():
    ids = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    folds = cv_folds(ids, 5)
    assert sorted(np.bincount(folds)) == [60] * 5
    by_patient = {}
    for pid, f in zip(ids, folds, strict=True):
        by_patient.setdefault(pid, set()).add(int(f))
    assert all(len(v) == 1 for v in by_patient.values())
    assert np.array_equal(cv_folds(list(reversed(ids)), 5)[::-1], folds)  # row order does not matter


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("cv")
    csv = write_tiny_nih_csv(shared_data, root / "labels.csv", 20, 20, 16, 24)
    data = {
        "name": "tiny", "data": {"csv": str(csv), "images": str(shared_data / "nih" / "images")},
        "model": {"input_size": 64, "output_stride": 8, "dropout": 0.2},
        "loss": {"penalty": "data_driven", "violation": "soft"},
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "min_val_positives": 2, "ema_decay": 0.9,
                  "out_dir": str(root / "runs")},
        "eval": {"n_boot": 10, "min_train_positives": 3, "ood_components": 8,
                 "ood_outliers_csv": str(shared_data / "other" / "kermany" / "labels.csv"),
                 "ood_outliers_images": str(shared_data / "other" / "kermany" / "images"), "ood_outliers_max": 40,
                 "ood_adults_csv": str(shared_data / "other" / "labels.csv"),
                 "ood_adults_images": str(shared_data / "other")},
    }
    return data, root


def test_fit_keeps_the_schedule_the_epoch_was_chosen_under(tmp_path):
    folder = tmp_path / "cv"
    with pytest.raises(CVError, match="no cross-validation summary"):
        fit_overrides(folder)
    folder.mkdir()
    (folder / "cv_summary.json").write_text(json.dumps({"chosen_epoch": 11}))
    with pytest.raises(CVError, match="config.yaml: missing"):
        fit_overrides(folder)
    (folder / "config.yaml").write_text("train:\n  lr: 0.001\n")
    with pytest.raises(CVError, match="no readable train.epochs"):
        fit_overrides(folder)
    # A CV run with --epochs 12 under a config of 15: the fit must span 12 epochs too, and stop at 11.
    (folder / "config.yaml").write_text("train:\n  epochs: 12\n  lr: 0.001\n")
    assert fit_overrides(folder) == ["data.fit_on=train+val", "train.epochs=12", "train.keep_epoch=11"]


@pytest.mark.slow
def test_cv_then_fit_then_export(tiny, taxonomy, tmp_path):
    data, root = tiny
    config = config_from_dict(data)
    pooled = load_splits(config)
    pool = len(pooled["train"]) + len(pooled["val"])
    # Every fold holds out different patients; together they cover train+val exactly once.
    held = [load_splits(fold_config(config, 2, k))["val"] for k in range(2)]
    assert sum(len(h) for h in held) == pool and not set(held[0].paths) & set(held[1].paths)

    # One process may train only some folds (``--fold``): no summary until every fold is finished.
    partial = run_cv(config, folds=2, only=[1])
    assert partial["complete"] is False and not (cv_dir(config, 2) / "cv_summary.json").exists()
    assert (fold_config(config, 2, 1).run_dir() / "checkpoints" / "last_state.json").is_file()
    assert not (fold_config(config, 2, 0).run_dir() / "checkpoints" / "last_state.json").exists()
    with pytest.raises(CVError, match="between 0 and 1"):
        run_cv(config, folds=2, only=[2])
    summary = run_cv(config, folds=2)
    assert summary["complete"] and summary["epochs"] == [1, 2] and summary["images"] == pool
    assert len(summary["cv_fold_macro_auroc"]) == 2 and summary["chosen_epoch"] in (1, 2)
    folder = cv_dir(config, 2)
    assert (folder / "cv_curve.png").is_file() and (folder / "cv_summary_raw.json").exists() is False
    logits, labels, folds = load_oof(config, folder)
    assert logits.shape == (pool, 21) and set(folds) == {0, 1}
    again = run_cv(config, folds=2)  # finished folds are not trained again
    assert again["cv_macro_auroc_mean"] == summary["cv_macro_auroc_mean"]

    assert fit_overrides(folder) == ["data.fit_on=train+val", f"train.epochs={data['train']['epochs']}",
                                     f"train.keep_epoch={summary['chosen_epoch']}"]
    final = config_from_dict({**data, "data": {**data["data"], "fit_on": "train+val"},
                              "train": {**data["train"], "keep_epoch": summary["chosen_epoch"]}})
    result = train(final)
    assert result.state.best_epoch == summary["chosen_epoch"] and len(result.datasets["train"]) == pool
    # A card may state its own call rule; this lenient one lets the tiny held-out data make labels callable, so
    # the operating points show which probabilities the evidence was fitted on.
    lenient = CallRule(auroc_floor=0.0, min_positives=2)
    card = export_model(result.model, final, tmp_path / "weights" / "tiny", cv_dir=folder, reproduce="test",
                        aliases=["tiny_alias"], card_updates={"call_rule": lenient})
    written = json.loads((tmp_path / "weights" / "tiny.json").read_text())
    assert set(CARD_KEYS) <= set(written)
    assert card.calibration is not None and "out-of-fold" in card.calibration.fitted_on
    temps = np.asarray(card.calibration.temperature)
    assert np.all((temps > 0.021) & (temps < 49.9))  # nothing on a search bound
    assert set(card.labels_not_learnt) >= {"Fracture", "Support Devices", "Other", "Uncertain"}
    assert all(card.training_positives[label] < 3 for label in card.labels_not_learnt)
    assert card.operating_points and all(p.target_sensitivity == 0.8 for p in card.operating_points.values())
    assert not set(card.operating_points) & set(card.labels_not_learnt)
    assert card.ood.threshold_rule.startswith("quantile of the model's training scores at which")
    assert 0 <= card.ood.population_flagged_heldout_outliers <= 1
    # Half the other adult collections' patients fit the classifier, the other half measure its false alarms.
    assert 100 < card.ood.population_heldout_adults < 200 and 0 <= card.ood.population_flagged_heldout_adults <= 1
    assert "adult films of half the patients" in card.ood.population_classifier
    assert card.cross_validation.folds == 2 and card.aliases == ["tiny_alias"] and written["aliases"] == ["tiny_alias"]
    assert card.data.trained_on == "train+val"
    # The export writes the call rule's evidence itself (no fallback to the analytic rule): what core.card_evidence
    # fits on the same out-of-fold predictions that set the operating points, calibrated as the card states.
    assert card.call_rule == lenient and card.call_evidence is not None
    assert card.call_evidence.source.startswith(card.calibration.fitted_on) and "test" not in card.call_evidence.source
    temperature = np.asarray(card.calibration.temperature) if card.calibration.applied else None
    oof_logits, oof_labels, _ = load_oof(final, folder)
    oof_probs = output_probs(oof_logits, temperature, result.model, taxonomy)
    _, expected = card_call_evidence(card, oof_probs, oof_labels, source=card.call_evidence.source)
    assert card.call_evidence.to_dict() == expected.to_dict() and expected.thresholds()
    if card.calibration.applied:  # thresholds on uncalibrated probabilities would differ
        _, raw = card_call_evidence(card, output_probs(oof_logits, None, result.model, taxonomy), oof_labels, "")
        assert raw.thresholds() != expected.thresholds()
    assert sorted(card.call_evidence.labels) == sorted(set(taxonomy.labels) - set(card.labels_not_learnt))
    assert all(e.ci_method.startswith("patient-level percentile bootstrap") for e in card.call_evidence.labels.values())
    assert written["call_evidence"] == expected.to_dict() and written["call_rule"] == lenient.to_dict()
    assert card_evidence(ModelCard.read(tmp_path / "weights" / "tiny.json"))[1].to_dict() == expected.to_dict()

    predictor = Predictor(tmp_path / "weights", variants=["tiny"], mc_samples=3)
    loaded = predictor.get()
    assert loaded.ood is not None and loaded.population is not None
    assert (loaded.temperature is not None) == card.calibration.applied  # the loaded model owns its calibration
    analysis = predictor.analyse(
        Path(data["data"]["images"]) / labels.paths[0])
    assert analysis.not_learnt == card.labels_not_learnt and analysis.ood_score is not None
    assert analysis.call("Fracture") == ""
    assert ModelCard.read(tmp_path / "weights" / "tiny.json").tensor_sha256 == card.tensor_sha256
