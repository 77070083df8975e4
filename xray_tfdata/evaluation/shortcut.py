"""Shortcut probe: how well does source metadata alone predict the class?

In the Kaggle COVID-19 chest X-ray set, NORMAL and PNEUMONIA come from a paediatric collection and
COVID19 from adult ones, so image size, file format, colour mode and file size differ by class. A
CNN can score well by recognising the source instead of the disease. The probe fits a small
scikit-learn classifier on those metadata alone (never on pixels), on the train split, and scores
its macro-F1 on the evaluated split. The train split must be the one the MODEL was trained on
(evaluation/reference.py finds it from the training run), not the evaluated records' own. When
it comes within `threshold` (default 80%) of the CNN's macro-F1, the CNN's number cannot be
trusted as evidence of learning the disease.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xray_tfdata import labels
from xray_tfdata.evaluation import metrics

PROBE_MODELS = ("gradient_boosting", "logistic_regression")
DEFAULT_THRESHOLD = 0.8
# Above this macro-F1 the metadata alone clearly separate classes (3-class chance is about 1/3).
STRONG_PROBE_F1 = 0.5

# Column names of pipeline.read_metadata, then the tf.Example keys (features.py) as a fallback.
# Literal strings, not imports: this module stays TensorFlow-free so the CLI validates flags fast.
_ALIASES = {
    "label": ("label", "image/class/label"),
    "width": ("source_width", "width", "image/source/width"),
    "height": ("source_height", "height", "image/source/height"),
    "mode": ("source_mode", "mode", "image/source/mode"),
    "format": ("source_format", "format", "image/source/format"),
    "bytes": ("source_bytes", "bytes", "image/source/bytes"),
}
# Technical DICOM tags (records/dicom.py; features.DICOM_TAG_KEYS), one-hot like format and mode
# when the metadata carries them; "" for non-DICOM sources. A tag used only as "" adds nothing,
# so the probe on JPEG/PNG records is unchanged. A view (AP for bedside COVID films, PA in the
# clinic) or one vendor per class is exactly the kind of shortcut the probe exists to expose.
TAG_COLUMNS: dict[str, tuple[str, ...]] = {
    name: (f"dicom_{name}", f"image/source/dicom/{name}")
    for name in ("modality", "view_position", "photometric", "bits_stored", "manufacturer",
                 "pixel_spacing")
}
# The collection an image came from (--data_dir=name=path builds; "" for a single unnamed one):
# when classes come from different collections, the collection alone predicts the class.
TAG_COLUMNS["source"] = ("source", "image/source/collection")
_ALIASES.update(TAG_COLUMNS)


def column(meta: Mapping[str, Any], name: str) -> np.ndarray:
    """One metadata column by its canonical name, whatever key read_metadata used."""
    for key in _ALIASES[name]:
        if key in meta:
            values = np.asarray(meta[key])
            if values.dtype.kind in ("S", "O"):
                values = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                                   for v in values])
            return values
    raise KeyError(f"Metadata has no {name!r} column (looked for {_ALIASES[name]}); "
                   f"it has {sorted(meta)}.")


@dataclasses.dataclass(frozen=True)
class MetadataEncoder:
    """Turns metadata columns into a numeric matrix; vocabularies come from the train split."""

    formats: tuple[str, ...]
    modes: tuple[str, ...]
    # (tag column, its train vocabulary) for each DICOM tag column with a non-empty value.
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def fit(cls, meta: Mapping[str, Any]) -> "MetadataEncoder":
        return cls(formats=tuple(sorted(set(column(meta, "format").tolist()))),
                   modes=tuple(sorted(set(column(meta, "mode").tolist()))),
                   tags=_fit_tags(meta))

    @property
    def feature_names(self) -> list[str]:
        return (["width", "height", "aspect", "log_bytes"] + [f"format={f}" for f in self.formats]
                + [f"mode={m}" for m in self.modes]
                + [f"{name}={v}" for name, vocab in self.tags for v in vocab])

    def transform(self, meta: Mapping[str, Any]) -> np.ndarray:
        width = column(meta, "width").astype(np.float64)
        height = column(meta, "height").astype(np.float64)
        aspect = width / np.maximum(height, 1.0)
        log_bytes = np.log1p(column(meta, "bytes").astype(np.float64))
        fmt = column(meta, "format")
        mode = column(meta, "mode")
        # A value unseen in train gets an all-zero one-hot row rather than an error.
        fmt_onehot = (fmt[:, None] == np.array(self.formats, dtype=object)[None, :]) \
            if self.formats else np.zeros((fmt.size, 0))
        mode_onehot = (mode[:, None] == np.array(self.modes, dtype=object)[None, :]) \
            if self.modes else np.zeros((mode.size, 0))
        tag_onehots = [(_tag_column(meta, name, fmt.size)[:, None]
                        == np.array(vocab, dtype=object)[None, :]).astype(np.float64)
                       for name, vocab in self.tags]
        return np.column_stack([width, height, aspect, log_bytes,
                                fmt_onehot.astype(np.float64), mode_onehot.astype(np.float64),
                                *tag_onehots])


def _tag_column(meta: Mapping[str, Any], name: str, size: int) -> np.ndarray:
    """A DICOM tag column, or all "" when the metadata lacks it (records without DICOM)."""
    try:
        return column(meta, name)
    except KeyError:
        return np.full(size, "", dtype=object)


def _fit_tags(meta: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    size = column(meta, "label").size
    fitted = []
    for name in TAG_COLUMNS:
        vocab = tuple(sorted(set(_tag_column(meta, name, size).tolist())))
        if any(vocab):
            fitted.append((name, vocab))
    return tuple(fitted)


def is_original(augmentation: Any) -> np.ndarray:
    """True for each record that is a source image itself, not an offline-augmented variant
    (the `augmentation` metadata column: "none", or "" in records from before the column)."""
    return np.asarray([str(a) in ("none", "b'none'", "") for a in np.asarray(augmentation)],
                      dtype=bool)


def originals_only(meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drops offline-augmented variants: they repeat their source's metadata and would let the
    most augmented class (COVID19 in the Kaggle recipe) dominate the probe's training set."""
    meta = {k: np.asarray(v) for k, v in meta.items()}
    if "augmentation" not in meta:
        return meta
    keep = is_original(meta["augmentation"])
    if keep.all() or not keep.any():
        return meta
    return {k: v[keep] if v.shape[:1] == keep.shape else v for k, v in meta.items()}


def _make_probe(model: str, seed: int):
    if model == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    if model == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000,
                                                                  random_state=seed))
    raise ValueError(f"Received: probe model={model!r}. Allowed: {', '.join(PROBE_MODELS)}.")


def run_probe(train_meta: Mapping[str, Any], eval_meta: Mapping[str, Any], cnn_macro_f1: float,
              *, model: str = "gradient_boosting", threshold: float = DEFAULT_THRESHOLD,
              seed: int = 0, class_names: Sequence[str] = labels.DEFAULT_CLASSES
              ) -> dict[str, Any]:
    """Fits the metadata-only probe on train_meta and scores it on eval_meta.

    Both metas' labels are ids of `class_names` (the model's classes).

    Returns a JSON-ready dict with the probe's and the CNN's macro-F1, their ratio, `warning`
    (True when probe >= threshold * CNN) and a human `message`.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"Received: threshold={threshold}. Use a fraction in (0, 1], e.g. 0.8.")
    if model not in PROBE_MODELS:
        raise ValueError(f"Received: probe model={model!r}. Allowed: {', '.join(PROBE_MODELS)}.")
    train_meta = originals_only(train_meta)
    y_train = column(train_meta, "label").astype(np.int64)
    y_eval = column(eval_meta, "label").astype(np.int64)
    result: dict[str, Any] = {"probe_model": model, "threshold": threshold,
                              "cnn_macro_f1": float(cnn_macro_f1), "num_train": int(y_train.size),
                              "num_eval": int(y_eval.size)}
    if np.unique(y_train).size < 2 or y_eval.size == 0:
        result.update(skipped=True, warning=False, probe_macro_f1=None, ratio=None,
                      message="Shortcut probe skipped: the train split needs at least two classes "
                              "and the evaluated split at least one example.")
        return result
    encoder = MetadataEncoder.fit(train_meta)
    probe = _make_probe(model, seed)
    probe.fit(encoder.transform(train_meta), y_train)
    x_eval = encoder.transform(eval_meta)
    probs = np.zeros((y_eval.size, len(class_names)))
    # The probe only knows the classes it saw in train; put its columns in label order.
    probs[:, probe.classes_] = probe.predict_proba(x_eval)
    probe_metrics = metrics.compute_metrics(y_eval, probs, n_resamples=0,
                                            class_names=class_names)
    probe_f1 = probe_metrics["macro_f1"]
    result.update(
        skipped=False, probe_macro_f1=probe_f1, probe_accuracy=probe_metrics["accuracy"],
        probe_per_class_f1={name: row["f1"] for name, row in probe_metrics["per_class"].items()},
        probe_confusion_matrix=probe_metrics["confusion_matrix"],
        features=encoder.feature_names)
    result.update(compare(probe_f1, cnn_macro_f1, threshold))
    source_f1 = source_alone_macro_f1(train_meta, eval_meta, class_names)
    if source_f1 is not None:
        result["source_alone_macro_f1"] = source_f1
        result["message"] += (f" The collection alone (each collection's majority class in "
                              f"train) scores macro-F1 {source_f1:.3f}.")
    return result


def source_alone_macro_f1(train_meta: Mapping[str, Any], eval_meta: Mapping[str, Any],
                          class_names: Sequence[str] = labels.DEFAULT_CLASSES) -> float | None:
    """Macro-F1 of predicting each image's class as its collection's majority class in train;
    None when the records name fewer than two collections (nothing to learn from)."""
    size_train = column(train_meta, "label").size
    size_eval = column(eval_meta, "label").size
    train_src = _tag_column(train_meta, "source", size_train)
    eval_src = _tag_column(eval_meta, "source", size_eval)
    if len(set(train_src.tolist()) | set(eval_src.tolist())) < 2 or size_eval == 0:
        return None
    y_train = column(train_meta, "label").astype(np.int64)
    k = len(class_names)
    overall = int(np.bincount(y_train, minlength=k).argmax())
    majority = {src: int(np.bincount(y_train[train_src == src], minlength=k).argmax())
                for src in set(train_src.tolist())}
    predicted = np.array([majority.get(src, overall) for src in eval_src.tolist()], np.int64)
    probs = np.eye(k)[predicted]
    y_eval = column(eval_meta, "label").astype(np.int64)
    return float(metrics.compute_metrics(y_eval, probs, n_resamples=0,
                                         class_names=class_names)["macro_f1"])


def compare(probe_f1: float, cnn_macro_f1: float,
            threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The probe's macro-F1 against the CNN's: ratio, `warning` and the human `message`."""
    # None (not inf) keeps metrics.json valid JSON when the CNN scores 0.
    ratio = probe_f1 / cnn_macro_f1 if cnn_macro_f1 > 0 else None
    warning = bool(probe_f1 >= threshold * cnn_macro_f1)
    ratio_text = f"{ratio:.0%}" if ratio is not None else "n/a"
    head = (f"WARNING: a classifier on source metadata alone (size, format, colour mode, file "
            f"size; no pixels) reaches macro-F1 {probe_f1:.3f}, {ratio_text} of the CNN's "
            f"{cnn_macro_f1:.3f} (threshold {threshold:.0%}).")
    if warning and probe_f1 >= STRONG_PROBE_F1:
        message = (f"{head} The classes are separable by their source collection, so the CNN's "
                   f"score may reflect where an image came from rather than disease. Check on "
                   f"data where every class comes from the same sources.")
    elif warning:
        # Both are weak: the CNN does no better than metadata, which itself is near chance.
        message = (f"{head} Both are weak: the CNN's score is no evidence that it learned the "
                   f"disease from pixels; train longer or check the data.")
    else:
        message = (f"Shortcut probe: metadata-only macro-F1 {probe_f1:.3f} is {ratio_text} of the "
                   f"CNN's {cnn_macro_f1:.3f} (below the {threshold:.0%} warning threshold).")
    return {"cnn_macro_f1": float(cnn_macro_f1), "ratio": ratio, "warning": warning,
            "message": message}
