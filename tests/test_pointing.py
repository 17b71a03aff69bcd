"""The pointing game on NIH's real radiologist boxes: geometry, baselines, and the shipped cards' figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.pointing import Box, covered_share, map_peak, pointing_game, read_boxes


@pytest.fixture(scope="module")
def boxes(shared_data: Path) -> list[Box]:
    nih = shared_data / "nih"
    return read_boxes(nih / "BBox_List_2017.csv.gz", nih / "labels.csv")


def test_boxes_are_scaled_to_the_stored_images(boxes: list[Box], shared_data: Path) -> None:
    assert len(boxes) == 57 and len({b.image for b in boxes}) == 52
    assert {b.label for b in boxes} >= {"Pneumonia", "Lung Opacity", "Lung Lesion", "Atelectasis"}
    assert any(b.finding == "Infiltration" and b.label == "Lung Opacity" for b in boxes)  # NIH's "Infiltrate"
    for b in boxes:
        with Image.open(shared_data / "nih/images" / b.image) as image:
            assert (image.height, image.width) == b.shape
        assert 0 <= b.x and b.x + b.w <= b.shape[1] + 1e-6 and 0 <= b.y and b.y + b.h <= b.shape[0] + 1e-6
    first = next(b for b in boxes if b.image == "00000149_006.png" and b.finding == "Atelectasis")
    side = first.shape[1]
    assert first.x == pytest.approx(603.661017 * side / 1024)  # NIH's coordinates are in the 1,024 px original
    assert first.h == pytest.approx(90.033898 * side / 1024)


def test_peak_of_an_upsampled_map() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[1, 6] = 1.0
    row, col = map_peak(cam, (512, 512))
    assert 64 <= row < 128 and 6 * 64 <= col < 7 * 64


@dataclass
class _Analysis:
    image: np.ndarray
    cams: np.ndarray
    labels: list[str]
    relative_cams: np.ndarray | None = None

    def index(self, label: str) -> int:
        return self.labels.index(label)


@dataclass
class _Loaded:
    not_learnt: list[str] = field(default_factory=list)


class _MapsFromBoxes:
    """A stand-in predictor whose map for a label peaks in that label's box (``inside``) or in the far corner."""

    def __init__(self, boxes: list[Box], inside: bool, not_learnt: list[str]) -> None:
        self.boxes, self.inside, self.loaded = boxes, inside, _Loaded(not_learnt)
        self.labels = sorted({b.label for b in boxes})

    def get(self, name: str) -> _Loaded:
        return self.loaded

    def analyse(self, path: Path, variant: str, mc_samples: int) -> _Analysis:
        mine = [b for b in self.boxes if b.image == path.name]
        h, w = mine[0].shape
        cams = np.zeros((len(self.labels), 32, 32), np.float32)
        for b in mine:
            cy, cx = (b.y + b.h / 2) / h, (b.x + b.w / 2) / w
            if not self.inside:  # the corner farthest from the box
                cy, cx = (0.02 if cy > 0.5 else 0.98), (0.02 if cx > 0.5 else 0.98)
            cams[self.labels.index(b.label), min(int(cy * 32), 31), min(int(cx * 32), 31)] = 1.0
        return _Analysis(np.zeros((h, w), np.float32), cams, self.labels)


def test_pointing_game_counts_hits_and_baselines_on_the_real_boxes(boxes: list[Box], shared_data: Path) -> None:
    images = shared_data / "nih/images"
    pairs = {(b.image, b.label) for b in boxes}
    inside = pointing_game(_MapsFromBoxes(boxes, True, []), "m", boxes, images)
    assert inside.pairs == len(pairs) and inside.images == 52
    # A map peaking at a box's centre cell hits, except where the box is smaller than a cell of the 32 x 32 map.
    assert inside.hits >= len(pairs) - 3
    outside = pointing_game(_MapsFromBoxes(boxes, False, []), "m", boxes, images)
    assert outside.hits == 0
    # The centre baseline, counted independently.
    centre = sum(any(b.contains((b.shape[0] - 1) / 2, (b.shape[1] - 1) / 2) for b in boxes
                     if (b.image, b.label) == pair) for pair in pairs)
    assert inside.centre_hits == outside.centre_hits == centre
    assert 0 < inside.centre_rate < 0.5
    shares = [covered_share([b for b in boxes if (b.image, b.label) == pair]) for pair in pairs]
    assert inside.random_rate == pytest.approx(np.mean(shares))
    assert sum(e["pairs"] for e in inside.by_split.values()) == inside.pairs
    skipped = pointing_game(_MapsFromBoxes(boxes, True, ["Pneumonia"]), "m", boxes, images)
    n_pneumonia = len({p for p in pairs if p[1] == "Pneumonia"})
    assert skipped.pairs == len(pairs) - n_pneumonia and skipped.skipped_not_learnt == n_pneumonia


def test_covered_share_of_one_box() -> None:
    box = Box("x.png", "Mass", "Lung Lesion", "test", 10.0, 20.0, 30.0, 40.0, (100, 100))
    assert covered_share([box]) == pytest.approx(0.12, abs=0.01)
    assert box.contains(25, 15) and not box.contains(5, 5)


@pytest.mark.slow
def test_shipped_cards_quote_the_measured_pointing_game(boxes: list[Box], shared_data: Path) -> None:
    """Each shipped card's pointing figures are what the game measures now on its weights."""
    from core.inference import Predictor
    from core.registry import list_variants

    weights = Path(__file__).resolve().parents[1] / "weights"
    names = [v.name for v in list_variants(weights)]
    predictor = Predictor(weights, names)
    for name in names:
        card = predictor.get(name).card
        assert card.pointing is not None, name
        measured = pointing_game(predictor, name, boxes, shared_data / "nih/images").to_dict()
        for key in ("pairs", "hits", "centre_hits", "random_rate", "relative_maps"):
            assert getattr(card.pointing, key) == measured[key], f"{name}: {key}"
