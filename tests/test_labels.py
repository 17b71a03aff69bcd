"""Label matrices and masks from real NIH rows and CheXpert-format rows; derived labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.labels import LabelError, UncertaintyPolicy, chexpert_labels, nih_labels, read_label_csv


def _row(ls, name):
    i = ls.paths.index(name)
    return {lab: (float(ls.targets[i, j]) if ls.mask[i, j] else None) for j, lab in enumerate(ls.labels)}


@pytest.fixture(scope="module")
def nih(shared_data, taxonomy):
    return read_label_csv(shared_data / "nih" / "labels.csv", taxonomy=taxonomy)


def test_nih_mapping_on_real_rows(nih, shared_data):
    df = pd.read_csv(shared_data / "nih" / "labels.csv").set_index("Image Index")
    assert df.loc["00000001_001.png", "Finding Labels"] == "Cardiomegaly|Emphysema"
    r = _row(nih, "00000001_001.png")
    assert r["Cardiomegaly"] == 1 and r["Cardiac"] == 1 and r["Abnormal"] == 1 and r["No Finding"] == 0
    assert r["Enlarged Cardiomediastinum"] is None and r["Fracture"] is None and r["Support Devices"] is None
    assert r["Other"] is None  # both children unknown
    assert r["Opacity"] == 0 and r["Fluid Accumulation"] == 0 and r["Missing Lung Tissue"] == 0
    assert r["Uncertain"] == 0
    i = nih.paths.index("00000001_001.png")
    assert nih.metadata.loc[i, "nih_only"] == "Emphysema"


def test_nih_every_finding_maps(nih, shared_data):
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    for name, label in [("Effusion", "Pleural Effusion"), ("Mass", "Lung Lesion"), ("Nodule", "Lung Lesion"),
                        ("Infiltration", "Lung Opacity"), ("Pleural_Thickening", "Pleural Other")]:
        rows = df.index[df["Finding Labels"].str.split("|").apply(lambda f, n=name: n in f)]
        j = nih.labels.index(label)
        assert len(rows) > 0
        assert np.all(nih.targets[rows, j] == 1) and np.all(nih.mask[rows, j])
    # Parents follow their children over the whole file.
    j_fa, j_op = nih.labels.index("Fluid Accumulation"), nih.labels.index("Opacity")
    eff = nih.targets[:, nih.labels.index("Pleural Effusion")] == 1
    assert np.all(nih.targets[eff, j_fa] == 1) and np.all(nih.targets[eff, j_op] == 1)


def test_nih_no_finding_row(nih, shared_data):
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    name = df.loc[df["Finding Labels"] == "No Finding", "Image Index"].iloc[0]
    r = _row(nih, name)
    assert r["No Finding"] == 1 and r["Abnormal"] == 0 and r["Uncertain"] == 0
    # "No Finding" rules out an enlarged mediastinum and a fracture, but says nothing about devices.
    assert r["Enlarged Cardiomediastinum"] == 0 and r["Fracture"] == 0 and r["Support Devices"] is None
    assert r["Opacity"] == 0 and r["Cardiac"] == 0 and r["Other"] is None


def test_nih_cardiac_has_both_classes_in_training(nih):
    train = nih.metadata["split"].to_numpy() == "train"
    j = nih.labels.index("Cardiac")
    known = nih.targets[train & nih.mask[:, j], j]
    assert set(known.tolist()) == {0.0, 1.0}
    ecm = nih.labels.index("Enlarged Cardiomediastinum")
    assert not nih.mask[~(nih.targets[:, nih.labels.index("No Finding")] == 1), ecm].any()


def test_nih_only_finding_is_abnormal_and_uncertain_unknown(nih, shared_data):
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    name = df.loc[df["Finding Labels"] == "Hernia", "Image Index"].iloc[0]
    r = _row(nih, name)
    assert r["Abnormal"] == 1 and r["No Finding"] == 0
    assert r["Uncertain"] is None  # three CheXpert labels are unknown, so "all 14 are 0" cannot be known


def _chexpert_frame():
    from core.taxonomy import load_taxonomy

    cols = list(load_taxonomy().chexpert_labels)
    base = {c: [np.nan] * 4 for c in cols}
    df = pd.DataFrame({"Path": [f"CheXpert-v1.0/train/patient0000{i}/study1/view1_frontal.jpg" for i in range(4)],
                       "Sex": ["F", "M", "F", "M"], "Age": [60, 70, 50, 40],
                       "Frontal/Lateral": ["Frontal"] * 4, "AP/PA": ["AP", "PA", "AP", "PA"], **base})
    df.loc[0, "Edema"] = -1.0          # uncertain mention
    df.loc[0, "Pleural Effusion"] = 0.0
    df.loc[1, "No Finding"] = 1.0
    df.loc[2, "Consolidation"] = 1.0
    df.loc[2, "Pneumonia"] = -1.0
    for c in cols:                     # row 3: every observation explicitly negative -> Uncertain
        df.loc[3, c] = 0.0
    return df


def test_chexpert_uncertainty_policies(taxonomy):
    df = _chexpert_frame()
    ones = chexpert_labels(df, taxonomy, UncertaintyPolicy.ONES)
    zeros = chexpert_labels(df, taxonomy, "U-Zeros")
    ignore = chexpert_labels(df, taxonomy, "U-Ignore")
    e = taxonomy.index("Edema")
    assert (ones.targets[0, e], ones.mask[0, e]) == (1.0, True)
    assert (zeros.targets[0, e], zeros.mask[0, e]) == (0.0, True)
    assert ignore.mask[0, e] == False  # noqa: E712
    fa = taxonomy.index("Fluid Accumulation")
    assert ones.targets[0, fa] == 1 and ones.mask[0, fa]
    assert zeros.targets[0, fa] == 0 and zeros.mask[0, fa]      # every child known 0
    assert not ignore.mask[0, fa]                                 # Edema unknown, no positive child
    assert ones.metadata.loc[0, "Patient ID"] == "patient00000"


def test_chexpert_blank_policy_and_derived(taxonomy):
    df = _chexpert_frame()
    zero = chexpert_labels(df, taxonomy, blank="zero")
    unknown = chexpert_labels(df, taxonomy, blank="unknown")
    f = taxonomy.index("Fracture")
    assert zero.mask[1, f] and zero.targets[1, f] == 0
    assert not unknown.mask[1, f]
    r1 = {lab: zero.targets[1, j] for j, lab in enumerate(zero.labels)}
    assert r1["No Finding"] == 1 and r1["Abnormal"] == 0 and r1["Uncertain"] == 0
    # Row 3: all 14 known 0 -> Uncertain = 1; and Abnormal = 1 - No Finding = 1, as in the official test labels.
    r3 = {lab: zero.targets[3, j] for j, lab in enumerate(zero.labels)}
    assert r3["Uncertain"] == 1 and r3["Abnormal"] == 1 and r3["Opacity"] == 0
    any_child = chexpert_labels(df, taxonomy, blank="zero", abnormal_rule="any_child")
    assert any_child.targets[3, taxonomy.index("Abnormal")] == 0
    assert unknown.mask[3].all()


def test_missing_column_names_file_and_column(tmp_path, taxonomy):
    path = tmp_path / "broken.csv"
    _chexpert_frame().drop(columns=["Edema"]).to_csv(path, index=False)
    with pytest.raises(LabelError, match=r"broken\.csv: missing column\(s\) 'Edema'"):
        read_label_csv(path, taxonomy=taxonomy)
    nih_path = tmp_path / "nih.csv"
    pd.DataFrame({"Finding Labels": ["No Finding"]}).to_csv(nih_path, index=False)
    with pytest.raises(LabelError, match="'Image Index'"):
        read_label_csv(nih_path, taxonomy=taxonomy)


def test_bad_values_and_unknown_format(tmp_path, taxonomy):
    df = _chexpert_frame()
    df.loc[2, "Edema"] = 2
    with pytest.raises(LabelError, match=r"'Edema' row 4 has value '2.0'"):
        chexpert_labels(df, taxonomy)
    with pytest.raises(LabelError, match="unknown NIH finding 'Covid'"):
        nih_labels(pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["Covid"]}), taxonomy)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(LabelError, match="unrecognised label table"):
        read_label_csv(other, taxonomy=taxonomy)
    with pytest.raises(LabelError, match="not found"):
        read_label_csv(tmp_path / "nope.csv", taxonomy=taxonomy)
