"""``python -m core.card_evidence``: measure a shipped model on held-out images and store what it shows in its card.

Two facts a card must state from data the model never saw, measured here with the same code path the dashboard
uses (:class:`core.inference.Predictor`: decoding, preprocessing, calibration, Monte-Carlo mean):

* **call evidence** (:func:`core.calls.fit_call_evidence`): per learnt label, the held-out AUROC with a
  patient-level bootstrap interval and the operating point under the card's call rule. The held-out images are the
  NIH images of **patients the model never trained on, outside the test split** (:func:`core.growth.unseen_rows`):
  the 764 images of patients first added to ``../shared/data/nih`` on 2026-12-01 and, for a model trained on
  ``train`` only, the validation split as well. The test split is never read here.
* **out-of-population checks** (:func:`measure_ood`): the share of adult films flagged (false alarms: NIH test,
  the adult DICOMs, the half of the COVID-19 collection's and Shenzhen's patients the population classifier is not
  fitted on) and of held-out pediatric films flagged (detection: the
  Kermany patients *not* used to fit the population classifier), per check.

Scores are cached as ``.npz`` files in ``--cache`` so a second run only rewrites the cards.

A new export (:func:`core.export.export_model`) fits its card's call evidence with the same function
(:func:`card_call_evidence`) on its own held-out predictions (out-of-fold, or the validation split); running this
command afterwards replaces it with evidence on unseen patients, which holds only for models trained before
2026-12-01: the added patients are in today's train and val splits, so a model trained on them keeps its export's
evidence (:func:`core.growth.trained_after_growth`, from its card's image count). The population-check rates
(``ood.measured``) need image sets outside the training config (other collections, held-out pediatric films) and
are measured here only.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.calls import CallEvidence, CallRule, card_rule, fit_call_evidence
from core.card import ModelCard
from core.card_sections import OODInfo
from core.growth import trained_after_growth, unseen_rows
from core.head import head_outputs
from core.imaging import ImageError
from core.inference import Predictor
from core.labels import LabelSet, nih_labels
from core.ood import header_rules_out_child, header_warnings
from core.patient_halves import HELD_HALF, patient_half
from core.preprocess import fit_to_model, normalize

log = logging.getLogger(__name__)

DATA = Path("../shared/data")

@dataclass
class Scores:
    """What one variant gives for a list of images (rows in input order; ``ok`` False where decoding failed).

    Attributes:
        mc_mean: ``(N, L)`` displayed probabilities (Monte-Carlo mean, the predictor's defaults).
        distance: ``(N,)`` feature-distance scores (NaN without a reference).
        population: ``(N,)`` population-classifier decision values (NaN without one).
        header_child: ``(N,)`` the file's header gives a patient age under 18 or a non-frontal view.
        ok: ``(N,)`` decoded and scored.
        adult_header: ``(N,)`` the header clears the pediatric-film classifier (adult age or adult-sized field:
            :func:`core.ood.header_rules_out_child`).
    """

    mc_mean: np.ndarray
    distance: np.ndarray
    population: np.ndarray
    header_child: np.ndarray
    ok: np.ndarray
    adult_header: np.ndarray


def score_images(predictor: Predictor, paths: list[Path], batch: int = 64) -> dict[str, Scores]:
    """Score every image with every loaded variant (one decode per image)."""
    names = predictor.variant_names
    n, n_labels = len(paths), len(predictor.taxonomy.labels)
    out = {v: Scores(np.full((n, n_labels), np.nan, np.float32), np.full(n, np.nan), np.full(n, np.nan),
                     np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)) for v in names}
    for start in range(0, n, batch):
        images, rows = [], []
        for i in range(start, min(n, start + batch)):
            try:
                image, _ = predictor.decode(paths[i])
            except ImageError as exc:
                log.warning("%s: %s", paths[i].name, exc)
                continue
            images.append(image)
            rows.append(i)
        if not images:
            continue
        for name in names:
            loaded = predictor.get(name)
            x = torch.stack([torch.from_numpy(fit_to_model(im.pixels, loaded.config)) for im in images])
            with torch.inference_mode():
                features = loaded.model.forward_features(normalize(x[:, None], loaded.config))
            head = head_outputs(loaded.model, features, predictor.mc_samples, predictor.seed, loaded.temperature,
                                with_cams=False, descendants=loaded.descendants)
            s = out[name]
            s.mc_mean[rows] = head.mc_mean
            if loaded.ood is not None:
                s.distance[rows] = loaded.ood.score(head.pooled)
            if loaded.population is not None:
                s.population[rows] = loaded.population.score(head.pooled)
            s.header_child[rows] = [bool(header_warnings(im.metadata.to_dict())) for im in images]
            s.adult_header[rows] = [header_rules_out_child(im.metadata.to_dict()) for im in images]
            s.ok[rows] = True
        log.info("scored %d/%d", min(n, start + batch), n)
    return out


def cached_scores(predictor: Predictor, key: str, paths: list[Path], cache: Path) -> dict[str, Scores]:
    """:func:`score_images`, cached per (set and its images, variant, weights) in ``cache``: a retrained variant of
    the same name is never given the previous weights' scores."""

    def weights_id(name: str) -> str:
        card = predictor.get(name).card
        return (card.tensor_sha256 or "")[:12] if card is not None else ""

    # The image list is part of the key too: a set whose membership changes must not get another list's scores.
    images = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:8]
    files = {v: cache / f"{key}_{images}__{v}_{weights_id(v)}.npz" for v in predictor.variant_names}
    if all(f.exists() for f in files.values()):
        loaded = {v: dict(np.load(f)) for v, f in files.items()}
        if all("adult_header" in d for d in loaded.values()):
            return {v: Scores(**d) for v, d in loaded.items()}
    scores = score_images(predictor, paths)
    cache.mkdir(parents=True, exist_ok=True)
    for v, s in scores.items():
        np.savez(files[v], **s.__dict__)
    return scores


def kermany_heldout(table: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """Films of the Kermany patients not used to fit the population classifier (the half
    ``core.heldout.fit_population`` keeps out, by the same hash); a random sample of ``n`` when given."""
    rows = patient_half(table, HELD_HALF)
    return rows if n is None or n >= len(rows) else rows.sample(n, random_state=1)


def adult_sets(data: Path) -> dict[str, list[Path]]:
    """Every adult film the project holds outside training and outside the population classifier's fit: NIH test,
    adult DICOMs, and the COVID-19 collection's and Shenzhen's films of the patients in the half
    (:func:`core.patient_halves.patient_half`) that ``eval.ood_adults_*`` keeps out of the fit."""
    nih = pd.read_csv(data / "nih/labels.csv")
    other = pd.read_csv(data / "other/labels.csv", dtype=str, keep_default_na=False)
    held = patient_half(other, HELD_HALF)
    return {
        "nih_test": [data / "nih/images" / f for f in nih.loc[nih["split"] == "test", "Image Index"]],
        "dicom_adult": sorted(p for p in (data / "dicom").glob("*.dcm") if "canine" not in p.name),
        "covid": [data / "other" / f for f in held["file"] if f.startswith("covid_chestxray/")],
        "shenzhen": [data / "other" / f for f in held["file"] if f.startswith("shenzhen/")],
    }


def measure_ood(scores: dict[str, Scores], threshold_distance: float, threshold_population: float
                ) -> dict[str, dict[str, float | int]]:
    """Per image set: images, and the share flagged by the header, the distance, the population classifier and any."""
    out: dict[str, dict[str, float | int]] = {}
    for key, s in scores.items():
        ok = s.ok
        header = s.header_child[ok]
        distance = s.distance[ok] > threshold_distance
        population = (s.population[ok] > threshold_population) & ~s.adult_header[ok]
        out[key] = {"images": int(ok.sum()), "header": float(header.mean()), "distance": float(distance.mean()),
                    "population": float(population.mean()),
                    "any": float((header | distance | population).mean())}
    return out


def heldout_labels(table: pd.DataFrame, rows: np.ndarray, taxonomy_labels: list[str]) -> LabelSet:
    """The label matrix of ``rows`` of the NIH table, by the project's NIH mapping."""
    labels = nih_labels(table[rows].reset_index(drop=True))
    if list(labels.labels) != list(taxonomy_labels):
        raise ValueError("the NIH table's labels do not follow the model's taxonomy")
    return labels


def card_call_evidence(card: ModelCard, probs: np.ndarray, labels: LabelSet, source: str
                       ) -> tuple[CallRule, CallEvidence]:
    """The call rule ``card`` states (the default rule for a card without one) and the evidence of each of its learnt
    labels under that rule, fitted on held-out displayed probabilities: the one way a card's ``call_evidence`` is
    made, here for a shipped model's unseen patients and by :func:`core.export.export_model` for a new model's
    out-of-fold or validation predictions.

    Args:
        card: The model card (its ``call_rule`` and ``labels_not_learnt`` are read).
        probs: ``(N, L)`` probabilities as the model displays them, for images the model never trained on.
        labels: Their labels, in the taxonomy's output order (``Patient ID`` in the metadata makes the AUROC
            bootstrap resample patients).
        source: What the held-out images and probabilities are, for the card.
    """
    rule = card_rule(card)
    return rule, fit_call_evidence(probs, labels, list(labels.labels), rule, set(card.labels_not_learnt),
                                   source=source)


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""

    parser = argparse.ArgumentParser(prog="python -m core.card_evidence", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="weights", help="folder of the variants")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variants (default: all)")
    parser.add_argument("--data", default=str(DATA), help="the shared data folder")
    parser.add_argument("--cache", default="runs/card_evidence", help="where scores are cached")
    parser.add_argument("--kermany", type=int, default=600, help="held-out pediatric films to sample")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the cards")
    parser.add_argument("--ood-only", action="store_true",
                        help="only the population-check rates (ood.measured), keeping the card's call evidence: for "
                             "a model trained on the grown data, whose export fitted its evidence out of fold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data, cache = Path(args.data), Path(args.cache)
    predictor = Predictor(args.weights, args.variants or "all")
    labels = list(predictor.taxonomy.labels)

    nih = pd.read_csv(data / "nih/labels.csv")
    unseen = nih[unseen_rows(nih, "train")].reset_index(drop=True)  # the union over the variants' training sets
    nih_scores = {} if args.ood_only else cached_scores(
        predictor, "nih_unseen", [data / "nih/images" / f for f in unseen["Image Index"]], cache)
    sets = {k: cached_scores(predictor, k, v, cache) for k, v in adult_sets(data).items()}
    kermany = kermany_heldout(pd.read_csv(data / "other/kermany/labels.csv"), args.kermany)
    sets["kermany_heldout"] = cached_scores(predictor, "kermany_heldout",
                                            [data / "other/kermany/images" / f for f in kermany["file"]], cache)
    for name in predictor.variant_names:
        loaded = predictor.get(name)
        card = loaded.card
        assert card is not None and loaded.variant is not None
        trained_on = str(card.data.trained_on or "train")
        if args.ood_only or trained_after_growth(nih, trained_on, card.data.train_images):
            # A model trained on the grown data trained on the images the evidence would be fitted on: it keeps
            # the evidence its export fitted out of fold.
            rule, evidence = card.call_rule, card.call_evidence
        else:
            rows = unseen_rows(unseen, trained_on, seen_in=nih)
            held = heldout_labels(unseen, rows, labels)
            rule, evidence = card_call_evidence(
                card, nih_scores[name].mc_mean[rows], held,
                source=f"NIH images of {unseen.loc[rows, 'Patient ID'].nunique()} patients the model never trained "
                       f"on, outside the test split ({int(rows.sum())} images; displayed Monte-Carlo mean "
                       "probabilities)")
        ood = card.ood or OODInfo()
        measured = measure_ood({k: v[name] for k, v in sets.items()},
                               np.inf if ood.threshold is None else ood.threshold,
                               np.inf if ood.population_threshold is None else ood.population_threshold)
        ood.measured = measured
        callable_ = [e.label for e in evidence.labels.values() if e.callable] if evidence is not None else []
        print(f"{name}: callable {callable_}")
        for key, m in measured.items():
            print(f"  {key}: {m}")
        if not args.dry_run:
            card.call_rule, card.call_evidence, card.ood = rule, evidence, ood
            card.write(loaded.variant.card_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
