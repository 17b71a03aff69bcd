"""core.datasets: MIMIC-CXR-JPG, the official NIH split and CheXpert's valid.csv, read from faithful miniature
trees built at test time from real images in ../shared/data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import REPO_ROOT, ConfigError, config_from_dict, load_config
from core.data import XrayDataset, load_splits, split_table
from core.datasets import mimic, nih, read_table
from core.datasets.decode import load_resized
from core.datasets.miniature import (
    mimic_tables,
    write_chexpert_tree,
    write_mimic_tables,
    write_mimic_tree,
    write_nih_tree,
)
from core.labels import LabelError, read_label_csv


@pytest.fixture(scope="module")
def kermany(shared_data: Path) -> list[Path]:
    """Real pediatric chest JPEGs (at most 320 px) to lay out as MIMIC or CheXpert files."""
    return sorted((shared_data / "other" / "kermany" / "images").glob("*.jpeg"))


def _config(csv: Path, images: Path, **data) -> object:
    return config_from_dict({"data": {"csv": str(csv), "images": str(images), "cache": False, **data},
                             "model": {"input_size": 64}})


def _study_value(value: float) -> float:
    """The CheXpert rules under U-Ones and blank = 0: 1 and -1 -> 1, 0 and blank -> 0."""
    return 1.0 if value in (1.0, -1.0) else 0.0


# ------------------------------------------------------------------------------------------------ MIMIC


@pytest.fixture(scope="module")
def mimic_tree(kermany, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic") / "2.0.0"
    return write_mimic_tree(root, kermany[:48], seed=3, split_p=(0.6, 0.2, 0.2))


def test_mimic_frontal_images_get_their_study_labels_and_the_official_split(mimic_tree, kermany, taxonomy):
    root = mimic_tree.parent
    studies = pd.read_csv(mimic_tree)
    meta = pd.read_csv(root / mimic.METADATA_FILE, dtype={"dicom_id": str})
    split = pd.read_csv(root / mimic.SPLIT_FILE, dtype={"dicom_id": str}).set_index("dicom_id")["split"]
    cfg = _config(mimic_tree, root)  # format auto: detected from subject_id / study_id
    labels, assignment = split_table(cfg.data)
    labelled = meta.set_index(["subject_id", "study_id"]).index.isin(
        studies.set_index(["subject_id", "study_id"]).index)
    frontal = meta["ViewPosition"].isin(["PA", "AP"]).to_numpy()
    assert len(labels) == int((frontal & labelled).sum()) > 0
    assert (~labelled).any() and (~frontal).any()  # the miniature does exercise both exclusions
    lab = studies.set_index(["subject_id", "study_id"])
    images_per_study = labels.metadata.groupby("study_id").size()
    assert (images_per_study > 1).any()  # a study with several frontal films shares one label row
    for i, row in labels.metadata.iterrows():
        assert row["ViewPosition"] in ("PA", "AP")
        assert row["Patient ID"] == str(row["subject_id"])
        expected = [_study_value(v) for v in lab.loc[(row["subject_id"], row["study_id"])]]
        got = [labels.targets[i, taxonomy.index(c)] for c in lab.columns]
        assert got == expected and labels.mask[i, : len(taxonomy.chexpert_labels)].all()
        assert assignment[i] == {"validate": "val"}.get(split[row["dicom_id"]], split[row["dicom_id"]])
        s, t = str(row["subject_id"]), str(row["study_id"])
        assert labels.paths[i] == f"files/p{s[:2]}/p{s}/s{t}/{row['dicom_id']}.jpg"
    owners = {}
    for patient, part in zip(labels.metadata["Patient ID"], assignment, strict=True):
        assert owners.setdefault(patient, part) == part  # the official split is by patient
    assert set(assignment) == {"train", "val", "test"}
    # The files are the real JPEGs, served through the dataset at the input size.
    ds = XrayDataset(labels, root, 64, progress=False)
    source = {p.name: p for p in kermany}
    for i in (0, len(ds) - 1):
        linked = root / labels.paths[i]
        twin = next(p for p in source.values() if p.stat().st_ino == linked.stat().st_ino)
        np.testing.assert_array_equal(ds[i][0][0].numpy(), load_resized(twin, 64))


def test_mimic_all_views_gz_tables_and_hash_split(mimic_tree, tmp_path):
    root = mimic_tree.parent
    every = split_table(_config(mimic_tree, root, views="all").data)[0]
    assert {"LATERAL", "LL"} <= set(every.metadata["ViewPosition"].dropna()) and every.metadata[
        "ViewPosition"].isna().any()
    # PhysioNet ships .csv.gz: the same tables compressed read the same (data.csv may keep the .csv name).
    for name in (mimic.LABELS_FILE, mimic.METADATA_FILE, mimic.SPLIT_FILE):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write((root / name).read_bytes())
    gz, gz_split = split_table(_config(tmp_path / mimic.LABELS_FILE, root).data)
    plain, plain_split = split_table(_config(mimic_tree, root).data)
    assert gz.paths == plain.paths and (gz.targets == plain.targets).all() and (gz_split == plain_split).all()
    # Without the official split, patients are hashed into three splits and the split file is not needed.
    (tmp_path / f"{mimic.SPLIT_FILE}.gz").unlink()
    hashed = load_splits(_config(tmp_path / mimic.LABELS_FILE, root, official_split=False))
    patients = [set(ls.metadata["Patient ID"]) for ls in hashed.values()]
    assert sum(len(p) for p in patients) == len(set.union(*patients))


def test_mimic_missing_files_columns_and_rows_are_named(mimic_tree, tmp_path):
    root = mimic_tree.parent
    for name in (mimic.LABELS_FILE, mimic.METADATA_FILE, mimic.SPLIT_FILE):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    csv = tmp_path / mimic.LABELS_FILE

    def error(**data) -> str:
        with pytest.raises(LabelError) as info:
            split_table(_config(csv, root, format="mimic", **data).data)
        return str(info.value)

    meta = pd.read_csv(tmp_path / mimic.METADATA_FILE, dtype={"dicom_id": str})
    split = pd.read_csv(tmp_path / mimic.SPLIT_FILE, dtype={"dicom_id": str})
    meta.drop(columns=["ViewPosition"]).to_csv(tmp_path / mimic.METADATA_FILE, index=False)
    assert "'ViewPosition'" in error() and mimic.METADATA_FILE in error()
    (tmp_path / mimic.METADATA_FILE).unlink()
    assert f"{tmp_path / mimic.METADATA_FILE}: MIMIC-CXR-JPG metadata file not found" in error()
    meta.to_csv(tmp_path / mimic.METADATA_FILE, index=False)
    frontal = meta[meta["ViewPosition"].isin(["PA", "AP"])]
    split[split["dicom_id"] != frontal["dicom_id"].iloc[0]].to_csv(tmp_path / mimic.SPLIT_FILE, index=False)
    assert mimic.SPLIT_FILE in error() and frontal["dicom_id"].iloc[0] in error()
    split.assign(split="holdout").to_csv(tmp_path / mimic.SPLIT_FILE, index=False)
    assert "'split'" in error() and "holdout" in error()
    (tmp_path / mimic.SPLIT_FILE).unlink()
    assert mimic.SPLIT_FILE in error() and "not found" in error()
    assert len(split_table(_config(csv, root, official_split=False).data)[0]) > 0
    split.to_csv(tmp_path / mimic.SPLIT_FILE, index=False)
    studies = pd.read_csv(csv)
    studies.drop(columns=["Edema"]).to_csv(csv, index=False)
    assert f"{csv}: missing column(s) 'Edema'" in error()
    studies.drop(columns=["study_id"]).to_csv(csv, index=False)
    assert "'study_id'" in error()
    pd.concat([studies, studies.head(1)]).to_csv(csv, index=False)
    assert "listed twice" in error()


def test_mimic_join_matches_a_naive_lookup_on_a_large_table(tmp_path, taxonomy):
    """Vectorised joins on 6,000 images checked row by row against plain dictionaries."""
    tables = mimic_tables(6000, seed=5)
    csv = write_mimic_tables(tmp_path, tables)
    table = mimic.read_mimic(csv, taxonomy, views="all", policy="U-Zeros", blank="unknown")
    by_study = {(r.subject_id, r.study_id): r for r in tables.chexpert.itertuples(index=False)}
    split_of = dict(zip(tables.split["dicom_id"], tables.split["split"], strict=True))
    kept = [r for r in tables.metadata.itertuples(index=False) if (r.subject_id, r.study_id) in by_study]
    assert len(table.labels) == len(kept) < len(tables.metadata)
    cols = list(tables.chexpert.columns[2:])
    for i in range(0, len(kept), 7):
        row = kept[i]
        assert table.labels.metadata.loc[i, "dicom_id"] == row.dicom_id
        values = np.array(by_study[(row.subject_id, row.study_id)][2:], dtype=float)
        j = [taxonomy.index(c) for c in cols]
        # U-Zeros: -1 -> known 0; blank "unknown": masked.
        np.testing.assert_array_equal(table.labels.mask[i, j], ~np.isnan(values))
        np.testing.assert_array_equal(table.labels.targets[i, j], np.where(values == 1, 1.0, 0.0))
        assert table.assignment[i] == {"validate": "val"}.get(split_of[row.dicom_id], split_of[row.dicom_id])


# -------------------------------------------------------------------------------------------------- NIH


@pytest.fixture(scope="module")
def nih_rows(shared_data) -> pd.DataFrame:
    """Real rows of the shared NIH table: train, val and test patients (val/test at full resolution)."""
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    parts = [df[df.split == "train"].head(150), df[df.split == "val"].head(30), df[df.split == "test"].head(40)]
    return pd.concat(parts)


@pytest.mark.parametrize("archives", [False, True])
def test_nih_official_lists_give_the_test_split_and_a_patient_disjoint_val(nih_rows, shared_data, tmp_path,
                                                                           archives, taxonomy):
    csv = write_nih_tree(tmp_path, nih_rows, shared_data / "nih" / "images", archives=archives)
    images = tmp_path if archives else tmp_path / "images"
    cfg = _config(csv, images)
    splits = load_splits(cfg)
    names = {k: set(v.metadata["Image Index"]) for k, v in splits.items()}
    listed_test = set((tmp_path / nih.TEST_LIST).read_text().split())
    assert names["test"] == listed_test
    assert names["train"] | names["val"] == set((tmp_path / nih.TRAIN_VAL_LIST).read_text().split())
    patients = {k: set(v.metadata["Patient ID"]) for k, v in splits.items()}
    assert not patients["train"] & patients["val"] and not (patients["train"] | patients["val"]) & patients["test"]
    share = len(patients["val"]) / len(patients["train"] | patients["val"])
    assert 0.03 < share < 0.25  # one ninth of the train/val patients, give or take the hash
    # Labels are NIH's mapping, unchanged by the layout.
    reference = read_label_csv(shared_data / "nih" / "labels.csv", taxonomy=taxonomy)
    row_of = {p: i for i, p in enumerate(reference.paths)}
    test = splits["test"]
    for i, name in enumerate(test.metadata["Image Index"]):
        np.testing.assert_array_equal(test.targets[i], reference.targets[row_of[name]])
        np.testing.assert_array_equal(test.mask[i], reference.mask[row_of[name]])
    assert all(p.startswith("images_0") for p in test.paths) == archives
    ds = XrayDataset(test, images, 64, progress=False)  # every file found in either layout
    assert len(ds) == len(listed_test)
    again = load_splits(cfg)
    assert all(again[k].paths == splits[k].paths for k in splits)


def test_nih_official_list_problems_are_named(nih_rows, shared_data, tmp_path):
    csv = write_nih_tree(tmp_path, nih_rows.head(20), shared_data / "nih" / "images")
    first = nih_rows["Image Index"].iloc[0]
    test_list = tmp_path / nih.TEST_LIST
    test_list.write_text(test_list.read_text() + first + "\n")
    with pytest.raises(LabelError, match=f"test_list.txt.*also in train_val_list.txt.*{first}"):
        read_table(_config(csv, tmp_path).data)
    test_list.unlink()
    with pytest.raises(LabelError, match=f"{tmp_path / nih.TEST_LIST}: NIH official test list not found"):
        read_table(_config(csv, tmp_path).data)
    # Without the lists, a Data_Entry table without a split column is split by patient hash as before.
    (tmp_path / nih.TRAIN_VAL_LIST).unlink()
    assert read_table(_config(csv, tmp_path).data).assignment is None


# --------------------------------------------------------------------------------------------- CheXpert


def test_chexpert_valid_csv_is_the_validation_split(kermany, tmp_path):
    csv = write_chexpert_tree(tmp_path, kermany[:60], valid_images=10, seed=2)
    valid = pd.read_csv(csv.parent / "valid.csv")
    cfg = _config(csv, tmp_path)
    splits = load_splits(cfg)
    assert splits["val"].paths == valid["Path"].tolist()
    train_paths = set(pd.read_csv(csv)["Path"])
    assert set(splits["train"].paths) | set(splits["test"].paths) == train_paths
    patients = {k: set(v.metadata["Patient ID"]) for k, v in splits.items()}
    assert not patients["train"] & patients["test"] and not patients["val"] & (patients["train"] | patients["test"])
    assert len(splits["test"]) > 0
    # Switched off, or without valid.csv: the hash split of train.csv, as before.
    hashed = load_splits(_config(csv, tmp_path, official_split=False))
    assert set(hashed["val"].paths) <= train_paths and len(hashed["val"]) > 0
    (csv.parent / "valid.csv").rename(tmp_path / "elsewhere.csv")
    assert load_splits(cfg)["val"].paths == hashed["val"].paths
    # views: frontal keeps the Frontal/Lateral == Frontal films.
    frontal = load_splits(_config(csv, tmp_path, views="frontal"))
    assert all("frontal" in p for s in frontal.values() for p in s.paths)
    assert sum(map(len, frontal.values())) < sum(map(len, hashed.values()))


def test_frontal_views_need_a_view_column(nih_rows, shared_data, tmp_path):
    nih_rows.drop(columns=["View Position"]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(LabelError, match=r"labels\.csv: data.views is 'frontal'.*'View Position'"):
        read_table(_config(tmp_path / "labels.csv", shared_data / "nih" / "images", views="frontal").data)


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", ["mimic_bce", "mimic_hbce_soft", "nih_official_bce", "nih_official_hbce_soft",
                                  "chexpert_hbce_soft"])
def test_shipped_dataset_configs(name):
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    data = cfg.data
    assert cfg.model.input_size == 320 and data.num_workers >= 2 and data.official_split
    if name.startswith("mimic"):
        assert data.format == "mimic" and data.views == "frontal" and data.jpeg_draft
        assert Path(data.csv).name == mimic.LABELS_FILE and "MIMIC" in data.attribution
    if name.startswith("nih_official"):
        assert data.format == "nih" and Path(data.csv).name == nih.TABLE_FILE
    family = name.split("_hbce")[0].removesuffix("_bce")
    base = load_config(REPO_ROOT / "configs" / f"{family}_bce.yaml").to_dict()
    mine = cfg.to_dict()
    assert {k for k in mine if mine[k] != base[k]} <= {"name", "loss"}


def test_new_data_options_are_validated():
    with pytest.raises(ConfigError, match="data.views.*auto, frontal, all"):
        config_from_dict({"data": {"csv": "x.csv", "views": "lateral"}})
    with pytest.raises(ConfigError, match="data.cache_budget_mb"):
        config_from_dict({"data": {"csv": "x.csv", "cache_budget_mb": -1}})
    with pytest.raises(ConfigError, match="data.format.*mimic"):
        config_from_dict({"data": {"csv": "x.csv", "format": "padchest"}})


# ---------------------------------------------------------------------------------------- cross-validation


@pytest.mark.parametrize("fmt", ["mimic", "nih", "chexpert"])
def test_cross_validation_and_fit_on_work_on_every_official_split(fmt, kermany, nih_rows, shared_data, tmp_path):
    if fmt == "mimic":
        csv = write_mimic_tree(tmp_path, kermany[:80], seed=7, split_p=(0.6, 0.2, 0.2))
        images = tmp_path
    elif fmt == "nih":
        csv, images = write_nih_tree(tmp_path, nih_rows, shared_data / "nih" / "images"), tmp_path / "images"
    else:
        csv, images = write_chexpert_tree(tmp_path, kermany[:80], valid_images=10), tmp_path
    plain = load_splits(_config(csv, images))
    pool = set(plain["train"].paths) | set(plain["val"].paths)
    held_out: list[str] = []
    for fold in range(3):
        splits = load_splits(_config(csv, images, cv_folds=3, cv_fold=fold))
        assert splits["test"].paths == plain["test"].paths  # the test split is never touched
        assert set(splits["train"].paths) | set(splits["val"].paths) == pool
        assert not set(splits["train"].metadata["Patient ID"]) & set(splits["val"].metadata["Patient ID"])
        held_out += splits["val"].paths
    assert sorted(held_out) == sorted(pool)  # every train/val image is held out exactly once
    fit = load_splits(_config(csv, images, fit_on="train+val"))
    assert set(fit["train"].paths) == pool and fit["val"].paths == plain["val"].paths
