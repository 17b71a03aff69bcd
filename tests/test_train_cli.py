"""train.py end to end (train -> val early stopping -> test metrics -> model card) and core.config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CARD_KEYS, write_tiny_nih_csv

from core.calls import CallRule
from core.config import REPO_ROOT, ConfigError, config_from_dict, load_config, resolve_path
from core.model import load_model
from core.registry import tensor_sha256


@pytest.fixture(scope="module")
def tiny_csv(shared_data: Path, tmp_path_factory) -> Path:
    return write_tiny_nih_csv(shared_data, tmp_path_factory.mktemp("tiny") / "labels.csv", 12, 12, 16, 20)


def run_train(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_and_export_writes_a_complete_model_card(tiny_csv, shared_data, tmp_path, taxonomy):
    prefix = tmp_path / "weights" / "tiny_soft"
    proc = run_train(
        "--config", "configs/nih_hbce_soft_data.yaml",  # relative to the repo root although the CWD is /
        "--set", f"data.csv={tiny_csv}", "--set", "model.input_size=64", "--set", "train.batch_size=8",
        "--set", "train.min_val_positives=2", "--set", f"train.out_dir={tmp_path / 'runs'}",
        "--set", "eval.n_boot=20", "--epochs", "2", "--name", "cli", "--export", str(prefix),
        # A shipped model's features as the starting backbone, named relative to the repository root (the CWD is /).
        "--set", "model.pretrained=weights/bce.safetensors",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "cli"
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["loss"]["violation"] == "soft" and resolved["model"]["input_size"] == 64
    card = json.loads(Path(f"{prefix}.json").read_text())
    assert set(CARD_KEYS) <= set(card) and card["variant"] == "tiny_soft"
    assert card["taxonomy"]["hash"] == taxonomy.hash and card["model"]["labels"] == list(taxonomy.labels)
    assert card["preprocessing"]["input_size"] == 64 and card["loss"]["penalty_source"] == "data_driven"
    assert len(card["penalty_table"]) == len(taxonomy.edges)
    assert card["data"]["train_images"] == 24 and card["data"]["val_images"] == 16
    assert card["data"]["test_images"] == 20
    assert "NIH Clinical Center" in card["data"]["attribution"]
    assert card["data"]["sources"][0]["url"] == "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    test = card["metrics"]["test"]
    assert test["n_images"] == 20 and test["macro_auroc"] is not None
    assert any(v["auroc_ci"] is not None for v in test["per_label"].values())
    cal = card["calibration"]
    # Without cross-validation the held-out data is the validation split; the test split is only measured.
    assert len(cal["temperature"]) == 21 and cal["fitted_on"] == "validation split (16 images)"
    assert all(0.021 < t < 49.9 for t in cal["temperature"])  # never a search bound
    # What "applied" claims must show in the numbers: an applied calibration moves the test ECE, one kept only
    # for the record leaves it where it was.
    moved = cal["test_ece_calibrated"] != pytest.approx(cal["test_ece_uncalibrated"], abs=1e-9)
    assert moved == cal["applied"]
    assert test["ece"] == pytest.approx(cal["test_ece_calibrated" if cal["applied"] else "test_ece_uncalibrated"])
    assert card["ood"]["threshold_rule"].startswith("quantile of the model's own training scores")
    # The call rule (the default for a new card) and its evidence, fitted on the same held-out data, never on test.
    assert card["call_rule"] == CallRule().to_dict()
    assert card["call_evidence"]["source"].startswith("validation split (16 images);")
    assert sorted(card["call_evidence"]["labels"]) == sorted(set(taxonomy.labels) - set(card["labels_not_learnt"]))
    assert card["training"]["epochs_run"] == 2 and 1 <= card["training"]["best_epoch"] <= 2
    # Where the weights started is on the card: the backbone as configured and the hash of its tensors (no
    # pretraining run beside a shipped weights file, so nothing more is claimed).
    assert card["training"]["pretraining"] == {"backbone": "weights/bce.safetensors",
                                               "sha256": tensor_sha256(REPO_ROOT / "weights" / "bce.safetensors")}
    assert "--export" in card["reproduce"] and "nih_hbce_soft_data.yaml" in card["reproduce"]
    assert "not a medical device" in card["intended_use"]
    for plot in card["plots"].values():
        path = prefix.parent / plot
        assert path.is_file() and path.stat().st_size < 200_000
    model = load_model(f"{prefix}.safetensors", taxonomy)
    assert model.config.input_size == 64 and next(model.parameters()).dtype.is_floating_point


def test_cli_config_errors_are_named(tmp_path):
    proc = run_train("--config", "configs/nih_bce.yaml", "--set", "loss.bogus=1", timeout=60)
    assert proc.returncode == 2 and "loss.bogus" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_train("--config", str(tmp_path / "nope.yaml"), timeout=60)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {REPO_ROOT / 'configs' / 'nih_base.yaml'}\ndata:\n  csv: {tmp_path / 'missing.csv'}\n")
    proc = run_train("--config", str(bad), timeout=60)
    assert proc.returncode == 2 and "missing.csv" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["nih_bce", "nih_hbce_fixed", "nih_hbce_data", "nih_hbce_soft_data",
                                  "nih_hbce_soft_fixed", "nih_chmcnn", "chexpert_hbce_soft"])
def test_shipped_configs_load_and_differ_only_in_the_loss(name):
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert cfg.name == name and cfg.model.input_size >= 64
    if name.startswith("nih"):
        assert resolve_path(cfg.data.csv) == (REPO_ROOT.parent / "shared/data/nih/labels.csv").resolve()
        base = load_config(REPO_ROOT / "configs" / "nih_bce.yaml").to_dict()
        mine = cfg.to_dict()
        changed = {k for k in mine if mine[k] != base[k]}
        # C-HMCNN also changes the model's head (the max constraint); every other variant only the loss.
        assert changed <= ({"name", "loss", "model"} if name == "nih_chmcnn" else {"name", "loss"})
    expected = {"nih_bce": ("none", 0.0), "nih_hbce_fixed": ("fixed", 1.0), "nih_hbce_data": ("data_driven", 1.0),
                "nih_hbce_soft_data": ("data_driven", 1.0), "nih_hbce_soft_fixed": ("fixed", 1.0),
                "nih_chmcnn": ("none", 0.0), "chexpert_hbce_soft": ("data_driven", 1.0)}[name]
    assert (cfg.loss.penalty, cfg.loss.lam) == expected


def test_overrides_are_typed_and_unknown_keys_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  csv: x.csv\noptim:\n  lr: 3e-4\n")
    cfg = load_config(path, ["optim.lr=1e-3", "train.amp=false", "data.augment.scale=[0.8, 1.2]",
                             "model.pretrained=null", "train.threads=2"])
    assert cfg.optim.lr == 1e-3 and cfg.train.amp is False and cfg.data.augment.scale == [0.8, 1.2]
    assert cfg.model.pretrained is None and cfg.train.threads == 2 and cfg.name == "c"
    assert load_config(path).optim.lr == 3e-4  # YAML's "3e-4" string is read as the number it is
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_config(path, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="loss.violation.*hard, soft"):
        load_config(path, ["loss.violation=medium"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="data.csv is not set"):
        config_from_dict({})


def test_base_inheritance_and_saved_config_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  csv: a.csv\n  augment:\n    rotation: 5\ntrain:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  augment:\n    gamma: 0.0\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.data.augment.rotation == 5.0 and cfg.data.augment.gamma == 0.0 and cfg.train.epochs == 3
    assert cfg.data.augment.contrast == 0.1  # untouched defaults survive a partial section
    assert resolve_path(cfg.data.csv) == REPO_ROOT / "a.csv"  # relative paths: repo root, not the CWD
    saved = cfg.save(tmp_path / "out" / "config.yaml")
    assert load_config(saved).to_dict() == cfg.to_dict()
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")


def test_the_configs_model_section_reaches_the_weights_file(taxonomy):
    from core.model import ModelConfig
    from core.trainer import model_config_for

    cfg = config_from_dict({"data": {"csv": "x.csv"}, "model": {
        "input_size": 96, "in_channels": 3, "mean": 0.4, "std": 0.3, "dropout": 0.2, "output_stride": 16}})
    stored = ModelConfig.from_json(model_config_for(cfg, taxonomy).to_json())
    assert (stored.input_size, stored.in_channels, stored.mean, stored.std, stored.dropout, stored.output_stride,
            stored.constraint) == (96, 3, 0.4, 0.3, 0.2, 16, "none")
    assert stored.labels == list(taxonomy.labels) and stored.taxonomy_hash == taxonomy.hash
    default = model_config_for(config_from_dict({"data": {"csv": "x.csv"}}), taxonomy)
    assert (default.input_size, default.output_stride, default.dropout) == (320, 32, 0.5)


def test_rebuilding_a_card_on_data_that_grew_since_is_refused(tmp_path, capsys):
    """The older variants trained on 1,368 images; the training split has 2,079 since the data grew. Rebuilding
    such a card from a config that does not leave the new copies out would fit calibration, operating points and the
    out-of-distribution reference on images the model never trained on (it did, once, before this check): a named
    error, nothing written. The shipped card's own config (``data.exclude_sources``) rebuilds on its 1,368 images."""
    import hashlib
    import shutil

    from core.card import ModelCard
    from core.export import _same_training_data
    from core.export import main as export_main

    shipped = ModelCard.read(REPO_ROOT / "weights" / "chmcnn.json")
    assert shipped.data.train_images == 1368
    _same_training_data(shipped, config_from_dict(shipped.training.config))  # no error
    card = json.loads((REPO_ROOT / "weights" / "chmcnn.json").read_text())
    card["training"]["config"]["data"]["exclude_sources"] = []  # as the card read before the growth
    (tmp_path / "chmcnn.json").write_text(json.dumps(card))
    shutil.copy(REPO_ROOT / "weights" / "chmcnn.safetensors", tmp_path / "chmcnn.safetensors")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert export_main([str(tmp_path / "chmcnn")]) == 2
    err = capsys.readouterr().err
    assert "trained on 1368 images" in err and "has 2079 now" in err
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == before
