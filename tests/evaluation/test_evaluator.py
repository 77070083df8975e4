"""evaluation.py / evaluate.py / shortcut.py on tiny records and a tiny trained Keras model."""

from __future__ import annotations

import dataclasses
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
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import evaluator, inference, shortcut

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
                                   split="test", output_dir=str(tmp_path / "eval"), bootstrap=200,
                                   train_records_dir=str(shortcut_records))
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
                "--split=train", "--bootstrap=50", "--shortcut_model=logistic_regression",
                f"--train_records_dir={shortcut_records}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout and "sensitivity COVID19" in proc.stdout
    assert "metadata" in proc.stdout
    assert (tiny_model.parent / "eval" / "train" / "metrics.json").is_file()


def test_cli_rejects_bad_flags_before_heavy_work():
    proc = _cli("--model_path=missing.keras", "--batch_size=0")
    assert proc.returncode == 1
    assert "batch_size=0" in proc.stderr
    assert "tensorflow" not in proc.stderr.lower()  # failed before importing TF


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shortcut_records) -> Path:
    """A model file in a run directory whose summary.json names its training records, as
    training writes it (settings.records_dir)."""
    run = tmp_path_factory.mktemp("run")
    model = tiny_model_file(run / "best.keras")
    files.write_json(run / "summary.json", {"settings": {"records_dir": str(shortcut_records)}})
    return model


def test_external_records_side_by_side_probe_fitted_on_the_training_records(
        trained_run, shortcut_records, tmp_path):
    from xray_tfdata.inputs import pipeline

    # The external set: test only (no train split), every class from the same sources; plus a
    # second external set WITH its own train split, which must not be used for the probe.
    external = write_records(tmp_path / "external", {"test": 5}, seed=3)
    own_train = write_records(tmp_path / "own_train", {"train": 10, "test": 5}, seed=4)
    config = evaluator.EvalConfig(
        model_path=str(trained_run), records_dir=str(shortcut_records), split="test",
        external_records_dir=f"{external},{own_train}", output_dir=str(tmp_path / "eval"),
        bootstrap=100, gradcam_per_class=2)
    result = evaluator.evaluate(config)
    out = tmp_path / "eval"
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in rows] == [shortcut_records.name, "external", "own_train"]
    assert [r["num_examples"] for r in rows] == [18, 15, 15]
    assert result["comparison"] == rows
    table = (out / "comparison.txt").read_text()
    assert "macro-F1" in table and "external" in table and "border" in table
    for name in ("external", "own_train"):
        saved = json.loads((out / name / "metrics.json").read_text())
        probe = saved["shortcut_probe"]
        assert probe["fitted_on"] == f"{shortcut_records}:train"
        expected = shortcut.run_probe(pipeline.read_metadata(shortcut_records, "train"),
                                      pipeline.read_metadata(out.parent / name, "test"),
                                      saved["macro_f1"])
        assert probe["probe_macro_f1"] == pytest.approx(expected["probe_macro_f1"])
        assert (out / name / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # No val split in the training records: ECE is reported, without temperature/threshold.
    assert result["calibration"]["temperature"] is None and "operating_point" not in result
    assert result["border_attention"]["skipped"] is True  # the tiny model has no convolution


def test_operating_point_and_temperature_come_from_the_training_val_split(tmp_path):
    records = write_records(tmp_path / "records", {"train": 6, "val": 10, "test": 8},
                            shortcut_sources=True)
    run = tmp_path / "run"
    run.mkdir()
    model = tiny_model_file(run / "best.keras")
    files.write_json(run / "summary.json", {"settings": {"records_dir": str(records)}})
    result = evaluator.evaluate(evaluator.EvalConfig(
        model_path=str(model), records_dir=str(records), split="test", bootstrap=100,
        output_dir=str(tmp_path / "eval")))
    cal = result["calibration"]
    assert cal["temperature_source"] == "fitted on the training records' val split"
    assert cal["temperature"] > 0 and cal["ece_calibrated"] is not None
    op = result["operating_point"]
    assert op["chosen_on"] == f"{records}:val" and op["target_sensitivity"] == 0.95
    assert 0.0 <= op["sensitivity"] <= 1.0 and "ppv" in op["confidence_intervals"]
    report = (tmp_path / "eval" / "report.txt").read_text()
    assert "ECE" in report and "COVID19 at P >=" in report
    # 10 COVID19 val images chose the threshold: said, and warned (fewer than 20).
    assert op["positive_class"] == "COVID19" and op["num_val_positive"] == 10
    assert "chosen on only 10 val positives" in op["warning"]
    assert "10 positives)" in report and "WARNING: The COVID19 operating point" in report
    # A temperature stored by the training run wins over refitting.
    files.write_json(run / "calibration.json", {"temperature": 2.0, "applied_in_model": False})
    again = evaluator.evaluate(evaluator.EvalConfig(
        model_path=str(model), records_dir=str(records), split="test", bootstrap=0,
        output_dir=str(tmp_path / "eval2")))
    assert again["calibration"]["temperature"] == 2.0


def test_evaluate_one_collection(tiny_model, tmp_path):
    """--collections: the metrics, the progress total and the probe's metadata are of the chosen
    collection's test examples only (test split: x holds 3 per class, y 2 per class)."""
    rng = np.random.default_rng(3)

    def split(per_source: dict[str, int]) -> list:
        return [fixtures.example(fixtures._brightness_image(label, rng), label=label,
                                 source=name, source_path=f"{name}/{label}/{k}.png",
                                 **fixtures.source_metadata(label, rng, True))
                for name, n in per_source.items() for k in range(n) for label in range(3)]

    records = fixtures.write_records(tmp_path / "records", {
        "train": split({"x": 4, "y": 4}), "test": split({"x": 3, "y": 2})}, image_size=SIZE)
    config = evaluator.EvalConfig(model_path=str(tiny_model), records_dir=str(records),
                                  output_dir=str(tmp_path / "eval"), bootstrap=0,
                                  gradcam_per_class=0, train_records_dir=str(records),
                                  collections="y")
    result = evaluator.evaluate(config)
    assert result["num_examples"] == 6
    assert [row["support"] for row in result["per_class"].values()] == [2, 2, 2]
    assert inference.split_size(str(records), "test", ("y",)) == 6
    assert "probe_macro_f1" in result["shortcut_probe"]
    with pytest.raises(ConfigError, match=r"collections .*\['x', 'y'\]"):
        evaluator.evaluate(dataclasses.replace(config, collections=("z",)))
    assert "by_collection" not in result  # one collection evaluated: no table
    # Both collections: the per-collection table, its counts exact, each row the metrics of
    # that collection's examples alone (all three classes held: the headline definitions).
    both = evaluator.evaluate(dataclasses.replace(config, collections=(), bootstrap=50,
                                                  output_dir=str(tmp_path / "both")))
    table = both["by_collection"]
    assert {name: (row["n"], row["support"]) for name, row in table.items()} == {
        "x": (9, {"NORMAL": 3, "COVID19": 3, "PNEUMONIA": 3}),
        "y": (6, {"NORMAL": 2, "COVID19": 2, "PNEUMONIA": 2})}
    assert table["y"]["macro_f1"] == pytest.approx(result["macro_f1"])
    assert table["y"]["sensitivity"] == {name: row["sensitivity"]
                                         for name, row in result["per_class"].items()}
    assert table["x"]["macro_f1_ci"]["low"] is not None
    saved = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert saved["by_collection"]["x"]["n"] == 9
    report = (tmp_path / "both" / "report.txt").read_text()
    assert "Per collection (macro-F1 over the classes each collection holds" in report
    assert [line.split()[:2] for line in report.splitlines()
            if line.startswith(("x ", "y "))] == [["x", "9"], ["y", "6"]]


def test_records_of_another_size_are_refused_in_the_models_terms(tmp_path):
    from xray_tfdata.evaluation import inference
    from xray_tfdata.records.manifest import ManifestError

    records = fixtures.xray_records(tmp_path, {"test": 1}, image_size=32)
    with pytest.raises(ManifestError, match=r"hold 32x32x1 images but the model takes 16x16x1: "
                                            r"run it on records built at its size \(.*"
                                            r"--image_size=16 --channels=1"):
        inference.eval_dataset(str(records), "test", SIZE, 1, 8)
    with pytest.raises(ManifestError, match=r"hold 32x32x1 images but the model takes 32x32x3"):
        inference.eval_dataset(str(records), "test", 32, 3, 8)


def test_evaluate_explain_classical_on_records_of_another_size_say_so_in_one_line(
        tiny_model, tmp_path):
    """Each used to end in a 30-line traceback suggesting an --image_size they do not have."""
    records = fixtures.xray_records(tmp_path / "records32", {"train": 2, "test": 2},
                                    image_size=32)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = [f"--model_path={tiny_model}", f"--records_dir={records}",
              f"--output_dir={tmp_path / 'out'}"]
    procs = {command: subprocess.Popen([sys.executable, "-m", f"xray_tfdata.{command}", *common],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=env)
             for command in ("evaluate", "explain", "classical")}
    for command, proc in procs.items():
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 1, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-2000:]
        assert (f"xray_tfdata.{command}: error: The records in '{records}' hold 32x32x1 images "
                "but the model takes 16x16x1") in stderr, stderr[-2000:]
        assert "--image_size=16 --channels=1" in stderr and "Pass --image_size" not in stderr
    assert not (tmp_path / "out").exists()


def test_three_class_model_on_a_two_class_external_set_reports_over_the_present_classes(
        tiny_model, tmp_path, caplog):
    """An external set with NORMAL and PNEUMONIA only (labels are ids in the model's three
    classes): macro averages over those two, COVID19 'absent', 5 per class warned as tiny."""
    from sklearn import metrics as sk_metrics

    rng = np.random.default_rng(7)
    test = [fixtures.example(fixtures._brightness_image(label, rng), label=label,
                             source_path=f"test/{label}/{k}.png")
            for k in range(5) for label in (0, 2)]
    records = fixtures.write_records(tmp_path / "records", {"test": test}, image_size=SIZE)
    config = evaluator.EvalConfig(model_path=str(tiny_model), records_dir=str(records),
                                  output_dir=str(tmp_path / "eval"), bootstrap=100,
                                  gradcam_per_class=0, shortcut_probe=False)
    with caplog.at_level("WARNING"):
        result = evaluator.evaluate(config)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["absent_classes"] == ["COVID19"] and len(saved["confusion_matrix"]) == 3
    covid = saved["per_class"]["COVID19"]
    assert covid["absent"] is True and covid["sensitivity"] is None
    cm = np.array(saved["confusion_matrix"])
    y_true = np.repeat([0, 1, 2], cm.sum(axis=1))
    y_pred = np.concatenate([np.repeat([0, 1, 2], row) for row in cm])
    assert saved["macro_f1"] == pytest.approx(sk_metrics.f1_score(
        y_true, y_pred, labels=[0, 2], average="macro", zero_division=0))
    assert saved["confidence_intervals"]["sensitivity/NORMAL"]["method"] == "clopper-pearson"
    assert any("NORMAL has only 5 examples" in w for w in saved["warnings"])
    report = (tmp_path / "eval" / "report.txt").read_text()
    assert "absent from this split, not averaged: COVID19" in report
    covid_line = next(line for line in report.splitlines() if line.startswith("COVID19 "))
    assert "absent" in covid_line
    assert "WARNING: PNEUMONIA has only 5 examples" in report
    assert "PNEUMONIA has only 5 examples" in caplog.text
    assert result["macro_f1"] == saved["macro_f1"]
