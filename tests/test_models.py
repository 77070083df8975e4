"""Models: every architecture builds and trains a step in float32 and mixed precision; scaling
matches keras.applications' conventions; weights come only from local files."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from xray_tfdata import models
from xray_tfdata.evaluation import classical
from xray_tfdata.models import MODEL_NAMES, build_model

SIZE = 32  # keras.applications' minimum input side


@pytest.fixture
def policy(request):
    """Sets the global mixed-precision policy before building, and always restores float32."""
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _batch(channels: int, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, SIZE, SIZE, channels), dtype=np.uint8), np.array([0, 2])


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_one_step(name, policy):
    # Grey input for float32, RGB for mixed: both channel paths are covered for every model.
    channels = 1 if policy == "float32" else 3
    model = build_model(name, SIZE, channels)
    images, labels = _batch(channels)
    optimizer = keras.optimizers.Adam(1e-3)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        probs = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)

    assert probs.dtype == tf.float32 and probs.shape == (2, 3)
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert np.isfinite(float(loss))
    changed = sum(not np.array_equal(b, v.numpy())
                  for b, v in zip(before, model.trainable_variables))
    if policy == "mixed_float16" and changed == 0:
        # Dynamic loss scaling skips a step whose scaled gradients overflow and halves the scale.
        assert float(optimizer.dynamic_scale) < 2.0**15
    else:
        assert changed > 0
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    expected_compute = "float16" if policy == "mixed_float16" else "float32"
    assert model.get_layer("preprocess").compute_dtype == expected_compute
    assert len(model.get_layer("embedding").output.shape) == 2


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_seed_cnn_bfloat16_outputs_float32(policy):
    model = build_model("seed_cnn", SIZE, 1)
    probs = model(_batch(1)[0], training=False)
    assert probs.dtype == tf.float32
    assert model.get_layer("conv1").compute_dtype == "bfloat16"


def _preprocessed(images: np.ndarray, mode: str, to_rgb: bool = False) -> np.ndarray:
    inputs = keras.Input(images.shape[1:], dtype="uint8")
    return keras.Model(inputs, models.preprocess_layers(inputs, mode, to_rgb))(images).numpy()


def test_preprocessing_follows_keras_applications_conventions():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    grey_rgb = np.repeat(grey, 3, axis=-1).astype(np.float32)  # what the backbones see
    rgb = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(
        _preprocessed(grey, "caffe", to_rgb=True),
        keras.applications.resnet50.preprocess_input(grey_rgb.copy()), atol=1e-4)
    np.testing.assert_allclose(
        _preprocessed(rgb, "torch"),
        keras.applications.densenet.preprocess_input(rgb.astype(np.float32)), atol=1e-4)
    np.testing.assert_allclose(_preprocessed(grey, "raw", to_rgb=True), grey_rgb)
    np.testing.assert_allclose(_preprocessed(grey, "unit"), grey / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match="needs 3 channels"):
        _preprocessed(grey, "torch")


def test_imagenet_for_the_seed_cnn_is_refused():
    with pytest.raises(ValueError, match="seed CNN has no ImageNet weights"):
        build_model("seed_cnn", SIZE, weights="imagenet")


# Runs in a fresh interpreter: Keras reads KERAS_HOME once, when it is imported.
_KERAS_HOME_SCRIPT = """
import sys, h5py, numpy as np
from keras.src.legacy.saving import legacy_h5_format
from xray_tfdata import models
name = "mobilenetv3small"
fname, origin, _ = models.imagenet_file(name)
target = models.imagenet_cache_dir() / fname
print("CACHE", target)
if sys.argv[1] == "cached":
    # A generated stand-in for the ImageNet file: a seeded backbone's weights in legacy H5, the
    # format of keras.applications' files, under the name keras.applications would look for.
    source = models.build_model(name, 32, 1, seed=7).get_layer("backbone")
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    model = models.build_model(name, 32, 1, weights="imagenet", seed=0)
    loaded = model.get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, source.get_weights()))
    fresh = models.build_model(name, 32, 1, seed=0).get_layer("backbone").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(loaded, fresh))
    print("LOADED")
else:
    try:
        models.build_model(name, 32, 1, weights="imagenet")
    except models.ImageNetWeightsUnavailable as err:
        print("ERROR", err)
"""


def _keras_home_run(tmp_path, mode):
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_HOME=str(tmp_path / "kh"), TF_CPP_MIN_LOG_LEVEL="2",
               # Offline for certain, even on a machine with internet: an unroutable proxy.
               HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    return subprocess.run([sys.executable, "-c", _KERAS_HOME_SCRIPT, mode], env=env,
                          capture_output=True, text=True, timeout=240)


def test_imagenet_weights_come_from_keras_cache_under_keras_home(tmp_path):
    proc = _keras_home_run(tmp_path, "cached")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = tmp_path / "kh" / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert f"CACHE {expected}" in proc.stdout
    assert "LOADED" in proc.stdout


def test_imagenet_offline_names_the_file_and_the_folder(tmp_path):
    proc = _keras_home_run(tmp_path, "offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "kh" / "models"
    assert ("copy the file weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5 into "
            f"{folder}/") in proc.stdout
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/" \
        in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "vgg16", "image_size": SIZE}, "Unknown model 'vgg16'"),
        ({"name": "resnet50", "image_size": 16}, "image_size for resnet50 must be .* >= 32"),
        ({"name": "seed_cnn", "image_size": SIZE, "channels": 2}, "channels must be 1 or 3"),
        ({"name": "seed_cnn", "image_size": SIZE, "weights": "/nonexistent/w.weights.h5"},
         "weights file not found"),
        ({"name": "seed_cnn", "image_size": SIZE, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_full_model_weights_load_from_local_file(tmp_path):
    images, _ = _batch(1)
    source = build_model("seed_cnn", SIZE, 1, seed=1)
    path = tmp_path / "seed.weights.h5"
    source.save_weights(path)
    other = build_model("seed_cnn", SIZE, 1, seed=2)
    assert not np.allclose(source.predict(images, verbose=0), other.predict(images, verbose=0))
    loaded = build_model("seed_cnn", SIZE, 1, weights=str(path), seed=2)
    np.testing.assert_array_equal(source.predict(images, verbose=0),
                                  loaded.predict(images, verbose=0))


def test_backbone_notop_file_loads_into_backbone(tmp_path):
    # Keras' ImageNet "notop" files are legacy-H5 weights of the bare application; write one the
    # same way from a randomly initialised backbone and check every tensor arrives.
    from keras.src.legacy.saving import legacy_h5_format as legacy
    source = build_model("mobilenetv3small", SIZE, 1, seed=1).get_layer("backbone")
    path = tmp_path / "weights_mobilenet_v3_small_notop.h5"
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, source)
    model = build_model("mobilenetv3small", SIZE, 1, weights=str(path), seed=3)
    for want, got in zip(source.weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(want.numpy(), got.numpy())


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.weights.h5"
    build_model("seed_cnn", SIZE, 3).save_weights(path)
    with pytest.raises(ValueError, match="Could not load weights=.*into model 'seed_cnn'"):
        build_model("seed_cnn", SIZE, 1, weights=str(path))


def test_keras_file_roundtrip_and_embedding_model(tmp_path):
    images, _ = _batch(1)
    model = build_model("seed_cnn", SIZE, 1)
    model.save(tmp_path / "best.keras")
    loaded = keras.models.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(model.predict(images, verbose=0),
                                  loaded.predict(images, verbose=0))
    features, _ = classical.feature_model(loaded).predict(images, verbose=0)
    assert features.shape == (2, 128)


def test_efficientnet_imagenet_file_gets_keras_std_correction():
    # What keras.applications.EfficientNetB0(weights="imagenet") computes after its Normalization
    # layer: (x - mean) / sqrt(var) / sqrt(stddev). A local ImageNet file must give the same.
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                                 input_shape=(SIZE, SIZE, 3))
    norm = next(l for l in backbone.layers if isinstance(l, keras.layers.Normalization))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    stddev = np.array([0.229, 0.224, 0.225], np.float32)
    weights = norm.get_weights()
    weights[0] = mean.reshape(weights[0].shape)
    weights[1] = (stddev**2).reshape(weights[1].shape)
    norm.set_weights(weights)
    norm.finalize_state()  # as Keras' weight loaders do
    x = np.random.default_rng(3).random((1, 4, 4, 3)).astype(np.float32)
    want = (x - mean) / stddev / np.sqrt(stddev)
    models._fix_efficientnet_imagenet(backbone)
    np.testing.assert_allclose(norm(x).numpy(), want, rtol=1e-4)
