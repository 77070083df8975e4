"""evaluation.py / evaluate.py / shortcut.py on tiny records and a tiny trained Keras model."""

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
from xray_tfdata import files
from xray_tfdata.evaluation import evaluator, shortcut

SIZE = fixtures.TINY_SIZE
BRIGHTNESS = fixtures.BRIGHTNESS
write_records = fixtures.brightness_records
tiny_model_file = fixtures.tiny_model_file


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("model") / "best.keras")


@pytest.fixture(scope="module")
def shortcut_records(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("records"), {"train": 10, "test": 6},
                         shortcut_sources=True)


def test_evaluate_writes_every_output(tiny_model, shortcut_records, tmp_path):
    config = evaluator.EvalConfig(model_path=str(tiny_model), records_dir=str(shortcut_records),
                                   split="test", output_dir=str(tmp_path / "eval"), bootstrap=200)
    result = evaluator.evaluate(config)
    out = tmp_path / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_examples"] == 18
    assert np.sum(saved["confusion_matrix"]) == 18
    assert [row["support"] for row in saved["per_class"].values()] == [6, 6, 6]
    # The tiny model reads brightness: far better than chance (1/3).
    assert saved["accuracy"] > 0.9
    ci = saved["confidence_intervals"]["accuracy"]
    assert ci["low"] <= saved["accuracy"] <= ci["high"]
    assert saved["settings"]["model_sha256"] == files.sha256_file(tiny_model)
    # COVID19's sources differ (size, format, mode): the metadata probe finds them.
    probe = saved["shortcut_probe"]
    assert probe["probe_per_class_f1"]["COVID19"] == pytest.approx(1.0)
    assert probe["warning"] is (probe["probe_macro_f1"] >= 0.8 * saved["macro_f1"])
    assert result["macro_f1"] == saved["macro_f1"]
    report = (out / "report.txt").read_text()
    assert "PNEUMONIA" in report and "shortcut probe" in report
    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert tf.image.decode_png(png).shape[0] > 100
    tags = set()
    for event_file in (out / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert {"test/confusion_matrix", "test/accuracy", "test/macro_f1",
            "test/sensitivity/COVID19"} <= tags


def test_default_output_dir_is_next_to_the_model():
    config = evaluator.EvalConfig(model_path="/m/best.keras", records_dir="r", split="val")
    assert config.resolved_output_dir == Path("/m/eval/val")


@pytest.mark.parametrize("field, value, match", [
    ("split", "dev", "split='dev'"), ("batch_size", 0, "batch_size=0"),
    ("model_path", "/m/export", ".keras"), ("bootstrap", -1, "bootstrap=-1"),
])
def test_config_rejects_bad_values(field, value, match):
    args = dict(model_path="/m/best.keras", records_dir="r")
    args[field] = value
    with pytest.raises(ValueError, match=match):
        evaluator.EvalConfig(**args)


def _meta(labels_: np.ndarray, rng: np.random.Generator, shortcut_sources: bool) -> dict:
    rows = [fixtures.source_metadata(int(label), rng, shortcut_sources) for label in labels_]
    meta = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    meta["label"] = labels_.astype(np.int32)
    return meta


def test_probe_warns_on_source_shortcut_and_not_on_random_metadata():
    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat(np.arange(3), 40), np.repeat(np.arange(3), 15)
    hit = shortcut.run_probe(_meta(y_train, rng, True), _meta(y_test, rng, True), 0.9)
    assert hit["probe_per_class_f1"]["COVID19"] == pytest.approx(1.0)
    # Sources separate COVID19 only: NORMAL vs PNEUMONIA stay near chance between the two.
    assert 0.55 < hit["probe_macro_f1"] < 0.95
    miss = shortcut.run_probe(_meta(y_train, rng, False), _meta(y_test, rng, False), 0.9)
    assert miss["probe_macro_f1"] < 0.6 and miss["warning"] is False
    assert "below" in miss["message"]
    # Against a weak CNN the same shortcut probe triggers the warning.
    weak = shortcut.run_probe(_meta(y_train, rng, True), _meta(y_test, rng, True), 0.6)
    assert weak["warning"] is True and weak["message"].startswith("WARNING")
    assert "source collection" in weak["message"]
    assert weak["ratio"] == pytest.approx(weak["probe_macro_f1"] / 0.6)


def test_probe_ignores_augmented_copies_and_unseen_values():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    train = _meta(y, rng, False)
    train["augmentation"] = np.array(["none"] * 30)
    # 50 augmented COVID19 copies would otherwise dominate the probe's training set.
    extra = _meta(np.ones(50, int), rng, True)
    extra["augmentation"] = np.array(["gamma0.4"] * 50)
    merged = {k: np.concatenate([train[k], extra[k]]) for k in train}
    assert shortcut.originals_only(merged)["label"].size == 30
    test = _meta(y, rng, False)
    test["source_format"] = np.array(["BMP"] * 30)  # never seen in train: all-zero one-hot
    result = shortcut.run_probe(merged, test, 0.9, model="logistic_regression")
    assert result["num_train"] == 30 and result["skipped"] is False
    one_class = shortcut.run_probe(_meta(np.zeros(5, int), rng, False), test, 0.9)
    assert one_class["skipped"] is True and one_class["probe_macro_f1"] is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "xray_tfdata.evaluate", *args],
                          capture_output=True, text=True, timeout=240, env=env)


def test_cli_prints_summary(tiny_model, shortcut_records, tmp_path):
    proc = _cli(f"--model_path={tiny_model}", f"--records_dir={shortcut_records}",
                "--split=train", "--bootstrap=50", "--shortcut_model=logistic_regression")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout and "sensitivity COVID19" in proc.stdout
    assert "metadata" in proc.stdout
    assert (tiny_model.parent / "eval" / "train" / "metrics.json").is_file()


def test_cli_rejects_bad_flags_before_heavy_work():
    proc = _cli("--model_path=missing.keras", "--batch_size=0")
    assert proc.returncode == 1
    assert "batch_size=0" in proc.stderr
    assert "tensorflow" not in proc.stderr.lower()  # failed before importing TF
