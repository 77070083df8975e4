"""gradcam.py / gradcam_report.py / explain.py: region lighting, border attention, every model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import fixtures
from xray_tfdata import models
from xray_tfdata.evaluation import gradcam_report, gradcam

SIZE = 32


def test_border_attention_on_hand_made_maps():
    uniform = np.ones((1, 64, 64))
    assert gradcam.border_attention(uniform)[0] == pytest.approx(0.4375)
    assert gradcam.UNIFORM_BORDER_SHARE == pytest.approx(0.4375)
    centre = np.zeros((64, 64))
    centre[8:56, 8:56] = 1.0  # exactly the inner 75% square
    frame = 1.0 - centre
    corner = np.zeros((64, 64))
    corner[0:4, 0:4] = 2.0
    half = np.zeros((64, 64))
    half[0, :] = 1.0  # 64 border pixels ...
    half[32, :] = 1.0  # ... and 48 centre pixels + 16 border pixels on row 32
    shares = gradcam.border_attention(np.stack([centre, frame, corner, half, np.zeros((64, 64))]))
    assert shares[:4] == pytest.approx([0.0, 1.0, 1.0, 80 / 128])
    assert np.isnan(shares[4])  # an all-zero map has no mass to share
    summary = gradcam.attention_summary(shares, np.array([0, 1, 1, 2, 2]))
    assert summary["per_class"] == pytest.approx({"NORMAL": 0.0, "COVID19": 1.0,
                                                  "PNEUMONIA": 80 / 128})
    assert summary["num_images"] == 4 and summary["warning"] is True
    assert "WARNING" in gradcam.attention_summary(np.array([0.5]), np.array([0]))["message"]
    assert not gradcam.attention_summary(np.array([0.3]), np.array([0]))["warning"]
    with pytest.raises(ValueError, match="non-negative"):
        gradcam.border_attention(-uniform)


def _patch(kind: str) -> np.ndarray:
    if kind == "solid":  # the checkerboard's mean brightness: only texture tells them apart
        return np.full((8, 8, 1), 115, np.uint8)
    checker = (np.indices((8, 8)) // 2).sum(axis=0) % 2  # 2-pixel checkerboard
    return (checker * 230).astype(np.uint8)[..., None]


def _region_data(n: int, rng: np.random.Generator, *, evidence_top_left: bool = False):
    """Class 1 iff a checkerboard patch is present (class 0 gets a solid patch of the same mean
    in its place); every image also carries two solid distractor squares. With evidence_top_left
    the checkerboard sits in the top-left quadrant and the distractors outside it, so the
    evidence is in one known region."""
    images = rng.integers(0, 40, (n, SIZE, SIZE, 1)).astype(np.uint8)
    y = np.ones(n, np.int64) if evidence_top_left else rng.integers(0, 2, n)
    for i in range(n):
        for _ in range(2):
            while True:
                r, c = rng.integers(0, SIZE - 8, 2)
                if not evidence_top_left or r >= 16 or c >= 16:
                    break
            images[i, r:r + 8, c:c + 8] = _patch("solid")
        r, c = rng.integers(0, 8 if evidence_top_left else SIZE - 8, 2)
        images[i, r:r + 8, c:c + 8] = _patch("checker" if y[i] else "solid")
    return images, y


@pytest.fixture(scope="module")
def region_model():
    """A hand-set CNN whose answer depends only on checkerboard texture: conv channel 0 is a
    checkerboard detector (zero on flat patches), channel 1 a brightness detector that also
    fires on the distractors but that the head ignores; a 1x1 "c2" is the last convolution."""
    inputs = keras.Input((SIZE, SIZE, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    c1 = keras.layers.Conv2D(2, 4, padding="same", activation="relu", name="c1")
    c2 = keras.layers.Conv2D(2, 1, activation="relu", name="c2")
    x = keras.layers.GlobalAveragePooling2D()(c2(c1(x)))
    embedding = keras.layers.Dense(2, activation="relu", name="embedding")
    head = keras.layers.Dense(3, activation="softmax", name="probabilities")
    model = keras.Model(inputs, head(embedding(x)))
    checker = np.where((np.indices((4, 4)) // 2).sum(axis=0) % 2 == 1, 1.0, -1.0) / 16
    kernel = np.stack([checker, np.full((4, 4), 1 / 16)], axis=-1)[:, :, None, :]
    c1.set_weights([kernel.astype(np.float32), np.array([-0.02, 0.0], np.float32)])
    c2.set_weights([np.eye(2, dtype=np.float32)[None, None], np.zeros(2, np.float32)])
    embedding.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    # Threshold between the mean texture response of the two classes (measured on training data).
    images, y = _region_data(200, np.random.default_rng(0))
    feats = keras.Model(inputs, x).predict(images, verbose=0)[:, 0]
    threshold = (feats[y == 0].max() + feats[y == 1].min()) / 2
    scale = 20.0 / max(feats[y == 1].min() - threshold, 1e-6)
    head_kernel = np.array([[0.0, scale, -scale], [0.0, 0.0, 0.0]], np.float32)
    head.set_weights([head_kernel, np.array([0.0, -scale * threshold, 0.0], np.float32)])
    return model


def test_gradcam_lights_the_region_the_answer_depends_on(region_model):
    images, y = _region_data(200, np.random.default_rng(1))
    accuracy = float((region_model.predict(images, verbose=0).argmax(1) == y).mean())
    assert accuracy > 0.9  # it did learn the rule
    cam = gradcam.GradCam(region_model)
    assert cam.layer_name == "c2"  # the last Conv2D
    positives, _ = _region_data(64, np.random.default_rng(2), evidence_top_left=True)
    out = cam.maps(positives)  # one tape for the whole batch
    assert (out["class_index"] == 1).mean() > 0.9
    maps = gradcam.upsample(out["maps"], SIZE)
    top_left = maps[:, :16, :16].sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-12)
    # The quarter holding the evidence holds most of the map (uniform would give 0.25), though
    # two bright distractors sit elsewhere.
    assert np.median(top_left) > 0.6
    np.testing.assert_allclose(out["probs"], region_model.predict(positives, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_every_model_gets_its_last_convolution_block(policy):
    expected = {"seed_cnn": "conv3", "resnet50": "conv5_block3_out", "densenet121": "relu",
                "efficientnetb0": "top_activation"}
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 1)).astype(np.uint8)
        # Every model in float32; under mixed precision the seed CNN and one backbone (the
        # dtype handling is shared, and each backbone costs seconds to build).
        names = models.MODEL_NAMES if policy == "float32" else ("seed_cnn", "efficientnetb0")
        for name in names:
            model = models.build_model(name, 64, 1)
            cam = gradcam.GradCam(model)
            if name in expected:
                assert cam.layer_name == expected[name]
            out = cam.maps(images)
            assert out["maps"].dtype == np.float32 and out["maps"].ndim == 3
            assert np.isfinite(out["maps"]).all() and (out["maps"] >= 0).all()
            np.testing.assert_allclose(out["probs"], np.asarray(model(images, training=False)),
                                       atol=2e-3)
        if policy == "float32":
            chosen = gradcam.GradCam(models.build_model("resnet50", 64, 1), "conv4_block6_out")
            assert chosen.maps(images)["maps"].shape == (2, 4, 4)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    with pytest.raises(ValueError, match="layer='nope'"):
        gradcam.GradCam(models.build_model("seed_cnn", 32, 1), "nope")


def test_explain_command_writes_overlays_sheets_and_json(tmp_path):
    records = fixtures.brightness_records(tmp_path / "records", {"test": 4})
    keras.utils.set_random_seed(0)
    model_path = tmp_path / "m" / "best.keras"
    model_path.parent.mkdir()
    models.build_model("seed_cnn", fixtures.TINY_SIZE, 1).save(model_path)
    out = tmp_path / "explain"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.explain", f"--model_path={model_path}",
         f"--records_dir={records}", "--split=test", "--per_class=3", f"--output_dir={out}",
         "--batch_size=4"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "border attention NORMAL" in proc.stdout and "layer conv3" in proc.stdout
    report = json.loads((out / gradcam_report.EXPLAIN_FILE).read_text())
    assert [i["true"] for i in report["images"]].count("COVID19") == 3
    assert len(report["images"]) == 9
    for image in report["images"]:
        assert (out / image["file"]).read_bytes()[:4] == b"\x89PNG"
    assert sorted(report["sheets"]) == ["COVID19", "NORMAL", "PNEUMONIA"]
    assert set(report["border_attention"]["per_class"]) == {"NORMAL", "COVID19", "PNEUMONIA"}
    bad = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.explain", f"--model_path={model_path}",
         f"--records_dir={records}", "--per_class=0"], env=env, capture_output=True, text=True,
        timeout=120)
    assert bad.returncode == 1 and "--per_class must be an integer >= 1" in bad.stderr
