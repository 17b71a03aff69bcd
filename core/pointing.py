"""Where a map points: the pointing game of each model's Grad-CAM against NIH's radiologist boxes.

NIH released radiologist-drawn boxes for 984 findings on 880 ChestX-ray14 images (``BBox_List_2017.csv``,
coordinates ``x, y, w, h`` in the 1,024 x 1,024 original). For every image here that has a box of a finding the
model learnt (NIH finding -> taxonomy label by the project's mapping, :data:`core.labels.NIH_TO_CHEXPERT`;
NIH's box file spells Infiltration "Infiltrate"), the map the dashboard shows for that label is taken
(the Grad-CAM; where it is empty, the relative map drawn in its place), upsampled to the image as the viewer does
(:func:`core.explain.upsample`), and its maximum located. A *hit* is a maximum inside a box of that finding
(Zhang et al., "Top-down neural attention by excitation backprop", 2016). Two baselines need no model:

* **centre**: always point at the image centre;
* **random**: a uniformly random point, whose hit rate is exactly the share of the image the boxes cover.

The boxes are scaled from the 1,024 px original to the stored image (``stored_size`` in ``labels.csv``; every
NIH original is 1,024 px, also where only a thumbnail of it was available). Most boxed images here are training
images, which the model has seen (with image-level labels only), so the figures are given per split too.

``python -m core.pointing [--weights-dir weights] [--write]`` measures every variant and (``--write``) stores the
result in each card's ``pointing`` section; :func:`core.export.export_model` measures new exports the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.card_sections import PointingInfo
from core.explain import upsample
from core.labels import NIH_TO_CHEXPERT

#: NIH's box file spells some findings differently from its label table.
BOX_SPELLING = {"Infiltrate": "Infiltration"}
#: Every ChestX-ray14 original is 1,024 x 1,024 px: the box coordinates' frame.
NIH_SIDE = 1024
BOX_FILE = "BBox_List_2017.csv.gz"


@dataclass(frozen=True)
class Box:
    """One radiologist box, in the stored image's pixels.

    Attributes:
        image: NIH image file name (``Image Index``).
        finding: NIH's finding name (as in its label table).
        label: The taxonomy label it maps to.
        split: The image's split here.
        x, y, w, h: Left, top, width, height in stored pixels.
        shape: ``(height, width)`` of the stored image.
    """

    image: str
    finding: str
    label: str
    split: str
    x: float
    y: float
    w: float
    h: float
    shape: tuple[int, int]

    def contains(self, row: float, col: float) -> bool:
        """Whether the pixel centre ``(row, col)`` lies inside the box."""
        return self.x <= col + 0.5 <= self.x + self.w and self.y <= row + 0.5 <= self.y + self.h


def read_boxes(box_csv: str | Path, labels_csv: str | Path) -> list[Box]:
    """The boxes of images in ``labels_csv`` whose finding maps onto the taxonomy, scaled to the stored images."""
    boxes = pd.read_csv(box_csv)
    boxes = boxes.rename(columns={boxes.columns[2]: "x", boxes.columns[3]: "y", boxes.columns[4]: "w",
                                  boxes.columns[5]: "h"})
    table = pd.read_csv(labels_csv)[["Image Index", "stored_size", "split"]]
    merged = boxes.merge(table, on="Image Index")
    out = []
    for row in merged.itertuples(index=False):
        finding = BOX_SPELLING.get(row[1], row[1])
        label = NIH_TO_CHEXPERT.get(finding)
        if label is None:
            continue
        width, height = (int(v) for v in str(row.stored_size).lower().split("x"))
        sx, sy = width / NIH_SIDE, height / NIH_SIDE
        out.append(Box(str(row[0]), finding, label, str(row.split), row.x * sx, row.y * sy, row.w * sx,
                       row.h * sy, (height, width)))
    return out


def covered_share(boxes: Sequence[Box]) -> float:
    """Share of the image inside at least one of ``boxes`` (the random point's hit rate)."""
    height, width = boxes[0].shape
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for b in boxes:
        inside |= (cols >= b.x) & (cols <= b.x + b.w) & (rows >= b.y) & (rows <= b.y + b.h)
    return float(inside.mean())


def map_peak(cam: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the maximum of ``cam`` upsampled to ``shape`` as the viewer draws it (first on ties)."""
    heat = upsample(cam, shape)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(heat)), heat.shape))  # type: ignore[return-value]


@dataclass
class PointingResult:
    """One variant's pointing game.

    Attributes:
        pairs: (image, finding) pairs measured.
        images: Distinct images.
        hits: Pairs whose map maximum fell inside a box of that finding.
        centre_hits: Pairs whose box contains the image centre.
        random_rate: Mean share of the image the pair's boxes cover (expected hit rate of a random point).
        relative_maps: Pairs whose Grad-CAM was empty, so the relative map's maximum was used.
        by_split: Split -> ``{"pairs", "hits", "centre_hits"}``.
        by_label: Label -> ``{"pairs", "hits", "centre_hits"}``.
        skipped_not_learnt: Pairs of labels the model did not learn (not measured).
    """

    pairs: int = 0
    images: int = 0
    hits: int = 0
    centre_hits: int = 0
    random_rate: float = 0.0
    relative_maps: int = 0
    by_split: dict[str, dict[str, int]] | None = None
    by_label: dict[str, dict[str, int]] | None = None
    skipped_not_learnt: int = 0

    @property
    def rate(self) -> float | None:
        """Share of pairs hit by the map's maximum."""
        return self.hits / self.pairs if self.pairs else None

    @property
    def centre_rate(self) -> float | None:
        """Share of pairs hit by the image centre."""
        return self.centre_hits / self.pairs if self.pairs else None

    def to_info(self) -> PointingInfo:
        """The card's ``pointing`` section."""
        return PointingInfo.from_dict(self.to_dict(), "pointing")

    def to_dict(self) -> dict[str, Any]:
        """The card's ``pointing`` section as plain data."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 4)

        return {
            "method": ("pointing game: the maximum of the map the dashboard shows for the label (Grad-CAM; the "
                       "relative map where the Grad-CAM is empty), upsampled to the image, inside a radiologist box "
                       "of that finding (NIH BBox_List_2017)"),
            "command": "python -m core.pointing --write",
            "pairs": self.pairs, "images": self.images, "hits": self.hits, "rate": r(self.rate),
            "centre_hits": self.centre_hits, "centre_rate": r(self.centre_rate), "random_rate": r(self.random_rate),
            "relative_maps": self.relative_maps, "skipped_not_learnt": self.skipped_not_learnt,
            "by_split": self.by_split or {}, "by_label": self.by_label or {},
        }


def pointing_game(predictor: Any, variant: str, boxes: Sequence[Box], images: str | Path) -> PointingResult:
    """Play the pointing game with ``variant`` of ``predictor`` (a :class:`core.inference.Predictor`) on ``boxes``.

    Each image is analysed once (one Monte-Carlo sample: maps do not depend on dropout).
    """
    loaded = predictor.get(variant)
    grouped: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
    for b in boxes:
        grouped[b.image][b.label].append(b)
    result = PointingResult(by_split={}, by_label={})
    random_total = 0.0
    for image_name in sorted(grouped):
        learnt = {label: bs for label, bs in grouped[image_name].items() if label not in loaded.not_learnt}
        result.skipped_not_learnt += len(grouped[image_name]) - len(learnt)
        if not learnt:
            continue
        analysis = predictor.analyse(Path(images) / image_name, variant, mc_samples=1)
        result.images += 1
        for label, bs in sorted(learnt.items()):
            shape = analysis.image.shape
            if shape != bs[0].shape:
                raise ValueError(f"{image_name}: stored as {shape}, labels.csv says {bs[0].shape}")
            j = analysis.index(label)
            cam = analysis.cams[j]
            if cam.max() <= 0 and analysis.relative_cams is not None:
                cam = analysis.relative_cams[j]
                result.relative_maps += 1
            row, col = map_peak(cam, shape)
            hit = any(b.contains(row, col) for b in bs)
            centre = any(b.contains((shape[0] - 1) / 2, (shape[1] - 1) / 2) for b in bs)
            result.pairs += 1
            result.hits += hit
            result.centre_hits += centre
            random_total += covered_share(bs)
            for key, table in ((bs[0].split, result.by_split), (label, result.by_label)):
                entry = table.setdefault(key, {"pairs": 0, "hits": 0, "centre_hits": 0})
                entry["pairs"] += 1
                entry["hits"] += int(hit)
                entry["centre_hits"] += int(centre)
    result.random_rate = random_total / result.pairs if result.pairs else 0.0
    return result


def measure_for_card(model: Any, card: Any, csv: str | Path, images: str | Path) -> PointingInfo | None:
    """The ``pointing`` section for a model being exported, or ``None`` when no box file is beside ``csv``."""
    box_csv = Path(csv).parent / BOX_FILE
    if not box_csv.is_file():
        return None
    from core.inference import Predictor

    predictor = Predictor.from_model(model, card.variant, card=card)
    return pointing_game(predictor, card.variant, read_boxes(box_csv, csv), images).to_info()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.pointing``: measure the variants of a weights folder; ``--write`` stores it in the cards."""
    from core.card import ModelCard, write_json
    from core.config import resolve_path
    from core.inference import Predictor
    from core.registry import list_variants

    parser = argparse.ArgumentParser(prog="python -m core.pointing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", default="weights")
    parser.add_argument("--variant", action="append", help="only this variant (repeatable); default: all")
    parser.add_argument("--csv", default="../shared/data/nih/labels.csv")
    parser.add_argument("--images", default="../shared/data/nih/images")
    parser.add_argument("--boxes", help=f"NIH's box file (default: {BOX_FILE} beside --csv)")
    parser.add_argument("--write", action="store_true", help="store each result in the variant's card")
    args = parser.parse_args(argv)
    csv = resolve_path(args.csv)
    boxes = read_boxes(resolve_path(args.boxes) if args.boxes else csv.parent / BOX_FILE, csv)
    weights = resolve_path(args.weights_dir)
    names = args.variant or [v.name for v in list_variants(weights)]
    predictor = Predictor(weights, names)
    print(f"{len(boxes)} boxes on {len({b.image for b in boxes})} images here")
    print(f"{'variant':<24} {'pairs':>5} {'map':>12} {'centre':>12} {'random':>7} {'relative maps':>13}")
    for name in names:
        res = pointing_game(predictor, name, boxes, resolve_path(args.images))
        print(f"{name:<24} {res.pairs:>5} {res.hits:>4} ({res.rate or 0:.3f}) {res.centre_hits:>4} "
              f"({res.centre_rate or 0:.3f}) {res.random_rate:>7.3f} {res.relative_maps:>13}")
        if args.write:
            loaded = predictor.get(name)
            path = loaded.variant.card_path if loaded.variant is not None else weights / f"{name}.json"
            # Only the pointing section changes: the rest of the file is kept as written (key order included).
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            data["pointing"] = res.to_info().to_dict()
            write_json(data, path)
            ModelCard.read(path)  # still a valid card
    return 0


if __name__ == "__main__":
    sys.exit(main())
