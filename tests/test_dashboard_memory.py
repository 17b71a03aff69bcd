"""The dashboard's analysis cache is bounded in bytes and keeps display copies, never original pixels (issue 22).

Large uploads are built at test time (smooth 4,000 x 3,000 PNGs, a few hundred KB each).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_weights_dir
from PIL import Image

from bench import hostile
from core.inference import Predictor
from dashboard.pipeline import DISPLAY_COPY_MAX_SIDE, AnalysisCache, display_copy, sha256


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(make_weights_dir(tmp_path_factory.mktemp("memory")), "all")


def _large_png(seed: int, size: tuple[int, int] = (4000, 3000)) -> bytes:
    small = Image.fromarray(hostile.chest_like(150, 200, seed=seed))
    return hostile.encode(small.resize(size, Image.Resampling.BILINEAR), "PNG")


def test_cache_holds_display_copies_within_its_byte_budget(predictor: Predictor) -> None:
    budget = 64 * 2**20
    cache = AnalysisCache(max_bytes=budget)
    uploads = [_large_png(seed) for seed in range(4)]
    for data in uploads:
        outcome = cache.analyses(predictor, data, sha256(data), ["bce"], 2)
        assert outcome.ok, outcome.error
        shown = outcome.image
        assert max(shown.pixels.shape) == DISPLAY_COPY_MAX_SIDE and shown.raw.shape == shown.pixels.shape
        assert (shown.metadata.width, shown.metadata.height) == (4000, 3000)  # the file's size, as before
        assert outcome.analyses["bce"].image is shown.pixels
        assert cache.nbytes <= budget
    # 4 full-resolution images with raw values would take 4 x 2 x 48 MB; the cache never held one of them.
    assert all(max(im.pixels.shape) <= DISPLAY_COPY_MAX_SIDE for im in cache._images.values())


def test_a_variant_added_later_reads_the_full_image(predictor: Predictor) -> None:
    data = _large_png(7)
    cache = AnalysisCache()
    cache.analyses(predictor, data, sha256(data), ["bce"], 3)
    later = cache.analyses(predictor, data, sha256(data), ["bce", "hbce_soft"], 3)
    direct = predictor.analyse(data, "hbce_soft", mc_samples=3)
    np.testing.assert_allclose(later.analyses["hbce_soft"].mc_mean, direct.mc_mean, atol=1e-6)
    assert cache.network_runs == 2


def test_display_copy_keeps_small_images_and_shrinks_large_ones() -> None:
    from core.imaging import read_image

    small = read_image(hostile.encode(Image.fromarray(hostile.chest_like()), "PNG"), keep_raw=True)
    assert display_copy(small) is small
    large = read_image(_large_png(1), keep_raw=True)
    copy = display_copy(large)
    assert copy.pixels.shape == (1536, 2048) and copy.metadata == large.metadata
    assert abs(float(copy.pixels.mean()) - float(large.pixels.mean())) < 1e-3  # box average, same picture
    assert np.isclose(copy.rewindow(128, 64).mean(), display_copy(large).rewindow(128, 64).mean())

