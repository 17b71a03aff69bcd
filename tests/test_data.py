"""core.data: splits, the Dataset over real NIH images, the uint8 cache, augmentation and bad-input messages."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2

from core.config import AugmentConfig, config_from_dict
from core.data import DataError, XrayDataset, build_augment, build_datasets, hash_split, load_splits
from core.imaging import read_image
from core.labels import LabelError, read_label_csv
from core.preprocess import resize_square


@pytest.fixture(scope="module")
def nih(shared_data: Path) -> tuple[Path, Path]:
    return shared_data / "nih" / "labels.csv", shared_data / "nih" / "images"


@pytest.fixture(scope="module")
def few_rows(nih) -> pd.DataFrame:
    """Six real rows of mixed stored sizes (64 px thumbnails and 512 px images)."""
    df = pd.read_csv(nih[0])
    return pd.concat([df[df.stored_size == "64x64"].head(3), df[df.stored_size == "512x512"].head(3)])


def test_split_column_gives_the_fixed_patient_split(nih):
    cfg = config_from_dict({"data": {"csv": str(nih[0]), "images": str(nih[1])}})
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2079, "val": 155, "test": 122}
    patients = {k: set(v.metadata["Patient ID"]) for k, v in splits.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]


def test_excluded_sources_give_back_the_split_before_the_growth(nih, tmp_path):
    """Leaving out the two copies the data grew by gives the split the older models trained on (data README:
    train had 1,368 images and val 81), test unchanged; CV folds pool only what is left."""
    from core.datasets.splits import SplitError

    grown_by = ["muhammedtalo/COVID-19", "MichaelNoya/nih-chest-xray-webdataset-subset"]
    data = {"csv": str(nih[0]), "images": str(nih[1]), "exclude_sources": grown_by}
    splits = load_splits(config_from_dict({"data": data}))
    assert {k: len(v) for k, v in splits.items()} == {"train": 1368, "val": 81, "test": 122}
    assert not any(set(v.metadata["source_repo"]) & set(grown_by) for v in splits.values())
    folds = load_splits(config_from_dict({"data": {**data, "cv_folds": 5, "cv_fold": 0}}))
    assert len(folds["train"]) + len(folds["val"]) == 1368 + 81
    table = pd.read_csv(nih[0]).drop(columns="source_repo")
    table.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(SplitError, match="no column 'source_repo'"):
        load_splits(config_from_dict({"data": {**data, "csv": str(tmp_path / "labels.csv")}}))


def test_untrained_sources_keep_their_folds_and_leave_only_training(nih):
    """A source never trained on still holds out the same images in each fold (so a CV with it and one without
    compare image for image) and stays in val and test; only train loses its rows, also when fitting on
    train+val."""
    untrained = "muhammedtalo/COVID-19"
    data = {"csv": str(nih[0]), "images": str(nih[1]), "cv_folds": 5}
    for fold in range(5):
        base = load_splits(config_from_dict({"data": {**data, "cv_fold": fold}}))
        held = load_splits(config_from_dict({"data": {**data, "cv_fold": fold, "untrained_sources": [untrained]}}))
        assert held["val"].paths == base["val"].paths and held["test"].paths == base["test"].paths
        in_base = base["train"].metadata["source_repo"] == untrained
        assert in_base.sum() > 100 and untrained not in set(held["train"].metadata["source_repo"])
        assert held["train"].paths == [p for p, u in zip(base["train"].paths, in_base, strict=True) if not u]
    fit = {"csv": str(nih[0]), "images": str(nih[1]), "fit_on": "train+val", "untrained_sources": [untrained]}
    splits = load_splits(config_from_dict({"data": fit}))
    assert len(splits["train"]) == 2079 + 155 - 756 and untrained in set(splits["val"].metadata["source_repo"])


def test_hash_split_is_deterministic_by_patient_and_follows_fractions(nih, tmp_path):
    df = pd.read_csv(nih[0]).drop(columns=["split"])
    csv = tmp_path / "nosplit.csv"
    df.to_csv(csv, index=False)
    cfg = config_from_dict({"data": {"csv": str(csv), "images": str(nih[1])}})
    a, b = load_splits(cfg), load_splits(cfg)
    for name in a:
        assert a[name].paths == b[name].paths
    owners = {}
    for name, ls in a.items():
        for pid in ls.metadata["Patient ID"]:
            assert owners.setdefault(pid, name) == name, f"patient {pid} in two splits"
    n_patients = df["Patient ID"].nunique()
    train_share = sum(1 for s in owners.values() if s == "train") / n_patients
    assert 0.75 < train_share < 0.85
    other_salt = hash_split(df["Patient ID"].astype(str), {"train": 0.8, "val": 0.1, "test": 0.1}, salt="other")
    assert (other_salt != hash_split(df["Patient ID"].astype(str), {"train": 0.8, "val": 0.1, "test": 0.1})).any()


def test_items_match_labels_and_the_input_contract(nih, few_rows, taxonomy):
    csv, root = nih
    labels = read_label_csv(csv).subset(np.flatnonzero(pd.read_csv(csv).index.isin(few_rows.index)))
    ds = XrayDataset(labels, root, 64, progress=False)
    assert len(ds) == 6
    for i in range(len(ds)):
        x, y, m, idx = ds[i]
        assert idx == i and x.shape == (1, 64, 64) and x.dtype == torch.float32
        expected = resize_square(read_image(root / labels.paths[i]).pixels, 64)
        np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
        np.testing.assert_array_equal(y.numpy(), labels.targets[i])
        np.testing.assert_array_equal(m.numpy(), labels.mask[i])
        assert m.dtype == torch.bool and y.shape == (taxonomy.num_labels,)


def test_cache_matches_decoding_within_quantisation(nih, few_rows):
    csv, root = nih
    labels = read_label_csv(csv).subset(np.flatnonzero(pd.read_csv(csv).index.isin(few_rows.index)))
    plain = XrayDataset(labels, root, 96, progress=False)
    cached = XrayDataset(labels, root, 96, cache=True, progress=False)
    assert cached._cache is not None and cached._cache[0].dtype == np.uint8 and cached._cache[0].shape == (96, 96)
    for i in range(len(plain)):
        diff = (plain[i][0] - cached[i][0]).abs().max().item()
        assert diff <= 0.5 / 255 + 1e-6


def test_augmentation_is_mild_and_has_no_flips_by_default(nih, few_rows):
    csv, root = nih
    labels = read_label_csv(csv).subset(np.flatnonzero(pd.read_csv(csv).index.isin(few_rows.index)))
    aug = build_augment(AugmentConfig())
    assert not any(isinstance(t, (v2.RandomVerticalFlip, v2.RandomHorizontalFlip)) for t in aug.transforms)
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in build_augment(AugmentConfig(hflip=True)).transforms)
    assert build_augment(AugmentConfig(enabled=False)) is None
    ds = XrayDataset(labels, root, 128, augment=aug, cache=True, progress=False)
    torch.manual_seed(0)
    x0 = ds.image(5)[0].numpy()
    a, b = ds[5][0][0].numpy(), ds[5][0][0].numpy()
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.allclose(a, b)  # random
    # Mild: augmented films still correlate with the original (shifts of a few pixels lower pixel correlation),
    # clearly more than the upside-down copy does, and keep their overall brightness.
    draws = [ds[5][0][0].numpy() for _ in range(12)]
    corr = float(np.median([np.corrcoef(d.ravel(), x0.ravel())[0, 1] for d in draws]))
    flipped = np.corrcoef(x0[::-1].ravel(), x0.ravel())[0, 1]
    assert corr > 0.6 and corr > flipped + 0.2
    assert all(abs(d.mean() - x0.mean()) < 0.15 for d in draws)


def test_unreadable_image_is_named(nih, few_rows, tmp_path):
    csv, root = nih
    images = tmp_path / "images"
    images.mkdir()
    for name in few_rows["Image Index"]:
        (images / name).symlink_to(root / name)
    bad = "99999999_000.png"
    (images / bad).write_text("this is not an image\n")
    rows = pd.concat([few_rows, few_rows.head(1).assign(**{"Image Index": bad})])
    rows.to_csv(tmp_path / "labels.csv", index=False)
    labels = read_label_csv(tmp_path / "labels.csv")
    with pytest.raises(DataError, match=bad):
        XrayDataset(labels, images, 64, cache=True, progress=False)
    lazy = XrayDataset(labels, images, 64, progress=False)
    with pytest.raises(DataError, match=bad):
        lazy[len(lazy) - 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipping = XrayDataset(labels, images, 64, cache=True, on_error="skip", progress=False)
    assert len(skipping) == len(few_rows) and skipping.skipped == [bad]
    assert any(bad in str(w.message) for w in caught)


def test_missing_image_file_and_missing_column_are_named(nih, few_rows, tmp_path):
    csv, root = nih
    rows = pd.concat([few_rows, few_rows.head(1).assign(**{"Image Index": "00000000_404.png"})])
    rows.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match="00000000_404.png"):
        XrayDataset(read_label_csv(tmp_path / "labels.csv"), root, 64, progress=False)
    few_rows.drop(columns=["Finding Labels"]).assign(Path=few_rows["Image Index"]).to_csv(
        tmp_path / "nolabels.csv", index=False)
    cfg = config_from_dict({"data": {"csv": str(tmp_path / "nolabels.csv"), "images": str(root)}})
    with pytest.raises(LabelError, match=r"nolabels\.csv.*Atelectasis"):
        build_datasets(cfg, progress=False)
    few_rows.drop(columns=["Image Index"]).to_csv(tmp_path / "noindex.csv", index=False)
    cfg = config_from_dict({"data": {"csv": str(tmp_path / "noindex.csv"), "images": str(root)}})
    with pytest.raises(LabelError, match=r"noindex\.csv.*'Image Index'"):
        build_datasets(cfg, progress=False)


def test_bad_split_value_is_named(nih, few_rows, tmp_path):
    few_rows.assign(split="holdout").to_csv(tmp_path / "labels.csv", index=False)
    cfg = config_from_dict({"data": {"csv": str(tmp_path / "labels.csv"), "images": str(nih[1])}})
    with pytest.raises(DataError, match="'split'.*holdout"):
        load_splits(cfg)
