"""The viewer's display copy (core/display.py) on real DICOMs: the file's values kept, bounded, presets honest."""

from __future__ import annotations

import numpy as np
import pytest

from core.display import DISPLAY_MAX_SIDE, PRESET_TITLES, display_image
from core.imaging import read_image


@pytest.mark.parametrize("name", ["fodicom_CR-MONO1-10-chest.dcm", "nhsx_NIH_GoogleCloud_DX_MONO2_implicitLE.dcm"])
def test_small_dicom_keeps_every_value_and_windows_like_the_reader(shared_data, name):
    image = read_image(shared_data / "dicom" / name, keep_raw=True)
    display = display_image(image, max_side=max(image.raw.shape))  # no shrinking: values must come back exactly
    np.testing.assert_array_equal(display.raw(), image.raw)
    assert display.inverted == image.metadata.inverted
    assert list(display.presets) == list(PRESET_TITLES)
    assert display.presets["file"] == pytest.approx(image.default_window)
    # The file's own window reproduces what the reader decoded (MONOCHROME1 inverted the same way).
    np.testing.assert_allclose(display.window(*display.presets["file"]), image.rewindow(*image.default_window),
                               atol=1e-5)


def test_large_dicom_is_bounded_and_presets_do_what_they_say(shared_data):
    image = read_image(shared_data / "dicom" / "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm", keep_raw=True)
    display = display_image(image)
    assert max(display.levels.shape) == DISPLAY_MAX_SIDE and display.levels.dtype == np.uint16
    assert display.nbytes <= DISPLAY_MAX_SIDE * DISPLAY_MAX_SIDE * 2
    assert display.source_size == (image.raw.shape[1], image.raw.shape[0])
    assert (display.raw_low, display.raw_high) == (float(image.raw.min()), float(image.raw.max()))
    # In the chest (the film's central 70%): lung spreads the darkest 1-60% over the grey scale, so the brighter 40%
    # saturate white; mediastinum the brightest 55%, so the darker 45% go black. Both in display polarity (this
    # film is MONOCHROME1, a higher value is darker).
    h, w = display.levels.shape

    def centre(a):
        return a[int(0.15 * h):int(0.85 * h), int(0.15 * w):int(0.85 * w)]

    lung = centre(display.window(*display.presets["lung"]))
    mediastinum = centre(display.window(*display.presets["mediastinum"]))
    assert 0.3 < (lung >= 1.0 - 1e-6).mean() < 0.5 and (lung <= 1e-6).mean() < 0.05
    assert 0.35 < (mediastinum <= 1e-6).mean() < 0.55 and (mediastinum >= 1.0 - 1e-6).mean() < 0.05
    full = display.window(*display.presets["full"])
    assert full.min() == pytest.approx(0.0, abs=1e-4) and full.max() == pytest.approx(1.0, abs=1e-4)
