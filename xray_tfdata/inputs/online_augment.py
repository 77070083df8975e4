"""Random augmentation of whole batches, suited to chest X-rays, seeded and stateless.

One affine transform per image (small rotation, zoom, translation) is applied to the whole batch
(bilinear, as Keras' RandomRotation/RandomZoom do), then brightness and contrast are jittered per
image. By default warp + jitter run as one XLA-compiled function of plain gathers, ~4x faster on
CPU than TF's ImageProjectiveTransformV3 kernel, which remains available (`jit_compile=False`). Horizontal flips are off by default: the heart
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

FILL_MODES = ("REFLECT", "NEAREST", "CONSTANT")  # no WRAP: meaningless for a chest film
# Seed streams: seed * STREAM_STRIDE + stream (device_augment builds the same seeds in the step).
STREAM_STRIDE = 1_000_003


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


def _source_index(coord: tf.Tensor, size: int, fill_mode: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Maps integer source coordinates outside [0, size) back inside, per fill mode (the
    conventions of ImageProjectiveTransformV3); also returns where the pixel is valid (CONSTANT)."""
    inside = tf.logical_and(coord >= 0, coord < size)
    if fill_mode == "REFLECT":  # d c b a | a b c d | d c b a
        coord = tf.math.floormod(coord, 2 * size)
        coord = tf.where(coord >= size, 2 * size - 1 - coord, coord)
    else:  # NEAREST; CONSTANT masks the clipped pixel out
        coord = tf.clip_by_value(coord, 0, size - 1)
    return coord, inside


def _warp_gather(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """Bilinear affine warp written as 4 batched gathers: under XLA this is ~4x faster on CPU than
    the ImageProjectiveTransformV3 kernel (measured 2,255 vs 495 img/s at 224x224 in tf.data).
    Returns float32."""
    batch = tf.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                         indexing="ij")
    a0, a1, a2, b0, b1, b2 = [transforms[:, i, None, None] for i in range(6)]
    x_in = a0 * xs + a1 * ys + a2
    y_in = b0 * xs + b1 * ys + b2
    x_floor, y_floor = tf.floor(x_in), tf.floor(y_in)
    wx = tf.reshape(x_in - x_floor, [batch, height * width, 1])
    wy = tf.reshape(y_in - y_floor, [batch, height * width, 1])
    x0, y0 = tf.cast(x_floor, tf.int32), tf.cast(y_floor, tf.int32)
    flat = tf.reshape(tf.cast(images, tf.float32), [batch, height * width, channels])

    def tap(yy, xx):
        yy, y_ok = _source_index(yy, height, fill_mode)
        xx, x_ok = _source_index(xx, width, fill_mode)
        index = tf.reshape(yy * width + xx, [batch, height * width])
        values = tf.gather(flat, index, batch_dims=1)
        if fill_mode == "CONSTANT":
            ok = tf.reshape(tf.logical_and(y_ok, x_ok), [batch, height * width, 1])
            values = tf.where(ok, values, 0.0)
        return values

    top = tap(y0, x0) * (1.0 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1.0 - wx) + tap(y0 + 1, x0 + 1) * wx
    return tf.reshape(top * (1.0 - wy) + bottom * wy, [batch, height, width, channels])


def _apply(images, transforms, contrast, brightness, flip, *, fill_mode: str, use_gather: bool,
           photometric: bool):
    """The augmentation proper, given the per-image random draws (XLA-compilable when
    use_gather)."""
    dtype = images.dtype
    if use_gather:
        x = _warp_gather(images, transforms, fill_mode)
    else:
        x = tf.cast(tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
            fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode), tf.float32)
    if photometric:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    x = tf.clip_by_value(x, 0.0, 255.0)
    if dtype.is_integer:
        x = tf.round(x)
    out = tf.cast(x, dtype)
    return tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)


_apply_xla = tf.function(_apply, jit_compile=True)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams,
                  jit_compile: bool = True) -> tf.Tensor:
    """Augments a batch [B, H, W, C]; returns the same shape and dtype. `seed`: int [2].

    jit_compile=True runs the warp + jitter as one XLA-compiled function (pure gathers and
    arithmetic; ~4x faster on CPU); False uses the ImageProjectiveTransformV3 kernel. Both give
    the same pixels to within 1 grey level.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or None in images.shape[1:]:
        raise ValueError(f"images must be [B, H, W, C] with static H, W, C. Received: shape="
                         f"{images.shape}.")
    height, width = images.shape[1], images.shape[2]
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    transforms = affine_transforms(batch, height, width, seeds[0], params)
    contrast = 1.0 + _uniform([batch], seeds[1], params.max_contrast)
    brightness = 255.0 * _uniform([batch], seeds[2], params.max_brightness)
    if params.flip:
        flip = tf.random.stateless_uniform([batch], seed=seeds[3]) < 0.5
    else:
        flip = tf.zeros([batch], tf.bool)
    apply = _apply_xla if jit_compile else _apply
    out = apply(images, transforms, contrast, brightness, flip, fill_mode=params.fill_mode,
                use_gather=jit_compile,
                photometric=params.max_brightness > 0 or params.max_contrast > 0)
    return tf.ensure_shape(out, images.shape)


def make_augment(
    params: AugmentParams, seed: int, stream: int = 0, jit_compile: bool = True
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns `augment(step, images)`: the batch at index `step` gets seed (seed, stream, step).

    `stream` separates input pipelines (e.g. workers) so they do not draw identical jitter.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0. Received: seed={seed!r}.")
    base = tf.constant(seed * STREAM_STRIDE + stream, tf.int64)

    def augment(step: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        return augment_batch(images, tf.stack([base, tf.cast(step, tf.int64)]), params,
                             jit_compile=jit_compile)

    return augment
