"""Augmentation on the device: same seeds and the same distribution of transforms as host mode,
the host pipeline then delivers un-augmented uint8, and it trains on 2 mirrored logical CPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.inputs import device_augment, online_augment, pipeline
from xray_tfdata.settings import from_flat
from xray_tfdata.training import distribute, loop
from xray_tfdata.training.config import TrainConfig

SIZE = 32
PARAMS = online_augment.AugmentParams()


def _gradient(i: int) -> np.ndarray:
    """A left-to-right ramp, offset per example: warps move its mean, contrast its spread."""
    ramp = np.linspace(20, 235, SIZE)[None, :, None] + (i % 5) * 3
    return np.broadcast_to(ramp, (SIZE, SIZE, 1)).astype(np.uint8)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    examples = [fixtures.example(_gradient(i), label=i % 3, source_path=f"{i}.png")
                for i in range(48)]
    return fixtures.write_records(tmp_path_factory.mktemp("dev") / "records",
                                  {"train": examples, "val": examples[:12]}, image_size=SIZE)


def _batch(seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (8, SIZE, SIZE, 1)), tf.uint8)


def test_one_replica_gets_exactly_host_modes_transforms():
    images = _batch()
    host = online_augment.make_augment(PARAMS, 5, 0)
    device = device_augment.make_step_augment(PARAMS, 5)
    for step in (0, 3):
        np.testing.assert_array_equal(device(images, 0, step).numpy(),
                                      host(step, images).numpy())


def test_same_seed_same_batches_replicas_and_steps_differ():
    images = _batch()
    first, again = (device_augment.make_step_augment(PARAMS, 7) for _ in range(2))
    np.testing.assert_array_equal(first(images, 1, 4).numpy(), again(images, 1, 4).numpy())
    assert not np.array_equal(first(images, 0, 4).numpy(), first(images, 1, 4).numpy())
    assert not np.array_equal(first(images, 0, 4).numpy(), first(images, 0, 5).numpy())
    other = device_augment.make_step_augment(PARAMS, 8)
    assert not np.array_equal(first(images, 0, 4).numpy(), other(images, 0, 4).numpy())


def _stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat.mean(axis=1), flat.std(axis=1)


def test_device_mode_matches_host_modes_statistics(records):
    config = pipeline.InputConfig(global_batch_size=8, image_size=SIZE, augment=True, seed=1,
                                  shuffle_buffer=64)
    batches = 60
    host = np.concatenate([b[0] for b in pipeline.build_dataset(records, "train", config)
                           .take(batches).as_numpy_iterator()])
    device_config = device_augment.host_input_config(config, "device")
    assert not device_config.augment and device_augment.host_input_config(config, "host").augment
    augment = device_augment.make_step_augment(config.augment_params, 1)
    originals = {_gradient(i).tobytes() for i in range(48)}
    device = []
    for step, (images, _) in enumerate(pipeline.build_dataset(records, "train", device_config)
                                       .take(batches)):
        # The host pipeline delivered the cached images untouched.
        assert all(image.tobytes() in originals for image in images.numpy())
        # Two replicas, as MirroredStrategy would split the global batch.
        device += [augment(images[:4], 0, step).numpy(), augment(images[4:], 1, step).numpy()]
    device = np.concatenate(device)
    assert len(device) == len(host) == batches * 8
    for h, d in zip(_stats(host), _stats(device)):
        standard_error = np.sqrt(h.var() / len(h) + d.var() / len(d))
        assert abs(h.mean() - d.mean()) < 4 * standard_error, (h.mean(), d.mean())
        assert 0.75 < d.std() / h.std() < 1.33, (h.std(), d.std())
    # Augmentation really moved the images in both modes (else the comparison means nothing).
    base_std = _stats(np.stack([_gradient(i) for i in range(48)]))[0].std()
    assert _stats(host)[0].std() > 2 * base_std and _stats(device)[0].std() > 2 * base_std


@pytest.mark.slow
def test_trains_with_device_augmentation_on_two_mirrored_cpus(records, tmp_path):
    config = from_flat(TrainConfig, records_dir=str(records), model_dir=str(tmp_path), epochs=1,
                         steps_per_epoch=3, global_batch_size=8, warmup_epochs=0,
                         steps_per_execution=3, export=False, augment_on="device", seed=2,
                         val_split="val")
    summary = loop.train(config, distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))
    assert summary["resolved"]["augment_on"] == "device"
    assert summary["resolved"]["replicas"] == 2 and summary["resolved"]["jit_compile"] is False
    assert summary["steps_completed"] == 3 and np.isfinite(summary["final_metrics"]["loss"])


def test_single_device_xla_compiles_the_whole_step_with_device_augmentation():
    """jit_compile + compile_update: augmentation, forward, backward and the optimizer update in
    one XLA function (one device, no cross-replica reduction)."""
    import keras

    from xray_tfdata.training import steps

    assert distribute.compiles_update(tf.distribute.get_strategy())
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    loss_fn = steps.make_loss_fn(np.ones(3, np.float32), 0.0, 8)
    step = steps.make_replica_step(model, optimizer, loss_fn, jit_compile=True,
                                   loss_scaling=False, compile_update=True,
                                   augment=device_augment.make_step_augment(PARAMS, 0))
    assert step.__class__.__name__ == "Function"  # one compiled function: the whole step
    images, labels = _batch(), tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    before = model.get_weights()[1].copy()
    losses = [float(step(images, labels)) for _ in range(3)]
    assert int(optimizer.iterations.numpy()) == 3 and all(np.isfinite(losses))
    assert not np.allclose(model.get_weights()[1], before)
