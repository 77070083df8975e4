"""Grad-CAM overlays for a saved model on one split: `explain(ExplainConfig(...))`.

Takes the first `per_class` images of each true class in the split's fixed evaluation order, runs
Grad-CAM on them in batches (evaluation/gradcam.py) and writes into the output directory:
  overlays/<TRUE CLASS>/<n>_pred-<CLASS>.png   heat map over the X-ray, true/predicted class,
                                              probability and border share in the caption
  sheet_<TRUE CLASS>.png                       the class's overlays on one contact sheet
  explain.json                                 per image and per class: prediction, probability,
                                              border attention; the layer used
Every file goes through files.write_atomic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from xray_tfdata import errors, files, labels, model_classes, paths
from xray_tfdata.settings import setting

EXPLAIN_FILE = "explain.json"


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """Settings of one Grad-CAM run; validates itself."""

    model_path: str = setting(help="The .keras model to explain.",
                              flag_default="workspace/model/best.keras")
    records_dir: str = setting(help="Records directory (dataset_info.json).",
                               flag_default="workspace/records")
    split: str = setting("test", "Split to take the images from.", allowed=labels.SPLITS)
    per_class: int = setting(8, "Images per true class (the first in the split's order).")
    output_dir: str = setting("", "Output directory; default <dir of model>/explain/<split>.")
    layer: str = setting("", "Layer whose feature map is explained; default: the last "
                         "convolution block (seed CNN: conv3; backbones: their output "
                         "activation).")
    batch_size: int = setting(16, "Images per Grad-CAM batch (one gradient tape each).")

    def __post_init__(self) -> None:
        errors.one_of("split", self.split, labels.SPLITS)
        errors.positive_int("per_class", self.per_class)
        errors.positive_int("batch_size", self.batch_size)
        for field in ("model_path", "records_dir", "output_dir"):
            paths.check(field, getattr(self, field))  # a URL's scheme must be one TF knows
        if not str(self.model_path).endswith(".keras"):
            raise errors.ConfigError("model_path", self.model_path, "a .keras file",
                                     "Pass the best.keras that training wrote.")

    @property
    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return paths.location(self.output_dir)
        return paths.location(self.model_path).resolve().parent / "explain" / self.split


def explain(config: ExplainConfig) -> dict[str, Any]:
    """Runs Grad-CAM per the config, writes the overlays, sheets and explain.json; returns it."""
    from xray_tfdata.evaluation import gradcam, inference

    model = inference.load_model(config.model_path)
    names = model_classes.classes_of(model, config.model_path)
    image_size, channels = inference.input_spec(model)
    # Records of the model's classes, or a subset of them (remapped to the model's ids).
    info, label_ids, note = inference.records_for_model(config.records_dir, names)
    dataset = inference.eval_dataset(info, config.split, image_size, channels,
                                     config.batch_size, label_ids=label_ids)
    cam = gradcam.GradCam(model, config.layer)
    result = gradcam.explain_dataset(cam, dataset, per_class=config.per_class)
    summary = gradcam.attention_summary(result["border_attention"], result["labels"], names)
    out = config.resolved_output_dir
    images = []
    by_class: dict[int, list[tuple[np.ndarray, str]]] = {c: [] for c in range(len(names))}
    for i, (true, pred) in enumerate(zip(result["labels"], result["class_index"])):
        prob = float(result["probs"][i, pred])
        share = float(result["border_attention"][i])
        rgb = gradcam.overlay_rgb(result["images"][i], result["maps"][i])
        text = gradcam.caption(int(true), int(pred), prob, share, names)
        n = len(by_class[int(true)])
        name = f"overlays/{names[true]}/{n:03d}_pred-{names[pred]}.png"
        files.write_atomic(out / name, gradcam.sheet_png([rgb], [text], columns=1))
        by_class[int(true)].append((rgb, text))
        images.append({"file": name, "true": names[true],
                       "predicted": names[pred], "probability": prob,
                       "border_attention": None if np.isnan(share) else share})
    sheets = {}
    for c, entries in by_class.items():
        if not entries:
            continue
        name = f"sheet_{names[c]}.png"
        files.write_atomic(out / name, gradcam.sheet_png(
            [e[0] for e in entries], [e[1] for e in entries],
            title=f"{model.name}: true {names[c]} ({config.split}, layer "
                  f"{cam.layer_name})"))
        sheets[names[c]] = name
    report = {"model_path": str(config.model_path), "model_sha256":
              files.sha256_file(config.model_path), "records_dir": str(config.records_dir),
              "split": config.split, "layer": cam.layer_name, "feature_map_shape":
              list(cam.maps(result["images"][:1])["maps"].shape[1:]),
              "border_attention": summary, "images": images, "sheets": sheets,
              "classes": list(names), **({"class_note": note} if note else {})}
    files.write_json(out / EXPLAIN_FILE, report)
    return report
