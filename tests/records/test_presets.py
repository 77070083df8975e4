"""`--layout=NAME`: each public collection's miniature (collection_miniatures.py) converted through
the real converter, checked image by image (class, split, patient grouping) and by the manifest's
per-rule counts; plus the file index's matching rule and the settings' validation."""

from __future__ import annotations

import collections
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from tests import fixtures
from tests.records import collection_miniatures as minis
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import (
    convert,
    features,
    file_index,
    manifest,
    patients,
    preset_reader,
    presets,
    synthetic,
)
from xray_tfdata.records.sources import SourceSpec

BASE = dict(image_size=16, min_shards=1, num_workers=1, image_format="png", near_distance=0,
            max_reject_fraction=0.5, val_fraction=0.25)


def _convert(data: Path, out: Path, layout: str, **kwargs) -> dict:
    return convert.build_records(convert.ConversionConfig(
        data_dir=str(data), output_dir=str(out), layout=layout, **{**BASE, **kwargs}))


def _records(out: Path) -> dict[str, dict]:
    """source path -> {class, split, patient, metadata} of every record written."""
    info = manifest.read_manifest(out)
    found = {}
    for split in info["splits"]:
        for raw in tf.data.TFRecordDataset(manifest.split_files(out, info, split)):
            ex = tf.io.parse_single_example(raw, features.FEATURE_SPEC)
            found[ex[features.SOURCE_PATH].numpy().decode()] = {
                "class": ex[features.CLASS_TEXT].numpy().decode(), "split": split,
                "label": int(ex[features.LABEL].numpy()),
                "patient": ex[features.PATIENT_HASH].numpy().decode(),
                "metadata": ex[features.SOURCE_METADATA].numpy().decode()}
    return found


def _check(mini: minis.Miniature, info: dict, records: dict[str, dict], source: str = "",
           seed: int = 0) -> dict:
    """Every expected image is there with its class and split, nothing else; patients hashed
    and never split; returns the collection's manifest report."""
    prefix = f"{source}:" if source else ""
    assert sorted(records) == sorted(prefix + p for p in mini.images)
    key = patients.derive_key(seed)
    split_of_patient: dict[str, set] = collections.defaultdict(set)
    for relpath, (class_name, given, patient_id) in mini.images.items():
        record = records[prefix + relpath]
        assert record["class"] == class_name, relpath
        assert record["label"] == info["label_map"][class_name]
        allowed = {"train": {"train", "val"}, "val": {"val"}, "test": {"test"}}.get(given)
        assert allowed is None or record["split"] in allowed, (relpath, record["split"])
        expected_hash = patients.patient_hash(key, source, patient_id)
        assert hmac.compare_digest(record["patient"], expected_hash), relpath
        if patient_id:
            split_of_patient[patient_id].add(record["split"])
            assert patient_id not in json.loads(record["metadata"] or "{}").values()
    assert all(len(s) == 1 for s in split_of_patient.values()), split_of_patient
    report = info["sources"][source]["preset"]
    assert report["skipped"] == mini.skipped
    assert report["rejected_rows"] == mini.rejected
    kept = collections.Counter(c for c, _, _ in mini.images.values())
    assert {c: sum(n.values()) for c, n in report["kept"].items()} == dict(kept)
    return report


def test_nih_nested_image_folders_official_test_list_and_patients(tmp_path):
    mini = minis.nih(tmp_path / "nih")
    info = _convert(mini.root, tmp_path / "out", "chestxray14")
    records = _records(tmp_path / "out")
    report = _check(mini, info, records)
    assert info["sources"][""]["layout"] == "chestxray14"
    assert report["classes_unavailable"] == ["COVID19"]
    assert report["skipped_findings"] == {"Cardiomegaly": 1}
    assert report["rows"] == 12 and report["label_files"] == [
        "Data_Entry_2017.csv", "test_list.txt", "train_val_list.txt"]
    twice = next(r for r in info["rejected"] if r["path"] == "00000005_000.png")
    assert "images_001/images/00000005_000.png" in twice["reason"]
    assert "images_002/images/00000005_000.png" in twice["reason"]
    assert {r["split"] for p, r in records.items() if "00000001_" in p} == {"test"}
    assert '"View Position": "AP"' in records["images_001/images/00000001_001.png"]["metadata"]


def test_chexpert_columns_uncertain_laterals_and_valid_as_test(tmp_path):
    mini = minis.chexpert(tmp_path / "chexpert")
    info = _convert(mini.root, tmp_path / "out", "chexpert")
    report = _check(mini, info, _records(tmp_path / "out"))
    assert report["skipped_views"] == {"LATERAL": 2} and report["uncertain"] == "skip"
    # --uncertain=positive keeps the uncertain pneumonia; =negative leaves it without a class.
    for mode, outcome in (("positive", "PNEUMONIA"), ("negative", None)):
        scan = preset_reader.read_preset(SourceSpec("", str(mini.root), layout="chexpert"),
                                         preset_reader.Rules(uncertain=mode))
        classes = {f.relpath: f.class_name for f in scan.files}
        assert classes.get(mini.extra["uncertain_image"]) == outcome
        skipped = dict(scan.details)["preset"]["skipped"]
        assert skipped["uncertain"] == 0
        assert skipped["unmapped_finding"] == 1 + (mode == "negative")
    # --views=all keeps the laterals too.
    scan = preset_reader.read_preset(SourceSpec("", str(mini.root), layout="chexpert"),
                                     preset_reader.Rules(views="all"))
    assert sum("lateral" in f.relpath for f in scan.files) == 2


def test_mimic_three_gzipped_csvs_joined_with_views_and_official_split(tmp_path):
    mini = minis.mimic(tmp_path / "mimic")
    info = _convert(mini.root, tmp_path / "out", "mimic_cxr_jpg")
    report = _check(mini, info, _records(tmp_path / "out"))
    assert report["skipped_views"] == mini.extra["skipped_views"]
    assert report["label_files"] == ["mimic-cxr-2.0.0-metadata.csv.gz",
                                     "mimic-cxr-2.0.0-split.csv.gz",
                                     "mimic-cxr-2.0.0-chexpert.csv.gz"]
    assert info["sources"][""]["splits_given"] == ["test", "train", "val"]
    # A list of views: PA only.
    scan = preset_reader.read_preset(SourceSpec("", str(mini.root), layout="mimic_cxr_jpg"),
                                     preset_reader.Rules(views="pa"))
    assert {f.class_name for f in scan.files} == {"NORMAL", "PNEUMONIA"}
    assert dict(scan.details)["preset"]["skipped_views"] == {"(blank)": 1, "AP": 3, "LATERAL": 1}


def test_rsna_dicom_one_image_per_patient_despite_box_rows(tmp_path):
    mini = minis.rsna(tmp_path / "rsna")
    info = _convert(mini.root, tmp_path / "out", "rsna_pneumonia", test_fraction=0.25)
    records = _records(tmp_path / "out")
    report = _check(mini, info, records)
    assert report["skipped_findings"] == {"No Lung Opacity / Not Normal": 2}
    assert report["rows"] == 14  # box rows, for 10 images
    assert {r["split"] for r in records.values()} == {"train", "val", "test"}


def test_padchest_16bit_pngs_list_labels_and_projections(tmp_path):
    mini = minis.padchest(tmp_path / "padchest")
    info = _convert(mini.root, tmp_path / "out", "padchest")
    report = _check(mini, info, _records(tmp_path / "out"))
    assert report["skipped_views"] == mini.extra["skipped_views"]
    assert report["skipped_findings"] == {"['cardiomegaly', 'aortic elongation']": 1,
                                          "['normal', 'pneumonia']": 1}
    modes = {tf.io.parse_single_example(raw, features.FEATURE_SPEC)[features.SOURCE_MODE]
             .numpy().decode() for split in info["splits"]
             for raw in tf.data.TFRecordDataset(
                 manifest.split_files(tmp_path / "out", info, split))}
    assert modes == {"I;16"}  # every source read as the 16-bit PNG it is


def test_vindr_majority_of_three_readers_and_consensus_test(tmp_path):
    mini = minis.vindr(tmp_path / "vindr")
    info = _convert(mini.root, tmp_path / "out", "vindr_cxr")
    report = _check(mini, info, _records(tmp_path / "out"))
    assert report["rows"] == 23 and "views" not in report


@pytest.mark.parametrize("binary", [False, True])
def test_covidx_space_separated_lists_both_label_versions(tmp_path, binary):
    mini = minis.covidx(tmp_path / "covidx", binary=binary)
    info = _convert(mini.root, tmp_path / "out", "covidx")
    records = _records(tmp_path / "out")
    report = _check(mini, info, records)
    assert report["classes_unavailable"] == []
    if binary:
        assert report["skipped_findings"] == {"negative": 6}
    else:
        assert '"data source": "sirm"' in records["train/COVID-19 (10).png"]["metadata"]


def test_covid_radiography_folders_masks_never_read(tmp_path):
    mini = minis.covid_radiography(tmp_path / "crd")
    info = _convert(mini.root, tmp_path / "out", "covid_radiography")
    report = _check(mini, info, _records(tmp_path / "out"))
    assert report["not_read"] == mini.extra["not_read"]
    assert report["skipped_findings"] == {"Lung_Opacity": 2}


def test_covid_radiography_four_classes_with_lung_opacity_and_still_no_masks(tmp_path):
    """--classes naming LUNG_OPACITY takes the preset's fourth folder (the README's example)."""
    mini = minis.covid_radiography(tmp_path / "crd")
    four = ("NORMAL", "COVID19", "PNEUMONIA", "LUNG_OPACITY")
    scan = preset_reader.read_preset(
        SourceSpec("", str(mini.root), layout="covid_radiography"),
        preset_reader.Rules(classes=four))
    counts = collections.Counter((f.class_name, f.label) for f in scan.files)
    assert counts == {("NORMAL", 0): 3, ("COVID19", 1): 3, ("PNEUMONIA", 2): 3,
                      ("LUNG_OPACITY", 3): 2}
    assert not any("/masks/" in f.relpath for f in scan.files)
    assert not dict(scan.details)["preset"].get("skipped_findings")  # nothing left unmapped


def test_a_class_the_build_lacks_is_dropped_and_reported_not_an_error(tmp_path):
    mini = minis.covid_radiography(tmp_path / "crd")
    scan = preset_reader.read_preset(
        SourceSpec("", str(mini.root), layout="covid_radiography"),
        preset_reader.Rules(classes=("NORMAL", "PNEUMONIA")))
    report = dict(scan.details)["preset"]
    assert {f.class_name: f.label for f in scan.files} == {"NORMAL": 0, "PNEUMONIA": 1}
    assert report["classes_unavailable"] == []
    assert report["skipped_findings"] == {"COVID": 3, "Lung_Opacity": 2}


def test_file_index_matches_trailing_components_never_another_file(tmp_path):
    for relpath in ("a/train/patient1/study1/view1.jpg", "a/train/patient2/study1/view1.jpg",
                    "images_001/images/x.png", "images_002/images/x.png", "y.png"):
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(b"")
    index = file_index.FileIndex(tmp_path)
    assert index.lookup("CheXpert/a/train/patient1/study1/view1.jpg").relpath == \
        "a/train/patient1/study1/view1.jpg"
    assert index.lookup("train/patient2/study1/view1.jpg").relpath == \
        "a/train/patient2/study1/view1.jpg"
    assert index.lookup("train/patient3/study1/view1.jpg") == file_index.Found()
    assert index.lookup("x.png").tied == ("images_001/images/x.png", "images_002/images/x.png")
    assert index.lookup("images_002/images/x.png").relpath == "images_002/images/x.png"
    assert index.lookup("17/y.png").relpath == "y.png"  # a flattened mirror


def test_a_missing_label_file_names_what_the_download_holds(tmp_path):
    (tmp_path / "images_001").mkdir()
    with pytest.raises(ValueError, match=r"Data_Entry_2017\*\.csv.*images_\*/images/\*\.png"):
        preset_reader.read_preset(SourceSpec("", str(tmp_path), layout="chestxray14"),
                                  preset_reader.Rules())


def test_repeated_rows_duplicate_reject_or_must_agree_by_the_spec(tmp_path):
    nih = minis.nih(tmp_path / "nih")
    with open(nih.root / "Data_Entry_2017.csv", "a") as f:
        f.write("00000006_000.png,Pneumonia,1,6,40,F,PA,2500,2048,0.168,0.168,\n")
    scan = preset_reader.read_preset(SourceSpec("", str(nih.root), layout="chestxray14"),
                                     preset_reader.Rules())
    assert dict(scan.rejected)["00000006_000.png"] == (
        "duplicate row: Data_Entry_2017.csv row 13 repeats Data_Entry_2017.csv row 8 "
        "(the first is used)")
    assert {f.relpath: f.class_name for f in scan.files}[
        "images_002/images/00000006_000.png"] == "NORMAL"
    # RSNA's box rows of one image are expected, but must agree: disagreeing rows are ambiguous.
    rsna = minis.rsna(tmp_path / "rsna")
    with open(rsna.root / "stage_2_detailed_class_info.csv", "a") as f:
        f.write("00322d4d-1c29-4943-afc9-b6754be640eb,Lung Opacity\n")
    scan = preset_reader.read_preset(SourceSpec("", str(rsna.root), layout="rsna_pneumonia"),
                                     preset_reader.Rules())
    report = dict(scan.details)["preset"]
    assert report["skipped"]["ambiguous"] == 1 and report["rejected_rows"] == {}
    assert len(scan.files) == len(rsna.images) - 1


def test_a_truncated_gzipped_label_file_is_one_line_error(tmp_path):
    mini = minis.mimic(tmp_path / "mimic")
    path = mini.root / "mimic-cxr-2.0.0-split.csv.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError, match=r"cannot read 'mimic-cxr-2.0.0-split.csv.gz'"):
        preset_reader.read_preset(SourceSpec("", str(mini.root), layout="mimic_cxr_jpg"),
                                  preset_reader.Rules())


@pytest.mark.parametrize("kwargs, field", [
    ({"layout": "nih_chestxray"}, "layout"),
    ({"layout": "chexpert", "labels_csv": "/x.csv"}, "layout"),
    ({"layout": "csv"}, "layout"),
    ({"data_dir": "a=/a,b=/b", "layout": "a=chexpert,covidx"}, "layout"),
    ({"data_dir": "a=/a,b=/b", "layout": "a=chexpert,c=covidx"}, "layout"),
    ({"views": "PA;AP"}, "views"),
    ({"uncertain": "maybe"}, "uncertain"),
])
def test_bad_preset_settings_are_config_errors(kwargs, field):
    with pytest.raises(ConfigError) as err:
        convert.ConversionConfig(**{"data_dir": "/a", "output_dir": "/o", **kwargs})
    assert err.value.field == field


def test_defaults_leave_the_manifest_args_unchanged():
    args = convert.ConversionConfig(data_dir="/a", output_dir="/o").manifest_args()
    assert not {"layout", "views", "uncertain"} & set(args)
    assert set(presets.PRESETS) <= set(presets.LAYOUTS)


def test_multi_source_recipe_from_the_command_line(tmp_path):
    """The README's recipe: the Kaggle layout + NIH + RSNA, NIH held out as the test split."""
    kaggle = tmp_path / "kaggle"
    synthetic.generate_dataset(kaggle, {"train": {"NORMAL": 3, "COVID19": 3, "PNEUMONIA": 3},
                                        "test": {"NORMAL": 1, "COVID19": 1, "PNEUMONIA": 1}},
                               min_size=32, max_size=40, seed=3)
    nih, rsna = minis.nih(tmp_path / "nih"), minis.rsna(tmp_path / "rsna")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.build_records",
         f"--data_dir=kaggle={kaggle},nih={nih.root},rsna={rsna.root}",
         "--layout=nih=chestxray14,rsna=rsna_pneumonia", "--holdout_source=nih",
         f"--output_dir={out}", "--image_size=16", "--num_workers=1", "--min_shards=1",
         "--max_reject_fraction=0.2"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(fixtures.REPO_ROOT)},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = manifest.read_manifest(out)
    assert set(info["splits"]["test"]["per_source"]) == {"nih"}
    assert info["splits"]["test"]["num_examples"] == len(nih.images)
    assert {s: info["sources"][s]["layout"] for s in ("kaggle", "nih", "rsna")} == {
        "kaggle": "splits", "nih": "chestxray14", "rsna": "rsna_pneumonia"}
    assert info["args"]["layout"] == "nih=chestxray14,rsna=rsna_pneumonia"
    train_sources = {s for split in ("train", "val") for s in info["splits"][split]["per_source"]}
    assert train_sources == {"kaggle", "rsna"}


def test_a_preset_on_a_url_data_dir_is_one_line_with_the_fix():
    """The preset reader indexes a local tree; a URL folder used to read as "not a directory"."""
    import tensorflow as tf

    tf.io.gfile.makedirs("ram://nih_preset/images_001/images")
    with pytest.raises(ValueError) as err:
        preset_reader.read_preset(SourceSpec("", "ram://nih_preset", layout="chestxray14"),
                                  preset_reader.Rules())
    message = str(err.value)
    assert "\n" not in message and "--layout=chestxray14 reads a local folder" in message
    assert "gcsfuse" in message and "is not a directory" not in message
