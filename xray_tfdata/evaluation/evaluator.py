"""Evaluation of a saved Keras model on one split: metrics with CIs, report, confusion matrix.

`evaluate(EvalConfig(...))` runs the model over the split through the same input pipeline as
training (evaluation mode: one pass, no augmentation), computes `metrics.compute_metrics`, ECE
before and after temperature scaling, the operating point's sensitivity / specificity / PPV (for
one positive class, COVID19 by default), the metadata-only shortcut probe (fitted on the model's
TRAINING records, see reference.py) and Grad-CAM border attention, and writes into the output
directory:
  metrics.json          every number, the settings, the model's sha256 and library versions
  report.txt            the same, human-readable (headline metrics with 95% bootstrap CIs)
  confusion_matrix.png  annotated counts and row fractions with class names
  reliability.png       reliability diagram before / after temperature scaling
  tensorboard/          the confusion-matrix image, headline scalars and the report as text
Several records directories (`records_dir="a,b"` or `external_records_dir`) are each evaluated
into <output_dir>/<name>/ and compared side by side in <output_dir>/comparison.{json,txt}.
Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.

Numbers are honest about the classes a split lacks or barely holds (metrics.py): macro averages
over the classes present, absent classes listed and their rows 'absent', exact intervals and a
warning for a class with fewer than metrics.EXACT_BELOW examples, and a warning when the operating
point was chosen on fewer than calibration.MIN_OPERATING_POSITIVES val positives. Warnings go
to absl's log (shown in quiet mode) and into metrics.json / report.txt.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import logging

from xray_tfdata import errors, files, labels, model_classes, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import by_collection, calibration, metrics, reference, shortcut
from xray_tfdata.inputs import collection_select  # TF-free: flags are checked before TF loads
from xray_tfdata.evaluation.inference import (
    aligned_metadata,
    eval_dataset,
    input_spec,
    load_model,
    records_for_model,
    run_model,
    split_size,
)
from xray_tfdata.settings import setting

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.png"
COMPARISON_FILE = "comparison"
TENSORBOARD_DIR = "tensorboard"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run; validates itself."""

    model_path: str = setting(help="The .keras model to evaluate.",
                              flag_default="workspace/model/best.keras")
    records_dir: str = setting(help="Records directory (dataset_info.json); several: "
                               "comma-separated.", flag_default="workspace/records")
    split: str = setting("test", "Split to evaluate.", allowed=labels.SPLITS)
    output_dir: str = setting("", "Output directory; default <dir of model>/eval/<split>.")
    batch_size: int = setting(64, "Evaluation batch size.")
    bootstrap: int = setting(1000, "Bootstrap resamples for 95% CIs; 0 disables them.")
    seed: int = setting(0, "Seed of the bootstrap and of the shortcut probe.")
    shortcut_probe: bool = setting(
        True, "Fit a metadata-only classifier (no pixels) and compare its macro-F1.")
    shortcut_model: str = setting(shortcut.PROBE_MODELS[0], "Classifier of the shortcut probe.",
                                  allowed=shortcut.PROBE_MODELS)
    shortcut_threshold: float = setting(shortcut.DEFAULT_THRESHOLD, "Warn when probe macro-F1 "
                                        ">= this fraction of the CNN's.")
    external_records_dir: str = setting(
        "", "More records directories (comma-separated), e.g. an external test-only "
        "collection, compared side by side.")
    train_records_dir: str = setting(
        "", "Records the model was trained on (shortcut probe, temperature, threshold); "
        "default: from the run's summary.json.")
    val_split: str = setting("val", "Split of the training records that chooses the "
                             "temperature and the operating point's threshold.")
    target_sensitivity: float = setting(calibration.DEFAULT_TARGET_SENSITIVITY,
                                        "Sensitivity of --positive_class the threshold reaches "
                                        "on val.")
    positive_class: str = setting(
        "", "The class of the operating point (one of the model's classes); default COVID19 "
        "when the model has it, else its first class other than NORMAL.")
    gradcam_per_class: int = setting(16, "Images per class for Grad-CAM border attention; "
                                     "0 = off.")
    collections: tuple[str, ...] = setting(
        (), "Evaluate only these collections (names of build_records' --data_dir=name=path,...), "
        "e.g. the one a leave-one-collection-out run left out; empty = all.")

    def __post_init__(self):
        errors.one_of("split", self.split, labels.SPLITS)
        for field in ("model_path", "records_dir", "output_dir", "train_records_dir"):
            paths.check(field, getattr(self, field))  # a URL's scheme must be one TF knows
        if not str(self.model_path).endswith(".keras"):
            raise ConfigError("model_path", self.model_path, "the .keras file training wrote",
                              "e.g. workspace/model/best.keras (an exported SavedModel is for "
                              "predict).")
        errors.positive_int("batch_size", self.batch_size)
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) \
                or self.bootstrap < 0:
            raise ConfigError("bootstrap", self.bootstrap,
                              "0 (no intervals) or a resample count such as 1000")
        errors.one_of("shortcut_model", self.shortcut_model, shortcut.PROBE_MODELS)
        if not (isinstance(self.shortcut_threshold, (int, float))
                and 0.0 < self.shortcut_threshold <= 1.0):
            raise ConfigError("shortcut_threshold", self.shortcut_threshold,
                              "a fraction in (0, 1], e.g. 0.8")
        errors.in_range("target_sensitivity", self.target_sensitivity, 0.0, 1.0,
                        allowed="a fraction in (0, 1], e.g. 0.95")
        if self.target_sensitivity == 0.0:
            raise ConfigError("target_sensitivity", 0.0, "a fraction in (0, 1], e.g. 0.95")
        errors.non_negative_int("gradcam_per_class", self.gradcam_per_class)
        # Whether the model has it is checked once the model is loaded (evaluate).
        if self.positive_class and not labels.is_class_name(self.positive_class):
            raise ConfigError("positive_class", self.positive_class,
                              "empty (the default) or an upper-case class name such as COVID19")
        object.__setattr__(self, "collections", collection_select.parse_names(self.collections))
        if not self.records_dirs:
            raise ConfigError("records_dir", self.records_dir,
                              "a records directory (several: comma-separated)")

    @property
    def records_dirs(self) -> list[str]:
        """Every evaluated records directory: records_dir's, then external_records_dir's."""
        joined = f"{self.records_dir},{self.external_records_dir}"
        return [d.strip() for d in joined.split(",") if d.strip()]

    def output_dirs(self) -> list[Path]:
        """One output directory per records dir: the output dir itself when there is one,
        else <output_dir>/<records dir name> (made unique)."""
        dirs = self.records_dirs
        if len(dirs) == 1:
            return [self.resolved_output_dir]
        names: list[str] = []
        for d in dirs:
            base = paths.location(d.rstrip("/")).name or "records"
            names.append(base if base not in names else f"{base}_{len(names)}")
        return [self.resolved_output_dir / n for n in names]

    @property
    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return paths.location(self.output_dir)
        return paths.location(self.model_path).resolve().parent / "eval" / self.split


# ----------------------------------------------------------------------------- outputs


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """PNG of the confusion matrix: counts and row fractions in each cell, class names on axes."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    from matplotlib.figure import Figure  # Agg rendering, no global backend switch

    fig = Figure(figsize=(6.0, 5.0), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.1%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=11)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names))
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _plugin(name: str):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name))


def write_tensorboard(logdir: str | os.PathLike, tag: str, result: dict[str, Any], png: bytes,
                      report: str, step: int = 0) -> None:
    """Confusion-matrix image, headline scalars (with CI bounds) and the report as text.

    tf.summary.image/scalar/text live in the optional tensorboard package; writing the same
    plugin summaries ("images", "scalars", "text") through core tf.summary.write keeps the logs
    readable by TensorBoard without that package installed here.
    """
    import tensorflow as tf

    def scalar(name: str, value: float) -> None:
        tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                         metadata=_plugin("scalars"))

    height, width = tf.image.decode_png(png).shape[:2]
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        # The images plugin's tensor: [width, height, encoded image...] as strings.
        tf.summary.write(f"{tag}/confusion_matrix",
                         tf.constant([str(width).encode(), str(height).encode(), png]),
                         step=step, metadata=_plugin("images"))
        for key in ("accuracy", "macro_f1", "macro_auc"):
            if result[key] is not None:
                scalar(f"{tag}/{key}", result[key])
            ci = result["confidence_intervals"].get(key, {})
            for bound in ("low", "high"):
                if ci.get(bound) is not None:
                    scalar(f"{tag}/{key}_ci_{bound}", ci[bound])
        for name, row in result["per_class"].items():
            if row["sensitivity"] is not None:  # None: the class is absent from the split
                scalar(f"{tag}/sensitivity/{name}", row["sensitivity"])
            scalar(f"{tag}/specificity/{name}", row["specificity"])
        # Markdown renders a code block; keeps the fixed-width table readable.
        tf.summary.write(f"{tag}/report", tf.constant("```\n" + report + "\n```"), step=step,
                         metadata=_plugin("text"))
    writer.flush()
    writer.close()


# ----------------------------------------------------------------------------- the run


def classes_and_positive(config: EvalConfig, model) -> tuple[tuple[str, ...], int]:
    """The model's classes (label-id order, recorded in its file: model_classes) and the id of
    the operating point's class (--positive_class, default labels.default_positive_class).

    Raises:
      ConfigError: --positive_class is not one of the model's classes.
    """
    class_names = model_classes.classes_of(model, config.model_path)
    try:
        positive = labels.positive_class(class_names, config.positive_class)
    except ValueError as err:
        raise ConfigError("positive_class", config.positive_class,
                          f"one of the model's classes {list(class_names)}") from err
    return class_names, class_names.index(positive)


def _reference_point(config: EvalConfig, model, image_size: int, channels: int,
                     class_names: Sequence[str], positive: int):
    """Training records, their val predictions and the operating point (reference.py)."""
    train_dir, how = reference.training_records_dir(config.model_path, config.train_records_dir)
    val_probs = val_labels = None
    if train_dir is not None:
        info, label_ids, _ = records_for_model(train_dir, class_names)
        if info.num_examples(config.val_split):
            y, (p, *_) = run_model(model, eval_dataset(info, config.val_split, image_size,
                                                       channels, config.batch_size,
                                                       label_ids=label_ids))
            val_probs, val_labels = p, y
    point = reference.operating_point(val_probs, val_labels, config.target_sensitivity,
                                      reference.run_calibration(config.model_path),
                                      positive=positive, class_names=class_names)
    point.update(train_records_dir=train_dir, train_records_found_by=how,
                 class_names=list(class_names))
    if point["warning"]:
        logging.warning("%s", point["warning"])
    return point


def _trust_metrics(config: EvalConfig, y_true: np.ndarray, raw: np.ndarray,
                   point: dict[str, Any], cnn_macro_f1: float,
                   train_meta: dict[str, np.ndarray] | None,
                   eval_meta: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Calibration, the operating point and the shortcut probe of one evaluated set.
    `raw`: its uncalibrated probabilities; `train_meta` / `eval_meta`: the training records' and
    the evaluated examples' metadata (pipeline.read_metadata)."""
    out: dict[str, Any] = {"calibration": calibration.calibration_summary(
        raw, y_true, point["temperature"])}
    out["calibration"]["temperature_source"] = point["temperature_source"]
    if point["threshold"] is not None:
        calibrated = calibration.apply_temperature(raw, point["temperature"])
        out["operating_point"] = {
            **calibration.threshold_metrics(calibrated, y_true, point["threshold"],
                                            positive=point["positive"],
                                            n_resamples=config.bootstrap, seed=config.seed),
            "positive_class": point["positive_class"],
            "target_sensitivity": config.target_sensitivity,
            "chosen_on": f"{point['train_records_dir']}:{config.val_split}",
            "num_val_positive": point["num_val_positive"], "warning": point["warning"]}
    if config.shortcut_probe:
        if point["train_records_dir"] is None or train_meta is None:
            why = (point["train_records_found_by"] if point["train_records_dir"] is None
                   else f"the training records {point['train_records_dir']} have no train split")
            out["shortcut_probe"] = {"skipped": True, "warning": False, "probe_macro_f1": None,
                                     "message": f"Shortcut probe skipped: {why}."}
        else:
            out["shortcut_probe"] = shortcut.run_probe(
                train_meta, eval_meta, cnn_macro_f1, model=config.shortcut_model,
                threshold=config.shortcut_threshold, seed=config.seed,
                class_names=point["class_names"])
            out["shortcut_probe"]["fitted_on"] = f"{point['train_records_dir']}:train"
    return out


def _eval_metadata(config: EvalConfig, info, y_true: np.ndarray, probe: bool,
                   label_ids: Sequence[int] | None) -> dict[str, np.ndarray] | None:
    """The evaluated examples' metadata (labels as the model's ids), in prediction order, when
    something needs it: the shortcut probe, or the per-collection table of records holding
    several collections. `info`: the evaluated records' DatasetInfo."""
    several = len(collection_select.select(info, config.split, config.collections)) > 1
    if not (probe or several):
        return None
    return aligned_metadata(info, config.split, config.collections, y_true, label_ids)


def _evaluate_one(config: EvalConfig, model, records_dir: str, output_dir: Path,
                  point: dict[str, Any], image_size: int, channels: int,
                  shared: dict[str, Any]) -> dict[str, Any]:
    """One records dir; `shared`: what is the same for every dir (model sha256, train metadata,
    the model's class names)."""
    class_names = shared["class_names"]
    # Records of the model's classes, or of a subset of them (labels remapped by name).
    info, label_ids, note = records_for_model(records_dir, class_names)
    dataset = eval_dataset(info, config.split, image_size, channels, config.batch_size,
                           config.collections, label_ids=label_ids)
    y_true, (probs, *_) = run_model(
        model, dataset, label=f"evaluate {config.split}",
        total=split_size(info, config.split, config.collections))
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"The model outputs shape {probs.shape[1:]}, expected "
                         f"[{len(class_names)}] class probabilities ({', '.join(class_names)}).")
    result = metrics.compute_metrics(y_true, probs, class_names=class_names,
                                     n_resamples=config.bootstrap, seed=config.seed)
    result["records_classes"] = list(info.classes)
    if note:
        result["class_note"] = note
    for warning in result["warnings"]:
        logging.warning("%s %s: %s", records_dir, config.split, warning)
    eval_meta = _eval_metadata(config, info, y_true, probe=config.shortcut_probe and
                               point["train_records_dir"] is not None, label_ids=label_ids)
    if eval_meta is not None and len(set(eval_meta["source"].tolist())) > 1:
        result["by_collection"] = by_collection.collection_table(
            y_true, probs, eval_meta["source"], result["class_names"],
            n_resamples=config.bootstrap, seed=config.seed)
    raw = reference.uncalibrated(probs, point)
    result.update(_trust_metrics(config, y_true, raw, point, result["macro_f1"],
                                 shared["train_meta"], eval_meta))
    if config.split == "train" and result.get("shortcut_probe", {}).get("message"):
        result["shortcut_probe"]["message"] += (
            " (Scored on train: if these are the training records, the probe's own training "
            "data, its score is optimistic.)")
    if config.gradcam_per_class:
        from xray_tfdata.evaluation import gradcam

        try:
            result["border_attention"] = gradcam.split_attention(
                model, dataset, per_class=config.gradcam_per_class, class_names=class_names)
        except gradcam.NoConvolutionError as err:  # e.g. a hand-built test model
            result["border_attention"] = {"skipped": True, "overall": None, "warning": False,
                                          "per_class": {}, "num_images": 0, "layer": None,
                                          "message": f"Border attention skipped: {err}"}
    result["settings"] = {**dataclasses.asdict(config), "records_dir": records_dir,
                          "model_sha256": shared["model_sha256"],
                          "model_name": model.name, "image_size": image_size,
                          "channels": channels, "reference": point, "versions": files.versions()}
    reliability = calibration.reliability_png(
        raw, y_true, f"{model.name} on {config.split}", None if point["temperature"] is None
        else calibration.apply_temperature(raw, point["temperature"]))
    write_outputs(output_dir, result, config.split,
                  title=f"{model.name} on {config.split} (n={result['num_examples']})",
                  reliability=reliability)
    return result


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluates config.model_path on config.split of every records dir, writes the outputs,
    returns the first dir's metrics.json (with "comparison" rows when there are several)."""
    model = load_model(config.model_path)
    image_size, channels = input_spec(model)
    class_names, positive = classes_and_positive(config, model)
    point = _reference_point(config, model, image_size, channels, class_names, positive)
    shared = {"model_sha256": files.sha256_file(config.model_path), "train_meta": None,
              "class_names": class_names}
    if config.shortcut_probe and point["train_records_dir"] is not None:
        from xray_tfdata.inputs import pipeline

        train_info, train_ids, _ = records_for_model(point["train_records_dir"], class_names)
        if "train" in train_info.splits:
            shared["train_meta"] = pipeline.read_metadata(train_info, "train")
            if train_ids is not None:
                shared["train_meta"]["label"] = np.asarray(train_ids)[
                    shared["train_meta"]["label"]]
    results = [_evaluate_one(config, model, d, out, point, image_size, channels, shared)
               for d, out in zip(config.records_dirs, config.output_dirs())]
    if len(results) > 1:
        rows = [reference.comparison_row(out.name, r)
                for out, r in zip(config.output_dirs(), results)]
        base = config.resolved_output_dir
        files.write_json(base / f"{COMPARISON_FILE}.json", rows)
        files.write_atomic(base / f"{COMPARISON_FILE}.txt", reference.comparison_table(rows) + "\n")
        results[0]["comparison"] = rows
    return results[0]


def report_text(result: dict[str, Any], title: str) -> str:
    text = [title, "=" * len(title), metrics.format_summary(result)]
    cal = result.get("calibration")
    if cal:
        line = f"calibration: ECE {cal['ece']:.4f} (15 bins, top label), NLL {cal['nll']:.4f}"
        if cal.get("temperature") is not None:
            line += (f"; temperature {cal['temperature']:.3f} ({cal['temperature_source']}): "
                     f"ECE {cal['ece_calibrated']:.4f}, NLL {cal['nll_calibrated']:.4f}")
        text += ["", line]
    op = result.get("operating_point")
    if op:
        text.append(operating_point_text(op))
        if op.get("warning"):
            text.append(f"WARNING: {op['warning']}")
    table = result.get("by_collection")
    if table:
        text += ["", by_collection.TITLE,
                 by_collection.format_table(table, result["class_names"])]
    probe = result.get("shortcut_probe")
    if probe:
        text += ["", "shortcut probe (metadata only, no pixels):", probe["message"]]
    attention = result.get("border_attention")
    if attention:
        per_class = ", ".join(f"{n} {'n/a' if v is None else f'{v:.3f}'}"
                              for n, v in attention["per_class"].items())
        text += ["", f"Grad-CAM border attention ({attention['num_images']} images, layer "
                     f"{attention['layer']}): {per_class}", attention["message"]]
    return "\n".join(text) + "\n"


def operating_point_text(op: dict[str, Any]) -> str:
    """'COVID19 at P >= 0.31 (chosen for sensitivity 95% on r:val, 40 positives): sensitivity
    0.9 [..], ...'; an exact interval is marked so."""
    parts = []
    for key in ("sensitivity", "specificity", "ppv"):
        ci = op["confidence_intervals"].get(key) or {}
        value = "n/a" if op[key] is None else f"{op[key]:.3f}"
        if key == "sensitivity" and op[key] is None and not op["num_positive"]:
            value = f"n/a (no {op['positive_class']} in this split)"
        if ci.get("low") is not None:
            value += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
            if ci.get("method") == metrics.EXACT_METHOD:
                value += f" exact, n={ci['n']}"
        parts.append(f"{key} {value}")
    positives = op["num_val_positive"]
    return (f"{op['positive_class']} at P >= {op['threshold']:.4f} (chosen for sensitivity "
            f"{op['target_sensitivity']:.0%} on {op['chosen_on']}, {positives} "
            f"positive{'s' if positives != 1 else ''}): " + ", ".join(parts))


def write_outputs(output_dir: Path, result: dict[str, Any], split: str, title: str,
                  reliability: bytes | None = None) -> dict:
    """metrics.json, report.txt, confusion_matrix.png, reliability.png, tensorboard/."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report = report_text(result, title)
    png = confusion_png(result["confusion_matrix"], result["class_names"], title)
    paths = {
        "metrics": files.write_json(output_dir / METRICS_FILE, result),
        "report": files.write_atomic(output_dir / REPORT_FILE, report),
        "confusion_matrix": files.write_atomic(output_dir / CONFUSION_FILE, png),
    }
    if reliability is not None:
        paths["reliability"] = files.write_atomic(output_dir / RELIABILITY_FILE, reliability)
    write_tensorboard(output_dir / TENSORBOARD_DIR, split, result, png, report)
    paths["tensorboard"] = output_dir / TENSORBOARD_DIR
    return paths
