"""pretrain.py: supervised heads and SimCLR on real radiographs, resumable, and a backbone that training loads."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import REPO_ROOT, ConfigError
from core.model import ModelConfig, build_model, load_model
from core.patient_halves import FIT_HALF, HELD_HALF, outlier_half
from core.pretrain import backbone_provenance, load_pretrain_config, nt_xent
from core.pretrain_data import SourceConfig, load_sources
from core.registry import tensor_sha256


def _sources(shared_data: Path) -> str:
    other = shared_data / "other"
    return (f"sources=[{{name: covid_shenzhen, csv: {other / 'labels.csv'}, images: {other}, path_column: file, "
            f"label_column: label, patient_column: patient_id, label_map: {{Normal: No Finding}}}}]")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "pretrain.py"), *args], capture_output=True, text=True,
                          timeout=900, cwd="/", env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(16)], 0.2)
    assert matched < 0.5 < shuffled


def test_shipped_pretraining_configs_load_and_bad_ones_are_refused(tmp_path):
    sup = load_pretrain_config(REPO_ROOT / "configs" / "pretrain_supervised.yaml")
    both = load_pretrain_config(REPO_ROOT / "configs" / "pretrain_simclr.yaml")
    assert sup.method == "supervised" and both.method == "both"
    nih = next(s for s in both.source_configs() if s.name == "nih_train")
    assert nih.filter == {"split": "train"} and nih.label_column is None  # never NIH val/test, never NIH labels
    assert all("nih" not in s.csv for s in sup.source_configs())
    labelled = [s for c in (sup, both) for s in c.source_configs() if s.label_column]
    assert len(labelled) == 4 and all(s.patient_half == FIT_HALF for s in labelled)  # the held half stays unseen
    with pytest.raises(ConfigError, match="method"):
        load_pretrain_config(REPO_ROOT / "configs" / "pretrain_supervised.yaml", ["method=magic"])
    path = tmp_path / "p.yaml"
    path.write_text("method: supervised\nsources: [{name: x, csv: x.csv, images: x}]\n")
    with pytest.raises(ConfigError, match="label_column"):
        load_pretrain_config(path)
    for source in ("{name: x, csv: x.csv, images: x, label_column: y, patient_half: 0}",
                   "{name: x, csv: x.csv, images: x, label_column: y, patient_column: p, patient_half: 2}"):
        path.write_text(f"method: supervised\nsources: [{source}]\n")
        with pytest.raises(ConfigError, match="patient_half"):
            load_pretrain_config(path)


def test_patient_half_keeps_exactly_that_half_of_the_patients(shared_data, tmp_path):
    """Pretraining on half of Kermany's patients reads exactly the rows of that half, in order, and nothing else."""
    kermany = shared_data / "other" / "kermany"
    rows = pd.read_csv(kermany / "labels.csv", dtype=str, keep_default_na=False).iloc[::200].head(24)
    halves = rows["patient_id"].map(outlier_half).to_numpy()
    assert 0 < (halves == HELD_HALF).sum() < len(rows)  # both halves among the rows, or the test proves nothing
    rows.to_csv(tmp_path / "k.csv", index=False)

    def load(half: int | None) -> np.ndarray:
        src = SourceConfig(name="k", csv=str(tmp_path / "k.csv"), images=str(kermany / "images"),
                           label_column="finding", patient_column="patient_id", patient_half=half)
        return load_sources([src], 32, 0.1, show=False).pixels

    every = load(None)
    assert len(every) == len(rows)
    for half in (FIT_HALF, HELD_HALF):
        assert np.array_equal(load(half), every[halves == half])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "both"])
def test_pretrain_runs_resumes_and_feeds_training(method, shared_data, tmp_path):
    common = ["--config", "configs/pretrain_supervised.yaml", "--set", f"method={method}", "--set", "name=pt",
              "--set", _sources(shared_data), "--set", f"train.out_dir={tmp_path}", "--set", "train.epochs=2",
              "--set", "train.batch_size=16", "--set", "model.output_stride=16"]
    first = _run(*common, "--set", "train.stop_after_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    # Unfinished: no backbone yet, so nothing can be fine-tuned from an epoch-1 backbone described as finished.
    assert not (tmp_path / "pt" / "backbone.safetensors").exists()
    assert "stopped after epoch 1 of 2" in first.stdout and "--resume" in first.stdout
    second = _run(*common, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stderr and "epoch 2/2" in second.stderr
    rows = list(csv.DictReader((tmp_path / "pt" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert 0.0 <= float(rows[-1]["holdout_accuracy"]) <= 1.0
    if method == "both":
        assert float(rows[-1]["ntxent"]) > 0
    backbone = tmp_path / "pt" / "backbone.safetensors"
    saved = load_model(backbone)
    model = build_model(ModelConfig.for_taxonomy(input_size=64, output_stride=8), backbone)
    assert torch.equal(model.features.denseblock2.denselayer3.conv1.weight,
                       saved.features.denseblock2.denselayer3.conv1.weight)
    # What a model card records about this backbone: the file's hash and the run beside it.
    info = backbone_provenance(backbone)
    assert info.backbone == str(backbone) and info.sha256 == tensor_sha256(backbone)
    assert (info.run, info.method, info.epochs) == ("pt", method, 2)
    assert [(s.name, s.patient_half) for s in info.sources] == [("covid_shenzhen", None)]
    assert info.holdout_accuracy == pytest.approx(float(rows[-1]["holdout_accuracy"]), abs=1e-4)
    words = {"supervised": "supervised", "both": "SimCLR + supervised"}[method]
    assert f"{words} pretraining on covid_shenzhen, 2 epochs" in info.describe()
    # A fresh start of the same run takes the finished backbone away until it finishes again.
    again = _run(*common, "--set", "train.stop_after_epochs=1")
    assert again.returncode == 0 and not backbone.exists(), again.stderr[-3000:]
    bad = _run("--config", "configs/pretrain_supervised.yaml", "--set", "sources=[{name: x, csv: /nope.csv, "
               "images: /nope, label_column: label}]", "--set", f"train.out_dir={tmp_path}")
    assert bad.returncode == 2 and "/nope.csv" in bad.stderr
