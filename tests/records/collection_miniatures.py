"""Faithful miniatures of the public chest X-ray collections as downloaded (for test_presets.py).

Each builder writes a few tiny images in the collection's real folder nesting, with its real label
files (column names, value encodings, gzip, header-less text, one row per box or per reader), and
returns what a correct conversion must give: `images` maps each image's path relative to the
collection's folder to (class, given split or "" for carved, raw patient id or ""), and `skipped`
/ `rejected` the counts the manifest must show. Images differ from each other (seeded renders, or
DICOM pixels offset per file) so no two are duplicates.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
from pathlib import Path

import cv2
import numpy as np

from tests.records import dicom_files
from xray_tfdata import labels
from xray_tfdata.records import synthetic

SIDE = (40, 36)


@dataclasses.dataclass
class Miniature:
    root: Path
    images: dict[str, tuple[str, str, str]]  # relpath -> (class, given split, raw patient id)
    skipped: dict[str, int]
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)


class _Images:
    """Writes distinct chest-X-ray-like images (one seeded generator per collection)."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root, self.rng, self.count = root, np.random.default_rng(seed), 0

    def gray(self, relpath: str, class_name: str = "NORMAL", bits: int = 8) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        image = synthetic.render_xray(labels.LABEL_MAP.get(class_name, 0), SIDE, self.rng)
        if bits == 16:  # PadChest: 16-bit gray PNGs
            image = image.astype(np.uint16) * 256 + self.rng.integers(0, 256, image.shape,
                                                                       dtype=np.uint16)
        assert cv2.imwrite(str(path), image)
        return path

    def dicom(self, relpath: str, view: str = "PA") -> Path:
        self.count += 1
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = (dicom_files.displayed(300 + 37 * self.count, 3000 + 11 * self.count)
                  + self.rng.integers(0, 600, (dicom_files.ROWS, dicom_files.COLS)))
        return dicom_files.write(path, dicom_files.dataset(stored, bits_stored=12,
                                                           ViewPosition=view))


def _write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
              "OriginalImagePixelSpacing[x", "y]", ""]  # the 2017 file ends each line with ","


def nih(root: Path) -> Miniature:
    """images_001/images/ and images_002/images/, Data_Entry_2017.csv, the two split lists."""
    images = _Images(root, 1)
    rows, expected, test_list, train_list = [], {}, [], []
    plan = [  # (name, folder, finding labels, patient, view, listed in)
        ("00000001_000.png", 1, "No Finding", 1, "PA", "test"),
        ("00000001_001.png", 1, "Pneumonia|Effusion", 1, "AP", "test"),
        ("00000002_000.png", 1, "Cardiomegaly", 2, "PA", "train"),
        ("00000002_001.png", 1, "Pneumonia", 2, "PA", "train"),
        ("00000003_000.png", 2, "No Finding", 3, "PA", "train"),
        ("00000003_001.png", 2, "No Finding", 3, "AP", "train"),
        ("00000004_000.png", 2, "Pneumonia|Infiltration", 4, "PA", "train"),
        ("00000006_000.png", 2, "No Finding", 6, "PA", "train"),
        ("00000007_000.png", 2, "Pneumonia", 7, "PA", "train"),
        ("00000008_000.png", 2, "No Finding", 8, "AP", "train"),
    ]
    for name, folder, finding, patient, view, listed in plan:
        relpath = f"images_{folder:03d}/images/{name}"
        class_name = {"No Finding": "NORMAL"}.get(finding, "PNEUMONIA")
        if finding != "Cardiomegaly":
            images.gray(relpath, class_name)
            expected[relpath] = (class_name, "test" if listed == "test" else "train",
                                 str(patient))
        else:
            images.gray(relpath)
        rows.append([name, finding, 0, patient, 58, "M", view, 2682, 2749, 0.143,
                     0.143, ""])
        (test_list if listed == "test" else train_list).append(name)
    # The same file name in two image folders (a re-extracted archive): a reject naming both.
    images.gray("images_001/images/00000005_000.png")
    images.gray("images_002/images/00000005_000.png")
    rows.append(["00000005_000.png", "No Finding", 0, 5, 40, "F", "PA", 2500, 2048, 0.168,
                 0.168, ""])
    rows.append(["00000009_000.png", "No Finding", 0, 9, 33, "F", "PA", 2500, 2048, 0.168,
                 0.168, ""])  # not downloaded: missing
    train_list += ["00000005_000.png", "00000009_000.png"]
    _write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)
    (root / "test_list.txt").write_text("\n".join(test_list) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_list) + "\n")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    return Miniature(root, expected, {"unlabelled": 0, "view": 0, "uncertain": 0,
                                      "unmapped_finding": 1, "ambiguous": 0},
                     {"found_twice": 1, "missing_file": 1})


# ---------------------------------------------------------------------------------------------
# CheXpert


CHEXPERT_FINDINGS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                     "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                     "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                     "Support Devices"]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_FINDINGS


def _chexpert_row(path: str, view: str, **findings: str) -> list[str]:
    frontal = "Lateral" if view == "" else "Frontal"
    cells = {name: "" for name in CHEXPERT_FINDINGS}
    cells.update({k.replace("_", " "): v for k, v in findings.items()})
    return [path, "Female", "68", frontal, view] + [cells[n] for n in CHEXPERT_FINDINGS]


def chexpert(root: Path) -> Miniature:
    """CheXpert-v1.0-small/{train,valid}.csv, patientN/studyN/viewN_{frontal,lateral}.jpg.

    `root` is the folder holding CheXpert-v1.0-small/; the test converts that inner folder (the
    CSV paths start one level above it)."""
    images, top = _Images(root, 2), "CheXpert-v1.0-small"
    plan = [  # (split folder, patient, study, view file, AP/PA ("" = lateral), findings, class)
        ("train", 1, 1, "view1_frontal", "AP", {"No_Finding": "1.0"}, "NORMAL"),
        ("train", 1, 1, "view2_lateral", "", {"No_Finding": "1.0"}, "view"),
        ("train", 2, 1, "view1_frontal", "PA", {"Pneumonia": "1.0", "Edema": "1.0"}, "PNEUMONIA"),
        ("train", 2, 2, "view1_frontal", "AP", {"Pneumonia": "-1.0", "Edema": "1.0"}, "uncertain"),
        ("train", 3, 1, "view1_frontal", "AP", {"Cardiomegaly": "1.0", "Pneumonia": "0.0"},
         "unmapped_finding"),
        ("train", 4, 1, "view1_frontal", "PA", {"No_Finding": "1.0", "Support_Devices": "1.0"},
         "NORMAL"),
        ("train", 4, 2, "view1_frontal", "AP", {"No_Finding": "1.0"}, "NORMAL"),
        ("train", 5, 1, "view1_frontal", "PA", {"Pneumonia": "1.0"}, "PNEUMONIA"),
        ("train", 6, 1, "view1_frontal", "AP", {"Pneumonia": "1.0", "Consolidation": "-1.0"},
         "PNEUMONIA"),
        ("train", 7, 1, "view1_frontal", "PA", {"No_Finding": "1.0"}, "NORMAL"),
        ("valid", 64541, 1, "view1_frontal", "AP", {"No_Finding": "1.0"}, "NORMAL"),
        ("valid", 64541, 1, "view2_lateral", "", {"No_Finding": "1.0"}, "view"),
        ("valid", 64542, 1, "view1_frontal", "PA", {"Pneumonia": "1.0"}, "PNEUMONIA"),
    ]
    rows: dict[str, list] = {"train": [], "valid": []}
    expected, skipped = {}, {"unlabelled": 0, "view": 0, "uncertain": 0, "unmapped_finding": 0,
                             "ambiguous": 0}
    for split, patient, study, view_file, view, findings, outcome in plan:
        inner = f"{split}/patient{patient:05d}/study{study}/{view_file}.jpg"
        images.gray(f"{top}/{inner}", outcome if outcome in labels.CLASS_NAMES else "NORMAL")
        rows[split].append(_chexpert_row(f"{top}/{inner}", view, **findings))
        if outcome in labels.CLASS_NAMES:
            expected[inner] = (outcome, "test" if split == "valid" else "train",
                               f"patient{patient:05d}")
        else:
            skipped[outcome] += 1
    for split, split_rows in rows.items():
        _write_csv(root / top / f"{split}.csv", CHEXPERT_HEADER, split_rows)
    return Miniature(root / top, expected, skipped,
                     extra={"uncertain_image": "train/patient00002/study2/view1_frontal.jpg"})


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG 2.0.0


MIMIC_META_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                     "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                     "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                     "PatientOrientationCodeSequence_CodeMeaning"]
MIMIC_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
                "Support Devices"]


def mimic(root: Path) -> Miniature:
    """files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg and the gzipped metadata, split, chexpert CSVs."""
    images = _Images(root, 3)
    plan = [  # (subject, study, dicom_id, ViewPosition, split, study labels or None)
        (10000032, 50414267, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", "train",
         {"No Finding": "1.0"}),
        (10000032, 50414267, "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train",
         {"No Finding": "1.0"}),
        (10000032, 53189527, "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP", "train",
         {"Pneumonia": "1.0", "Lung Opacity": "1.0"}),
        (10000032, 53911762, "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "AP", "train",
         {"Pneumonia": "-1.0"}),
        (10000764, 57375967, "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "PA", "validate",
         {"Pneumonia": "1.0"}),
        (10000764, 57375967, "0b9d5ee7-2ef8f49c-2ec5e1a7-8e9ba2d5-b9c1a3a0", "", "validate",
         {"Pneumonia": "1.0"}),
        (10000898, 50771383, "2ba6c5e4-4ec1a5a1-3b7f4a2e-0e3a6c41-a49e5f6b", "PA", "test",
         {"No Finding": "1.0"}),
        (10000935, 51178377, "3a1e3c4d-4b7d1f55-8a9c2e63-5f0b1d7e-9c3a6e2f", "AP", "train",
         {"Cardiomegaly": "1.0", "Pneumonia": "0.0"}),
        (10001176, 53186264, "5b7c9e1a-6d4f2b83-1e5a7c9d-3f8b2d64-7a0e4c1b", "PA", "train", None),
        (10001217, 52067803, "7c8d9e0f-1a2b3c4d-5e6f7a8b-9c0d1e2f-3a4b5c6d", "PA", "train",
         {"No Finding": "1.0"}),
    ]
    meta, split_rows, label_rows, expected = [], [], {}, {}
    outcome_of = {"train": "train", "validate": "val", "test": "test"}
    for subject, study, dicom_id, view, split, study_labels in plan:
        relpath = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
        positive = [k for k, v in (study_labels or {}).items() if v == "1.0"]
        class_name = ("NORMAL" if positive == ["No Finding"] else "PNEUMONIA"
                      if "Pneumonia" in positive else "")
        images.gray(relpath, class_name or "NORMAL")
        meta.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, 3056, 2544,
                     21800506, 213014.531, "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
        split_rows.append([dicom_id, study, subject, split])
        if study_labels is not None:
            label_rows[(subject, study)] = [subject, study] + [study_labels.get(k, "")
                                                              for k in MIMIC_LABELS]
        if class_name and view in ("PA", "AP"):
            expected[relpath] = (class_name, outcome_of[split], str(subject))
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_META_HEADER, meta, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id",
                                                       "split"], split_rows, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id"] + MIMIC_LABELS,
               list(label_rows.values()), gz=True)
    return Miniature(root, expected, {"unlabelled": 1, "view": 2, "uncertain": 1,
                                      "unmapped_finding": 1, "ambiguous": 0},
                     extra={"skipped_views": {"(blank)": 1, "LATERAL": 1}})


# ---------------------------------------------------------------------------------------------
# RSNA Pneumonia Detection Challenge


def rsna(root: Path) -> Miniature:
    """stage_2_train_images/<patientId>.dcm, one row per box in both label CSVs."""
    images = _Images(root, 4)
    plan = [  # (patientId, class, boxes)
        ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "No Lung Opacity / Not Normal", 0),
        ("00313ee0-9eaa-42f4-b0ab-c148ed3241cd", "No Lung Opacity / Not Normal", 0),
        ("00322d4d-1c29-4943-afc9-b6754be640eb", "Normal", 0),
        ("003d8fa0-6bf1-40ed-b54c-ac657f8495c5", "Normal", 0),
        ("00436515-870c-4b36-a041-de91049b9ab4", "Lung Opacity", 2),
        ("00569f44-917d-4c86-a842-81832af98c30", "Normal", 0),
        ("006cec2e-6ce2-4549-bffa-eadfcd1e9970", "Normal", 0),
        ("00704310-78a8-4b38-8475-49f4573b2dbb", "Lung Opacity", 2),
        ("00aecb01-a116-45a2-956c-08d2fa55433f", "Lung Opacity", 1),
        ("00c0b293-48e7-4e16-ac76-9269ba535a62", "Lung Opacity", 3),
    ]
    info, boxes, expected = [], [], {}
    for patient, class_name, n_boxes in plan:
        images.dicom(f"stage_2_train_images/{patient}.dcm", view="AP" if n_boxes else "PA")
        for b in range(max(n_boxes, 1)):
            info.append([patient, class_name])
            boxes.append([patient] + ([264 + b, 152, 213, 379, 1] if n_boxes else
                                      ["", "", "", "", 0]))
        target = {"Normal": "NORMAL", "Lung Opacity": "PNEUMONIA"}.get(class_name)
        if target:
            expected[f"stage_2_train_images/{patient}.dcm"] = (target, "", patient)
    images.dicom("stage_2_test_images/0000a175-0e68-4ca4-b1af-167204a7e0bc.dcm")  # unlabelled
    _write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info)
    _write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height",
                                                   "Target"], boxes)
    return Miniature(root, expected, {"unlabelled": 0, "view": 0, "uncertain": 0,
                                      "unmapped_finding": 2, "ambiguous": 0})


# ---------------------------------------------------------------------------------------------
# PadChest


PADCHEST_HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID",
                   "PatientBirth", "PatientSex_DICOM", "ViewPosition_DICOM", "Projection",
                   "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
                   "Report", "MethodLabel", "Labels", "Localizations"]


def padchest(root: Path) -> Miniature:
    """Numbered image folders of 16-bit PNGs and the labels CSV with list-valued `Labels`."""
    images = _Images(root, 5)
    plan = [  # (ImageDir, patient, Projection, Labels, outcome)
        (0, 1, "PA", "['normal']", "NORMAL"),
        (0, 1, "L", "['normal']", "view"),
        (0, 2, "PA", "['pneumonia', 'infiltrates']", "PNEUMONIA"),
        (0, 2, "AP_horizontal", "['pneumonia']", "PNEUMONIA"),
        (1, 3, "PA", "['cardiomegaly', 'aortic elongation']", "unmapped_finding"),
        (1, 4, "AP", "['normal', 'pneumonia']", "ambiguous"),
        (1, 5, "COSTAL", "['normal']", "view"),
        (1, 6, "PA", "['normal']", "NORMAL"),
        (1, 7, "PA", "[' pneumonia', 'alveolar pattern']", "PNEUMONIA"),
        (1, 8, "AP", "['normal']", "NORMAL"),
    ]
    rows, expected = [], {}
    skipped = {"unlabelled": 0, "view": 0, "uncertain": 0, "unmapped_finding": 0, "ambiguous": 0}
    for i, (folder, patient, projection, labels_text, outcome) in enumerate(plan):
        name = f"2168401113669640{i:04d}_{patient:02d}-0{i}-000.png"
        images.gray(f"{folder}/{name}", outcome if outcome in labels.CLASS_NAMES else "NORMAL",
                    bits=16)
        pid = f"2118765817430{patient:04d}"
        rows.append([name, folder, 20140912, f"st{i}", pid, 1948, "M", "POSTEROANTERIOR",
                     projection, "Manual review of DICOM fields", "No", "CR", "PhilipsMedical",
                     "report text", "Physician", labels_text, "[]"])
        if outcome in labels.CLASS_NAMES:
            expected[f"{folder}/{name}"] = (outcome, "", pid)
        else:
            skipped[outcome] += 1
    _write_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST_HEADER,
               rows)
    return Miniature(root, expected, skipped, extra={"skipped_views": {"COSTAL": 1, "L": 1}})


# ---------------------------------------------------------------------------------------------
# VinDr-CXR 1.0.0


VINDR_FINDINGS = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                  "Clavicle fracture", "Consolidation", "Edema", "Emphysema", "Enlarged PA",
                  "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
                  "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening",
                  "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
                  "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]


def _vindr_cells(*positive: str) -> list[int]:
    return [int(name in positive) for name in VINDR_FINDINGS]


def vindr(root: Path) -> Miniature:
    """train/ and test/<image_id>.dicom, annotations/image_labels_{train,test}.csv."""
    images = _Images(root, 6)
    plan = [  # (image_id, three readers' positive findings, class)
        ("000434271f63a053c4128a0ba6352c7f", [["No finding"]] * 3, "NORMAL"),
        ("00053190460d56c53cc3e57321387478", [["Pneumonia"], ["Pneumonia", "Lung Opacity"],
                                              ["No finding"]], "PNEUMONIA"),
        ("0005e8e3701dfb1dd93d53e2ff537b6e", [["Pneumonia"], ["No finding"], ["No finding"]],
         "NORMAL"),
        ("0006e0a85696f6bb578e84fafa9a5607", [["Pneumonia"], ["No finding"], ["Nodule/Mass"]],
         "unmapped_finding"),
        ("0007d316f756b3fa0baea2ff514ce945", [["No finding"]] * 3, "NORMAL"),
        ("000d68e42b71d3eac10ccc077aba07c1", [["Pneumonia"]] * 3, "PNEUMONIA"),
        ("001d127bad87592efe45a5c7678f8b8d", [["No finding"]] * 3, "NORMAL"),
    ]
    rows, expected = [], {}
    for image_id, readers, outcome in plan:
        images.dicom(f"train/{image_id}.dicom")
        for r, positive in enumerate(readers):
            rows.append([image_id, f"R{8 + r}"] + _vindr_cells(*positive))
        if outcome in labels.CLASS_NAMES:
            expected[f"train/{image_id}.dicom"] = (outcome, "train", "")
    _write_csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_id"] +
               VINDR_FINDINGS, rows)
    test_plan = [("002a34c58c5b758217ed1f584ccbcfe9", "Pneumonia", "PNEUMONIA"),
                 ("004f33259ee4aef671c2b95d54e4be68", "No finding", "NORMAL")]
    test_header = ["image_id"] + [n if n != "Other diseases" else "Other disease"
                                  for n in VINDR_FINDINGS]
    for image_id, finding, class_name in test_plan:
        images.dicom(f"test/{image_id}.dicom")
        expected[f"test/{image_id}.dicom"] = (class_name, "test", "")
    _write_csv(root / "annotations" / "image_labels_test.csv", test_header,
               [[image_id] + _vindr_cells(finding) for image_id, finding, _ in test_plan])
    return Miniature(root, expected, {"unlabelled": 0, "view": 0, "uncertain": 0,
                                      "unmapped_finding": 1, "ambiguous": 0})


# ---------------------------------------------------------------------------------------------
# COVIDx CXR


def covidx(root: Path, binary: bool = False) -> Miniature:
    """train/ and test/ image folders, train.txt / test.txt: `patient filename class source`."""
    images = _Images(root, 7)
    plan = [  # (split, patient, filename, 3-class label, source)
        ("train", "3", "ARDSSevere.png", "pneumonia", "cohen"),
        ("train", "8", "SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7.jpeg", "COVID-19",
         "cohen"),
        ("train", "8", "SARS-10.1148rg.242035193-g04mr34g04b-Fig4b-day12.jpeg", "COVID-19",
         "cohen"),
        ("train", "cf0ebd11-ad3b-4c0d-a4c2-7dd4b1d7ba3b",
         "cf0ebd11-ad3b-4c0d-a4c2-7dd4b1d7ba3b.png", "normal", "rsna"),
        ("train", "COVID-19(10)", "COVID-19 (10).png", "COVID-19", "sirm"),  # a space in the name
        ("train", "a1f9", "a1f9.png", "normal", "rsna"),
        ("train", "b2e8", "b2e8.png", "pneumonia", "rsna"),
        ("test", "419639-003251", "MIDRC-RICORD-1C-419639-003251-46647-0.png", "COVID-19",
         "ricord"),
        ("test", "47c78742-4998-4878-aec4-37b11b1354ac",
         "47c78742-4998-4878-aec4-37b11b1354ac.png", "normal", "rsna"),
        ("test", "c3d7", "c3d7.png", "pneumonia", "rsna"),
    ]
    lines: dict[str, list[str]] = {"train": [], "test": []}
    expected, skipped = {}, 0
    for split, patient, filename, label, source in plan:
        class_name = {"normal": "NORMAL", "pneumonia": "PNEUMONIA", "COVID-19": "COVID19"}[label]
        images.gray(f"{split}/{filename}", class_name)
        if binary:
            label = "positive" if class_name == "COVID19" else "negative"
        lines[split].append(f"{patient} {filename} {label} {source}")
        if binary and class_name != "COVID19":
            skipped += 1
        else:
            expected[f"{split}/{filename}"] = (class_name, split, patient)
    for split, split_lines in lines.items():
        (root / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    return Miniature(root, expected, {"unlabelled": 0, "view": 0, "uncertain": 0,
                                      "unmapped_finding": skipped, "ambiguous": 0})


# ---------------------------------------------------------------------------------------------
# COVID-19 Radiography Database


def covid_radiography(root: Path) -> Miniature:
    """COVID-19_Radiography_Dataset/<class>/{images,masks}/, metadata spreadsheets beside them."""
    images, top = _Images(root, 8), "COVID-19_Radiography_Dataset"
    plan = {"COVID": ("COVID19", 3), "Normal": ("NORMAL", 3), "Viral Pneumonia": ("PNEUMONIA", 3),
            "Lung_Opacity": ("", 2)}
    expected, masks = {}, 0
    for folder, (class_name, n) in plan.items():
        for i in range(1, n + 1):
            relpath = f"{folder}/images/{folder}-{i}.png"
            images.gray(f"{top}/{relpath}", class_name or "NORMAL")
            mask = root / top / folder / "masks" / f"{folder}-{i}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask), np.zeros((32, 32), np.uint8))
            masks += 1
            if class_name:
                expected[f"{top}/{relpath}"] = (class_name, "", "")
        (root / top / f"{folder}.metadata.xlsx").write_bytes(b"PK\x03\x04 not an image")
    (root / top / "README.md.txt").write_text("COVID-19 Radiography Database")
    return Miniature(root, expected, {"unlabelled": 0, "view": 0, "uncertain": 0,
                                      "unmapped_finding": 2, "ambiguous": 0},
                     extra={"not_read": {"masks": masks}})
