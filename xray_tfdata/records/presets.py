"""The public chest X-ray collections as data: one declarative spec each (`--layout=NAME`).

Each spec says, from the collection's own documentation, where its label files are (found by
name anywhere under --data_dir: file_index.py), which columns hold the image, findings, patient,
view and split, how findings are encoded, and how they map onto class names. One engine
(preset_reader.py) reads every spec; adding a collection is a table entry plus a test.

Findings are mapped to class NAMES; the build's class list decides which of them exist (a mapping
to a class the build does not have is dropped, and a class the preset cannot provide is reported
in the manifest, not an error). Column names and value encodings below are the collections' real
ones (as torchxrayvision's datasets.py and the collections' documentation read them); the
comments name the columns each spec relies on.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

# Views: the value read from a spec's view columns, upper-cased. "frontal" keeps a spec's
# `frontal` set; lateral and other projections are skipped and counted by value.
VIEW_MODES: tuple[str, ...] = ("frontal", "all")
UNCERTAIN_MODES: tuple[str, ...] = ("skip", "positive", "negative")
# How the rows of one image combine: "one" (a repeated row is a duplicate-row reject, the first
# is used), "same" (repeats are expected and must agree: RSNA's one row per box), "majority"
# (one row per reader: a finding is positive when more than half the readers mark it: VinDr).
ROW_RULES: tuple[str, ...] = ("one", "same", "majority")


@dataclasses.dataclass(frozen=True)
class Table:
    """One label file, found by base name (`pattern`, fnmatch; a `.gz` copy is read too).

    An image table (no `join_on`) lists images; its rows are read in file order. A join table
    adds its columns to each image row with equal `join_on` values (a study's labels, an
    image's split); existing columns win. `columns` names the columns of a file without a
    header (whitespace-separated text); `spaced` is the one column that may itself hold spaces
    (COVIDx file names). `split` and `folder` are given to every row of the file (as `_split`
    and `_folder`). A row without a join match is skipped as "unlabelled" (`keep_unmatched`
    keeps it: NIH's split lists do not list every image).
    """

    pattern: str
    join_on: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    spaced: str = ""
    split: str = ""
    folder: str = ""
    required: bool = True
    keep_unmatched: bool = False


@dataclasses.dataclass(frozen=True)
class ListFindings:
    """One column holds the findings: split on `sep` ("" = one finding), or a Python list
    literal such as PadChest's `['pneumonia', 'infiltrates']` (`python_list`)."""

    column: str
    sep: str = ""
    python_list: bool = False


@dataclasses.dataclass(frozen=True)
class ColumnFindings:
    """One column per finding (the mapping's keys): 1 positive, 0 or blank negative, -1
    uncertain (CheXpert's and MIMIC's labeler: `1.0` / `0.0` / `-1.0` / ``)."""


@dataclasses.dataclass(frozen=True)
class FolderFindings:
    """The class is the name of a folder on the image's path (any depth); files under a folder
    named in `skip_folders` (segmentation masks) are never read."""

    skip_folders: tuple[str, ...] = ("masks",)


Findings = ListFindings | ColumnFindings | FolderFindings


@dataclasses.dataclass(frozen=True)
class Preset:
    """One collection as downloaded. `image` is the listed path, a format string over the row
    (`{_folder}` is the table's folder); `patient` a column, or `patient_pattern` a regex whose
    first group is taken from the listed path; `view_columns` the first non-empty of them is
    the view; `split_column` / `split_values` map the collection's split names (else the
    tables' own `split`); `metadata` columns are kept in each record (never ids or dates)."""

    name: str
    downloaded: str  # the collection as downloaded (README, --help)
    findings: Findings
    mapping: Mapping[str, str]  # finding (case-insensitive) -> class name
    tables: tuple[Table, ...] = ()
    image: str = ""
    rows_per_image: str = "one"
    patient: str = ""
    patient_pattern: str = ""
    view_columns: tuple[str, ...] = ()
    frontal: tuple[str, ...] = ()
    split_column: str = ""
    split_values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metadata: tuple[str, ...] = ()


_COVIDX_COLUMNS = ("patient id", "filename", "class", "data source")
_CHEXPERT_MAPPING = {"No Finding": "NORMAL", "Pneumonia": "PNEUMONIA"}
# MIMIC-CXR-JPG 2.0.0: mimic-cxr-2.0.0-metadata.csv.gz (dicom_id, subject_id, study_id,
# ViewPosition), -split.csv.gz (dicom_id, split: train / validate / test), and the study labels
# -chexpert.csv.gz or -negbio.csv.gz (subject_id, study_id, `No Finding`, `Pneumonia`, ...).
_MIMIC_IMAGES = Table("mimic-cxr-2.0.0-metadata.csv")
_MIMIC_SPLIT = Table("mimic-cxr-2.0.0-split.csv", join_on=("dicom_id",))


def _mimic(name: str, labeler: str) -> Preset:
    return Preset(
        name=name,
        downloaded=("files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg, mimic-cxr-2.0.0-{metadata,split,"
                    f"{labeler}}}.csv.gz"),
        tables=(_MIMIC_IMAGES, _MIMIC_SPLIT,
                Table(f"mimic-cxr-2.0.0-{labeler}.csv", join_on=("subject_id", "study_id"))),
        # dicom_id is unique: the pXX/pSUBJECT/sSTUDY folders need not be rebuilt.
        image="{dicom_id}.jpg",
        findings=ColumnFindings(), mapping=_CHEXPERT_MAPPING, patient="subject_id",
        view_columns=("ViewPosition",), frontal=("PA", "AP"),
        split_column="split", split_values={"train": "train", "validate": "val", "test": "test"},
        metadata=("ViewPosition", "PerformedProcedureStepDescription"))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # NIH ChestX-ray14: Data_Entry_2017.csv (or _v2020): `Image Index`, `Finding Labels`
    # ("No Finding", "Pneumonia|Effusion", ...), `Patient ID`, `View Position` (PA / AP);
    # images in images_001/images/ .. images_012/images/; the official patient-wise split as
    # two header-less name lists.
    Preset(
        name="chestxray14",
        downloaded="images_*/images/*.png, Data_Entry_2017*.csv, train_val_list.txt, test_list.txt",
        tables=(Table("Data_Entry_2017*.csv"),
                Table("test_list.txt", join_on=("Image Index",), columns=("Image Index",),
                      split="test", required=False, keep_unmatched=True),
                Table("train_val_list.txt", join_on=("Image Index",), columns=("Image Index",),
                      split="train", required=False, keep_unmatched=True)),
        image="{Image Index}", findings=ListFindings("Finding Labels", sep="|"),
        mapping={"No Finding": "NORMAL", "Pneumonia": "PNEUMONIA"}, patient="Patient ID",
        view_columns=("View Position",), frontal=("PA", "AP"),
        metadata=("Patient Age", "Patient Gender", "View Position")),
    # CheXpert v1.0 (and -small): train.csv / valid.csv with `Path`
    # (CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg), `Frontal/Lateral`,
    # `AP/PA` (blank for laterals), one column per finding: 1.0 / 0.0 / -1.0 (uncertain) / blank.
    # The labelled valid set (200 studies) is the test split.
    Preset(
        name="chexpert",
        downloaded="CheXpert-v1.0[-small]/{train,valid}.csv, {train,valid}/patientN/studyN/*.jpg",
        tables=(Table("train.csv", split="train"), Table("valid.csv", split="test")),
        image="{Path}", findings=ColumnFindings(), mapping=_CHEXPERT_MAPPING,
        patient_pattern=r"(patient\d+)", view_columns=("AP/PA", "Frontal/Lateral"),
        frontal=("PA", "AP", "FRONTAL"), metadata=("Sex", "Age", "Frontal/Lateral", "AP/PA")),
    _mimic("mimic_cxr_jpg", "chexpert"),
    _mimic("mimic_cxr_jpg_negbio", "negbio"),
    # RSNA Pneumonia Detection Challenge: stage_2_detailed_class_info.csv (`patientId`, `class`:
    # "Normal", "Lung Opacity", "No Lung Opacity / Not Normal"), one row per box, so a patient
    # with two boxes has two equal rows; images stage_2_train_images/<patientId>.dcm (one per
    # patient). stage_2_train_labels.csv repeats the boxes (`Target` = 1 iff Lung Opacity) and
    # is not needed for the class. The view is in the DICOM header (recorded per image).
    Preset(
        name="rsna_pneumonia",
        downloaded="stage_2_train_images/*.dcm, stage_2_detailed_class_info.csv",
        tables=(Table("stage_2_detailed_class_info.csv"),), image="{patientId}.dcm",
        rows_per_image="same", findings=ListFindings("class"),
        mapping={"Normal": "NORMAL", "Lung Opacity": "PNEUMONIA"}, patient="patientId"),
    # PadChest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz): `ImageID`, `ImageDir`
    # (the numbered folder), `PatientID`, `Projection` (PA, L, AP, AP_horizontal, COSTAL, ...),
    # `Labels` as a Python list literal ("['normal']", "['pneumonia', 'infiltrates']").
    # Images are 16-bit PNGs.
    Preset(
        name="padchest",
        downloaded="<ImageDir>/*.png (16-bit), PADCHEST_chest_x_ray_images_labels_*.csv[.gz]",
        tables=(Table("PADCHEST_chest_x_ray_images_labels*.csv"),),
        image="{ImageDir}/{ImageID}", findings=ListFindings("Labels", python_list=True),
        mapping={"normal": "NORMAL", "pneumonia": "PNEUMONIA"}, patient="PatientID",
        view_columns=("Projection",), frontal=("PA", "AP", "AP_HORIZONTAL"),
        metadata=("PatientSex_DICOM", "PatientBirth", "Projection", "Manufacturer_DICOM")),
    # VinDr-CXR 1.0.0: annotations/image_labels_train.csv (`image_id`, `rad_id`, one 0/1 column
    # per finding incl. `No finding`, `Pneumonia`; three radiologists, so three rows per
    # image), image_labels_test.csv (one consensus row per image); train/ and test/<image_id>.dicom.
    Preset(
        name="vindr_cxr",
        downloaded="train/*.dicom, annotations/image_labels_{train,test}.csv (3 readers per image)",
        tables=(Table("image_labels_train.csv", split="train", folder="train/"),
                Table("image_labels_test.csv", split="test", folder="test/", required=False)),
        image="{_folder}{image_id}.dicom", rows_per_image="majority", findings=ColumnFindings(),
        mapping={"No finding": "NORMAL", "Pneumonia": "PNEUMONIA"}),
    # COVIDx CXR (COVID-Net): train.txt / val.txt / test.txt, space-separated, no header:
    # `patient id` `filename` `class` `data source`; class normal / pneumonia / COVID-19 (the
    # 3-class versions) or positive / negative (the binary ones: negative is not a class here).
    Preset(
        name="covidx",
        downloaded="{train,val,test}/*, {train,val,test}.txt (space-separated, no header)",
        tables=tuple(Table(f"{split}*.txt", columns=_COVIDX_COLUMNS, spaced="filename",
                           split=split, folder=f"{split}/", required=split != "val")
                     for split in ("train", "val", "test")),
        image="{_folder}{filename}", findings=ListFindings("class"),
        mapping={"normal": "NORMAL", "pneumonia": "PNEUMONIA", "COVID-19": "COVID19",
                 "positive": "COVID19"},
        patient="patient id", metadata=("data source",)),
    # COVID-19 Radiography Database (Kaggle, tawsifurrahman): COVID/, Normal/, Viral Pneumonia/,
    # Lung_Opacity/ (non-COVID lung infection: a class only when --classes names LUNG_OPACITY),
    # each with images/ and masks/.
    Preset(
        name="covid_radiography",
        downloaded="COVID/, Normal/, Viral Pneumonia/, Lung_Opacity/ with images/ and masks/",
        findings=FolderFindings(),
        mapping={"COVID": "COVID19", "COVID-19": "COVID19", "Normal": "NORMAL",
                 "Viral Pneumonia": "PNEUMONIA", "Lung_Opacity": "LUNG_OPACITY"}),
)}

BUILTIN_LAYOUTS: tuple[str, ...] = ("folders", "csv")
LAYOUTS: tuple[str, ...] = BUILTIN_LAYOUTS + tuple(PRESETS)
