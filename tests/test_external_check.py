"""core.external_check: the held-out Kermany films (real table) and the paired comparison of two variants on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_weights_dir

from core.external_check import LABEL_ON_PNEUMONIA, external_check, heldout_films, main
from core.patient_halves import outlier_half


def test_heldout_films_are_the_other_half_balanced_and_labelled(shared_data) -> None:
    folder = shared_data / "other" / "kermany"
    films = heldout_films(folder, per_class=40)
    table = pd.read_csv(folder / "labels.csv", dtype=str)
    finding = dict(zip(table["file"], table["finding"], strict=True))
    patients = films.metadata["Patient ID"]
    assert len(films) == 80 and all(outlier_half(p) == 1 for p in patients)  # never the classifier's half
    pneumonia = np.array([finding[f] != "No Finding" for f in films.paths])
    assert pneumonia.sum() == 40
    for label, on_pneumonia in LABEL_ON_PNEUMONIA.items():
        j = films.labels.index(label)
        assert films.mask[:, j].all()
        assert np.array_equal(films.targets[:, j], np.where(pneumonia, on_pneumonia, 1 - on_pneumonia))
    others = [j for j, label in enumerate(films.labels) if label not in LABEL_ON_PNEUMONIA]
    assert not films.mask[:, others].any()  # nothing is claimed about the other labels
    assert heldout_films(folder, per_class=40).paths == films.paths  # the same sample every run


def test_a_variant_against_itself_differs_by_zero_and_one_variant_is_refused(shared_data, tmp_path) -> None:
    torch.set_num_threads(1)
    weights = make_weights_dir(tmp_path, variants=("bce", "hbce_soft"))
    folder = shared_data / "other" / "kermany"
    same, other = external_check([weights / "bce", weights / "bce", weights / "hbce_soft"], folder, per_class=15,
                                 n_boot=20)
    assert same.images == other.images == 30 and sorted(r.label for r in same.labels) == sorted(LABEL_ON_PNEUMONIA)
    assert same.difference == 0 and same.difference_ci == (0.0, 0.0)
    assert "15 normal, 15 pneumonia" in other.note
    with pytest.raises(SystemExit):
        main(["--weights", str(weights / "bce")])
