"""The converter on collections beyond the Kaggle layout, checked on the written records:
labels CSVs with patient ids, test-only and train-only folders, class folders (real X-rays),
several collections with a held-out one."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata import labels
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import convert, decode_pass, features, manifest, synthetic

SIZE = 16
LABEL_MAP = "No Finding=NORMAL,COVID-19=COVID19,Pneumonia=PNEUMONIA"
RAW = {"NORMAL": "No Finding", "COVID19": "COVID-19", "PNEUMONIA": "Pneumonia"}


def _config(data: str | Path, out: Path, **kwargs) -> convert.ConversionConfig:
    base = dict(image_size=SIZE, min_shards=2, num_workers=1, image_format="png", near_distance=0)
    return convert.ConversionConfig(data_dir=str(data), output_dir=str(out), **{**base, **kwargs})


def _records(out: Path) -> dict[str, list[dict]]:
    info = manifest.read_manifest(out)
    result = {}
    for split in info["splits"]:
        ds = tf.data.TFRecordDataset(manifest.split_files(out, info, split))
        result[split] = [{k: v.numpy() for k, v in
                          tf.io.parse_single_example(x, features.FEATURE_SPEC).items()} for x in ds]
    return result


def _write_images(root: Path, names_classes: list[tuple[str, str]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, class_name in names_classes:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), synthetic.render_xray(labels.LABEL_MAP[class_name], (40, 36), rng))


def _patient_csv(root: Path, split_of_patient: dict[int, str] | None = None) -> Path:
    """24 patients, 1-3 images each; ids 'PATIENT-ZX00nn' (searched for in every output byte)."""
    rows, images = [], []
    for p in range(24):
        class_name = labels.CLASS_NAMES[p % 3]
        for i in range(1 + p % 3):
            name = f"img/p{p:02d}_{i}.png"
            images.append((name, class_name))
            split = (split_of_patient or {}).get(p, "")
            rows.append([name, RAW[class_name], f"PATIENT-ZX{p:04d}", split, f"AP{i}"])
    _write_images(root, images)
    path = root / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Image Index", "Finding Labels", "Patient ID", "split", "View"])
        writer.writerows(rows)
    return path


def test_csv_with_patient_ids_keeps_patients_and_duplicates_in_one_split(tmp_path):
    data = tmp_path / "nih"
    csv_path = _patient_csv(data)
    # The same X-ray filed again under patient 23: the duplicate link joins patients 0 and 23.
    shutil.copy(data / "img" / "p00_0.png", data / "img" / "copy_of_p00.png")
    with open(csv_path, "a", newline="") as f:
        csv.writer(f).writerow(["img/copy_of_p00.png", "No Finding", "PATIENT-ZX0023", "", "PA"])
    out = tmp_path / "out"
    result = convert.build_records(_config(
        data, out, labels_csv=str(csv_path), label_map=LABEL_MAP, val_fraction=0.2,
        csv_columns="path=Image Index,label=Finding Labels,patient_id=Patient ID"),
        progress=False)
    records = _records(out)
    assert sorted(records) == ["test", "train", "val"]
    splits_of_patient: dict[bytes, set[str]] = defaultdict(set)
    split_of_path = {}
    for split, rs in records.items():
        for r in rs:
            assert len(r[features.PATIENT_HASH]) == 64
            splits_of_patient[r[features.PATIENT_HASH]].add(split)
            split_of_path[r[features.SOURCE_PATH].decode()] = split
        assert result["splits"][split]["patients"] == len({r[features.PATIENT_HASH] for r in rs})
    assert len(splits_of_patient) == 24
    assert all(len(s) == 1 for s in splits_of_patient.values())  # no patient in two splits
    assert split_of_path["img/copy_of_p00.png"] == split_of_path["img/p00_0.png"]
    first = next(r for r in records["train"] if r[features.SOURCE_PATH].endswith(b"_0.png"))
    assert json.loads(first[features.SOURCE_METADATA]) == {"View": "AP0"}
    assert result["sources"][""]["layout"] == "csv"
    assert result["sources"][""]["labels_csv"]["rows"] == 49
    # Patient ids never written raw: not in any shard, the manifest or anything else written.
    for path in out.rglob("*"):
        if path.is_file():
            assert b"PATIENT-ZX" not in path.read_bytes(), path


def test_csv_split_column_crossing_patients_is_an_error_unless_warn(tmp_path):
    data = tmp_path / "d"
    csv_path = _patient_csv(data, split_of_patient={p: "train" for p in range(24)})
    with open(csv_path, "a", newline="") as f:  # patients 2 and 5 get a test image too
        for p in (2, 5):
            name = f"img/p{p:02d}_0.png"
            shutil.copy(data / name, data / f"img/extra{p}.png")
            csv.writer(f).writerow([f"img/extra{p}.png", "Pneumonia", f"PATIENT-ZX{p:04d}", "test", ""])
    config = dict(labels_csv=str(csv_path), label_map=LABEL_MAP,
                  csv_columns="path=Image Index,label=Finding Labels,patient_id=Patient ID")
    with pytest.raises(convert.ConversionError, match=r"^2 patient\(s\) appear in more than one "
                       r"split.*'img/extra2.png' \(test\) and 'img/p02_0.png' \(train\).*"
                       r"--patient_overlap=warn") as err:
        convert.build_records(_config(data, tmp_path / "o", **config), progress=False)
    assert "PATIENT-ZX" not in str(err.value)
    result = convert.build_records(_config(data, tmp_path / "o", patient_overlap="warn", **config),
                                   progress=False)
    assert result["patient_overlap"] == {"patients": 2, "mode": "warn"}
    assert result["splits"]["test"]["num_examples"] == 2  # the given splits are kept


def test_csv_rejects_are_listed_and_fail_only_past_the_threshold(tmp_path):
    data = tmp_path / "d"
    csv_path = _patient_csv(data)
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img/gone.png", "No Finding", "P", "", ""])
        writer.writerow(["img/p01_0.png", "COVID-19", "PATIENT-ZX0001", "", ""])  # duplicate row
        writer.writerow(["img/p02_0.png", "Effusion", "PATIENT-ZX0002", "", ""])  # duplicate, unmapped
    config = dict(labels_csv=str(csv_path), label_map=LABEL_MAP,
                  csv_columns="path=Image Index,label=Finding Labels,patient_id=Patient ID")
    with pytest.raises(convert.ConversionError, match=r"Rejected 3 of 51 files"):
        convert.build_records(_config(data, tmp_path / "o", **config), progress=False)
    result = convert.build_records(_config(data, tmp_path / "o", max_reject_fraction=0.1, **config),
                                   progress=False)
    assert [r["path"] for r in result["rejected"]] == ["img/gone.png", "img/p01_0.png",
                                                       "img/p02_0.png"]
    assert sum(i["num_examples"] for i in result["splits"].values()) == 48


def test_a_test_only_folder_gives_test_records_only(tmp_path):
    synthetic.generate_dataset(tmp_path / "ext", {"test": {"NORMAL": 3, "COVID19": 2, "PNEUMONIA": 3}},
                               min_size=40, max_size=60, seed=2)
    result = convert.build_records(_config(tmp_path / "ext", tmp_path / "out"), progress=False)
    assert sorted(result["splits"]) == ["test"] and len(_records(tmp_path / "out")["test"]) == 8
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dataset_info.json", "test-00000-of-00001.tfrecord"]
    assert result["sources"] == {"": {"layout": "splits", "splits_given": ["test"]}}
    manifest.require_splits(result, ["test"])
    with pytest.raises(manifest.ManifestError, match=r"have the split\(s\) \['test'\] but training "
                                                     r"needs \['train', 'val'\]"):
        manifest.require_splits(result, ["train", "val"], purpose="training")


def test_a_train_only_folder_gets_val_and_test_carved(tmp_path):
    synthetic.generate_dataset(tmp_path / "d", {"train": {"NORMAL": 10, "COVID19": 10, "PNEUMONIA": 10}},
                               min_size=40, max_size=60, seed=4)
    result = convert.build_records(_config(tmp_path / "d", tmp_path / "o", test_fraction=0.3),
                                   progress=False)
    assert {s: i["per_class"]["NORMAL"] for s, i in result["splits"].items()} == {
        "train": 6, "val": 1, "test": 3}
    assert "test_fraction" in result["args"] and "labels_csv" not in result["args"]


def test_real_paediatric_class_folders_without_splits(real_paediatric_dir, tmp_path):
    for class_name in ("NORMAL", "PNEUMONIA"):
        for src in sorted((real_paediatric_dir / class_name).iterdir())[:15]:
            link = tmp_path / "peds" / class_name / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    result = convert.build_records(_config(tmp_path / "peds", tmp_path / "out", image_format="jpeg"),
                                   progress=False)
    assert result["rejected"] == [] and result["sources"][""]["layout"] == "classes"
    # Per class: test round(15 * 0.2) = 3, then val round(12 * 0.1) = 1, train 11; no COVID19.
    assert {s: i["per_class"] for s, i in result["splits"].items()} == {
        s: {"NORMAL": n, "COVID19": 0, "PNEUMONIA": n} for s, n in (("train", 11), ("val", 1),
                                                                      ("test", 3))}
    image = tf.io.decode_jpeg(_records(tmp_path / "out")["test"][0][features.ENCODED]).numpy()
    assert image.shape == (SIZE, SIZE, 1) and image.std() > 5


def test_several_collections_with_one_held_out(tmp_path):
    synthetic.generate_dataset(tmp_path / "kaggle", {"train": {"NORMAL": 6, "COVID19": 6, "PNEUMONIA": 6},
                                                     "test": {"NORMAL": 2, "COVID19": 2, "PNEUMONIA": 2}},
                               min_size=40, max_size=60, seed=6)
    _write_images(tmp_path / "nih", [(f"{c}/n{i}.png", c) for c in ("NORMAL", "PNEUMONIA")
                                     for i in range(4)], seed=9)
    spec = f"kaggle={tmp_path / 'kaggle'},nih={tmp_path / 'nih'}"
    result = convert.build_records(_config(spec, tmp_path / "out", holdout_source="nih",
                                           augment="COVID19:gamma0.5"), progress=False)
    records = _records(tmp_path / "out")
    assert {r[features.SOURCE_NAME] for r in records["test"]} == {b"nih"}
    assert {r[features.SOURCE_NAME] for s in ("train", "val") for r in records[s]} == {b"kaggle"}
    assert all(r[features.SOURCE_PATH].startswith(r[features.SOURCE_NAME] + b":")
               for rs in records.values() for r in rs)
    for split, info in result["splits"].items():
        counted = defaultdict(lambda: dict.fromkeys(labels.CLASS_NAMES, 0))
        for r in records[split]:
            counted[r[features.SOURCE_NAME].decode()][r[features.CLASS_TEXT].decode()] += 1
        assert info["per_source"] == dict(counted)
    # Kaggle's own test images joined its train pool: 24 originals, val carved, + variants.
    assert result["splits"]["train"]["originals_per_class"]["COVID19"] == 8 - 1
    assert result["splits"]["train"]["variants_per_class"]["COVID19"] == 7


def test_patient_key_is_never_written_and_another_key_is_refused_on_resume(tmp_path):
    data = tmp_path / "d"
    csv_path = _patient_csv(data)
    config = dict(labels_csv=str(csv_path), label_map=LABEL_MAP, patient_key="k" * 40,
                  csv_columns="path=Image Index,label=Finding Labels,patient_id=Patient ID")
    out = tmp_path / "o"
    result = convert.build_records(_config(data, out, **config), progress=False)
    assert result["args"]["patient_key"].startswith("sha256:")
    assert all(b"k" * 40 not in p.read_bytes() for p in out.iterdir())
    with pytest.raises(convert.ConversionError, match="--patient_key: 'sha256:"):
        convert.build_records(_config(data, out, **{**config, "patient_key": "other"}),
                              progress=False)


def test_evaluate_reads_converter_records_of_a_test_only_collection(tmp_path):
    from tests import fixtures
    from xray_tfdata.evaluation import evaluator

    synthetic.generate_dataset(tmp_path / "ext", {"test": {"NORMAL": 3, "COVID19": 3, "PNEUMONIA": 3}},
                               min_size=40, max_size=60, seed=2)
    convert.build_records(_config(tmp_path / "ext", tmp_path / "rec", image_size=fixtures.TINY_SIZE),
                          progress=False)
    model = fixtures.tiny_model_file(tmp_path / "tiny.keras")
    # The shortcut probe is fitted on a train split, which a test-only collection lacks.
    result = evaluator.evaluate(evaluator.EvalConfig(
        model_path=str(model), records_dir=str(tmp_path / "rec"), split="test", bootstrap=10,
        shortcut_probe=False, output_dir=str(tmp_path / "eval")))
    assert result["num_examples"] == 9 and (tmp_path / "eval" / "metrics.json").is_file()


def test_real_sample_labels_csv_with_patient_ids(real_sample_dir, tmp_path):
    # The real sample's own labels.csv: every row says train, so test and val are carved, by
    # patient (patient 9 has two X-rays). Read in place: the converter never writes to data_dir.
    result = convert.build_records(_config(
        real_sample_dir, tmp_path / "out", labels_csv=str(real_sample_dir / "labels.csv"),
        csv_columns="patient_id=patientid", image_format="jpeg"), progress=False)
    assert result["rejected"] == [] and result["sources"][""]["splits_given"] == ["train"]
    records = _records(tmp_path / "out")
    splits_of_patient: dict[bytes, set[str]] = defaultdict(set)
    for split, rs in records.items():
        for r in rs:
            splits_of_patient[r[features.PATIENT_HASH]].add(split)
    rows = list(csv.DictReader(open(real_sample_dir / "labels.csv")))
    assert len(splits_of_patient) == len({row["patientid"] for row in rows}) == 35
    assert all(len(s) == 1 for s in splits_of_patient.values())
    assert {s: i["per_class"]["COVID19"] for s, i in result["splits"].items()} == {
        "train": 9, "val": 1, "test": 2}
    meta = json.loads(records["test"][0][features.SOURCE_METADATA])
    assert "patientid" not in meta and {"source", "width", "original_name"} <= set(meta)


def test_a_crashed_csv_build_resumes_to_identical_records(tmp_path, monkeypatch):
    from xray_tfdata import files

    data = tmp_path / "d"
    csv_path = _patient_csv(data)
    config = dict(labels_csv=f"nih={csv_path}", label_map=LABEL_MAP,
                  csv_columns="path=Image Index,label=Finding Labels,patient_id=Patient ID")
    spec = f"nih={data}"
    convert.build_records(_config(spec, tmp_path / "ref", **config), progress=False)
    real, calls = decode_pass.process_source, []

    monkeypatch.setattr(decode_pass, "process_source", fixtures.crash_after(5, real, calls))
    with pytest.raises(KeyboardInterrupt):
        convert.build_records(_config(spec, tmp_path / "out", **config), progress=False)
    monkeypatch.setattr(decode_pass, "process_source", real)
    convert.build_records(_config(spec, tmp_path / "out", **config), progress=False)
    shas = lambda d: {p.name: files.sha256_file(p) for p in d.iterdir()}  # noqa: E731
    assert shas(tmp_path / "out") == shas(tmp_path / "ref")


def test_max_pixels_refuses_oversized_sources_by_their_header(tmp_path):
    synthetic.generate_dataset(tmp_path / "d", {"train": {"NORMAL": 4, "COVID19": 4, "PNEUMONIA": 4},
                                                "test": {"NORMAL": 1, "COVID19": 1, "PNEUMONIA": 1}},
                               min_size=40, max_size=60, seed=5)
    with pytest.raises(ConfigError, match=r"max_pixels must be an integer in \[1, 1073741824\]"):
        _config(tmp_path / "d", tmp_path / "o", max_pixels=0)
    with pytest.raises(convert.ConversionError, match=r"over the --max_pixels limit of 100 pixel \(100 pixels\)"):
        convert.build_records(_config(tmp_path / "d", tmp_path / "o", max_pixels=100),
                              progress=False)
    info = convert.build_records(_config(tmp_path / "d", tmp_path / "o2", max_pixels=2500,
                                         max_reject_fraction=1.0), progress=False)
    assert info["args"]["max_pixels"] == 2500  # not the default: recorded, a rerun must repeat it
    reasons = [r["reason"] for r in info["rejected"]]
    assert reasons and all("over the --max_pixels limit" in r for r in reasons)
    kept = sum(s["num_examples"] for s in info["splits"].values())
    assert 0 < kept and kept + len(reasons) >= 15  # every source either kept or refused
