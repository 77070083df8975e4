"""Serialized tf.Examples -> (uint8 image [H, W, C], int32 label), the decode stage of the pipeline.

Parsing is vectorised: records are batched and parsed with one `tf.io.parse_example` call, which
costs far less per record than `parse_single_example` on each one. Decoding then depends on the
record format:

- "raw": the pixel bytes of every image in a batch have the same length, so one
  `tf.io.decode_raw(..., fixed_length=H*W*C)` + reshape decodes the whole batch at once.
- "jpeg" / "png": the codecs take one image at a time, so the parsed batch is unbatched and each
  image is decoded in a parallel `map`. (Decoding inside the batch with `tf.map_fn` measured ~10%
  slower on this machine: the per-image map spreads better over the tf.data threadpool.)

Every decoded image is checked against the manifest's size and channels (`tf.ensure_shape`), so a
record of the wrong size fails loudly instead of producing a ragged batch later.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from xray_tfdata.records import features

# Records per `parse_example` call: large enough to amortise the op overhead, small enough that
# the parallel decode that follows sees many independent batches.
PARSE_BATCH_SIZE = 64


def _check_format(image_format: str) -> None:
    if image_format not in features.IMAGE_FORMATS:
        raise ValueError(
            f"image_format must be one of {features.IMAGE_FORMATS}. Received: "
            f"image_format={image_format!r}. The records' manifest (dataset_info.json, "
            f"image.format) names the format the converter wrote."
        )


def _check_geometry(image_size: int, channels: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int. Received: image_size={image_size!r}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}.")


def parse_batch(
    serialized: tf.Tensor, keys: tuple[str, ...] = features.TRAINING_KEYS
) -> Mapping[str, tf.Tensor]:
    """Parses a [N] string tensor of serialized tf.Examples with one vectorised op."""
    return tf.io.parse_example(serialized, features.parse_spec(keys))


def decode_image(
    encoded: tf.Tensor, image_format: str, image_size: int, channels: int
) -> tf.Tensor:
    """Decodes ONE encoded image (scalar string) to uint8 [image_size, image_size, channels]."""
    _check_format(image_format)
    _check_geometry(image_size, channels)
    if image_format == "jpeg":
        image = tf.io.decode_jpeg(encoded, channels=channels)
    elif image_format == "png":
        image = tf.io.decode_png(encoded, channels=channels, dtype=tf.uint8)
    else:
        image = tf.reshape(decode_raw_batch(encoded[None], image_size, channels),
                           [image_size, image_size, channels])
    return tf.ensure_shape(image, [image_size, image_size, channels])


def decode_raw_batch(encoded: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Decodes a [N] batch of "raw" images at once to uint8 [N, image_size, image_size, channels].

    The byte count is checked first: `decode_raw(fixed_length=...)` alone would silently pad or
    truncate a record of the wrong size.
    """
    _check_geometry(image_size, channels)
    expected = image_size * image_size * channels
    check = tf.debugging.assert_equal(
        tf.strings.length(encoded), expected,
        message=f"raw image record has the wrong number of bytes for {image_size}x{image_size}x"
                f"{channels} uint8 pixels ({expected}); the records do not match their manifest, "
                f"rebuild them")
    with tf.control_dependencies([check]):
        flat = tf.io.decode_raw(encoded, tf.uint8, fixed_length=expected)
    return tf.reshape(flat, [-1, image_size, image_size, channels])


def decode_records(
    record_batches: tf.data.Dataset,
    image_format: str,
    image_size: int,
    channels: int,
    *,
    vectorized_parse: bool = True,
    deterministic: bool | None = None,
    with_collection: bool = False,
) -> tf.data.Dataset:
    """Turns batches of serialized records into single (image uint8 [H,W,C], label int32) pairs.

    Args:
      record_batches: 1-D tf.string elements, each a batch of serialized tf.Examples (the
        pipeline reads each shard in batches of PARSE_BATCH_SIZE, see pipeline._read_shard).
      image_format: "jpeg", "png" or "raw" (the manifest's image.format).
      image_size, channels: the manifest's geometry; every decoded image is checked against it.
      vectorized_parse: False parses one record at a time (only for the benchmark's ablation).
      deterministic: passed to the parallel maps (None = follow tf.data.Options).
      with_collection: yield (image, label, collection string) triples instead, for the
        pipeline's collection filter and sampler (the collection is "" when a record has none).
    """
    _check_format(image_format)
    _check_geometry(image_size, channels)
    autotune = tf.data.AUTOTUNE
    keys = features.TRAINING_KEYS + ((features.SOURCE_NAME,) if with_collection else ())

    def to_label(value: tf.Tensor) -> tf.Tensor:
        return tf.cast(value, tf.int32)

    def rest(parsed: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        label = to_label(parsed[features.LABEL])
        return (label, parsed[features.SOURCE_NAME]) if with_collection else (label,)

    if not vectorized_parse:
        def parse_decode_one(serialized):
            parsed = tf.io.parse_single_example(serialized, features.parse_spec(keys))
            image = decode_image(parsed[features.ENCODED], image_format, image_size, channels)
            return (image, *rest(parsed))

        return record_batches.unbatch().map(
            parse_decode_one, num_parallel_calls=autotune, deterministic=deterministic)

    if image_format == "raw":
        def parse_decode_batch(serialized):
            parsed = parse_batch(serialized, keys)
            images = decode_raw_batch(parsed[features.ENCODED], image_size, channels)
            return (images, *rest(parsed))

        decoded = record_batches.map(
            parse_decode_batch, num_parallel_calls=autotune, deterministic=deterministic)
        return decoded.unbatch()

    def parse_only(serialized):
        parsed = parse_batch(serialized, keys)
        return (parsed[features.ENCODED], *rest(parsed))

    parsed = record_batches.map(parse_only, num_parallel_calls=autotune, deterministic=deterministic)
    return parsed.unbatch().map(
        lambda encoded, *rest_: (decode_image(encoded, image_format, image_size, channels),
                                 *rest_),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
