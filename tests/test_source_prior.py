"""core.source_prior: per-source logit offsets (golden numbers, the real NIH sources) and their use in training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_nih_csv

from core.checkpoints import LoopState
from core.config import ConfigError, config_from_dict, load_config
from core.data import build_datasets, load_splits
from core.distributed import DistInfo
from core.epoch import train_one_epoch
from core.labels import LabelSet
from core.loss import build_loss, masked_bce_with_logits
from core.model import build_model
from core.preprocess import normalize
from core.source_prior import source_priors
from core.trainer import make_loader, model_config_for


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _toy() -> LabelSet:
    """Two labels; source a: 4 rows (3 positives of label 0), source b: 6 rows (1 positive of label 0, one unknown);
    label 1 has no positive anywhere."""
    targets = np.zeros((10, 2), dtype=np.float32)
    targets[[0, 1, 2], 0] = 1
    targets[4, 0] = 1
    mask = np.ones((10, 2), dtype=bool)
    mask[9, 0] = False
    meta = pd.DataFrame({"source_repo": ["a"] * 4 + ["b"] * 6})
    return LabelSet([f"{i}.png" for i in range(10)], targets, mask, ("X", "Y"), meta)


def test_offsets_match_the_formula_by_hand():
    # pooled share of X: 4 positives of 9 known; a: 3/4, b: 1/5 (one unknown row); shrunk by 2 pseudo-counts.
    p = 4 / 9
    qa, qb = (3 + 2 * p) / (4 + 2), (1 + 2 * p) / (5 + 2)
    priors = source_priors(_toy(), "source_repo", strength=2.0)
    assert priors.sources == ("a", "b") and priors.counts == (4, 6)
    assert priors.offsets[0, 0] == pytest.approx(_logit(qa) - _logit(p), abs=1e-6)
    assert priors.offsets[1, 0] == pytest.approx(_logit(qb) - _logit(p), abs=1e-6)
    assert np.all(priors.offsets[:, 1] == 0)  # no positives anywhere: no prior to take out
    rows = priors.row_offsets()
    assert rows.shape == (10, 2) and np.all(rows[:4] == priors.offsets[0]) and np.all(rows[4:] == priors.offsets[1])


def test_no_shrinkage_gives_raw_shares_and_a_lot_gives_none():
    raw = source_priors(_toy(), "source_repo", strength=0.0).offsets[:, 0]
    assert raw == pytest.approx([_logit(3 / 4) - _logit(4 / 9), _logit(1 / 5) - _logit(4 / 9)], abs=1e-6)
    assert np.abs(source_priors(_toy(), "source_repo", strength=1e7).offsets).max() < 1e-4


def test_bad_column_or_strength_is_refused():
    with pytest.raises(KeyError, match="site"):
        source_priors(_toy(), "site", 1.0)
    with pytest.raises(ValueError, match="strength"):
        source_priors(_toy(), "source_repo", -1.0)


def test_real_nih_sources_get_their_skew_as_offsets():
    """The grown NIH training split: the folder sampled as half Pneumonia gets a large positive Pneumonia offset,
    the thumbnails (no Pneumonia among them) a large negative one, and the full-resolution films (a fifth No
    Finding) a negative No Finding offset."""
    config = load_config("configs/nih_bce.yaml")
    train = load_splits(config)["train"]
    priors = source_priors(train, "source_repo", config.loss.source_prior_strength)
    offset = {s: dict(zip(train.labels, priors.offsets[i], strict=True)) for i, s in enumerate(priors.sources)}
    assert offset["muhammedtalo/COVID-19"]["Pneumonia"] > 1.0
    assert offset["dinbe0527/kcr2019d1"]["Pneumonia"] < -1.0
    assert offset["jrzech/reproduce-chexnet"]["No Finding"] < -0.5
    # A source of one image moves its prior by little: the pseudo-counts hold it near the pool.
    small = [i for i, n in enumerate(priors.counts) if n <= 3]
    assert small and np.abs(priors.offsets[small]).max() < 0.5
    # Every training row belongs to exactly one source.
    assert sum(priors.counts) == len(train)


def test_mixup_with_offsets_is_refused():
    base = {"data": {"csv": "x.csv"}, "loss": {"source_offsets": True}}
    with pytest.raises(ConfigError, match="mixup"):
        config_from_dict({**base, "train": {"mixup": 0.2}})
    with pytest.raises(ConfigError, match="source_prior_strength"):
        config_from_dict({"data": {"csv": "x.csv"}, "loss": {"source_prior_strength": -1}})


def test_an_epoch_adds_each_rows_offset_to_its_logits_before_the_loss(shared_data: Path, tmp_path, taxonomy):
    """train_one_epoch's BCE equals the masked BCE of logits + the offsets of exactly the rows in each batch (the
    weights frozen by a zero learning rate so the expectation can be computed beside it)."""
    csv_path = write_tiny_nih_csv(shared_data, tmp_path / "labels.csv", 8, 8, 8, 0)
    config = config_from_dict({
        "name": "so", "data": {"csv": str(csv_path), "images": str(shared_data / "nih" / "images"),
                               "augment": {"enabled": False}},
        "model": {"input_size": 64, "dropout": 0.0}, "loss": {"penalty": "none", "lam": 0.0},
        "train": {"batch_size": 4, "out_dir": str(tmp_path)},
    })
    train_ds = build_datasets(config, taxonomy, splits=("train",), progress=False)["train"]
    assert len(set(train_ds.labels.metadata["source_repo"])) >= 2
    torch.manual_seed(0)
    model = build_model(model_config_for(config, taxonomy)).train()
    loss_fn, _ = build_loss(config, train_ds.labels, taxonomy)
    # Offsets made large and row-specific so that adding the wrong row's offset cannot go unnoticed.
    offsets = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (len(train_ds), len(taxonomy.labels)))
                               .astype(np.float32))
    info = DistInfo()

    def epoch(offs: torch.Tensor | None) -> float:
        loader = make_loader(train_ds, config, info, train=True)
        loader.generator.manual_seed(5)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return train_one_epoch(model, loader, loss_fn, opt, sched, config, info, None, LoopState(), False,
                               offsets=offs)["train_bce"]

    loader = make_loader(train_ds, config, info, train=True)
    loader.generator.manual_seed(5)
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y, m, rows in loader:
            z = model(normalize(x, model.config)) + offsets[rows]
            total += float(masked_bce_with_logits(z, y, m)) * len(rows)
            n += len(rows)
    with_offsets = epoch(offsets)
    assert with_offsets == pytest.approx(total / n, rel=1e-4)
    assert abs(epoch(None) - with_offsets) > 0.1


def test_the_card_says_the_priors_were_taken_out_and_stays_silent_otherwise():
    from core.card_sections import LossInfo
    from core.config import LossConfig
    from core.loss import loss_info

    on = loss_info(LossConfig(penalty="none", lam=0.0, source_offsets=True, source_prior_strength=50.0), "none")
    assert on.describe() == "plain BCE (λ = 0); each image source's label prior taken out in training (strength 50)"
    assert LossInfo.from_dict(on.to_dict()).source_prior_strength == 50.0
    off = loss_info(LossConfig(penalty="none", lam=0.0), "none")
    assert off.describe() == "plain BCE (λ = 0)" and "source_prior_strength" not in off.to_dict()


def test_training_without_a_source_column_says_which_column(tmp_path, taxonomy):
    from core.trainer import TrainError, _source_offsets

    config = config_from_dict({"data": {"csv": "x.csv", "source_column": "site"}, "loss": {"source_offsets": True}})
    with pytest.raises(TrainError, match="site"):
        _source_offsets(config, _toy(), DistInfo())
    assert _source_offsets(config_from_dict({"data": {"csv": "x.csv"}}), _toy(), DistInfo()) is None
