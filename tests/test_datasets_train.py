"""train.py trains one epoch with the shipped CheXpert, MIMIC-CXR-JPG and official-NIH configs on faithful
miniature trees of each release, built at test time from real images in ../shared/data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.config import REPO_ROOT
from core.datasets.miniature import write_chexpert_tree, write_mimic_tree, write_nih_tree


def _train(config: str, csv_path: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO_ROOT / "train.py"), "--config", config, "--epochs", "1", "--name", "run",
            "--set", f"data.csv={csv_path}", "--set", f"data.images={images}", "--set", "model.input_size=64",
            "--set", "train.batch_size=8", "--set", "train.min_val_positives=1", "--set", f"train.out_dir={out}",
            *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd="/",
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_run(proc: subprocess.CompletedProcess, out: Path, fmt: str) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "run"
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert (run / "checkpoints" / "best.safetensors").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["format"] == fmt
    return resolved


@pytest.mark.slow
def test_one_epoch_on_mimic_streamed_by_workers(shared_data, tmp_path):
    kermany = sorted((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))[:64]
    labels = write_mimic_tree(tmp_path / "mimic-cxr-jpg" / "2.0.0", kermany, seed=1, split_p=(0.6, 0.2, 0.2))
    proc = _train("configs/mimic_hbce_soft.yaml", labels, labels.parent, tmp_path / "runs",
                  "--set", "data.cache=false", "--set", "data.num_workers=2")
    resolved = _check_run(proc, tmp_path / "runs", "mimic")
    assert resolved["data"]["views"] == "frontal" and resolved["loss"]["violation"] == "soft"
    assert "official split (mimic-cxr-2.0.0-split.csv)" in proc.stderr


@pytest.mark.slow
def test_one_epoch_on_chexpert_with_its_valid_csv(shared_data, tmp_path):
    kermany = sorted((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))[100:160]
    train_csv = write_chexpert_tree(tmp_path / "data", kermany, valid_images=12, seed=4)
    proc = _train("configs/chexpert_hbce_soft.yaml", train_csv, tmp_path / "data", tmp_path / "runs",
                  "--set", "data.num_workers=2")  # cached (it fits the budget), decoded by two workers
    _check_run(proc, tmp_path / "runs", "chexpert")
    assert "official CheXpert validation set" in proc.stderr and "valid.csv (12 images)" in proc.stderr


@pytest.mark.slow
def test_one_epoch_on_nih_with_the_official_lists(shared_data, tmp_path):
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    parts = [df[df.split == "train"].head(60), df[df.split == "val"].head(24), df[df.split == "test"].head(24)]
    rows = pd.concat(parts)
    entry = write_nih_tree(tmp_path / "ChestX-ray14", rows, shared_data / "nih" / "images")
    proc = _train("configs/nih_official_bce.yaml", entry, entry.parent / "images", tmp_path / "runs",
                  "--set", "data.num_workers=0")
    _check_run(proc, tmp_path / "runs", "nih")
    assert "official NIH split" in proc.stderr
