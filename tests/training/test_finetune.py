"""Fine-tuning phases (freeze, unfreeze, resume across it), the backbone learning rate, balanced
defaults and the temperature fitted at the end of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata import models
from xray_tfdata.evaluation import calibration, inference
from xray_tfdata.serving import export
from xray_tfdata.records.manifest import info_from_dict
from xray_tfdata.settings import from_flat
from xray_tfdata.training import loop, setup
from xray_tfdata.training.config import TrainConfig

pytestmark = pytest.mark.slow
SIZE = 32
STEPS = 2  # per epoch: checkpoints are ckpt-2, ckpt-4, ...


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return fixtures.xray_records(tmp_path_factory.mktemp("records"),
                                 {"train": 12, "val": 6, "test": 3}, image_size=SIZE)


def _config(records: Path, model_dir: Path, **overrides) -> TrainConfig:
    settings = dict(records_dir=str(records), model_dir=str(model_dir), model="mobilenetv3small",
                    epochs=2, steps_per_epoch=STEPS, global_batch_size=8, learning_rate=1e-2,
                    warmup_epochs=0, export=False, cache="memory", augment=False,
                    shuffle_buffer=64)
    settings.update(overrides)
    return from_flat(TrainConfig, **settings)


def _weights_at(model_dir: Path, step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(backbone weights incl. BatchNorm statistics, head kernel) in checkpoint ckpt-<step>."""
    model = models.build_model("mobilenetv3small", SIZE, 1, seed=0)
    tf.train.Checkpoint(model=model).read(str(model_dir / "checkpoints" / f"ckpt-{step}")) \
        .expect_partial()
    return (model.get_layer("backbone").get_weights(),
            model.get_layer("probabilities").get_weights())


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_freeze_then_unfreeze_resumed_across_the_phases(records, tmp_path):
    initial = models.build_model("mobilenetv3small", SIZE, 1, seed=0)
    init_backbone = initial.get_layer("backbone").get_weights()
    init_head = initial.get_layer("probabilities").get_weights()
    model_dir = tmp_path / "run"
    # One frozen epoch, finished; then resumed with 3 epochs, 2 of them frozen: the restored
    # epoch count alone decides that epoch 2 is still frozen and epoch 3 is not.
    # No temperature fit: the phases are the subject (calibration has its own test below).
    loop.train(_config(records, model_dir, epochs=1, freeze_backbone_epochs=1, calibrate=False))
    summary = loop.train(_config(records, model_dir, epochs=3, freeze_backbone_epochs=2,
                                 calibrate=False))
    assert summary["resumed_from_step"] == STEPS and summary["epochs_completed"] == 3
    backbone1, head1 = _weights_at(model_dir, STEPS)
    backbone2, head2 = _weights_at(model_dir, 2 * STEPS)
    backbone3, _ = _weights_at(model_dir, 3 * STEPS)
    # Frozen: kernels AND BatchNorm moving statistics untouched (inference mode); head trained.
    assert _same(backbone1, init_backbone) and _same(backbone2, init_backbone)
    assert not _same(head1, init_head) and not _same(head2, head1)
    # Unfrozen in epoch 3: the backbone trains.
    assert not _same(backbone3, init_backbone)


def test_backbone_learning_rate_multiplier_zero_keeps_its_kernels(records, tmp_path):
    model_dir = tmp_path / "run"
    loop.train(_config(records, model_dir, epochs=1, backbone_learning_rate_multiplier=0.0,
                       calibrate=False))
    initial = models.build_model("mobilenetv3small", SIZE, 1, seed=0).get_layer("backbone")
    trained, head = _weights_at(model_dir, STEPS)
    names = [w.path for w in initial.weights]
    changed = {n for n, a, b in zip(names, initial.get_weights(), trained)
               if not np.array_equal(a, b)}
    # Only BatchNorm's moving statistics move (training mode); no trainable kernel does.
    assert changed and all("moving" in n for n in changed)
    assert not _same(head, models.build_model("mobilenetv3small", SIZE, 1, seed=0)
                     .get_layer("probabilities").get_weights())


def test_config_refuses_fine_tuning_settings_for_the_seed_cnn(records, tmp_path):
    from xray_tfdata.errors import ConfigError

    with pytest.raises(ConfigError, match="freeze_backbone_epochs must be unset for the seed"):
        _config(records, tmp_path, model="seed_cnn", freeze_backbone_epochs=1)
    with pytest.raises(ConfigError, match="freeze_backbone_epochs must be at most epochs=2"):
        _config(records, tmp_path, freeze_backbone_epochs=3)


def test_temperature_fitted_on_val_is_stored_and_built_into_best_and_export(records, tmp_path):
    model_dir = tmp_path / "run"
    summary = loop.train(_config(records, model_dir, model="seed_cnn", epochs=1, export=True))
    record = json.loads((model_dir / calibration.CALIBRATION_FILE).read_text())
    assert summary["calibration"] == record and record["applied_in_model"] is True
    assert record["val_nll_calibrated"] <= record["val_nll"] + 1e-9
    # Defaults are balanced, and the summary says so.
    assert summary["settings"]["class_weights"] == "balanced"
    assert summary["resolved"]["class_weighting"] == "balanced (the default)"
    # best.keras = the raw epoch-1 model (checkpoint) with softmax(logits / T).
    raw = models.build_model("seed_cnn", SIZE, 1, seed=0)
    tf.train.Checkpoint(model=raw).read(str(model_dir / "checkpoints" / f"ckpt-{STEPS}")) \
        .expect_partial()
    best = inference.load_model(model_dir / "best.keras")
    dataset = inference.eval_dataset(str(records), "val", SIZE, 1, 8)
    _, (raw_probs, *_) = inference.run_model(raw, dataset)
    _, (best_probs, *_) = inference.run_model(best, dataset)
    np.testing.assert_allclose(best_probs, calibration.apply_temperature(
        raw_probs, record["temperature"]), atol=1e-5)
    meta = export.read_metadata(model_dir / "export")
    assert meta["probabilities"].startswith("calibrated: softmax(logits / ")
    assert meta["calibration"]["temperature"] == pytest.approx(record["temperature"])
    # Resuming the finished run keeps the calibrated model as it is (no second temperature).
    again = loop.train(_config(records, model_dir, model="seed_cnn", epochs=1, export=False))
    assert again["calibration"] == record
    _, (reloaded, *_) = inference.run_model(inference.load_model(model_dir / "best.keras"),
                                            dataset)
    np.testing.assert_allclose(reloaded, best_probs, atol=1e-6)


def test_balanced_sampling_turns_class_weights_off(records, tmp_path):
    config = _config(records, tmp_path, model="seed_cnn", sampling="balanced")
    manifest = info_from_dict({"label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2},
                               "splits": {"train": {"num_examples": 120, "per_class": {
                                   "NORMAL": 30, "COVID19": 10, "PNEUMONIA": 80}}}})
    np.testing.assert_array_equal(setup.class_weight_vector(config, manifest), np.ones(3))
    weighted = setup.class_weight_vector(_config(records, tmp_path, model="seed_cnn"), manifest)
    np.testing.assert_allclose(weighted, [120 / 90, 120 / 30, 120 / 240], rtol=1e-6)
