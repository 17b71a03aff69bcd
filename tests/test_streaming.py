"""Scale: the cache budget, streaming with DataLoader workers, and the training decoder (same pixels as
core.imaging.read_image, faster) on real images from ../shared/data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from core.config import config_from_dict
from core.data import XrayDataset, build_datasets, cache_bytes
from core.datasets.decode import decode_gray, load_resized
from core.datasets.miniature import write_mimic_tree
from core.imaging import read_image, to_uint8
from core.labels import read_label_csv
from core.preprocess import resize_square


@pytest.fixture(scope="module")
def nih(shared_data: Path):
    """Twelve real NIH rows of three stored sizes (64, 256 and 512 px)."""
    csv, root = shared_data / "nih" / "labels.csv", shared_data / "nih" / "images"
    df = pd.read_csv(csv)
    rows = pd.concat([df[df.stored_size == size].head(4) for size in ("64x64", "256x256", "512x512")])
    return read_label_csv(csv).subset(rows.index.to_numpy()), root


@pytest.fixture(scope="module")
def full_size_jpeg(shared_data: Path, tmp_path_factory) -> Path:
    """A real 2,128 x 2,000 chest DICOM as a quality-95 JPEG: how MIMIC-CXR-JPG made its files."""
    path = tmp_path_factory.mktemp("large") / "chest.jpg"
    pixels = read_image(shared_data / "dicom" / "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm").pixels
    Image.fromarray(to_uint8(pixels)).save(path, quality=95)
    return path


def test_training_decoder_gives_read_images_pixels(nih, shared_data, full_size_jpeg):
    labels, root = nih
    files = [root / p for p in labels.paths] + [full_size_jpeg]
    files += sorted((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))[:4]
    files += [shared_data / "dicom" / "txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm"]  # not PNG/JPEG: read_image
    for path in files:
        np.testing.assert_array_equal(decode_gray(path), read_image(path).pixels, err_msg=str(path))


def test_jpeg_draft_decodes_large_files_smaller_and_close(full_size_jpeg, shared_data):
    with Image.open(full_size_jpeg) as image:
        image.draft("L", (320, 320))
        assert max(image.size) < 1000 and min(image.size) >= 320  # decoded at a reduced scale, never below 320
    exact, draft = load_resized(full_size_jpeg, 320), load_resized(full_size_jpeg, 320, draft=True)
    assert np.abs(exact - draft).mean() < 0.005 and not np.array_equal(exact, draft)
    small = next((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))
    np.testing.assert_array_equal(load_resized(small, 320), load_resized(small, 320, draft=True))


def test_cache_over_budget_streams_the_same_images(nih, caplog):
    labels, root = nih
    need_mb = cache_bytes(len(labels), 96) / 2**20
    cached = XrayDataset(labels, root, 96, cache=True, progress=False, cache_budget_mb=need_mb * 1.01)
    assert cached.cached and cached._cache.shape == (len(labels), 96, 96) and cached._cache.dtype == np.uint8
    with caplog.at_level(logging.WARNING, logger="core.data"):
        streamed = XrayDataset(labels, root, 96, cache=True, progress=False, cache_budget_mb=need_mb * 0.99)
    assert not streamed.cached and "cache budget" in caplog.text
    for i in range(len(labels)):
        expected = resize_square(read_image(root / labels.paths[i]).pixels, 96)
        np.testing.assert_array_equal(streamed[i][0][0].numpy(), expected)
        assert (cached[i][0][0] - streamed[i][0][0]).abs().max() <= 0.5 / 255 + 1e-6


def test_build_datasets_applies_the_budget_to_all_splits_together(shared_data, tmp_path, caplog):
    from conftest import write_tiny_nih_csv

    csv = write_tiny_nih_csv(shared_data, tmp_path / "labels.csv", 4, 4, 4, 4)
    data = {"csv": str(csv), "images": str(shared_data / "nih" / "images"), "cache": True}
    total_mb = cache_bytes(16, 64) / 2**20  # each split alone fits a budget of half the total, all together do not
    cfg = config_from_dict({"data": {**data, "cache_budget_mb": total_mb / 2}, "model": {"input_size": 64}})
    with caplog.at_level(logging.WARNING, logger="core.data"):
        streamed = build_datasets(cfg, progress=False)
    assert not any(ds.cached for ds in streamed.values()) and "data.cache_budget_mb" in caplog.text
    cfg = config_from_dict({"data": {**data, "cache_budget_mb": total_mb}, "model": {"input_size": 64}})
    assert all(ds.cached for ds in build_datasets(cfg, progress=False).values())


def test_worker_processes_decode_the_same_pixels(nih, shared_data, tmp_path):
    labels, root = nih
    serial = XrayDataset(labels, root, 64, cache=True, progress=False)
    pooled = XrayDataset(labels, root, 64, cache=True, progress=False, num_workers=2)
    np.testing.assert_array_equal(serial._cache, pooled._cache)
    # Streaming through the trainer's kind of loader: workers serve exactly the rows direct indexing gives.
    kermany = sorted((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))[:24]
    csv = write_mimic_tree(tmp_path / "mimic", kermany, split_p=(0.6, 0.2, 0.2))
    cfg = config_from_dict({"data": {"csv": str(csv), "images": str(tmp_path / "mimic"), "cache": False,
                                     "views": "all", "num_workers": 2}, "model": {"input_size": 64}})
    ds = build_datasets(cfg, splits=("train",), progress=False)["train"]
    assert not ds.cached and ds._paths.dtype.kind == "S"  # one byte array, no per-row Python objects
    ds.augment = None  # compare the decoding, not random augmentations
    seen = 0
    for x, y, m, idx in DataLoader(ds, batch_size=5, num_workers=2, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)):
        for k, i in enumerate(idx.tolist()):
            direct = ds[i]
            assert torch.equal(x[k], direct[0]) and torch.equal(y[k], direct[1]) and torch.equal(m[k], direct[2])
            seen += 1
    assert seen == len(ds)
