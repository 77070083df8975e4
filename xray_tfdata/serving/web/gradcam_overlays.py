"""Grad-CAM overlays for the web app, when it serves a Keras file (best.keras).

The heat map needs the Keras model's layers (evaluation/gradcam.py: the last convolution block and
the logits), which a SavedModel export no longer exposes, so `--model_path=<model_dir>/best.keras`
enables it and an export answers 404 with that advice. Images are preprocessed by the export's
own function (serving/export.make_preprocess_fn: the converter's decode and resize), so the map
is of exactly the pixels the probabilities come from.

Not thread-safe by itself (an eager Keras forward pass and a GradientTape): one lock serialises
the explanations; predictions (the SavedModel signature) do not wait for it.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np


class Explainer:
    """Grad-CAM overlays (PNG bytes, model resolution) for encoded images."""

    def __init__(self, model: Any, image_size: int, channels: int, resize_mode: str,
                 intensity: str = "none") -> None:
        from xray_tfdata.evaluation import gradcam  # noqa: PLC0415
        from xray_tfdata.serving import export  # noqa: PLC0415

        self._gradcam = gradcam
        self.cam = gradcam.GradCam(model)  # NoConvolutionError for a model without one
        self.layer = self.cam.layer_name
        self.image_size = image_size
        self._preprocess = export.make_preprocess_fn(image_size, channels, resize_mode,
                                                     intensity)
        self._lock = threading.Lock()

    def overlays(self, images: Sequence[bytes]) -> list[bytes]:
        """One PNG per image (already checked by serving.predict.model_input): the grey X-ray as
        the model saw it, with the map of the predicted class in the jet colours."""
        import cv2  # noqa: PLC0415
        import tensorflow as tf  # noqa: PLC0415

        pixels = self._preprocess(tf.constant(list(images), tf.string)).numpy()
        with self._lock:
            maps = self.cam.maps(pixels)["maps"]
        maps = self._gradcam.upsample(maps, self.image_size)
        out = []
        for image, cam_map in zip(pixels, maps):
            rgb = self._gradcam.overlay_rgb(image, cam_map)
            out.append(cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes())
        return out


def for_keras(model: Any, metadata: dict[str, Any]) -> Explainer | None:
    """An Explainer for a loaded .keras model, or None if it has no convolution block."""
    from xray_tfdata.evaluation import gradcam  # noqa: PLC0415

    try:
        return Explainer(model, int(metadata["image_size"]), int(metadata["channels"]),
                         metadata.get("resize_mode", "stretch"),
                         metadata.get("intensity", "none"))
    except gradcam.NoConvolutionError:
        return None
