"""Inference shared by training and evaluation: load a model, read a split in evaluation mode,
run the model over it, and the per-epoch validation metrics.

Small on purpose: training imports this, not the evaluator (reports, PNGs, TensorBoard).
TensorFlow is imported inside the functions, so `evaluate` checks its flags before it loads.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from xray_tfdata import console, labels, paths
from xray_tfdata.evaluation import metrics


def load_model(model_path: str | os.PathLike):
    """Loads a .keras model for inference; errors name the path and the fix."""
    import keras

    import xray_tfdata.models  # noqa: F401  (registers the package's custom layers for loading)
    path = paths.location(model_path)  # Keras reads a URL through gfile itself
    if not path.is_file():
        raise FileNotFoundError(
            f"No model file at {str(path)!r}. Train first (python -m xray_tfdata.train "
            f"--model_dir=...), then pass --model_path=<model_dir>/best.keras.")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as err:  # keras raises several types for a bad archive
        raise ValueError(f"Could not load Keras model {str(path)!r}: {err}. Pass a .keras file "
                         f"written by xray_tfdata.train (model.save).") from err


def input_spec(model) -> tuple[int, int]:
    """(image_size, channels) the model expects, from its input shape [None, H, W, C]."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"Model input shape {shape} is not [batch, size, size, channels]; "
                         f"evaluation needs a square-image classifier from xray_tfdata.models.")
    return int(shape[1]), int(shape[3])


def check_records_fit(info, image_size: int, channels: int) -> None:
    """Refuses records (a DatasetInfo) whose images are not the model's input (`image_size`,
    `channels`), in a model's terms: the pipeline's own check suggests an --image_size the
    commands that run a trained model do not have (the model fixes it)."""
    from xray_tfdata.records import manifest

    records_dir = info.records_dir
    held = (info.image.size, info.image.channels)
    if held != (image_size, channels):
        raise manifest.ManifestError(
            f"The records in {records_dir!r} hold {held[0]}x{held[0]}x{held[1]} images but the "
            f"model takes {image_size}x{image_size}x{channels}: run it on records built at its "
            f"size (python -m xray_tfdata.build_records --image_size={image_size} "
            f"--channels={channels} ...), or pass the model trained on these records.")


def records_for_model(records, model_classes: Sequence[str]):
    """(DatasetInfo, label ids or None, note): the records checked against the model's classes.

    Equal class lists give None (labels as stored). Records whose classes are a subset of the
    model's (an external set without PNEUMONIA) get the model's id of each records label and a
    note saying the metrics cover the classes present. Anything else is a ManifestError naming
    both lists, in one line.
    """
    from xray_tfdata.inputs import pipeline
    from xray_tfdata.records import manifest

    info = pipeline.records_info(records)
    if tuple(info.classes) == tuple(model_classes):
        return info, None, ""
    try:
        ids = labels.records_to_model_ids(model_classes, info.classes, info.records_dir)
    except ValueError as err:
        raise manifest.ManifestError(str(err)) from None
    note = (f"The records in {info.records_dir!r} hold the classes {list(info.classes)} of the "
            f"model's {list(model_classes)}: metrics cover the classes present.")
    return info, ids, note


def eval_dataset(records, split: str, image_size: int, channels: int, batch_size: int,
                 collections: tuple[str, ...] = (), label_ids: Sequence[int] | None = None):
    """The split in evaluation mode (one pass, remainder kept, no augmentation, fixed order),
    optionally of some collections only. `records`: a records dir or its DatasetInfo;
    `label_ids`: the model's id of each records label (records_for_model), None = as stored.
    Records of another image size or channel count than the model's input (`image_size`,
    `channels`) raise a ManifestError saying so."""
    # Imported here: `evaluate` validates its flags before TensorFlow is loaded.
    import tensorflow as tf

    from xray_tfdata.inputs import pipeline

    info = pipeline.records_info(records)
    check_records_fit(info, image_size, channels)

    config = pipeline.InputConfig(global_batch_size=batch_size, image_size=image_size,
                                  channels=channels, training=False, cache="none", augment=False,
                                  deterministic=True, collections=collections)
    ds = pipeline.build_dataset(info, split, config)
    if label_ids is not None:
        table = tf.constant(list(label_ids), tf.int32)
        ds = ds.map(lambda images, y: (images, tf.gather(table, tf.cast(y, tf.int32))))
    return ds


def predict_fn(model):
    """The model's inference step as a tf.function; build it once and reuse it across passes."""
    import tensorflow as tf

    # reduce_retracing: the last batch is smaller; one extra trace at most.
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def split_size(records, split: str, collections: tuple[str, ...] = ()) -> int:
    """Examples in `split` (of `collections`, all when empty), from the manifest (for progress
    bars); `records`: a records dir or its DatasetInfo."""
    from xray_tfdata.inputs import collection_select, pipeline

    return collection_select.num_examples(pipeline.records_info(records), split, collections)


def aligned_metadata(records, split: str, collections: tuple[str, ...],
                     y_true: np.ndarray, label_ids: Sequence[int] | None = None
                     ) -> dict[str, np.ndarray]:
    """pipeline.read_metadata of the examples `run_model` scored over `eval_dataset(records,
    split, ..., collections, label_ids)`, in the same order, labels as the model's ids;
    checked against their labels `y_true`."""
    from xray_tfdata.inputs import pipeline

    meta = pipeline.read_metadata(records, split, collections)
    records_dir = pipeline.records_info(records).records_dir
    if label_ids is not None:  # the records' ids -> the model's (records_for_model)
        meta["label"] = np.asarray(label_ids)[meta["label"]]
    if not np.array_equal(meta["label"], y_true):  # the two passes must read the same order
        raise ValueError(f"The metadata of {records_dir}:{split} are not in the order of its "
                         f"predictions; rerun with --verbosity=0 and report this.")
    return meta


def run_model(model, dataset, *, predict=None, label: str = "", total: int = 0
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs the model (or a ready `predict` step from `predict_fn`) over (images, labels)
    batches; returns labels and each output, float32. With `label`, shows a progress bar of
    `total` images."""
    import tensorflow as tf

    step = predict or predict_fn(model)
    bar = console.ProgressBar(total, label) if label else None
    all_labels: list[np.ndarray] = []
    outputs: list[list[np.ndarray]] = []
    for images, batch_labels in dataset:
        out = step(images)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if not outputs:
            outputs = [[] for _ in out]
        for acc, value in zip(outputs, out):
            acc.append(np.asarray(tf.cast(value, tf.float32)))
        all_labels.append(np.asarray(batch_labels))
        if bar:
            bar.update(len(all_labels[-1]))
    if bar:
        bar.close()
    if not all_labels:
        raise ValueError("The split yielded no examples; check the records (manifest counts).")
    return (np.concatenate(all_labels).astype(np.int64),
            [np.concatenate(acc, axis=0) for acc in outputs])


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, macro-F1 and one-vs-rest macro AUC (NaN when a class is absent)."""
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64)
    picked = probabilities[np.arange(len(y_true)), y_true]
    label_ids = list(range(probabilities.shape[1]))
    cm = sk_metrics.confusion_matrix(y_true, probabilities.argmax(axis=1), labels=label_ids)
    rates = metrics.rates_from_confusion(cm)
    aucs = metrics.auc_ovr(y_true, probabilities / probabilities.sum(axis=1, keepdims=True))
    return {
        "loss": float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))),
        "accuracy": float(rates["accuracy"]),
        "macro_f1": float(rates["macro_f1"]),
        # NaN, not a mean of the defined classes: a tiny validation split missing a class must
        # not look comparable to a full one when choosing the best epoch.
        "auc": float("nan") if None in aucs else float(np.mean(aucs)),
    }


def validation_metrics(predict: Callable, dataset) -> dict[str, float]:
    """Runs `predict` (from predict_fn) over one pass of an eval-mode dataset (on every worker
    alike): training's per-epoch validation."""
    truth, (probs, *_) = run_model(None, dataset, predict=predict)
    return classification_metrics(truth, probs)
