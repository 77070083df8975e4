"""DICOM through the real converter command: records with lungs dark, and no protected health
information in any output byte (shards, manifest, logs at full verbosity)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tests.records import dicom_files as D
from xray_tfdata.records import features

SIZE = 16
_MAKERS = (D.chest_12bit_windowed, D.chest_16bit_rescaled, D.chest_monochrome1)


def _kaggle_folder(root: Path, names: tuple[str, ...]) -> dict[str, int]:
    """train/ and test/ class folders holding PHI-carrying DICOMs under each file name pattern,
    plus rejects that carry PHI too (multi-frame, truncated). Returns {relpath: class index}."""
    written = {}
    for split, copies in (("train", 3), ("test", 1)):
        for label, class_name in enumerate(("NORMAL", "COVID19", "PNEUMONIA")):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(copies):
                for pattern in names:
                    make = _MAKERS[(i + label) % len(_MAKERS)]
                    ds = make(**D.PHI)
                    # A different pixel per file, so dedupe sees distinct images.
                    pixels = np.frombuffer(ds.PixelData, np.uint16).copy()
                    pixels[label * 7 + i] ^= 0x0F
                    ds.PixelData = pixels.tobytes()
                    name = pattern.format(i=i)
                    D.write(folder / name, ds)
                    written[f"{split}/{class_name}/{name}"] = label
    bad = root / "train" / "NORMAL"
    D.write(bad / "multi.png", D.multi_frame())
    bad_ds = D.chest_12bit_windowed(**D.PHI)
    (bad / "cut.png").write_bytes(D.to_bytes(bad_ds)[:-200])
    for name, make in _MALFORMED.items():
        D.write(bad / name, make())
    return written


# Malformed files (issue 16): each stopped the whole conversion with a pool traceback naming no
# file, or put the tag's value (a patient's name) into the manifest and the log.
_MALFORMED = {
    "voi_lut_65535.dcm": lambda: D.voi_lut(65535, **D.PHI),
    "frames_abc.dcm": lambda: D.number_of_frames(b"abc", **D.PHI),
    "frames_name.dcm": lambda: D.number_of_frames(D.PHI["PatientName"].encode(), **D.PHI),
    "bits_allocated_1.dcm": lambda: D.bits_allocated_one(**D.PHI),
    "rgb16_12000px.dcm": lambda: D.rgb16_rle(12000, 12000),
}
_MALFORMED_REASONS = {
    "voi_lut_65535.dcm": "corrupt DICOM (VOI LUT bit depth 65535, allowed 1..16)",
    "frames_abc.dcm": "corrupt DICOM (NumberOfFrames is not a whole number)",
    "frames_name.dcm": "corrupt DICOM (NumberOfFrames is not a whole number)",
    "bits_allocated_1.dcm": "unsupported DICOM BitsAllocated 1 (allowed: 8, 16, 32)",
    "rgb16_12000px.dcm": ("decoding needs 824.0 MiB, over the limit of 512.0 MiB per image "
                          "(refused before decoding)"),
}


def _convert(data_dir: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(fixtures.REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "0"}
    return subprocess.run(
        [sys.executable, "-m", "xray_tfdata.build_records", f"--data_dir={data_dir}",
         f"--output_dir={out}", f"--image_size={SIZE}", "--image_format=raw", "--num_workers=2",
         "--min_shards=1", "--val_fraction=0.2", "--max_reject_fraction=1.0", "--verbosity=1"],
        capture_output=True, timeout=300, cwd=fixtures.REPO_ROOT, env=env)


def _records(out: Path) -> list[dict]:
    spec = features.parse_spec()
    rows = []
    for shard in sorted(out.glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(shard)):
            parsed = tf.io.parse_single_example(raw, spec)
            rows.append({k: v.numpy() for k, v in parsed.items()})
    return rows


def _phi_strings() -> list[bytes]:
    parts = set()
    for value in D.PHI.values():
        parts.add(value)
        parts.update(p for p in value.replace("^", " ").split() if len(p) >= 5)
    return sorted(p.encode() for p in parts)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_convert")
    # DICOMs named .png (the extension is never trusted), .dcm, and extension-less (PACS style).
    written = _kaggle_folder(root / "data", ("scan{i}.png", "scan{i}.dcm", "IM{i:04d}"))
    out = root / "records"
    proc = _convert(root / "data", out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return written, out, proc, root / "data"


def test_no_phi_in_any_output_byte(converted):
    written, out, proc, data_dir = converted
    source = (data_dir / next(iter(written))).read_bytes()
    assert all(phi in source for phi in _phi_strings())  # the search does find PHI when present
    outputs = {"stdout": proc.stdout, "stderr": proc.stderr}
    outputs.update({str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert any(name.endswith(".tfrecord") for name in outputs)
    assert b"Rejected" in proc.stderr  # the logs were really captured at full verbosity
    leaks = [(name, phi) for name, blob in outputs.items() for phi in _phi_strings()
             if phi.lower() in blob.lower()]
    assert not leaks


def test_dicom_records_have_dark_lungs_and_rejects_have_reasons(converted):
    written, out, _, _ = converted
    manifest = json.loads((out / "dataset_info.json").read_text())
    reasons = {r["path"]: r["reason"] for r in manifest["rejected"]}
    assert reasons["train/NORMAL/multi.png"].startswith("multi-frame DICOM (3 frames)")
    assert reasons["train/NORMAL/cut.png"].startswith("truncated DICOM (pixel data has")
    for name, reason in _MALFORMED_REASONS.items():
        assert reasons[f"train/NORMAL/{name}"] == reason
    rows = _records(out)
    converted_paths = {r[features.SOURCE_PATH].decode() for r in rows}
    assert {p for p in written if p.endswith(".png")} <= converted_paths
    assert converted_paths <= set(written)
    lungs = np.asarray(tf.image.resize(D.lung_mask()[..., None].astype(np.float32),
                                       (SIZE, SIZE), method="area"))[..., 0]
    for row in rows:
        assert row[features.SOURCE_FORMAT] == b"DICOM"
        image = np.frombuffer(row[features.ENCODED], np.uint8).reshape(SIZE, SIZE)
        assert image[lungs > 0.99].mean() + 80 < image[lungs < 0.01].mean()
        assert row[features.LABEL] == written[row[features.SOURCE_PATH].decode()]


def test_dcm_and_extensionless_files_and_tags_reach_the_records(converted):
    written, out, _, _ = converted
    rows = _records(out)
    assert {r[features.SOURCE_PATH].decode() for r in rows} == set(written)
    for row in rows:
        assert row[features.DICOM_TAG_KEYS["Modality"]] == b"DX"
        assert row[features.DICOM_TAG_KEYS["ViewPosition"]] == b"PA"
        assert row[features.DICOM_TAG_KEYS["Manufacturer"]] == b"Acme Detectors"
        assert row[features.DICOM_TAG_KEYS["PixelSpacing"]] == b"0.139\\0.139"
        assert row[features.DICOM_TAG_KEYS["BitsStored"]] in (b"12", b"16")
        assert row[features.DICOM_TAG_KEYS["PhotometricInterpretation"]] in (
            b"MONOCHROME1", b"MONOCHROME2")
