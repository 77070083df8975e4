"""Scanning the Kaggle layout, and the per-source work the converter's workers do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from xray_tfdata import labels
from xray_tfdata.records import decode_pass, image_io, sources


def _png(path: Path, value: int = 100, shape: tuple[int, ...] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full(shape, value, np.uint8)
    image[5:15, 5:20] = 255 - value  # some structure for the filters
    cv2.imwrite(str(path), image)
    return path


def test_scan_finds_images_case_insensitively_sorted_with_labels(tmp_path):
    _png(tmp_path / "train" / "covid19" / "b.PNG")
    _png(tmp_path / "train" / "Normal" / "a.png")
    _png(tmp_path / "Test" / "PNEUMONIA" / "c.png")
    (tmp_path / "train" / "Normal" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "train" / "Normal" / "notes.txt").write_text("hello")
    result = sources.scan_sources(tmp_path)
    assert [(f.split, f.class_name, f.label, f.relpath) for f in result.files] == [
        ("test", "PNEUMONIA", labels.LABEL_MAP["PNEUMONIA"], "Test/PNEUMONIA/c.png"),
        ("train", "NORMAL", 0, "train/Normal/a.png"),
        ("train", "COVID19", 1, "train/covid19/b.PNG"),
    ]
    assert Path(result.files[0].path) == tmp_path / "Test" / "PNEUMONIA" / "c.png"
    assert result.rejected == (("train/Normal/notes.txt",
                                "unsupported extension '.txt' (allowed: .jpg, .jpeg, .png, .bmp, .dcm, .dicom, or DICOM files without an extension)"),)
    assert sources.scan(tmp_path) == list(result.files)


def test_unknown_top_level_folder_lists_found_and_expected(tmp_path):
    for name in ("train", "test", "extra"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError) as err:
        sources.scan_sources(tmp_path)
    message = str(err.value)
    assert "Unexpected folder(s) ['extra']" in message
    assert "Found ['extra', 'test', 'train']" in message
    assert "expected only ['train', 'val', 'test']" in message


def test_unknown_class_folder_lists_found_and_expected(tmp_path):
    _png(tmp_path / "train" / "NORMAL" / "a.png")
    _png(tmp_path / "train" / "TB" / "b.png")
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=r"Unexpected folder\(s\) \['TB'\].*Found \['NORMAL', "
                                         r"'TB'\]; expected only \['NORMAL', 'COVID19', "
                                         r"'PNEUMONIA'\]"):
        sources.scan_sources(tmp_path)


def test_train_only_is_read_missing_dir_and_case_clash_are_errors(tmp_path):
    _png(tmp_path / "train" / "NORMAL" / "x.png")
    assert [f.relpath for f in sources.scan_sources(tmp_path).files] == ["train/NORMAL/x.png"]
    (tmp_path / "train" / "NORMAL" / "x.png").unlink()
    with pytest.raises(ValueError, match="is not a directory.*make_synthetic_dataset"):
        sources.scan_sources(tmp_path / "nope")
    (tmp_path / "test").mkdir()
    _png(tmp_path / "train" / "NORMAL" / "a.png")
    _png(tmp_path / "train" / "normal" / "b.png")
    if len(list((tmp_path / "train").iterdir())) == 2:  # case-sensitive file system
        with pytest.raises(ValueError, match="two folders for 'NORMAL'"):
            sources.scan_sources(tmp_path)


def _settings(image_format: str = "png", channels: int = 1) -> decode_pass.ProcessSettings:
    return decode_pass.ProcessSettings(image_size=16, resize_mode="stretch", channels=channels,
                                   image_format=image_format, jpeg_quality=95)


def test_process_source_decodes_once_into_every_planned_output(tmp_path):
    path = _png(tmp_path / "a.png", value=60)
    task = decode_pass.Task("train/NORMAL/a.png", str(path), ("none", "gamma0.5", "mean3"))
    result = decode_pass.process_source(task, _settings("png", channels=3))
    assert result.reason == "" and result.key == task.key
    assert (result.info.width, result.info.height, result.info.mode) == (30, 40, "L")
    assert result.signature == (path.stat().st_size, path.stat().st_mtime_ns)
    assert [name for name, _ in result.outputs] == ["none", "gamma0.5", "mean3"]
    gray, _ = image_io.read_source(path)
    expected = image_io.resize(gray, 16, "stretch")
    decoded = {name: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
               for name, data in result.outputs}
    assert decoded["none"].shape == (16, 16, 3)
    np.testing.assert_array_equal(decoded["none"][..., 0], expected)
    assert not np.array_equal(decoded["gamma0.5"], decoded["none"])  # the variant differs
    assert result.phash != 0


def test_process_source_turns_bad_files_into_reasons(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("this is not an image\n" * 5)
    results = [decode_pass.process_source(decode_pass.Task(p.name, str(p), ("none",)), _settings())
               for p in (empty, text, tmp_path / "missing.png")]
    assert [r.reason for r in results] == [
        "empty file", "not an image (looks like text)", "unreadable: FileNotFoundError"]
    assert all(r.outputs == () and r.info is None for r in results)
    assert results[2].signature == (-1, -1)
