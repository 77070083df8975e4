"""records/intensity.py in TensorFlow ops, for the serving signature (serving/export.py).

The converter normalises each 8-bit gray image with OpenCV before resizing; a served upload must
get the very same pixels, so the two OpenCV algorithms are repeated here rule for rule (from
OpenCV's equalizehist and clahe.cpp), in the same float32 arithmetic, rounding half to even as
cvRound does:

- equalize (cv2.equalizeHist): histogram; i0 = the first non-empty bin; an image of one grey
  level is returned unchanged; otherwise lut[v] = round((cdf[v] - hist[i0]) * (255 / (N -
  hist[i0]))), lut[i0] = 0.
- clahe (cv2.CLAHE.apply): an image whose sides are not both multiples of the tile grid is first
  extended at the bottom and right by (tiles - side % tiles) rows / columns on EACH side (OpenCV
  pads both whenever either is off), mirrored without repeating the edge (BORDER_REFLECT_101);
  tile histograms of the extended image; clip at max(1, int(clip x tile_area / 256)), the
  clipped count spread evenly, its remainder one by one every max(256 // remainder, 1) bins from
  bin 0; lut = round(cdf x 255 / tile_area); then every pixel of the ORIGINAL image is mapped by
  the bilinear blend of its four nearest tiles' luts (tile centres at (i + 0.5) x tile size,
  clamped at the borders).

OpenCV may fuse a multiply-add where this does not, so a value on a rounding edge can land one
grey level apart; the tests bound the difference by 1.
"""

from __future__ import annotations

import tensorflow as tf

from xray_tfdata.records.intensity import CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID, INTENSITY_MODES

_LEVELS = 256


def _round_to_uint8(values: tf.Tensor) -> tf.Tensor:
    # cvRound (round half to even, as tf.round) then saturate_cast<uchar>.
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, 255.0), tf.uint8)


def equalize(gray: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] uint8 -> [H, W, 1] uint8, as cv2.equalizeHist."""
    flat = tf.reshape(tf.cast(gray, tf.int32), [-1])
    hist = tf.math.bincount(flat, minlength=_LEVELS, maxlength=_LEVELS)
    first = tf.argmax(tf.cast(hist > 0, tf.int32))
    first_count = hist[first]
    total = tf.size(flat)
    scale = tf.constant(_LEVELS - 1, tf.float32) / tf.cast(
        tf.maximum(total - first_count, 1), tf.float32)
    cumulative = tf.cumsum(hist) - first_count  # the running sum that starts after bin i0
    lut = _round_to_uint8(tf.cast(tf.maximum(cumulative, 0), tf.float32) * scale)
    mapped = tf.reshape(tf.gather(lut, flat), tf.shape(gray))
    return tf.where(tf.equal(first_count, total), gray, mapped)


def _reflect_101(length: tf.Tensor, extended: tf.Tensor) -> tf.Tensor:
    """Source indices of an axis of `length` extended to `extended` by BORDER_REFLECT_101 at the
    end (any pad, also longer than the axis: the reflection repeats)."""
    index = tf.range(extended)
    period = tf.maximum(2 * length - 2, 1)
    folded = index % period
    return tf.where(length == 1, tf.zeros_like(index),
                    tf.where(folded >= length, period - folded, folded))


def _tile_luts(extended: tf.Tensor, tiles_x: int, tiles_y: int, tile_h: tf.Tensor,
               tile_w: tf.Tensor) -> tf.Tensor:
    """[tiles_y * tiles_x, 256] float32 luts of an int32 [tiles_y * tile_h, tiles_x * tile_w]."""
    num_tiles = tiles_x * tiles_y
    tiles = tf.reshape(tf.transpose(tf.reshape(extended, [tiles_y, tile_h, tiles_x, tile_w]),
                                    [0, 2, 1, 3]), [num_tiles, -1])
    offsets = tf.range(num_tiles)[:, tf.newaxis] * _LEVELS
    hist = tf.reshape(tf.math.bincount(tiles + offsets, minlength=num_tiles * _LEVELS,
                                       maxlength=num_tiles * _LEVELS), [num_tiles, _LEVELS])
    area = tile_h * tile_w
    if CLAHE_CLIP_LIMIT > 0:
        limit = tf.cast(CLAHE_CLIP_LIMIT * tf.cast(area, tf.float64) / _LEVELS, tf.int32)
        limit = tf.maximum(limit, 1)
        clipped = tf.reduce_sum(tf.maximum(hist - limit, 0), axis=1, keepdims=True)
        batch = clipped // _LEVELS
        residual = clipped - batch * _LEVELS
        step = tf.maximum(_LEVELS // tf.maximum(residual, 1), 1)
        bins = tf.range(_LEVELS)[tf.newaxis, :]
        extra = tf.logical_and(bins % step == 0, bins // step < residual)
        hist = tf.minimum(hist, limit) + batch + tf.cast(extra, tf.int32)
    lut_scale = tf.constant(_LEVELS - 1, tf.float32) / tf.cast(area, tf.float32)
    return tf.cast(_round_to_uint8(tf.cast(tf.cumsum(hist, axis=1), tf.float32) * lut_scale),
                   tf.float32)


def _blend_axis(length: tf.Tensor, tile: tf.Tensor, tiles: int):
    """Per position along an axis: the two tile indices and their weights, as OpenCV."""
    inverse = tf.constant(1.0, tf.float32) / tf.cast(tile, tf.float32)
    position = tf.cast(tf.range(length), tf.float32) * inverse - 0.5
    low = tf.floor(position)
    weight = position - low
    low = tf.cast(low, tf.int32)
    return tf.maximum(low, 0), tf.minimum(low + 1, tiles - 1), 1.0 - weight, weight


def clahe(gray: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] uint8 -> [H, W, 1] uint8, as cv2.createCLAHE(CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID)."""
    tiles_x, tiles_y = CLAHE_TILE_GRID
    image = tf.cast(gray[..., 0], tf.int32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    aligned = tf.logical_and(height % tiles_y == 0, width % tiles_x == 0)
    ext_h = tf.where(aligned, height, height + tiles_y - height % tiles_y)
    ext_w = tf.where(aligned, width, width + tiles_x - width % tiles_x)
    extended = tf.gather(tf.gather(image, _reflect_101(height, ext_h), axis=0),
                         _reflect_101(width, ext_w), axis=1)
    tile_h, tile_w = ext_h // tiles_y, ext_w // tiles_x
    luts = tf.reshape(_tile_luts(extended, tiles_x, tiles_y, tile_h, tile_w), [-1])

    y1, y2, ya1, ya = _blend_axis(height, tile_h, tiles_y)
    x1, x2, xa1, xa = _blend_axis(width, tile_w, tiles_x)

    def lookup(ty: tf.Tensor, tx: tf.Tensor) -> tf.Tensor:
        tile = ty[:, tf.newaxis] * tiles_x + tx[tf.newaxis, :]
        return tf.gather(luts, tile * _LEVELS + image)

    xa1, xa = xa1[tf.newaxis, :], xa[tf.newaxis, :]
    ya1, ya = ya1[:, tf.newaxis], ya[:, tf.newaxis]
    result = ((lookup(y1, x1) * xa1 + lookup(y1, x2) * xa) * ya1
              + (lookup(y2, x1) * xa1 + lookup(y2, x2) * xa) * ya)
    return _round_to_uint8(result)[..., tf.newaxis]


def normalise(gray: tf.Tensor, mode: str) -> tf.Tensor:
    """[H, W, 1] uint8 -> the same, per `mode` (records.intensity.INTENSITY_MODES)."""
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}. Received: {mode!r}.")
    if mode == "none":
        return gray
    return equalize(gray) if mode == "equalize" else clahe(gray)
