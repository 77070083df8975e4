"""train --collection_adversary (training/adversary.py): the reversal, the loss within the class,
the plan and its refusal, and whole runs: the collection leaves the embedding on a toy problem
where it is a pixel shortcut, under MirroredStrategy and mixed_float16, resumed, refused when the
weight changes, never exported."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata import models
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import pipeline
from xray_tfdata.records import manifest
from xray_tfdata.settings import from_flat
from xray_tfdata.training import adversary, distribute, loop, run_spec, setup
from xray_tfdata.training.config import TrainConfig

SIZE = 32
NORMAL, PNEUMONIA = 0, 2


# ------------------------------------------------------------------ the pieces
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_minus_weight_times_the_identity(weight):
    x = tf.constant([[1.5, -2.0, 0.25], [3.0, 0.0, -1.0]])
    upstream = tf.constant([[0.5, -1.0, 2.0], [4.0, 0.125, -3.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        reversed_ = adversary.gradient_reversal(x, weight)
        plain = tf.identity(x)
        y_rev, y_id = tf.reduce_sum(reversed_ * upstream), tf.reduce_sum(plain * upstream)
    np.testing.assert_array_equal(reversed_.numpy(), x.numpy())  # identity forward
    g_rev, g_id = tape.gradient(y_rev, x).numpy(), tape.gradient(y_id, x).numpy()
    np.testing.assert_array_equal(g_id, upstream.numpy())
    np.testing.assert_array_equal(g_rev, -weight * g_id)  # exact: powers of two and 0.3 * them
    half = tf.cast(x, tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(half)
        out = tf.reduce_sum(adversary.gradient_reversal(half, weight))
    grad = tape.gradient(out, half)
    assert grad.dtype == tf.float16
    np.testing.assert_array_equal(grad.numpy(), np.full((2, 3), -weight, np.float16))


def test_conditional_loss_reads_the_true_class_row_and_masks_single_collection_classes():
    # Classes NORMAL (a, b), COVID19 (b only: masked), PNEUMONIA (a, b, c).
    holds = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]], bool)
    logits = np.zeros((4, 3, 3), np.float32)
    logits[0, 0] = [2.0, 0.0, 50.0]  # NORMAL from a: c is not a NORMAL collection, ignored
    logits[1, 1] = [9.0, 0.0, 9.0]  # COVID19: one collection, masked whatever it says
    logits[2, 2] = [0.0, 0.0, 3.0]  # PNEUMONIA from b: wrong (answers c)
    logits[3, 2] = [0.0, 1.0, 0.0]  # PNEUMONIA from b: right
    labels, collections = [0, 1, 2, 2], [0, 1, 1, 1]
    out = adversary.conditional_loss(tf.constant(logits), tf.constant(labels),
                                     tf.constant(collections), holds, global_batch_size=8)
    nll = [-np.log(np.exp(2) / (np.exp(2) + 1)), 0.0,
           -np.log(1 / (2 + np.exp(3))), -np.log(np.e / (np.e + 2))]
    assert float(out["adversary_nll"]) == pytest.approx(sum(nll), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(sum(nll) / 8, rel=1e-5)  # over the GLOBAL batch
    assert (float(out["adversary_correct"]), float(out["adversary_count"])) == (2.0, 3.0)
    fooled = adversary.fooled(tf.constant(logits), tf.constant(labels), tf.constant(collections),
                              holds).numpy()
    # Worse than chance: ln 2 for NORMAL, ln 3 for PNEUMONIA (example 2 only).
    np.testing.assert_array_equal(fooled, [False, False, True, False])
    assert adversary.epoch_metrics({"adversary_nll": 3.0, "adversary_correct": 2.0,
                                    "adversary_count": 4.0}) == {
        "adversary_loss": 0.75, "adversary_accuracy": 0.5}
    assert all(math.isnan(v) for v in adversary.epoch_metrics({"adversary_count": 0}).values())


def _manifest(per_source: dict[str, dict[str, int]]) -> manifest.DatasetInfo:
    return manifest.info_from_dict({
        "label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2},
        "splits": {"train": {"per_class": {}, "per_source": per_source},
                   "test": {"per_class": {}, "per_source": {"zz": {"NORMAL": 3}}}}})


def test_plan_ids_from_every_split_masks_single_collection_classes_and_refuses_none():
    info = _manifest({"kaggle": {"NORMAL": 9, "COVID19": 0, "PNEUMONIA": 9},
                      "adult": {"NORMAL": 5, "COVID19": 7, "PNEUMONIA": 2}})
    plan = adversary.plan(info, 0.5)
    assert plan.names == ("adult", "kaggle", "zz")  # sorted over every split: fixed ids
    np.testing.assert_array_equal(plan.holds, [[1, 1, 0], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(plan.active, [True, False, True])
    assert plan.describe()["masked_classes"] == ["COVID19"]
    # Excluding adult leaves one collection per class: nothing to learn, refused in one line.
    with pytest.raises(ConfigError) as err:
        adversary.plan(info, 0.5, exclude=("adult",))
    message = str(err.value)
    assert err.value.field == "collection_adversary" and "\n" not in message
    assert "collections per class: NORMAL 1, COVID19 0, PNEUMONIA 1" in message
    assert "Received: collection_adversary=0.5" in message and "--data_dir=name=path" in message
    with pytest.raises(ConfigError, match=r"collections per class: NORMAL 1, COVID19 0, "
                                          r"PNEUMONIA 1; collections: \[''\]"):
        adversary.plan(manifest.info_from_dict({
            "label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2}, "splits": {"train": {
                "per_class": {"NORMAL": 4, "COVID19": 0, "PNEUMONIA": 3}}}}), 1.0)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "1"])
def test_weight_must_be_a_number_at_least_zero(value):
    with pytest.raises(ConfigError, match=r"collection_adversary must be a number >= 0 \(0 = "
                                          r"off\)\. Received: collection_adversary="):
        from_flat(TrainConfig, records_dir="r", model_dir="m", collection_adversary=value)


# ------------------------------------------------------------------ whole runs
def _image(label: int, collection: str, rng: np.random.Generator) -> np.ndarray:
    """Noise; PNEUMONIA is a brighter centre; collection a is a brighter top-left corner."""
    image = rng.normal(100.0, 20.0, (SIZE, SIZE, 1))
    if label == PNEUMONIA:
        image[10:22, 10:22] += 60.0
    if collection == "a":
        image[:8, :8] += 30.0
    return np.clip(image, 0, 255).astype(np.uint8)


def _split(n: int, rng: np.random.Generator) -> list:
    items = [(name, label, k) for name in ("a", "b") for label in (NORMAL, PNEUMONIA)
             for k in range(n)]
    return [fixtures.example(_image(label, name, rng), label=label, source=name,
                             source_path=f"{name}/{label}/{k}.png")
            for i in rng.permutation(len(items)) for name, label, k in [items[i]]]


@pytest.fixture(scope="module")
def shortcut_records(tmp_path_factory) -> Path:
    """2 classes x 2 collections, each class in both: the collection carries no class."""
    rng = np.random.default_rng(0)
    return fixtures.write_records(
        tmp_path_factory.mktemp("shortcut"),
        {"train": _split(24, rng), "val": _split(6, rng), "test": _split(20, rng)},
        image_size=SIZE)


def _config(records: Path, model_dir: Path, **overrides) -> TrainConfig:
    # 180 steps = 30 passes over the 96 train images, in 3 epochs (fewer validations and saves).
    settings = dict(records_dir=str(records), model_dir=str(model_dir), epochs=3,
                    steps_per_epoch=60, global_batch_size=16, warmup_epochs=0, dropout=0.0,
                    augment=False, export=False, calibrate=False, deterministic=True,
                    steps_per_execution=12)
    settings.update(overrides)
    return from_flat(TrainConfig, **settings)


def _final_embeddings(records: Path, model_dir: Path) -> tuple[np.ndarray, ...]:
    """(embedding, labels, collection ids, probabilities) of the test split, by the run's last
    checkpoint (best.keras is the best val epoch, often one before the adversary has worked)."""
    model = models.build_model("seed_cnn", SIZE, 1, dropout=0.0)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(str(model_dir / "checkpoints"))).expect_partial()
    features = keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])
    config = pipeline.InputConfig(global_batch_size=40, image_size=SIZE, training=False,
                                  augment=False, label_collections=True, deterministic=True)
    out = [[], [], [], []]
    for images, labels, ids in pipeline.build_dataset(str(records), "test", config):
        embedding, probabilities = features(images, training=False)
        for column, value in zip(out, (embedding, labels, ids, probabilities)):
            column.append(np.asarray(value))
    return tuple(np.concatenate(column) for column in out)


def test_shortcut_toy_collection_leaves_the_embedding_class_stays(shortcut_records, tmp_path):
    """Measured here with data and training seeds 0-5 (180 steps): a logistic probe on the
    embedding reads the collection at 0.86-0.96 without the adversary, 0.56-0.66 with
    --collection_adversary=1 (drop 0.23-0.39); class accuracy 1.0 in every run."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import cross_val_score  # noqa: PLC0415

    result = {}
    for weight in (0.0, 1.0):
        model_dir = tmp_path / f"w{weight}"
        summary = loop.train(_config(shortcut_records, model_dir, collection_adversary=weight))
        embedding, labels, ids, probabilities = _final_embeddings(shortcut_records, model_dir)
        probe = cross_val_score(LogisticRegression(max_iter=3000), embedding, ids, cv=5).mean()
        result[weight] = (probe, float(np.mean(probabilities.argmax(1) == labels)), summary)
    (probe_off, class_off, _), (probe_on, class_on, summary) = result[0.0], result[1.0]
    print(f"probe {probe_off:.3f} -> {probe_on:.3f}, class accuracy {class_off:.3f} -> "
          f"{class_on:.3f}")
    assert probe_off >= 0.8, "the toy's collection must be in the embedding to begin with"
    assert probe_on <= probe_off - 0.12
    assert class_off >= 0.95 and class_on >= 0.95
    metrics = summary["final_metrics"]
    assert 0.0 <= metrics["adversary_accuracy"] <= 1.0 and metrics["adversary_loss"] > 0
    assert summary["resolved"]["collection_adversary"] == {
        "collections": ["a", "b"], "classes": {"NORMAL": ["a", "b"], "COVID19": [],
                                               "PNEUMONIA": ["a", "b"]},
        "masked_classes": ["COVID19"]}


def _history(model_dir: Path) -> list[dict[str, str]]:
    with (model_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_mirrored_mixed_float16_resume_refusal_and_export_unchanged(shortcut_records,
                                                                     tmp_path):
    from xray_tfdata.serving import export  # noqa: PLC0415

    mirrored = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    config = _config(shortcut_records, tmp_path, epochs=1, steps_per_epoch=3,
                     steps_per_execution=2, precision="mixed_float16", export=True,
                     collection_adversary=0.5)
    summary = loop.train(config, mirrored)
    assert summary["resolved"]["replicas"] == 2
    assert summary["resolved"]["precision"] == "mixed_float16"
    rows = _history(tmp_path)
    assert list(rows[0])[-2:] == ["adversary_loss", "adversary_accuracy"]
    assert math.isfinite(float(rows[0]["adversary_loss"]))
    # Neither best.keras nor the export holds the head: the same layers and variables as the
    # model alone, the same serving signature.
    best = keras.models.load_model(tmp_path / "best.keras", compile=False)
    plain = models.build_model("seed_cnn", SIZE, 1)
    assert [layer.name for layer in best.layers] == [layer.name for layer in plain.layers]
    assert [w.shape for w in best.weights] == [w.shape for w in plain.weights]
    served = export.load_serving(tmp_path / "export")
    assert sorted(served.signature.structured_input_signature[1]) == ["image_bytes"]
    assert served.signature.structured_outputs["probabilities"].shape.as_list() == [None, 3]
    saved = [name for name, _ in tf.train.list_variables(
        str(tmp_path / "export" / "variables" / "variables")) if "OBJECT_GRAPH" not in name]
    assert len(saved) == len(plain.weights) and not [n for n in saved if "adversary" in n]
    # Resumed with the same weight: the head and its optimizer come back from the checkpoint.
    again = loop.train(_config(shortcut_records, tmp_path, epochs=2, steps_per_epoch=3,
                               steps_per_execution=2, precision="mixed_float16",
                               collection_adversary=0.5), mirrored)
    assert again["resumed_from_step"] == 3 and again["steps_completed"] == 6
    assert [r["epoch"] for r in _history(tmp_path)] == ["1", "2"]
    # Another weight is another run: refused, naming it.
    with pytest.raises(run_spec.RunSpecMismatch, match=r"collection_adversary 0\.5 -> 1\.0"):
        loop.train(_config(shortcut_records, tmp_path, epochs=2, steps_per_epoch=3,
                           precision="mixed_float16", collection_adversary=1.0), mirrored)


def test_records_of_one_collection_are_refused_before_any_tf_op(tmp_path):
    records = fixtures.xray_records(tmp_path / "plain", {"train": 8, "val": 2}, image_size=32)
    with pytest.raises(ConfigError, match=r"collection_adversary must be 0 for these records"):
        setup.resolve_data(_config(records, tmp_path / "m", collection_adversary=0.5))
    assert setup.resolve_data(_config(records, tmp_path / "m")).collection_plan is None
