"""Random augmentation of whole batches, suited to chest X-rays, seeded and stateless.

One affine transform per image (small rotation, zoom, translation) is applied to the whole batch
by a single `ImageProjectiveTransformV3` op (TF core; the op Keras' RandomRotation/RandomZoom use),
then brightness and contrast are jittered per image. Horizontal flips are off by default: the heart
sits on the left, so a mirrored chest film is not a plausible input.

Randomness is stateless (`tf.random.stateless_*`): every batch draws from a seed derived from the
configured seed and the batch's index, so a deterministic pipeline reproduces the same augmented
pixels run after run, and parallel map calls never contend for a shared RNG state.

Works on uint8 (and float) batches [B, H, W, C] and returns the input dtype; pixel values stay in
0..255 (the model's first layer scales them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import tensorflow as tf

FILL_MODES = ("REFLECT", "NEAREST", "CONSTANT", "WRAP")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random augmentation; each draw is uniform in [-max, +max]."""

    max_rotation_deg: float = 7.0  # radiographs are rarely tilted more than a few degrees
    max_zoom: float = 0.10  # scale factor in [1 - max_zoom, 1 + max_zoom]
    max_translate: float = 0.05  # shift as a fraction of the image side
    max_brightness: float = 0.08  # additive offset as a fraction of 255
    max_contrast: float = 0.15  # contrast factor in [1 - max_contrast, 1 + max_contrast]
    flip: bool = False  # horizontal flips: off, anatomy is not mirror-symmetric
    fill_mode: str = "REFLECT"  # what fills pixels pulled from outside the image

    def __post_init__(self) -> None:
        limits = {
            "max_rotation_deg": (0.0, 45.0),
            "max_zoom": (0.0, 0.5),
            "max_translate": (0.0, 0.5),
            "max_brightness": (0.0, 1.0),
            "max_contrast": (0.0, 1.0),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(
                    f"AugmentParams.{name} must be a number in [{low}, {high}]. "
                    f"Received: {name}={value!r}."
                )
        if self.fill_mode not in FILL_MODES:
            raise ValueError(
                f"AugmentParams.fill_mode must be one of {FILL_MODES}. "
                f"Received: fill_mode={self.fill_mode!r}."
            )


def _uniform(shape, seed, max_abs: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=-max_abs, maxval=max_abs)


def affine_transforms(
    batch_size: tf.Tensor | int, height: int, width: int, seed: tf.Tensor, params: AugmentParams
) -> tf.Tensor:
    """[B, 8] projective transforms (output pixel -> input pixel), one random affine per image.

    input = centre + A (output - centre) - shift, with A = R(theta) / zoom, so zoom > 1 magnifies.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    theta = _uniform([batch_size], seeds[0], math.radians(params.max_rotation_deg))
    zoom = 1.0 + _uniform([batch_size], seeds[1], params.max_zoom)
    shift = _uniform([batch_size, 2], seeds[2], params.max_translate)
    shift_x = shift[:, 0] * width
    shift_y = shift[:, 1] * height
    cos = tf.cos(theta) / zoom
    sin = tf.sin(theta) / zoom
    cx = (width - 1) / 2.0
    cy = (height - 1) / 2.0
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = cx - a0 * cx - a1 * cy - shift_x
    b2 = cy - b0 * cx - b1 * cy - shift_y
    zeros = tf.zeros_like(theta)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """Augments a batch [B, H, W, C]; returns the same shape and dtype. `seed`: int [2]."""
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    shape = tf.shape(images)
    batch, height, width = shape[0], images.shape[1], images.shape[2]
    if height is None or width is None:
        height, width = shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)

    transforms = affine_transforms(
        batch, tf.cast(height, tf.float32), tf.cast(width, tf.float32), seeds[0], params)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.stack([height, width]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=params.fill_mode,
    )

    if params.max_brightness > 0 or params.max_contrast > 0:
        x = tf.cast(out, tf.float32)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        contrast = 1.0 + _uniform([batch, 1, 1, 1], seeds[1], params.max_contrast)
        brightness = 255.0 * _uniform([batch, 1, 1, 1], seeds[2], params.max_brightness)
        x = tf.clip_by_value((x - mean) * contrast + mean + brightness, 0.0, 255.0)
        if dtype.is_integer:
            x = tf.round(x)
        out = tf.cast(x, dtype)

    if params.flip:
        flip = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seeds[3]) < 0.5
        out = tf.where(flip, tf.reverse(out, axis=[2]), out)
    return tf.ensure_shape(out, images.shape)


def make_augment(
    params: AugmentParams, seed: int, stream: int = 0
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns `augment(step, images)`: the batch at index `step` gets seed (seed, stream, step).

    `stream` separates input pipelines (e.g. workers) so they do not draw identical jitter.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0. Received: seed={seed!r}.")
    base = tf.constant(seed * 1_000_003 + stream, tf.int64)

    def augment(step: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        return augment_batch(images, tf.stack([base, tf.cast(step, tf.int64)]), params)

    return augment
