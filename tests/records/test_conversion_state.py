"""The converter's output-dir safety: the build lock, a data-only spill, resume that checks
content, and one-line messages for write errors and refused builds."""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata import files
from xray_tfdata.records import (conversion_state, convert, decode_pass, features, manifest,
                                 shard_writer)

CLASSES = ("NORMAL", "COVID19", "PNEUMONIA")


def _flat_bmps(root: Path, per_split: dict[str, int]) -> dict[str, int]:
    """One flat gray BMP per source, each with its own value: relpath -> value. BMPs because
    an in-place rewrite with other pixels keeps the file's size (the case resume must catch)."""
    values, value = {}, 7
    for split, n in per_split.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                relpath = f"{split}/{name}/{i}.bmp"
                cv2.imwrite(str(root / relpath), np.full((24, 20), value, np.uint8))
                values[relpath], value = value, value + 9
    return values


def _config(data: Path, out: Path, **kwargs) -> convert.ConversionConfig:
    base = dict(image_size=8, min_shards=1, num_workers=1, image_format="png", val_fraction=0.0)
    return convert.ConversionConfig(data_dir=str(data), output_dir=str(out), **{**base, **kwargs})


def _pixels_by_path(out: Path) -> dict[str, tuple[set[int], str]]:
    """source_path -> (the record's distinct pixel values, its source_sha256), every split."""
    info = manifest.read_manifest(out)
    found = {}
    for split in info["splits"]:
        for raw in tf.data.TFRecordDataset(manifest.split_files(out, info, split)):
            ex = tf.io.parse_single_example(raw, features.FEATURE_SPEC)
            image = tf.io.decode_png(ex["image/encoded"]).numpy()
            found[ex["image/source/path"].numpy().decode()] = (
                set(np.unique(image).tolist()), ex["image/source/sha256"].numpy().decode())
    return found


@pytest.fixture
def data(tmp_path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "data"
    return root, _flat_bmps(root, {"train": 3, "test": 1})


def test_a_second_build_into_a_locked_dir_is_refused_naming_the_holder(data, tmp_path):
    root, _ = data
    out = tmp_path / "out"
    # flock conflicts between two open files even in one process: the same as another process.
    with conversion_state.build_lock(out):
        with pytest.raises(convert.ConversionError,
                           match=rf"output_dir='{out}' is being built by another build_records "
                                 rf"\(pid {os.getpid()} on .*, started .* UTC\)\. Wait for it"):
            convert.build_records(_config(root, out), progress=False)
    # Released on exit: the same build now runs, and leaves no lock litter behind.
    convert.build_records(_config(root, out), progress=False)
    assert not (out / conversion_state.WORK_DIR).exists()


class _Planted:
    """A pickle that would create `marker` when unpickled (what a planted spill could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_planted_pickle_spill_is_ignored_not_executed(data, tmp_path, caplog):
    root, values = data
    out, marker = tmp_path / "out", tmp_path / "executed"
    config = _config(root, out)
    # What a killed build leaves, as an earlier converter wrote it: state.json + pickle frames.
    work = out / conversion_state.WORK_DIR
    work.mkdir(parents=True)
    files.write_json(work / conversion_state.STATE_NAME, {"args": config.manifest_args()})
    payload = pickle.dumps(_Planted(marker))
    (work / "pass1.spill").write_bytes(struct.pack("<Q", len(payload)) + payload)
    convert.build_records(config, progress=False)
    assert not marker.exists()
    assert "not a spill this converter wrote" in caplog.text
    assert {k: v[0] for k, v in _pixels_by_path(out).items()} == {k: {v} for k, v in values.items()}


def test_resume_notices_a_source_rewritten_in_place_with_its_mtime_restored(
        data, tmp_path, monkeypatch):
    root, values = data
    out = tmp_path / "out"
    calls: list[str] = []
    monkeypatch.setattr(decode_pass, "process_source",
                        fixtures.crash_after(4, decode_pass.process_source, calls))
    with pytest.raises(KeyboardInterrupt):
        convert.build_records(_config(root, out), progress=False)
    monkeypatch.undo()
    changed = root / calls[0]  # in the spill of the killed run
    before = changed.stat()
    cv2.imwrite(str(changed), np.full((24, 20), 250, np.uint8))
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert decode_pass.file_signature(str(changed)) == (before.st_size, before.st_mtime_ns)

    convert.build_records(_config(root, out), progress=False)
    pixels, sha = _pixels_by_path(out)[calls[0]]
    assert pixels == {250} and sha == files.sha256_file(changed)
    assert all(_pixels_by_path(out)[k][0] == {v} for k, v in values.items() if k != calls[0])


@pytest.mark.slow
def test_a_worker_killed_by_the_os_fails_in_one_line_and_the_rerun_resumes(data, tmp_path):
    """multiprocessing.Pool.imap waited forever for a task whose worker the OOM killer took."""
    import multiprocessing
    import signal
    import threading

    root, values = data
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        # Once both workers are up (killing one mid-start-up races CPython's own executor).
        while not killed and time.monotonic() < deadline:
            children = multiprocessing.active_children()
            if len(children) >= 2:
                time.sleep(0.2)
                os.kill(children[0].pid, signal.SIGKILL)  # what the OOM killer does
                killed.append(children[0].pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    with pytest.raises(convert.ConversionError) as err:
        convert.build_records(_config(root, out, num_workers=2), progress=False)
    killer.join()
    assert killed
    message = str(err.value)
    assert "worker process died" in message and "--num_workers (now 2)" in message
    assert "\n" not in message and "rerun the same command to resume" in message

    convert.build_records(_config(root, out, num_workers=1), progress=False)
    assert {k: v[0] for k, v in _pixels_by_path(out).items()} == {k: {v} for k, v in values.items()}


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "it is on a read-only file system")])
def test_a_write_error_is_one_line_with_the_fix(data, tmp_path, monkeypatch, code, says):
    root, _ = data

    def full(path, records, compression=""):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shard_writer, "write_shard", full)
    with pytest.raises(convert.ConversionError) as err:
        convert.build_records(_config(root, tmp_path / "out"), progress=False)
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None
    assert (f"Cannot write to output_dir='{tmp_path / 'out'}': {says} ({os.strerror(code)})"
            in message)
    assert "choose another --output_dir; rerunning the same command resumes" in message


def test_an_output_dir_under_a_file_is_one_line(data, tmp_path):
    root, _ = data
    (tmp_path / "afile").write_text("x")
    with pytest.raises(convert.ConversionError,
                       match=r"Cannot write to output_dir=.*afile/out.*: a part of its path is a "
                             r"file, not a directory"):
        convert.build_records(_config(root, tmp_path / "afile" / "out"), progress=False)


def test_after_a_build_with_nothing_usable_the_corrected_rerun_proceeds(data, tmp_path):
    root, values = data
    wrong = tmp_path / "wrong"
    for split in ("train", "test"):
        (wrong / split / "NORMAL").mkdir(parents=True)
        (wrong / split / "NORMAL" / "x.png").write_text("not an image")
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError, match="No usable images") as err:
        convert.build_records(_config(wrong, out, max_reject_fraction=1.0), progress=False)
    convert.build_records(_config(root, out), progress=False)  # the corrected --data_dir
    assert len(_pixels_by_path(out)) == len(values)
    assert "2 rejected (2 not an image; e.g. test/NORMAL/x.png: not an image" in str(err.value)


def test_too_many_missing_rows_point_at_a_list_that_exists(data, tmp_path, caplog):
    root, values = data
    rows = [f"{k},{k.split('/')[1]}" for k in values] + [f"gone/{i}.png,NORMAL" for i in range(30)]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError) as err:
        convert.build_records(_config(root, out, labels_csv=str(csv_path)), progress=False)
    listing = out / conversion_state.WORK_DIR / "rejected.json"
    message = str(err.value)
    assert "(30 missing; e.g. gone/0.png: missing: listed in labels.csv line" in message
    assert f"all are listed in {listing}" in message and "\n" not in message
    assert f"10 more rejected files ({listing} lists all of them)" in caplog.text
    listed = json.loads(listing.read_text())["rejected"]
    assert sorted(r["path"] for r in listed) == sorted(f"gone/{i}.png" for i in range(30))
    # The listing sits beside the resumable spill: the same command with the loss accepted goes on.
    convert.build_records(_config(root, out, labels_csv=str(csv_path), max_reject_fraction=0.9),
                          progress=False)
    assert not (out / conversion_state.WORK_DIR).exists()
