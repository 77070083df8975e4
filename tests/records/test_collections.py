"""Collections beyond the Kaggle layout: folder layouts, labels CSVs, patient hashes and groups,
and the split assignment (holdout, carving by patient)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from xray_tfdata.records import collect, labels_csv, patients, shard_plan, sources


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 10), value, np.uint8))
    return path


# ---------------------------------------------------------------------------------------------
# Collection specs and folder layouts.


def test_source_specs_single_named_and_csv_pairing():
    assert sources.parse_source_specs("/d") == [sources.SourceSpec("", "/d")]
    assert sources.parse_source_specs("/d", "/d/l.csv") == [sources.SourceSpec("", "/d", "/d/l.csv")]
    assert sources.parse_source_specs("kaggle=/a, nih=/b", "nih=/b/x.csv") == [
        sources.SourceSpec("kaggle", "/a"), sources.SourceSpec("nih", "/b", "/b/x.csv")]
    # One named collection: an unnamed CSV belongs to it.
    assert sources.parse_source_specs("nih=/b", "/b/x.csv") == [sources.SourceSpec("nih", "/b", "/b/x.csv")]
    with pytest.raises(ValueError, match="needs a name"):
        sources.parse_source_specs("kaggle=/a,/b")
    with pytest.raises(ValueError, match="names a collection twice"):
        sources.parse_source_specs("a=/x,a=/y")
    with pytest.raises(ValueError, match=r"labels_csv names \['chex'\], which data_dir does not"):
        sources.parse_source_specs("a=/x,b=/y", "chex=/c.csv")
    with pytest.raises(ValueError, match="must name its collection"):
        sources.parse_source_specs("a=/x,b=/y", "/c.csv")


def test_class_folders_without_splits_are_scanned_recursively(tmp_path):
    _png(tmp_path / "NORMAL" / "a.png")
    _png(tmp_path / "Pneumonia" / "site1" / "deep" / "b.png")
    _png(tmp_path / "PNEUMONIA" / ".cache" / "hidden.png")  # hidden folder: never data
    (tmp_path / "NORMAL" / "notes.txt").write_text("x")
    if len(list(tmp_path.iterdir())) == 3:  # case-sensitive file system: a case clash
        with pytest.raises(ValueError, match="two folders for 'PNEUMONIA'"):
            sources.scan_sources(tmp_path)
        (tmp_path / "PNEUMONIA" / ".cache" / "hidden.png").unlink()
        (tmp_path / "PNEUMONIA" / ".cache").rmdir()
        (tmp_path / "PNEUMONIA").rmdir()
    result = sources.scan_sources(tmp_path, source="peds")
    assert result.layout == "classes"
    assert [(f.split, f.class_name, f.relpath, f.source) for f in result.files] == [
        ("", "NORMAL", "peds:NORMAL/a.png", "peds"),
        ("", "PNEUMONIA", "peds:Pneumonia/site1/deep/b.png", "peds")]
    assert [r[0] for r in result.rejected] == ["peds:NORMAL/notes.txt"]


def test_any_subset_of_split_folders_and_a_clear_error_for_neither(tmp_path):
    _png(tmp_path / "ext" / "test" / "COVID19" / "a.png")
    result = sources.scan_sources(tmp_path / "ext")
    assert [(f.split, f.relpath) for f in result.files] == [("test", "test/COVID19/a.png")]
    _png(tmp_path / "scans" / "misc" / "b.png")
    with pytest.raises(ValueError, match=r"neither split folders .* nor class folders .*found "
                                         r"\['misc'\].*--labels_csv"):
        sources.scan_sources(tmp_path / "scans")


def test_kaggle_layout_problems_is_the_converter_check(tmp_path):
    _png(tmp_path / "train" / "NORMAL" / "a.png")
    assert sources.kaggle_layout_problems(tmp_path)[0] == "no test/ folder"
    (tmp_path / "train" / "TB").mkdir()
    assert "Unexpected folder(s) ['TB']" in sources.kaggle_layout_problems(tmp_path)[0]


# ---------------------------------------------------------------------------------------------
# Labels CSV.


def test_label_map_and_the_multi_label_rule():
    label_map = labels_csv.parse_label_map("No Finding=NORMAL, covid-19=covid19,Pneumonia=PNEUMONIA")
    assert labels_csv.map_label("No Finding", label_map) == ("NORMAL", False)
    assert labels_csv.map_label("COVID-19", label_map) == ("COVID19", False)  # case-insensitive
    assert labels_csv.map_label("normal", label_map) == ("NORMAL", False)  # class names map to themselves
    assert labels_csv.map_label("Pneumonia|Effusion", label_map) == ("PNEUMONIA", False)
    assert labels_csv.map_label("Effusion|Mass", label_map) == ("", False)  # nothing mapped
    assert labels_csv.map_label("COVID-19|No Finding", label_map) == ("", True)  # two classes
    with pytest.raises(ValueError, match="CLASS in"):
        labels_csv.parse_label_map("Effusion=TB")
    with pytest.raises(ValueError, match="role=Column Name"):
        labels_csv.parse_columns("image=Image Index")


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_rows_become_sources_with_rejects_skips_hash_and_metadata(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        _png(tmp_path / "images" / f"{name}.png")
    (tmp_path / "images" / "f.txt").write_text("x")
    csv_path = _csv(tmp_path / "labels.csv",
                    ["Image Index", "Finding Labels", "Patient ID", "Fold", "View"],
                    [["images/a.png", "No Finding", "P7", "train", "PA"],
                     ["images/b.png", "Pneumonia|Effusion", "P7", "", ""],
                     ["images/c.png", "Effusion", "P8", "", "AP"],
                     ["images/d.png", "COVID-19", "P9", "holdout", ""],
                     ["images/a.png", "No Finding", "P7", "train", "PA"],
                     ["images/gone.png", "No Finding", "P1", "test", ""],
                     ["../outside.png", "No Finding", "P1", "", ""],
                     ["images/f.txt", "COVID-19", "P2", "", ""],
                     ["images/e.png", "COVID-19|No Finding", "", "Validation", ""]])
    spec = sources.SourceSpec("nih", str(tmp_path), str(csv_path))
    key = patients.derive_key(0)
    result = labels_csv.read_labels_csv(
        spec, "path=Image Index,label=Finding Labels,patient_id=Patient ID,split=Fold",
        "No Finding=NORMAL,COVID-19=COVID19,Pneumonia=PNEUMONIA", key)
    assert [(f.relpath, f.class_name, f.split) for f in result.files] == [
        ("nih:images/a.png", "NORMAL", "train"), ("nih:images/b.png", "PNEUMONIA", "")]
    a, b = result.files
    assert a.patient == b.patient == patients.patient_hash(key, "nih", "P7") and len(a.patient) == 64
    assert "P7" not in a.patient and json.loads(a.metadata) == {"View": "PA"} and b.metadata == ""
    reasons = dict(result.rejected)
    assert reasons["nih:images/a.png"].startswith("duplicate row in labels.csv: line 6 repeats line 2")
    assert reasons["nih:images/d.png"].startswith("unknown split 'holdout'")
    assert reasons["nih:images/gone.png"].startswith("missing: listed in labels.csv line 7")
    assert "outside data_dir" in reasons["nih:../outside.png"]
    assert reasons["nih:images/f.txt"].startswith("unsupported extension '.txt'")
    details = dict(result.details)["labels_csv"]
    assert details["rows"] == 9 and details["ambiguous_rows"] == 1
    assert details["skipped_labels"] == {"COVID-19|No Finding": 1, "Effusion": 1}
    assert details["rejected_rows"] == {"duplicate_row": 1, "missing_file": 1, "outside_data_dir": 1,
                                        "unknown_split": 1, "unsupported_extension": 1}


def test_csv_missing_column_names_the_columns_and_the_flag(tmp_path):
    csv_path = _csv(tmp_path / "l.csv", ["file", "label"], [["x.png", "NORMAL"]])
    with pytest.raises(ValueError, match=r"no 'path' column for 'path'; its columns are "
                                         r"\['file', 'label'\].*--csv_columns=path="):
        labels_csv.read_labels_csv(sources.SourceSpec("", str(tmp_path), str(csv_path)), "", "", b"k")
    csv_path = _csv(tmp_path / "l.csv", ["path", "label"], [["x.png", "NORMAL"]])
    with pytest.raises(ValueError, match="no 'PID' column for 'patient_id'"):  # explicitly named
        labels_csv.read_labels_csv(sources.SourceSpec("", str(tmp_path), str(csv_path)),
                                   "patient_id=PID", "", b"k")


def test_latin1_csv_is_one_line_naming_the_file_the_encoding_and_the_fix(tmp_path):
    _png(tmp_path / "a.png")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes("path,label,site\na.png,NORMAL,H\u00f4pital Saint-\u00c9tienne\n"
                         .encode("latin-1"))
    with pytest.raises(ValueError) as err:
        labels_csv.read_labels_csv(sources.SourceSpec("", str(tmp_path), str(csv_path)), "", "",
                                   b"k")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"labels_csv={str(csv_path)!r} is not UTF-8: byte 0xf4 on line 2 ")
    assert "Latin-1" in message and "Re-save it as UTF-8" in message
    # The same text saved as UTF-8 (with or without Excel's BOM) reads, metadata intact.
    for bom in (b"", b"\xef\xbb\xbf"):
        csv_path.write_bytes(bom + "path,label,site\na.png,NORMAL,H\u00f4pital\n".encode())
        result = labels_csv.read_labels_csv(sources.SourceSpec("", str(tmp_path), str(csv_path)),
                                            "", "", b"k")
        assert json.loads(result.files[0].metadata) == {"site": "H\u00f4pital"}


# ---------------------------------------------------------------------------------------------
# Patient hashes, groups, overlaps.


def test_patient_hash_is_keyed_per_collection_and_never_the_id():
    seed_key = patients.derive_key(0)
    assert patients.derive_key(0) == seed_key != patients.derive_key(1)
    assert patients.derive_key(0, "s3cret") == b"s3cret"
    h = patients.patient_hash(seed_key, "nih", " 00042 ")
    assert h == patients.patient_hash(seed_key, "nih", "00042") and "00042" not in h
    assert h != patients.patient_hash(seed_key, "chex", "00042")  # same id, other collection
    assert h != patients.patient_hash(b"s3cret", "nih", "00042")
    assert patients.patient_hash(seed_key, "nih", "") == ""
    assert patients.key_fingerprint("s3cret") != patients.key_fingerprint("other")
    assert "s3cret" not in patients.key_fingerprint("s3cret")


def test_groups_join_patients_through_duplicate_links():
    keys = ["a", "b", "c", "d", "e"]
    groups = patients.groups(keys, {"a": "p1", "c": "p1", "b": "p2", "d": "p3"}, [["c", "d"]])
    assert groups == {"a": "a", "c": "a", "d": "a", "b": "b", "e": "e"}


def test_overlapping_patients_name_images_not_ids():
    files = [SimpleNamespace(relpath=r, split=s, patient=p) for r, s, p in [
        ("x1", "train", "h1"), ("x2", "test", "h1"), ("y1", "train", "h2"), ("y2", "", "h2")]]
    overlaps = patients.overlapping_patients(files)
    assert overlaps == [("h1", [("test", "x2"), ("train", "x1")])]
    assert patients.overlap_message(overlaps).startswith(
        "1 patient(s) appear in more than one split of the input, e.g. the patient of 'x2' (test) "
        "and 'x1' (train)")


# ---------------------------------------------------------------------------------------------
# Split assignment.


def _f(relpath: str, class_name: str = "NORMAL", split: str = "", source: str = ""):
    return SimpleNamespace(relpath=relpath, class_name=class_name, split=split, source=source)


def test_assign_splits_matches_the_former_val_carve_on_a_train_test_folder():
    files = [_f(f"train/{c}/{i}", c, "train") for c in ("NORMAL", "COVID19") for i in range(9)]
    files += [_f(f"test/NORMAL/{i}", "NORMAL", "test") for i in range(3)]
    split_of = shard_plan.assign_splits(files, val_fraction=0.25, seed=4)
    val = shard_plan.carve({f.relpath: f.class_name for f in files if f.split == "train"}, 0.25,
                           4, "val")
    assert {k for k, s in split_of.items() if s == "val"} == val
    assert {k for k, s in split_of.items() if s == "test"} == {f"test/NORMAL/{i}" for i in range(3)}


def test_assign_splits_carves_test_then_val_from_class_folders_by_default_fraction():
    files = [_f(f"{c}/{i:02d}", c) for c in ("NORMAL", "PNEUMONIA") for i in range(20)]
    split_of = shard_plan.assign_splits(files, val_fraction=0.1, seed=0)
    for c in ("NORMAL", "PNEUMONIA"):
        counts = [sum(1 for k, s in split_of.items() if k.startswith(c) and s == split)
                  for split in ("train", "val", "test")]
        assert counts == [14, 2, 4]  # test 20 * 0.2 = 4, then val round(16 * 0.1) = 2
    assert shard_plan.assign_splits(files, val_fraction=0.1, seed=0) == split_of  # deterministic
    assert shard_plan.assign_splits(files, val_fraction=0.1, seed=1) != split_of


def test_assign_splits_keeps_groups_whole_and_follows_given_splits():
    # 12 patients with 3 images each; patient p0's first image is given as test.
    files, group_of = [], {}
    for p in range(12):
        for i in range(3):
            key = f"p{p:02d}/{i}"
            files.append(_f(key, "PNEUMONIA" if p % 2 else "NORMAL",
                            "test" if (p, i) == (0, 0) else ""))
            group_of[key] = f"p{p:02d}/0"
    split_of = shard_plan.assign_splits(files, val_fraction=0.25, seed=3, group_of=group_of)
    for p in range(12):
        assert len({split_of[f"p{p:02d}/{i}"] for i in range(3)}) == 1  # a patient in one split
    assert split_of["p00/1"] == "test"  # follows the patient's given test image
    assert sum(s == "val" for s in split_of.values()) > 0
    # The collection has given test images: no test carve (only p00 is test).
    assert sorted(k for k, s in split_of.items() if s == "test") == ["p00/0", "p00/1", "p00/2"]


def test_holdout_source_is_the_whole_test_split():
    files = [_f(f"kaggle:{s}/{c}/{i}", c, s, "kaggle") for s in ("train", "test")
             for c in ("NORMAL", "COVID19") for i in range(5)]
    files += [_f(f"nih:{c}/{i}", c, "", "nih") for c in ("NORMAL", "PNEUMONIA") for i in range(4)]
    split_of = shard_plan.assign_splits(files, val_fraction=0.2, seed=0, holdout_source="nih")
    assert {k for k, s in split_of.items() if s == "test"} == {f.relpath for f in files
                                                             if f.source == "nih"}
    kaggle_val = [k for k, s in split_of.items() if s == "val"]
    assert kaggle_val and all(k.startswith("kaggle:") for k in kaggle_val)


def test_collect_scan_merges_collections_sorted_with_facts(tmp_path):
    _png(tmp_path / "a" / "train" / "NORMAL" / "x.png")
    _png(tmp_path / "a" / "test" / "NORMAL" / "y.png")
    _png(tmp_path / "b" / "COVID19" / "z.png")
    inputs = collect.scan(sources.parse_source_specs(f"k={tmp_path / 'a'},e={tmp_path / 'b'}"))
    assert [f.relpath for f in inputs.files] == ["e:COVID19/z.png", "k:test/NORMAL/y.png",
                                                 "k:train/NORMAL/x.png"]
    assert inputs.collections == {"k": {"layout": "splits", "splits_given": ["test", "train"]},
                                  "e": {"layout": "classes", "splits_given": []}}
    assert not inputs.legacy
    assert collect.scan(sources.parse_source_specs(str(tmp_path / "a"))).legacy


def test_collect_scan_mixes_a_folder_and_a_csv_collection(tmp_path):
    _png(tmp_path / "kaggle" / "test" / "COVID19" / "a.png")
    _png(tmp_path / "nih" / "x" / "b.png")
    _csv(tmp_path / "nih" / "l.csv", ["path", "label", "pid"], [["x/b.png", "Pneumonia", "7"]])
    specs = sources.parse_source_specs(f"kaggle={tmp_path / 'kaggle'},nih={tmp_path / 'nih'}",
                                       f"nih={tmp_path / 'nih' / 'l.csv'}")
    inputs = collect.scan(specs, csv_columns="patient_id=pid", label_map="Pneumonia=PNEUMONIA",
                          key=b"k")
    assert [(f.relpath, f.class_name, f.source, bool(f.patient)) for f in inputs.files] == [
        ("kaggle:test/COVID19/a.png", "COVID19", "kaggle", False),
        ("nih:x/b.png", "PNEUMONIA", "nih", True)]
    assert inputs.collections["nih"]["layout"] == "csv" and not inputs.legacy
