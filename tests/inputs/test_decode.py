"""decode.py: every record format to uint8 [H, W, C], eagerly and inside tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.inputs import decode
from xray_tfdata.records import features

SIZE = 12


def _image(channels: int) -> np.ndarray:
    """A smooth gradient (JPEG-friendly) plus mild seeded noise, distinct per channel."""
    rng = np.random.default_rng(channels)
    ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * (200 / (2 * SIZE))
    image = ramp[:, :, None] + 20 * np.arange(channels) + rng.integers(0, 8, (SIZE, SIZE, channels))
    return image.astype(np.uint8)


def _serialized(image: np.ndarray, image_format: str, label: int) -> bytes:
    height, width, channels = image.shape
    return features.serialize(features.ExampleRecord(
        encoded=fixtures.encode(image, image_format, quality=100), image_format=image_format,
        height=height,
        width=width, channels=channels, label=label, class_text="NORMAL", source_path="a.png",
        source_sha256="0" * 64, source_width=width, source_height=height, source_mode="L",
        source_format="PNG", source_bytes=1))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_format", ["jpeg", "png", "raw"])
def test_decode_image_eager_and_in_tf_data(image_format, channels):
    image = _image(channels)
    encoded = fixtures.encode(image, image_format, quality=100)
    eager = decode.decode_image(tf.constant(encoded), image_format, SIZE, channels)
    in_data = next(iter(tf.data.Dataset.from_tensors(encoded).map(
        lambda e: decode.decode_image(e, image_format, SIZE, channels))))
    for out in (eager, in_data):
        assert out.dtype == tf.uint8 and out.shape == (SIZE, SIZE, channels)
        if image_format == "jpeg":  # lossy, but quality 100 stays close on average
            assert np.abs(out.numpy().astype(int) - image).mean() < 4
        else:
            np.testing.assert_array_equal(out.numpy(), image)


def test_decode_image_wrong_size_fails_loudly():
    encoded = fixtures.encode(_image(1), "png")
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode.decode_image(tf.constant(encoded), "png", SIZE + 1, 1)


def test_decode_raw_batch_and_wrong_length():
    images = np.stack([_image(1), _image(1)[::-1]])
    out = decode.decode_raw_batch(tf.constant([x.tobytes() for x in images]), SIZE, 1)
    np.testing.assert_array_equal(out.numpy(), images)
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of bytes"):
        decode.decode_raw_batch(tf.constant([b"\x00" * 10]), SIZE, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of bytes"):
        next(iter(tf.data.Dataset.from_tensors(b"\x00" * (SIZE * SIZE + 1)).map(
            lambda e: decode.decode_image(e, "raw", SIZE, 1))))


def test_bad_format_and_geometry_name_the_value():
    with pytest.raises(ValueError, match="image_format='gif'"):
        decode.decode_image(tf.constant(b""), "gif", SIZE, 1)
    with pytest.raises(ValueError, match="channels=2"):
        decode.decode_raw_batch(tf.constant([b""]), SIZE, 2)


@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_decode_records_vectorized_matches_per_record(image_format):
    images = [_image(1) // (i + 1) for i in range(70)]  # > PARSE_BATCH_SIZE: two parse batches
    serialized = [_serialized(x, image_format, i % 3) for i, x in enumerate(images)]
    records = tf.data.Dataset.from_tensor_slices(serialized).batch(decode.PARSE_BATCH_SIZE)
    results = []
    for vectorized in (True, False):
        ds = decode.decode_records(records, image_format, SIZE, 1, vectorized_parse=vectorized,
                                   deterministic=True)
        assert ds.element_spec[0].shape == (SIZE, SIZE, 1) and ds.element_spec[1].dtype == tf.int32
        results.append([(x.numpy(), int(y)) for x, y in ds])
    for (image_a, label_a), (image_b, label_b), original, i in zip(*results, images, range(70)):
        np.testing.assert_array_equal(image_a, original)
        np.testing.assert_array_equal(image_b, original)
        assert label_a == label_b == i % 3


def test_parse_batch_reads_only_requested_keys():
    serialized = tf.constant([_serialized(_image(1), "raw", 2)])
    parsed = decode.parse_batch(serialized)
    assert set(parsed) == set(features.TRAINING_KEYS)
    assert parsed[features.LABEL].numpy().tolist() == [2]
