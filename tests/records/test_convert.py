"""The converter end to end on tiny data: round trip, determinism, resume, bad inputs, refusals."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata import files, labels
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import (
    conversion_state,
    convert,
    decode_pass,
    features,
    image_io,
    intensity,
    manifest,
    offline_augment,
    shard_writer,
    synthetic,
)

SIZE = 16
COUNTS = {"train": {"NORMAL": 6, "COVID19": 5, "PNEUMONIA": 6},
          "test": {"NORMAL": 2, "COVID19": 2, "PNEUMONIA": 2}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    synthetic.generate_dataset(out, COUNTS, min_size=40, max_size=90, formats=("jpeg", "png"),
                               modes=("L", "RGB", "I;16"), seed=3)
    return out


def _config(data: Path, out: Path, **kwargs) -> convert.ConversionConfig:
    base = dict(image_size=SIZE, min_shards=2, num_workers=1, image_format="png",
                augment="COVID19:gamma0.5,mean3", near_distance=0)
    return convert.ConversionConfig(data_dir=str(data), output_dir=str(out), **{**base, **kwargs})


def _shas(out: Path) -> dict[str, str]:
    return {p.name: files.sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}


def _read(out: Path, split: str) -> list[dict]:
    info = manifest.read_manifest(out)
    files = manifest.split_files(out, info, split)
    ds = tf.data.TFRecordDataset(files, compression_type=info["compression"] or None)
    ds = ds.map(lambda x: tf.io.parse_single_example(x, features.FEATURE_SPEC))
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("reference")
    result = convert.build_records(_config(data_dir, out), progress=False)
    return out, result


def test_round_trip_checks_every_field(data_dir, reference):
    out, result = reference
    assert json.loads((out / manifest.MANIFEST_NAME).read_text()) == result
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [manifest.MANIFEST_NAME] + [s["file"] for i in result["splits"].values() for s in i["shards"]])
    ops = {op.name: op for op in offline_augment.parse_augment_spec("COVID19:gamma0.5,mean3")["COVID19"]}
    seen_paths: dict[str, str] = {}
    for split in ("train", "val", "test"):
        records = _read(out, split)
        info = result["splits"][split]
        assert len(records) == info["num_examples"] == sum(s["num_examples"] for s in info["shards"])
        for shard in info["shards"]:
            assert files.sha256_file(out / shard["file"]) == shard["sha256"]
            assert (out / shard["file"]).stat().st_size == shard["bytes"]
        for r in records:
            path = r[features.SOURCE_PATH].decode()
            class_name = r[features.CLASS_TEXT].decode()
            aug = r[features.AUGMENTATION].decode()
            assert seen_paths.setdefault(path, split) == split  # a source lives in one split
            assert path.split("/")[1] == class_name and path.split("/")[0] in ("train", "test")
            assert r[features.LABEL] == labels.LABEL_MAP[class_name]
            assert (r[features.FORMAT], r[features.HEIGHT], r[features.WIDTH],
                    r[features.CHANNELS]) == (b"png", SIZE, SIZE, 1)
            data = (data_dir / path).read_bytes()
            gray, src = image_io.read_source(data_dir / path, target_size=SIZE)  # as the converter
            assert r[features.SOURCE_SHA256].decode() == hashlib.sha256(data).hexdigest()
            assert r[features.SOURCE_BYTES] == len(data)
            assert (r[features.SOURCE_WIDTH], r[features.SOURCE_HEIGHT]) == (src.width, src.height)
            assert src.width >= gray.shape[1] and src.height >= gray.shape[0]
            assert r[features.SOURCE_MODE].decode() == src.mode
            assert r[features.SOURCE_FORMAT].decode() == src.format
            expected = image_io.resize(gray, SIZE, "stretch")
            if aug != "none":
                assert split == "train" and class_name == "COVID19"  # variants: train only
                expected = ops[aug](expected)
            decoded = tf.io.decode_png(r[features.ENCODED]).numpy()
            np.testing.assert_array_equal(decoded, expected[..., None])
        originals = Counter(r[features.CLASS_TEXT].decode() for r in records
                            if r[features.AUGMENTATION] == b"none")
        assert info["originals_per_class"] == {c: originals[c] for c in labels.CLASS_NAMES}
        assert info["per_class"] == {c: info["originals_per_class"][c] + info["variants_per_class"][c]
                                     for c in labels.CLASS_NAMES}
    train = result["splits"]["train"]
    assert train["variants_per_class"] == {"NORMAL": 0, "COVID19": 2 * train["originals_per_class"]
                                           ["COVID19"], "PNEUMONIA": 0}
    # Stratified val carve: 10% of each class, rounded, at least one.
    assert result["splits"]["val"]["per_class"] == {"NORMAL": 1, "COVID19": 1, "PNEUMONIA": 1}
    assert len(train["shards"]) == 2 and result["rejected"] == []
    assert set(seen_paths) == {p.relative_to(data_dir).as_posix()
                               for p in data_dir.rglob("*") if p.is_file()}
    assert "num_workers" not in result["args"] and result["args"]["image_size"] == SIZE
    manifest.check_compatible(result, image_size=SIZE, channels=1)


def test_gzip_raw_three_channels_round_trip_and_reproduce(data_dir, tmp_path):
    config = _config(data_dir, tmp_path / "a", compression="GZIP", image_format="raw",
                     channels=3, augment="", num_shards=3)
    result = convert.build_records(config, progress=False)
    assert [len(i["shards"]) for i in result["splits"].values()] == [3, 3, 3]
    records = _read(tmp_path / "a", "test")
    assert len(records) == 6
    for r in records:
        image = np.frombuffer(r[features.ENCODED], np.uint8).reshape(SIZE, SIZE, 3)
        gray, _ = image_io.read_source(data_dir / r[features.SOURCE_PATH].decode())
        np.testing.assert_array_equal(image, image_io.to_channels(
            image_io.resize(gray, SIZE, "stretch"), 3))
    again = convert.build_records(config.__class__(**{**config.__dict__,
                                                       "output_dir": str(tmp_path / "b")}),
                                  progress=False)
    assert again == result and _shas(tmp_path / "a") == _shas(tmp_path / "b")


def test_output_is_identical_for_one_and_two_workers(data_dir, reference, tmp_path):
    out, _ = reference
    convert.build_records(_config(data_dir, tmp_path, num_workers=2), progress=False)
    assert _shas(tmp_path) == _shas(out)


def test_rerun_restores_a_deleted_shard_and_discards_a_stale_tmp(data_dir, reference, tmp_path):
    out, result = reference
    work = tmp_path / "out"
    shutil.copytree(out, work)
    (work / "train-00001-of-00002.tfrecord").unlink()
    (work / ".train-00001-of-00002.tfrecord.tmp-4242").write_bytes(b"partial")
    assert convert.build_records(_config(data_dir, work), progress=False) == result
    assert _shas(work) == _shas(out)


def test_resume_after_crashes_in_both_passes_gives_identical_output(
        data_dir, reference, tmp_path, monkeypatch):
    out, _ = reference
    real_process, real_write = decode_pass.process_source, shard_writer.write_shard
    calls = []

    monkeypatch.setattr(decode_pass, "process_source", fixtures.crash_after(
        5, real_process, calls, "simulated crash while decoding"))
    with pytest.raises(KeyboardInterrupt):
        convert.build_records(_config(data_dir, tmp_path), progress=False)
    spill = tmp_path / conversion_state.WORK_DIR / "pass1.spill"
    with open(spill, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00torn frame")  # a kill mid-append
    assert not (tmp_path / manifest.MANIFEST_NAME).exists()

    def crash_on_second_shard(path, records, compression=""):
        if len(written) == 1:
            raise KeyboardInterrupt("simulated crash while writing")
        written.append(path)
        return real_write(path, records, compression)

    written, calls[:] = [], []
    monkeypatch.setattr(decode_pass, "process_source", lambda t, s: (calls.append(t.key),
                                                                 real_process(t, s))[1])
    monkeypatch.setattr(shard_writer, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        convert.build_records(_config(data_dir, tmp_path), progress=False)
    assert len(calls) == 23 - 5  # the five sources already in the spill are not decoded again
    monkeypatch.setattr(shard_writer, "write_shard", real_write)
    calls[:] = []
    convert.build_records(_config(data_dir, tmp_path), progress=False)
    assert calls == [] and _shas(tmp_path) == _shas(out)
    assert not (tmp_path / conversion_state.WORK_DIR).exists()


def _bad_files(root: Path) -> dict[str, str]:
    """Writes one file per bad-input case; returns relpath -> expected reason prefix."""
    folder = root / "train" / "NORMAL"
    good_jpeg = next((root / "train").rglob("*.jpg")).read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    good_png = next((root / "train").rglob("*.png")).read_bytes()
    corrupt = bytearray(good_png)  # intact chunk structure, garbled compressed pixels
    start = corrupt.index(b"IDAT") + 4
    corrupt[start:start + 16] = bytes(b ^ 0xFF for b in corrupt[start:start + 16])
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "text.png").write_text("patient list\n" * 20)
    (folder / "readme.txt").write_text("not an image")
    unreadable = folder / "unreadable.png"
    if os.geteuid() == 0:  # root reads anything: a dangling symlink is unreadable for everyone
        unreadable.symlink_to(folder / "gone.png")
    else:
        unreadable.write_bytes(good_png)
        unreadable.chmod(0)
    return {"train/NORMAL/corrupt.png": "corrupt PNG", "train/NORMAL/empty.jpg": "empty file",
            "train/NORMAL/readme.txt": "unsupported extension '.txt'",
            "train/NORMAL/text.png": "not an image (looks like text)",
            "train/NORMAL/truncated.jpg": "truncated JPEG",
            "train/NORMAL/unreadable.png": "unreadable: "}


def test_bad_inputs_are_skipped_listed_and_thresholded(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    expected = _bad_files(data)
    with pytest.raises(convert.ConversionError,
                       match=r"Rejected 6 of 29 files \(20.69%\), more than "
                             r"max_reject_fraction=0.01 .*--max_reject_fraction=0.212"):
        convert.build_records(_config(data, tmp_path / "out"), progress=False)
    result = convert.build_records(_config(data, tmp_path / "out", max_reject_fraction=0.25),
                                   progress=False)
    assert [r["path"] for r in result["rejected"]] == sorted(expected)
    for r in result["rejected"]:
        assert r["reason"].startswith(expected[r["path"]]) and r["reason"]
    # The bad files never take a val slot: val is carved from usable sources only.
    assert result["splits"]["val"]["per_class"] == {"NORMAL": 1, "COVID19": 1, "PNEUMONIA": 1}
    assert sum(i["num_examples"] for i in result["splits"].values()) == 23 + 2 * 4


def test_nothing_usable_fails_clearly(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "NORMAL").mkdir(parents=True)
        (tmp_path / split / "NORMAL" / "x.png").write_text("not an image")
    with pytest.raises(convert.ConversionError, match="No usable images in data_dir=.*2 file"):
        convert.build_records(_config(tmp_path, tmp_path / "out", max_reject_fraction=1.0),
                              progress=False)


def test_layout_error_names_found_and_expected(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "train" / "TUBERCULOSIS").mkdir()
    with pytest.raises(ValueError, match=r"Unexpected folder\(s\) \['TUBERCULOSIS'\].*expected"):
        convert.build_records(_config(data, tmp_path / "out"), progress=False)


def test_refuses_other_args_and_foreign_dirs_overwrite_starts_over(data_dir, reference, tmp_path):
    out, result = reference
    work = tmp_path / "out"
    shutil.copytree(out, work)
    with pytest.raises(convert.ConversionError,
                       match=r"different arguments: --image_size: 16 there, 8 now; --seed: 0 "
                             r"there, 1 now\. Rerun with the same arguments"):
        convert.build_records(_config(data_dir, work, image_size=8, seed=1), progress=False)
    # Same args: complete records are kept as they are.
    assert convert.build_records(_config(data_dir, work, num_workers=2), progress=False) == result
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(convert.ConversionError, match=r"is not empty \(\['mine.txt'\]\).*--overwrite"):
        convert.build_records(_config(data_dir, foreign), progress=False)
    small = convert.build_records(_config(data_dir, work, image_size=8, overwrite=True),
                                  progress=False)
    assert small["image"]["size"] == 8
    convert.build_records(_config(data_dir, foreign, overwrite=True), progress=False)
    assert (foreign / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("field, value, message", [
    ("channels", 2, "channels must be one of 1, 3. Received: channels=2"),
    ("image_size", 4, r"image_size must be an integer in \[8, 4096\] .*Received: image_size=4"),
    ("image_format", "webp", r"image_format must be one of jpeg, png, raw. Received"),
    ("compression", "zip", "compression must be '' \\(none\\) or 'GZIP'"),
    ("val_fraction", 1.0, r"val_fraction must be a number in \[0.0, 1.0\). Received: val_fraction=1.0"),
    ("min_shards", 0, "min_shards must be an integer >= 1. Received: min_shards=0"),
    ("dedupe", "remove", r"dedupe must be one of report, drop"),
    ("max_reject_fraction", 1.5, "max_reject_fraction must be a number in \\[0.0, 1.0\\]"),
    ("augment", "COVID19:blur9", "augment must be a valid augmentation spec. Received: "
                                 "augment='COVID19:blur9'"),
    ("num_workers", -1, "num_workers must be an integer >= 0"),
])
def test_config_validation_names_field_value_and_range(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        convert.ConversionConfig(data_dir="d", output_dir="o", **{field: value})
    assert err.value.field == field


def test_dedupe_reports_and_drops_a_cross_split_copy(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    source = sorted((data / "test" / "NORMAL").iterdir())[0]
    copy = data / "train" / "NORMAL" / f"copy{source.suffix}"
    shutil.copy(source, copy)
    key = copy.relative_to(data).as_posix()
    report = convert.build_records(_config(data, tmp_path / "r", augment=""), progress=False)
    group = [g for g in report["duplicates"]["exact"] if key in g["paths"]]
    assert len(group) == 1 and group[0]["cross_split"] and report["duplicates"]["dropped"] == []
    drop = convert.build_records(_config(data, tmp_path / "d", augment="", dedupe="drop"),
                                 progress=False)
    dropped = {d["path"]: d["reason"] for d in drop["duplicates"]["dropped"]}
    assert key in dropped and "exact duplicate of test:" in dropped[key]
    total = lambda m: sum(i["num_examples"] for i in m["splits"].values())  # noqa: E731
    assert total(drop) == total(report) - len(dropped)
    paths = {r[features.SOURCE_PATH].decode() for s in drop["splits"] for r in _read(tmp_path / "d", s)}
    assert key not in paths and source.relative_to(data).as_posix() in paths


def test_a_val_folder_is_used_instead_of_carving(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "val" / "NORMAL").mkdir(parents=True)
    moved = sorted((data / "train" / "NORMAL").iterdir())[0]
    shutil.move(moved, data / "val" / "NORMAL" / moved.name)
    result = convert.build_records(_config(data, tmp_path / "out", augment=""), progress=False)
    assert result["splits"]["val"]["per_class"] == {"NORMAL": 1, "COVID19": 0, "PNEUMONIA": 0}
    assert result["splits"]["train"]["num_examples"] == 16


def test_real_sample_converts_every_file_with_its_provenance(real_sample_dir, tmp_path):
    rows = list(csv.DictReader(open(real_sample_dir / "labels.csv")))
    for i, row in enumerate(rows):
        split = "test" if i % 4 == 0 else "train"
        link = tmp_path / "data" / split / row["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real_sample_dir / row["path"])
    result = convert.build_records(_config(tmp_path / "data", tmp_path / "out", augment="",
                                           image_format="jpeg", val_fraction=0.0),
                                   progress=False)
    assert result["rejected"] == []
    by_name = {row["path"]: row for row in rows}
    records = _read(tmp_path / "out", "train") + _read(tmp_path / "out", "test")
    assert len(records) == len(rows)
    for r in records:
        row = by_name[r[features.SOURCE_PATH].decode().split("/", 1)[1]]
        assert (r[features.SOURCE_WIDTH], r[features.SOURCE_HEIGHT], r[features.SOURCE_BYTES]) == (
            int(row["width"]), int(row["height"]), int(row["bytes"]))
        assert r[features.SOURCE_FORMAT].decode() == row["format"]
        assert r[features.SOURCE_MODE].decode().split(";")[0] == row["mode"]
        image = tf.io.decode_jpeg(r[features.ENCODED]).numpy()
        assert image.shape == (SIZE, SIZE, 1) and image.std() > 5  # a real picture, not a fill


def test_workers_never_import_tensorflow_even_if_the_main_script_does(tmp_path, monkeypatch):
    import multiprocessing
    import types

    script = tmp_path / "train_script.py"
    script.write_text("import tensorflow\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)  # what spawn would re-run in every worker
    monkeypatch.setitem(__import__("sys").modules, "__main__", fake_main)
    with decode_pass.main_module_hidden():
        pool = multiprocessing.get_context("spawn").Pool(1, initializer=decode_pass.init_worker)
    with pool:
        assert pool.apply(eval, ("'tensorflow' in __import__('sys').modules",)) is False
        assert pool.apply(eval, ("'xray_tfdata.records.decode_pass' in __import__('sys').modules",))


def test_progress_bar_and_summary(data_dir, tmp_path, caplog, capsys):
    caplog.set_level("INFO", logger="absl")
    convert.build_records(_config(data_dir, tmp_path, augment=""), progress=True)
    bar = capsys.readouterr().err
    assert "Converting  23/23 images  [########################]" in bar and "images/s" in bar
    assert "Done in" in caplog.text and "train 14 examples in 2 shards" in caplog.text


@pytest.mark.parametrize("mode", ["equalize", "clahe"])
def test_intensity_normalises_before_the_resize_and_is_recorded(data_dir, reference, tmp_path,
                                                                 mode):
    """--intensity: each record is resize(normalise(full-size gray)), variants are made from it,
    the manifest records the mode (args and image), deduplication is unchanged."""
    config = _config(data_dir, tmp_path / "out", image_format="raw", intensity=mode)
    result = convert.build_records(config, progress=False)
    assert result["args"]["intensity"] == mode and result["image"]["intensity"] == mode
    assert result["duplicates"] == reference[1]["duplicates"]
    records = _read(tmp_path / "out", "train")
    assert {r[features.AUGMENTATION].decode() for r in records} >= {"none", "gamma0.5"}
    for r in records:
        image = np.frombuffer(r[features.ENCODED], np.uint8).reshape(SIZE, SIZE, 1)
        gray, _ = image_io.read_source(data_dir / r[features.SOURCE_PATH].decode())
        small = image_io.resize(intensity.normalise(gray, mode), SIZE, "stretch")
        augmentation = r[features.AUGMENTATION].decode()
        if augmentation != "none":
            small = offline_augment.parse_op(augmentation)(small)
        np.testing.assert_array_equal(image, image_io.to_channels(small, 1))


def test_default_intensity_is_not_written(reference):
    """A default build's manifest has no intensity key anywhere: byte-identical to before."""
    _, result = reference
    assert "intensity" not in result["args"] and "intensity" not in result["image"]
    with pytest.raises(ConfigError, match="intensity"):
        convert.ConversionConfig(data_dir="d", output_dir="o", intensity="gamma")
