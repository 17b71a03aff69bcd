"""core.trainer on real NIH images: every loss variant learns, checkpoints round-trip, resume continues exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_nih_csv

from core.config import Config, config_from_dict
from core.data import build_datasets
from core.loss import build_loss
from core.model import load_model
from core.penalties import data_driven_penalties
from core.preprocess import normalize
from core.trainer import METRIC_COLUMNS, TrainError, model_config_for, train

VARIANTS = {
    "bce": {"penalty": "none", "lam": 0.0},
    "hbce_fixed": {"penalty": "fixed", "fixed_value": 0.5, "violation": "hard"},
    "hbce_data": {"penalty": "data_driven", "violation": "hard"},
    "hbce_soft": {"penalty": "data_driven", "violation": "soft"},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_csv(shared_data: Path, tmp_path_factory) -> Path:
    """32 train / 16 val / 16 test real NIH rows (train: 16 thumbnails + 16 larger images)."""
    return write_tiny_nih_csv(shared_data, tmp_path_factory.mktemp("tiny") / "labels.csv", 16, 16, 16, 16)


def tiny_config(csv_path: Path, images: Path, out: Path, name: str, **loss) -> Config:
    return config_from_dict({
        "name": name,
        "data": {"csv": str(csv_path), "images": str(images), "cache": True},
        "model": {"input_size": 64, "dropout": 0.0},
        "loss": loss or VARIANTS["hbce_soft"],
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "min_val_positives": 2, "out_dir": str(out)},
        "eval": {"n_boot": 10},
    })


@pytest.fixture(scope="module")
def datasets(tiny_csv, shared_data, tmp_path_factory):
    cfg = tiny_config(tiny_csv, shared_data / "nih" / "images", tmp_path_factory.mktemp("runs"), "ds")
    return build_datasets(cfg, progress=False)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_falls_when_overfitting_a_fixed_batch(variant, tiny_csv, shared_data, tmp_path, datasets, taxonomy):
    cfg = tiny_config(tiny_csv, shared_data / "nih" / "images", tmp_path, variant, **VARIANTS[variant])
    torch.manual_seed(0)
    from core.model import build_model

    model = build_model(model_config_for(cfg, taxonomy))
    loss_fn, _ = build_loss(cfg, datasets["train"].labels, taxonomy)
    batch = [datasets["train"][i] for i in range(0, 32, 4)]
    x = normalize(torch.stack([b[0] for b in batch]), model.config)
    y, m = torch.stack([b[1] for b in batch]), torch.stack([b[2] for b in batch])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_short_run_writes_metrics_and_round_trippable_checkpoints(variant, tiny_csv, shared_data, tmp_path,
                                                                  datasets, taxonomy):
    cfg = tiny_config(tiny_csv, shared_data / "nih" / "images", tmp_path, variant, **VARIANTS[variant])
    result = train(cfg, datasets=datasets)
    run = tmp_path / variant
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1"]
    assert all(np.isfinite(float(rows[0][k])) for k in METRIC_COLUMNS)
    assert float(rows[0]["train_loss"]) == pytest.approx(
        float(rows[0]["train_bce"]) + result.config.loss.lam * float(rows[0]["train_penalty"]) *
        (variant != "bce"), rel=1e-5)
    if variant == "bce":
        assert float(rows[0]["train_penalty"]) == 0.0
    saved = (run / "config.yaml").read_text()
    assert f"name: {variant}" in saved and "penalty: " + VARIANTS[variant]["penalty"] in saved
    # Checkpoints: best.safetensors loads to the returned model; last.safetensors to the in-memory final model.
    x = normalize(torch.stack([datasets["val"][i][0] for i in range(4)]), result.model.config)
    for path, model in ((result.best_path, result.model), (run / "checkpoints" / "last.safetensors",
                                                          result.last_model)):
        reloaded = load_model(path, taxonomy)
        model.eval()
        with torch.no_grad():
            assert torch.equal(reloaded(x), model(x))
    state = json.loads((run / "checkpoints" / "last_state.json").read_text())
    assert state["loop"]["epoch"] == 1 and state["loop"]["best_epoch"] == 1
    # The loss really follows the variant: penalties as configured.
    data_driven = data_driven_penalties(datasets["train"].labels.targets, datasets["train"].labels.mask, taxonomy)
    expected = {"bce": np.zeros(20), "hbce_fixed": np.full(20, 0.5), "hbce_data": data_driven,
                "hbce_soft": data_driven}[variant]
    np.testing.assert_allclose([row.penalty for row in result.penalty_table], expected, atol=1e-6)


def test_resume_continues_the_epoch_count_and_matches_an_unbroken_run(tiny_csv, shared_data, tmp_path, datasets):
    images = shared_data / "nih" / "images"
    unbroken = tiny_config(tiny_csv, images, tmp_path, "unbroken")
    unbroken.train.epochs = 2
    straight = train(unbroken, datasets=datasets)

    broken = tiny_config(tiny_csv, images, tmp_path, "broken")
    broken.train.epochs = 2
    broken.train.stop_after_epochs = 1  # interrupted after epoch 1, same (cosine) schedule
    first = train(broken, datasets=datasets)
    assert first.state.epoch == 1
    broken.train.stop_after_epochs = None
    resumed = train(broken, resume=True, datasets=datasets)

    with (tmp_path / "broken" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and resumed.state.epoch == 2
    with (tmp_path / "unbroken" / "metrics.csv").open() as f:
        reference = list(csv.DictReader(f))
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference]
    a, b = straight.last_model.state_dict(), resumed.last_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the unbroken run"


def test_resume_without_checkpoint_is_refused(tiny_csv, shared_data, tmp_path, datasets):
    cfg = tiny_config(tiny_csv, shared_data / "nih" / "images", tmp_path, "never_ran")
    with pytest.raises(TrainError, match="cannot resume.*last"):
        train(cfg, resume=True, datasets=datasets)
