"""Grad-CAM (Selvaraju et al. 2017, as in the Keras "Grad-CAM class activation visualization"
example): where in the X-ray does the model look?

For a feature map A (the last layer with a spatial 4-D output: the last convolution block of the
seed CNN or of a keras.applications backbone), the map of class c is relu(sum_k w_k A_k) with w_k
the spatial mean of d logit_c / d A_k. Gradients are taken for a whole batch under one
GradientTape (the logits of different images do not depend on each other, so the gradient of
their sum gives every image's own gradient). Logits are recomputed from the "probabilities"
layer's input and kernel, because the gradient of a saturated softmax probability vanishes.
Under mixed precision the feature maps are float16/bfloat16; they and their gradients are cast to
float32 before the weighted sum.

`border_attention(map)` is the share of a map's mass in the outer band of the image (12.5% of the
side on each edge: 1 - 0.75^2 = 43.75% of the area, so uniform attention scores 0.4375). That band
is where burned-in text, side markers and collimator edges sit (DeGrave et al. 2021); a model
whose border share exceeds 0.4375 puts more attention per pixel on the border than on the centre.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from xray_tfdata import labels
from xray_tfdata.layer_names import OUTPUT_LAYER

BORDER_FRACTION = 0.125
UNIFORM_BORDER_SHARE = 1.0 - (1.0 - 2 * BORDER_FRACTION) ** 2  # 0.4375


class NoConvolutionError(ValueError):
    """The model has no convolution block to explain."""


# ----------------------------------------------------------------------------- border attention


def border_mask(height: int, width: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Boolean [H, W]: True in the outer band `fraction` of each side wide (rounded to pixels)."""
    band_h, band_w = int(round(fraction * height)), int(round(fraction * width))
    mask = np.zeros((height, width), bool)
    mask[:band_h], mask[height - band_h:] = True, True
    mask[:, :band_w], mask[:, width - band_w:] = True, True
    return mask


def border_attention(maps: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Share of each map's mass in the border band: maps [N, H, W] >= 0 -> [N] (NaN if all 0)."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape [N, H, W]. Received: shape={maps.shape}.")
    if (maps < 0).any():
        raise ValueError("Grad-CAM maps are non-negative (after the ReLU); received negative "
                         "values. Pass the maps gradcam() returns.")
    mask = border_mask(maps.shape[1], maps.shape[2], fraction)
    total = maps.sum(axis=(1, 2))
    border = maps[:, mask].sum(axis=1)
    return np.divide(border, total, out=np.full(total.shape, np.nan), where=total > 0)


def attention_summary(shares: np.ndarray, y_true: np.ndarray,
                      class_names: Sequence[str] = labels.DEFAULT_CLASSES) -> dict[str, Any]:
    """Mean border share per true class (ids of `class_names`, the model's classes) and overall,
    and whether it exceeds the uniform share."""
    shares = np.asarray(shares, dtype=np.float64)
    y_true = np.asarray(y_true)
    per_class: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        values = shares[(y_true == c) & np.isfinite(shares)]
        per_class[name] = float(values.mean()) if values.size else None
    finite = shares[np.isfinite(shares)]
    overall = float(finite.mean()) if finite.size else None
    warning = overall is not None and overall > UNIFORM_BORDER_SHARE
    if overall is None:
        message = "Border attention: no image had a non-zero Grad-CAM map."
    elif warning:
        message = (f"WARNING: border attention {overall:.3f} > {UNIFORM_BORDER_SHARE} (uniform): "
                   f"Grad-CAM puts more weight per pixel on the outer {BORDER_FRACTION:.1%} band "
                   f"(text, markers, collimator edges) than on the centre. Check the overlays "
                   f"(python -m xray_tfdata.explain).")
    else:
        message = (f"Border attention {overall:.3f} (uniform {UNIFORM_BORDER_SHARE}): the centre "
                   f"gets more weight per pixel than the border.")
    return {"overall": overall, "per_class": per_class, "uniform": UNIFORM_BORDER_SHARE,
            "border_fraction": BORDER_FRACTION, "num_images": int(finite.size),
            "warning": bool(warning), "message": message}


# ----------------------------------------------------------------------------- the layer


def _is_spatial(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer never called in a graph
        return False
    return len(shape) == 4


def _nested_models(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def find_layer(model, name: str = "") -> tuple[Any, Any]:
    """(layer, the nested model holding it or None): `name`, or else the last convolution block.

    Automatic choice: a nested backbone's output layer (its last convolution block's activation:
    ResNet50 "conv5_block3_out", DenseNet121 "relu", EfficientNetB0 "top_activation",
    MobileNetV3Small "activation_17"), else the last top-level Conv2D (the seed CNN's "conv3").
    Backbones downsample by 32, so their maps are 1x1 below 64 px images (no localisation); pass
    `name` to use an earlier block there.
    """
    import keras

    nested = _nested_models(model)
    if name:
        for layer in model.layers:
            if layer.name == name:
                return layer, None
        for inner in nested:
            for layer in inner.layers:
                if layer.name == name:
                    if not _is_spatial(layer):
                        break
                    return layer, inner
        raise ValueError(f"layer must name a layer with a 4-D output of model {model.name!r}. "
                         f"Received: layer={name!r}. Leave it empty to use the last "
                         f"convolution block.")
    for layer in reversed(model.layers):
        if layer in nested:
            spatial = [l for l in layer.layers if _is_spatial(l)]
            if spatial:
                return spatial[-1], layer
        elif isinstance(layer, keras.layers.Conv2D):
            return layer, None
    raise NoConvolutionError(f"model {model.name!r} has no convolution block; Grad-CAM "
                     f"needs a convolutional model from xray_tfdata.models.")


@dataclasses.dataclass
class GradCam:
    """A batched Grad-CAM for one model and feature layer; call `maps(images)`."""

    model: Any
    layer_name: str = ""

    def __post_init__(self) -> None:
        import keras

        model = self.model
        layer, inner = find_layer(model, self.layer_name)
        self.layer_name = layer.name
        self.output_layer = model.get_layer(OUTPUT_LAYER)
        if inner is None:
            # Outer-graph tensors: one model gives the feature map and the head's input.
            self._forward = keras.Model(model.inputs, [layer.output, self.output_layer.input])
            self._chain = None
        else:
            # A nested backbone's layers live in its own graph: run the outer layers before it,
            # then the backbone up to (and past) the layer, then the outer layers after it.
            position = model.layers.index(inner)
            self._before = keras.Model(model.inputs, model.layers[position - 1].output)
            self._inner = keras.Model(inner.inputs, [layer.output, inner.output])
            after = model.layers[position + 1:]
            self._chain = [l for l in after if l is not self.output_layer]

    def _features_and_head_input(self, images):
        if self._chain is None:
            return self._forward(images, training=False)
        features, x = self._inner(self._before(images, training=False), training=False)
        for layer in self._chain:
            x = layer(x, training=False)
        return features, x

    def maps(self, images, class_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Grad-CAM maps [N, h, w] (feature resolution, >= 0) for `class_index` (default: the
        predicted class), with the probabilities [N, C] and the explained class [N]."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        with tf.GradientTape() as tape:
            features, head_input = self._features_and_head_input(images)
            tape.watch(features)
            head_input = tf.cast(head_input, tf.float32)
            kernel = tf.cast(self.output_layer.kernel, tf.float32)
            bias = tf.cast(self.output_layer.bias, tf.float32)
            logits = tf.matmul(head_input, kernel) + bias
            probs = tf.nn.softmax(logits, axis=-1)
            chosen = (tf.argmax(logits, axis=-1, output_type=tf.int32) if class_index is None
                      else tf.convert_to_tensor(np.asarray(class_index, np.int32)))
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        grads = tf.cast(tape.gradient(score, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        return {"maps": cam.numpy(), "probs": probs.numpy(), "class_index": chosen.numpy()}


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of maps [N, h, w] to [N, size, size] (mass placement kept, >= 0)."""
    import tensorflow as tf

    resized = tf.image.resize(np.asarray(maps, np.float32)[..., None], (size, size),
                              method="bilinear")
    return np.maximum(resized.numpy()[..., 0], 0.0)


def explain_dataset(cam: GradCam, dataset, *, per_class: int | None = None,
                    image_size: int | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM over (images, labels) batches, one tape per batch; stops once `per_class`
    images of every true class are collected (None: the whole split). Maps come upsampled to
    the image size."""
    kept: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "maps": [], "probs": [],
                                         "class_index": []}
    counts = np.zeros(int(cam.output_layer.units), np.int64)  # one per output class
    for images, batch_labels in dataset:
        y = np.asarray(batch_labels).astype(np.int64)
        take = np.ones(y.shape, bool)
        if per_class is not None:
            for i, label in enumerate(y):
                take[i] = counts[label] < per_class
                counts[label] += int(take[i])
            if not take.any():
                if (counts >= per_class).all():
                    break
                continue
        images = np.asarray(images)[take]
        out = cam.maps(images)
        kept["images"].append(images)
        kept["labels"].append(y[take])
        for key in ("maps", "probs", "class_index"):
            kept[key].append(out[key])
        if per_class is not None and (counts >= per_class).all():
            break
    if not kept["images"]:
        raise ValueError("The split yielded no examples to explain; check the records.")
    result = {k: np.concatenate(v) for k, v in kept.items()}
    size = image_size or result["images"].shape[1]
    result["maps"] = upsample(result["maps"], size)
    result["border_attention"] = border_attention(result["maps"])
    return result


def split_attention(model, dataset, *, per_class: int, layer: str = "",
                    class_names: Sequence[str] = labels.DEFAULT_CLASSES) -> dict[str, Any]:
    """attention_summary of Grad-CAM on up to `per_class` images of each class of a dataset."""
    cam = GradCam(model, layer)
    result = explain_dataset(cam, dataset, per_class=per_class)
    summary = attention_summary(result["border_attention"], result["labels"], class_names)
    summary["layer"] = cam.layer_name
    return summary


def overlay_rgb(image: np.ndarray, cam_map: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the grey X-ray with the map (scaled to its max) in the jet colours."""
    from matplotlib import colormaps

    grey = np.asarray(image, np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    peak = float(cam_map.max())
    heat = colormaps["jet"](cam_map / peak if peak > 0 else cam_map)[..., :3] * 255.0
    rgb = (1.0 - alpha) * np.repeat(grey[..., None], 3, axis=-1) + alpha * heat
    return np.clip(rgb, 0, 255).astype(np.uint8)


def caption(true_label: int, pred_label: int, prob: float, share: float,
            class_names: Sequence[str] = labels.DEFAULT_CLASSES) -> str:
    return (f"true {class_names[true_label]} / pred {class_names[pred_label]} "
            f"p={prob:.2f}\nborder {share:.2f}")


def sheet_png(overlays: Sequence[np.ndarray], captions: Sequence[str], *, columns: int = 4,
              title: str = "") -> bytes:
    """A contact sheet: overlays in a grid, each with its caption."""
    import io

    from matplotlib.figure import Figure  # Agg rendering, no global backend switch

    n = max(len(overlays), 1)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows + (0.4 if title else 0)), dpi=100)
    for i, (rgb, text) in enumerate(zip(overlays, captions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(rgb)
        ax.set_title(text, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
