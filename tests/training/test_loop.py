"""The training library: strategies, precision, config checks, the loop, checkpoints, stopping.

Records are written directly (synthetic.render_xray + features.serialize, "raw" format) so these
tests need no converter run; `make_records` is reused by test_train_cli.py and test_multiworker.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import inference
from xray_tfdata.records import manifest
from xray_tfdata.records.manifest import info_from_dict
from xray_tfdata.settings import from_flat
from xray_tfdata.training import distribute, loop, setup, steps
from xray_tfdata.training.config import TrainConfig

make_records = fixtures.xray_records


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return make_records(tmp_path_factory.mktemp("records"), {"train": 60, "val": 12, "test": 20})


def _config(records: Path, model_dir: Path, **overrides) -> TrainConfig:
    settings = dict(records_dir=str(records), model_dir=str(model_dir), epochs=2,
                    global_batch_size=8, learning_rate=1e-3, warmup_epochs=0, dropout=0.2,
                    steps_per_execution=4, export=False, cache="memory")
    settings.update(overrides)
    return from_flat(TrainConfig, **settings)


def _history(model_dir: Path) -> list[dict[str, str]]:
    with (model_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ strategy / precision / config
def test_precision_auto_resolves_float32_on_cpu_and_rejects_unknown():
    assert distribute.resolve_precision("auto", tf.distribute.get_strategy()) == "float32"
    assert distribute.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ConfigError, match=r"precision must be one of auto, .* Received: precision='half'"):
        distribute.resolve_precision("half")


def test_make_strategy_names_and_errors(monkeypatch):
    assert distribute.make_strategy("one_device").num_replicas_in_sync == 1
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    assert distribute.is_chief(mirrored)
    assert distribute.per_replica_batch_size(16, mirrored) == 8
    with pytest.raises(ConfigError, match=r"global_batch_size must be a multiple of the 2 "
                                          r"replicas.*Received: global_batch_size=15\. "
                                          r"For example 14 or 16"):
        distribute.per_replica_batch_size(15, mirrored)
    with pytest.raises(ConfigError, match=r"strategy must be one of auto, .*Received: strategy='gpu'"):
        distribute.make_strategy("gpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"TF_CONFIG must be set for --strategy=multi_worker"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(ConfigError, match=r"TF_CONFIG must be a task with 'type' and 'index'"):
        distribute.make_strategy("multi_worker")


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, r"epochs must be an integer >= 1\. Received: epochs=0\."),
    ({"optimizer": "adam"}, r"optimizer must be one of adamw, sgd\. Received: optimizer='adam'"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be a number in \[0\.0, 1\.0\)\. Received: label_smoothing=1\.0"),
    ({"model": "vgg16"}, r"model must be one of seed_cnn, resnet50.*Received: model='vgg16'"),
    ({"weights": "imagenet"}, r"weights must be unset or a local file for the seed CNN"),
    ({"weights": "/no/such.h5"}, r"weights must be unset \(random init\), 'imagenet'"),
    ({"warmup_epochs": 3.0}, r"warmup_epochs must be a number in \[0, epochs=2\]\. "
                             r"Received: warmup_epochs=3\.0"),
    ({"class_weights": "inverse"}, r"class_weights must be one of balanced, none\. Received: class_weights='inverse'"),
])
def test_config_errors_name_field_value_and_allowed(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        _config(tmp_path, tmp_path / "m", **overrides)
    assert err.value.field == next(iter(overrides))


def test_resolve_data_checks_records(records, tmp_path):
    data = setup.resolve_data(_config(records, tmp_path))
    assert (data.image_size, data.channels, data.steps_per_epoch) == (64, 1, 180 // 8)
    with pytest.raises(manifest.ManifestError, match=r"hold 64x64 images, but image_size=48"):
        setup.resolve_data(_config(records, tmp_path, image_size=48))
    with pytest.raises(ConfigError, match=r"global_batch_size must be at most the 180 training.*Received: global_batch_size=256"):
        setup.resolve_data(_config(records, tmp_path, global_batch_size=256))
    with pytest.raises(ConfigError, match=r"val_split must be records.*found: \['test', 'train', 'val'\].*Received: val_split='holdout'"):
        setup.resolve_data(_config(records, tmp_path, val_split="holdout"))


def test_balanced_class_weights_from_kaggle_counts():
    info = info_from_dict({"label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2},
                           "splits": {"train": {"num_examples": 5144, "per_class": {
                               "NORMAL": 1266, "COVID19": 460, "PNEUMONIA": 3418}}}})
    config = _config(Path("r"), Path("m"), class_weights="balanced")
    weights = setup.class_weight_vector(config, info)
    np.testing.assert_allclose(weights, [5144 / (3 * 1266), 5144 / (3 * 460), 5144 / (3 * 3418)],
                               rtol=1e-6)
    # Weighted counts are equal per class: each class contributes the same total loss weight.
    np.testing.assert_allclose(weights * [1266, 460, 3418], [5144 / 3] * 3, rtol=1e-6)


def test_optimizer_schedule_warmup_cosine_and_lr_scaling():
    config = _config(Path("r"), Path("m"), epochs=4, warmup_epochs=1, learning_rate=1e-3,
                     global_batch_size=64, scale_lr=True, optimizer="sgd")
    schedule = setup.make_lr_schedule(config, steps_per_epoch=10)
    lr = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    peak = 1e-3 * 64 / 32
    assert lr[0] == 0.0 and lr[1] == pytest.approx(peak / 2) and lr[2] == pytest.approx(peak)
    assert lr[2] > lr[3] > lr[4] and lr[4] == pytest.approx(0.0, abs=1e-9)
    fp16 = setup.make_optimizer(config, 10, "mixed_float16")
    assert isinstance(fp16, keras.optimizers.LossScaleOptimizer)


def test_metrics_in_numpy():
    probs = np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1]])
    out = inference.classification_metrics(np.array([0, 1, 2, 1]), probs)
    assert out["accuracy"] == 0.75
    # F1 per class: 2/3 (P=.5, R=1), 2/3 (P=1, R=.5), 1.
    assert out["macro_f1"] == pytest.approx(7 / 9)
    assert out["auc"] == pytest.approx(1.0)
    assert out["loss"] == pytest.approx(-np.mean(np.log([.8, .8, .8, .3])))


# ------------------------------------------------------------------ mixed precision
def test_mixed_float16_step_runs_on_cpu_with_float32_outputs(records):
    from xray_tfdata import models
    from xray_tfdata.inputs import pipeline

    before = keras.mixed_precision.global_policy().name
    strategy = tf.distribute.get_strategy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_model("seed_cnn", 64, 1, dropout=0.0)
        config = _config(records, Path("unused"))
        optimizer = setup.make_optimizer(config, 5, "mixed_float16")
        optimizer.build(model.trainable_variables)
        loss_fn = steps.make_loss_fn(np.ones(3, np.float32), 0.1, 8)
        step = steps.make_train_function(strategy, model, optimizer, loss_fn,
                                                  jit_compile=False, loss_scaling=True)
        ds = strategy.distribute_datasets_from_function(pipeline.dataset_fn(
            str(records), "train", pipeline.InputConfig(global_batch_size=8, image_size=64)))
        iterator = iter(ds)
        before_weights = [w.copy() for w in model.get_weights()]
        loss = float(step(iterator, tf.constant(3))["loss"])
        images, _ = next(iterator)
        outputs = model(images, training=False)
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert outputs.dtype == tf.float32
    assert math.isfinite(loss) and 0.5 < loss < 2.0
    assert int(optimizer.iterations.numpy()) == 3
    changed = [not np.array_equal(a, b) for a, b in zip(before_weights, model.get_weights())]
    assert all(changed), "every weight must move after 3 loss-scaled steps"


# ------------------------------------------------------------------ the loop
def test_short_run_learns_and_writes_outputs(records, tmp_path):
    from xray_tfdata.inputs import pipeline

    config = _config(records, tmp_path, epochs=20, learning_rate=1e-3, augment=False,
                     dropout=0.0, deterministic=True, steps_per_execution=5,
                     checkpoint_every=10, export=True)
    summary = loop.train(config)
    assert summary["status"] == "completed"
    assert summary["steps_completed"] == 20 * 22 and summary["resumed_from_step"] == 0
    assert summary["resolved"]["precision"] == "float32"
    assert summary["images_per_sec"] > 0 and summary["versions"]["tensorflow"] == tf.__version__
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    rows = _history(tmp_path)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.3
    assert float(rows[-1]["learning_rate"]) == pytest.approx(0.0, abs=1e-9)
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-440")
    # The best model, reloaded, classifies the held-out test split well above chance (1/3).
    best = keras.models.load_model(tmp_path / "best.keras", compile=False)
    test = pipeline.build_dataset(str(records), "test", pipeline.InputConfig(
        global_batch_size=30, image_size=64, training=False))
    probs, truth = zip(*[(best(x, training=False).numpy(), y.numpy()) for x, y in test])
    accuracy = np.mean(np.concatenate(probs).argmax(1) == np.concatenate(truth))
    assert accuracy >= 0.6, f"test accuracy {accuracy:.3f} is not well above chance"
    assert summary["best"]["val_macro_f1"] >= 0.6
    if (tmp_path / "export").exists():  # export.py present: the serving SavedModel was written
        assert (tmp_path / "export" / "saved_model.pb").is_file()
        assert summary["paths"]["export"] == str(tmp_path / "export")


def test_two_replicas_match_one_device(records, tmp_path):
    """Same global batch on 1 device and on 2 mirrored logical CPUs: same loss trajectory."""
    # SGD, not Adam: Adam's update ignores the gradient's scale, so it would hide a replica
    # gradient summed instead of averaged; SGD's would not.
    common = dict(epochs=3, steps_per_epoch=5, global_batch_size=16, steps_per_execution=1,
                  augment=False, deterministic=True, dropout=0.0, optimizer="sgd",
                  learning_rate=0.3)
    one = loop.train(_config(records, tmp_path / "one", **common),
                         tf.distribute.OneDeviceStrategy("/cpu:0"))
    # XLA on the replicas too: jit_compile set explicitly must work under a strategy.
    two = loop.train(_config(records, tmp_path / "two", jit_compile=True, **common),
                         distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))
    assert two["resolved"]["replicas"] == 2 and two["resolved"]["per_replica_batch_size"] == 8
    loss_one = [float(r["loss"]) for r in _history(tmp_path / "one")]
    loss_two = [float(r["loss"]) for r in _history(tmp_path / "two")]
    # Reported loss is the global-batch mean on both (a summed-not-averaged bug would double it).
    np.testing.assert_allclose(loss_two, loss_one, rtol=2e-3)
    assert max(loss_one) - min(loss_one) > 0.01, "the updates must move the loss to be compared"
    for key in ("val_loss", "val_accuracy"):
        assert two["final_metrics"][key] == pytest.approx(one["final_metrics"][key], abs=2e-2)


def test_resume_continues_from_checkpoint_with_history(records, tmp_path):
    config = _config(records, tmp_path, epochs=2, steps_per_epoch=6, checkpoint_every=4)
    first = loop.train(config)
    assert first["steps_completed"] == 12
    # A longer run in the same model_dir resumes at step 12 (epoch 2 done), not from scratch.
    second = loop.train(_config(records, tmp_path, epochs=3, steps_per_epoch=6,
                                    checkpoint_every=4))
    assert second["resumed_from_step"] == 12 and second["steps_this_session"] == 6
    assert second["steps_completed"] == 18 and second["epochs_completed"] == 3
    assert [int(r["step"]) for r in _history(tmp_path)] == [6, 12, 18]


def test_early_stopping_on_stalled_val_macro_f1(records, tmp_path):
    summary = loop.train(_config(records, tmp_path, epochs=6, steps_per_epoch=2,
                                     learning_rate=1e-9, patience=2))
    assert summary["status"] == "early_stopping"
    assert summary["epochs_completed"] == 3 and summary["best"]["epoch"] == 1
    assert len(_history(tmp_path)) == 3


def _nan_model(name, image_size, channels, **kwargs):
    inputs = keras.Input((image_size, image_size, channels), dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.ops.cast(inputs, "float32"))
    x = keras.layers.Dense(3)(x)
    outputs = keras.layers.Softmax(dtype="float32")(x * float("nan"))
    return keras.Model(inputs, outputs)


def test_nan_loss_stops_with_clear_message(records, tmp_path, caplog):
    config = _config(records, tmp_path, epochs=3, steps_per_epoch=4, steps_per_execution=2)
    with caplog.at_level("ERROR"):
        summary = loop.train(config, model_builder=_nan_model)
    assert summary["status"] == "nan_loss" and summary["steps_completed"] == 2
    assert summary["epochs_completed"] == 0 and not (tmp_path / "best.keras").exists()
    assert "Training loss is nan at step 2 (epoch 1); stopping" in caplog.text
    assert "Lower --learning_rate" in caplog.text


# ------------------------------------------------------------------ collections and intensity
def test_collection_filters_set_steps_and_class_weights_from_the_manifest(tmp_path):
    info = info_from_dict({"image": {"size": 16, "channels": 1}, "format_version": 1,
            "label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2}, "splits": {
                split: {"num_examples": 0, "per_class": {}, "shards": [], "per_source": {
                    "a": {"NORMAL": 40, "COVID19": 4, "PNEUMONIA": 20},
                    "b": {"NORMAL": 8, "COVID19": 30, "PNEUMONIA": 0},
                    "c": {"NORMAL": 10, "COVID19": 0, "PNEUMONIA": 10}}}
                for split in ("train", "val")}})
    config = _config(Path("r"), Path("m"), exclude_collections=["b"])
    weights = setup.class_weight_vector(config, info)
    counts = np.array([50, 4, 30])  # a + c
    np.testing.assert_allclose(weights, counts.sum() / (3 * counts), rtol=1e-6)
    assert _config(Path("r"), Path("m"), collections="b").input.collections == ("b",)
    ones = setup.class_weight_vector(_config(Path("r"), Path("m"),
                                            sampling="balanced_collections"), info)
    np.testing.assert_array_equal(ones, [1, 1, 1])


def test_leave_one_collection_out_run_and_intensity_export(tmp_path):
    """A short run on two of three collections: steps per epoch from their count, validation
    on their val examples only, and the export applies the records' intensity to uploads."""
    rng = np.random.default_rng(4)
    from xray_tfdata.records import synthetic  # noqa: PLC0415

    def split(n_per: dict[str, int]) -> list:
        return [fixtures.example(synthetic.render_xray(label, (32, 32), rng), label=label,
                                 source=name, source_path=f"{name}/{label}/{k}.png")
                for name, n in n_per.items() for k in range(n) for label in range(3)]

    records = fixtures.write_records(
        tmp_path / "records", {"train": split({"a": 6, "b": 4, "c": 9}),
                               "val": split({"a": 2, "b": 2, "c": 0})},
        image_size=32, image={"size": 32, "channels": 1, "format": "raw",
                              "resize_mode": "stretch", "intensity": "equalize"})
    config = _config(records, tmp_path / "model", epochs=1, global_batch_size=6,
                     exclude_collections="c", export=True, calibrate=False, augment=False)
    data = setup.resolve_data(config)
    assert (data.num_train, data.steps_per_epoch, data.intensity) == (30, 5, "equalize")
    summary = loop.train(config, data=data)
    assert summary["steps_completed"] == 5
    from xray_tfdata.serving import export  # noqa: PLC0415

    assert export.read_metadata(tmp_path / "model" / "export")["intensity"] == "equalize"
    with pytest.raises(ConfigError, match=r"collections .* of split 'val' \(\['a', 'b'\]\)"):
        setup.resolve_data(_config(records, tmp_path / "m2", collections="c"))
