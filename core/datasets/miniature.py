"""Faithful miniatures of the released layouts, built from real image files (tests, benchmarks, config dry runs).

Each builder lays real radiographs out exactly as the dataset ships them (file names, folders, CSV columns in the
release's order and spelling, value conventions) and hard-links them where it can (a copy otherwise), so a tree of
thousands of files costs no image data. The labels are random draws in the release's value set -- the images
are real, the findings are not -- seeded, so a tree is the same on every machine.

* :func:`write_mimic_tree`: ``mimic-cxr-2.0.0-{chexpert,metadata,split}.csv`` and
  ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``; :func:`mimic_tables` alone gives the three tables at any size
  (a 400k-image table needs no files to time its indexing).
* :func:`write_chexpert_tree`: ``CheXpert-v1.0-small/{train,valid}.csv`` and
  ``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg``.
* :func:`write_nih_tree`: ``Data_Entry_2017_v2020.csv``, ``train_val_list.txt``, ``test_list.txt`` and
  ``images/NAME.png`` (or the per-archive ``images_NNN/images/NAME.png``) from real NIH rows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.datasets import mimic, nih

#: The 14 observations as MIMIC-CXR-JPG orders them (alphabetical).
MIMIC_LABEL_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                       "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                       "Pneumonia", "Pneumothorax", "Support Devices")
#: CheXpert's train.csv / valid.csv column order.
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
#: Data_Entry_2017_v2020.csv's header, split by pandas at every comma (the brackets hold commas).
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]")


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (creating folders), or copy it where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _label_values(rng: np.random.Generator, n: int, choices: Sequence[float], p: Sequence[float]) -> np.ndarray:
    return rng.choice(np.asarray(choices, dtype=float), size=(n, 14), p=np.asarray(p, dtype=float))


@dataclass
class MimicTables:
    """The three MIMIC-CXR-JPG tables (one row per study, per image, per image)."""

    chexpert: pd.DataFrame
    metadata: pd.DataFrame
    split: pd.DataFrame


def mimic_tables(n_images: int, seed: int = 0, sizes: Sequence[tuple[int, int]] | None = None,
                 split_p: Sequence[float] = (0.98, 0.01, 0.01)) -> MimicTables:
    """Tables of ``n_images`` images laid out like MIMIC-CXR-JPG 2.0.0 (ids, views, splits and label values).

    About 1.65 images per study and 3.5 studies per subject (the release: 377,110 / 227,827 / 65,379). Every
    study starts with a PA or AP film; the others are mostly LATERAL, some LL or blank. Split by subject with
    probabilities ``split_p`` for train, validate and test (the release: about 98 / 1 / 1 %; at least one
    subject in each when there are three or more). Labels are 1.0, 0.0, -1.0 or blank. A few studies have images
    but no label row, as in the release. ``sizes`` gives each image's (Rows, Columns).
    """
    rng = np.random.default_rng(seed)
    per_study = rng.choice([1, 2, 3], size=n_images, p=[0.5, 0.35, 0.15])
    study_of = np.repeat(np.arange(n_images), per_study)[:n_images]
    n_studies = int(study_of[-1]) + 1 if n_images else 0
    subject_of_study = np.sort(rng.integers(0, max(1, n_studies * 2 // 7), size=n_studies))
    subject_ids = 10_000_000 + np.unique(rng.choice(9_000_000, size=n_studies * 2, replace=False))[:n_studies]
    subject_ids = subject_ids[subject_of_study]
    study_ids = 50_000_000 + rng.choice(9_999_999, size=n_studies, replace=False)
    hexes = rng.integers(0, 2**32, size=(n_images, 5), dtype=np.uint64)
    dicom = ["-".join(f"{int(v):08x}" for v in row) for row in hexes]
    # A study's first film is frontal (as in the release, where nearly every study has one); the others are
    # mostly laterals, so that overall about 30 % PA, 37 % AP, 25 % LATERAL, 5 % LL and 3 % blank.
    first = np.r_[True, study_of[1:] != study_of[:-1]] if n_images else np.zeros(0, dtype=bool)
    views = np.where(first, rng.choice(np.array(["PA", "AP"], dtype=object), size=n_images, p=[0.45, 0.55]),
                     rng.choice(np.array(["PA", "AP", "LATERAL", "LL", ""], dtype=object), size=n_images,
                                p=[0.06, 0.06, 0.70, 0.12, 0.06]))
    rows_cols = np.asarray(sizes if sizes is not None else [(3056, 2544)] * n_images, dtype=np.int64)
    metadata = pd.DataFrame({
        "dicom_id": dicom,
        "subject_id": subject_ids[study_of],
        "study_id": study_ids[study_of],
        "PerformedProcedureStepDescription": np.where(views == "LATERAL", "CHEST (PA AND LAT)", "CHEST (PORTABLE AP)"),
        "ViewPosition": pd.Series(views).replace("", np.nan),
        "Rows": rows_cols[:, 0],
        "Columns": rows_cols[:, 1],
        "StudyDate": 21800506 + study_of % 400,
        "StudyTime": 213014.531,
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PORTABLE AP)",
        "ViewCodeSequence_CodeMeaning": np.where(views == "LATERAL", "lateral", "antero-posterior"),
        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    })
    unique_subjects = np.unique(subject_ids)
    split_of = rng.choice(np.array(["train", "validate", "test"], dtype=object), size=len(unique_subjects),
                          p=list(split_p))
    if len(unique_subjects) >= 3:  # a miniature still needs every split
        split_of[:3] = ["validate", "test", "train"]
    subject_split = dict(zip(unique_subjects.tolist(), split_of, strict=True))
    split = pd.DataFrame({"dicom_id": dicom, "study_id": metadata["study_id"], "subject_id": metadata["subject_id"],
                          "split": [subject_split[s] for s in metadata["subject_id"].tolist()]})
    values = _label_values(rng, n_studies, [1.0, 0.0, -1.0, np.nan], [0.15, 0.15, 0.05, 0.65])
    chexpert = pd.DataFrame(values, columns=list(MIMIC_LABEL_COLUMNS))
    chexpert.insert(0, "study_id", study_ids)
    chexpert.insert(0, "subject_id", subject_ids)
    if n_studies > 10:  # the release has a few studies without labels (never those of the forced subjects)
        free = np.flatnonzero(~np.isin(subject_ids, unique_subjects[:3]))
        drop = rng.choice(free, size=min(len(free), max(1, n_studies // 500)), replace=False)
        chexpert = chexpert.drop(index=drop)
    # The release sorts its tables by subject, then study (metadata: then dicom_id); our study ids are random.
    chexpert = chexpert.sort_values(["subject_id", "study_id"], kind="stable").reset_index(drop=True)
    order = metadata.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable").index
    metadata, split = metadata.loc[order].reset_index(drop=True), split.loc[order].reset_index(drop=True)
    return MimicTables(chexpert, metadata, split)


def write_mimic_tables(folder: Path, tables: MimicTables, gzip: bool = False) -> Path:
    """Write the three tables under their official names (``.csv.gz`` with ``gzip``); returns the chexpert CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    tables.chexpert.to_csv(folder / f"{mimic.LABELS_FILE}{suffix}", index=False)
    tables.metadata.to_csv(folder / f"{mimic.METADATA_FILE}{suffix}", index=False)
    tables.split.to_csv(folder / f"{mimic.SPLIT_FILE}{suffix}", index=False)
    return folder / f"{mimic.LABELS_FILE}{suffix}"


def write_mimic_tree(root: Path, images: Sequence[Path], seed: int = 0, gzip: bool = False,
                     split_p: Sequence[float] = (0.98, 0.01, 0.01)) -> Path:
    """A MIMIC-CXR-JPG tree under ``root`` with one real JPEG per image row; returns the chexpert CSV.

    ``root`` plays the release folder (``physionet.org/files/mimic-cxr-jpg/2.0.0``): ``data.images`` is ``root``.
    """
    sizes = [Image.open(p).size[::-1] for p in images]
    tables = mimic_tables(len(images), seed, sizes, split_p)
    paths = mimic.image_paths(tables.metadata["subject_id"], tables.metadata["study_id"],
                              tables.metadata["dicom_id"])
    for source, rel in zip(images, paths, strict=True):
        link_or_copy(Path(source), root / rel)
    return write_mimic_tables(root, tables, gzip)


def write_chexpert_tree(root: Path, images: Sequence[Path], valid_images: int = 0, seed: int = 0) -> Path:
    """``root/CheXpert-v1.0-small/train.csv`` (and ``valid.csv`` with ``valid_images`` > 0) over real JPEGs.

    Training patients get one or two studies of a frontal view and sometimes a lateral one; the last
    ``valid_images`` files become ``valid/`` (patients 64541 onwards, labels 0/1 only, as the radiologists').
    ``data.images`` is ``root``. Returns the train CSV.
    """
    rng = np.random.default_rng(seed)
    base = root / "CheXpert-v1.0-small"
    n_train = len(images) - valid_images
    rows = {"train": [], "valid": []}
    patient, study, view = 1, 1, 1
    for i, source in enumerate(images):
        part = "train" if i < n_train else "valid"
        if i == n_train:
            patient, study, view = 64541, 1, 1
        lateral = view > 1 and part == "train"
        kind = "lateral" if lateral else "frontal"
        rel = f"CheXpert-v1.0-small/{part}/patient{patient:05d}/study{study}/view{view}_{kind}.jpg"
        link_or_copy(Path(source), root / rel)
        rows[part].append({"Path": rel, "Sex": rng.choice(["Female", "Male"]), "Age": int(rng.integers(18, 90)),
                           "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                           "AP/PA": "" if lateral else rng.choice(["AP", "PA"])})
        roll = rng.random()
        if part == "valid" or roll < 0.4:  # next patient
            patient, study, view = patient + 1, 1, 1
        elif roll < 0.7:  # same patient, next study
            study, view = study + 1, 1
        else:  # same study, another view
            view += 1
    for part, choices, p in (("train", [1.0, 0.0, -1.0, np.nan], [0.15, 0.15, 0.05, 0.65]),
                             ("valid", [1.0, 0.0], [0.3, 0.7])):
        if not rows[part]:
            continue
        frame = pd.DataFrame(rows[part])
        values = pd.DataFrame(_label_values(rng, len(frame), choices, p), columns=list(CHEXPERT_COLUMNS[5:]))
        pd.concat([frame, values], axis=1)[list(CHEXPERT_COLUMNS)].to_csv(base / f"{part}.csv", index=False)
    return base / "train.csv"


def write_nih_tree(root: Path, rows: pd.DataFrame, image_folder: Path, archives: bool = False) -> Path:
    """``Data_Entry_2017_v2020.csv``, the two official lists and the images of real NIH ``rows``.

    ``rows`` are rows of the project's NIH ``labels.csv`` (with its ``split``): train and val rows go to
    ``train_val_list.txt``, test rows to ``test_list.txt``. Images are linked into ``root/images/`` or, with
    ``archives``, spread over ``root/images_001/images/``, ``images_002/images/``, ... as separate archives
    unpack. Returns the data entry CSV.
    """
    root.mkdir(parents=True, exist_ok=True)
    native = rows["native_size"].astype(str).str.split("x", expand=True).astype(int)
    entry = pd.DataFrame({
        "Image Index": rows["Image Index"].to_numpy(),
        "Finding Labels": rows["Finding Labels"].to_numpy(),
        "Follow-up #": rows["Image Index"].str.extract(r"_(\d+)\.", expand=False).astype(int).to_numpy(),
        "Patient ID": rows["Patient ID"].to_numpy(),
        "Patient Age": rows["Patient Age"].to_numpy(),
        "Patient Gender": rows["Patient Gender"].to_numpy(),
        "View Position": rows["View Position"].to_numpy(),
        "OriginalImage[Width": native[0].to_numpy(),
        "Height]": native[1].to_numpy(),
        "OriginalImagePixelSpacing[x": 0.143,
        "y]": 0.143,
    })
    entry.to_csv(root / nih.TABLE_FILE, index=False)
    split = rows["split"].to_numpy()
    names = rows["Image Index"].to_numpy()
    (root / nih.TRAIN_VAL_LIST).write_text("\n".join(names[split != "test"]) + "\n", encoding="utf-8")
    (root / nih.TEST_LIST).write_text("\n".join(names[split == "test"]) + "\n", encoding="utf-8")
    for i, name in enumerate(names):
        folder = root / (f"images_{i % 3 + 1:03d}/images" if archives else "images")
        link_or_copy(image_folder / name, folder / name)
    return root / nih.TABLE_FILE
