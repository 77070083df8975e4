"""resize.py: gray -> channels, stretch/pad resize with area/bilinear, jpeg/png/raw encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xray_tfdata.records.resize import encode, resize, to_channels

GRAY = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17  # 3x5, 0..238


def test_to_channels():
    assert to_channels(GRAY, 1).shape == (3, 5, 1)
    three = to_channels(GRAY, 3)
    assert three.shape == (3, 5, 3) and all(np.array_equal(three[..., c], GRAY) for c in range(3))
    with pytest.raises(ValueError, match="channels=2"):
        to_channels(GRAY, 2)


def test_resize_area_downscale_is_block_mean():
    image = np.array([[0, 2, 10, 10], [4, 6, 10, 30], [1, 1, 0, 0], [1, 1, 0, 4]], np.uint8)
    out = resize(image[..., None], 2, "stretch")
    assert out.shape == (2, 2, 1)
    np.testing.assert_array_equal(out[..., 0], [[3, 15], [1, 1]])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (300, 200)])
@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_resize_any_size_keeps_channel_axis(shape, mode):
    image = np.full(shape + (1,), 77, np.uint8)
    out = resize(image, 16, mode)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    assert resize(image[..., 0], 16, mode).shape == (16, 16)
    assert resize(np.repeat(image, 3, axis=2), 16, mode).shape == (16, 16, 3)
    if mode == "stretch" or shape[0] == shape[1]:
        assert np.all(out == 77)  # constant in, constant out (up- and downscale)


def test_resize_pad_keeps_aspect_and_centres_on_black():
    tall = np.full((100, 50), 255, np.uint8)  # h=100, w=50 -> 10x5 inside a 10x10 canvas
    out = resize(tall, 10, "pad")
    np.testing.assert_array_equal(out[:, 2:7], 255)
    assert not out[:, :2].any() and not out[:, 7:].any()
    wide = resize(np.full((3, 9), 200, np.uint8), 9, "pad")  # 3x9 -> rows 3..5 of 9
    np.testing.assert_array_equal(wide[3:6], 200)
    assert not wide[:3].any() and not wide[6:].any()


def test_resize_rejects_bad_args():
    with pytest.raises(ValueError, match="mode='crop'"):
        resize(GRAY, 8, "crop")
    with pytest.raises(ValueError, match="size=0"):
        resize(GRAY, 0)


def test_encode_round_trips():
    image = to_channels(GRAY, 1)
    raw = encode(image, "raw")
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(3, 5, 1), image)
    png = encode(image, "png")
    decoded_png = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded_png, GRAY)
    flat = np.full((16, 16, 1), 120, np.uint8)
    jpeg = encode(flat, "jpeg", jpeg_quality=90)
    assert jpeg[:3] == b"\xff\xd8\xff" and jpeg.endswith(b"\xff\xd9")
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.abs(decoded.astype(int) - 120).max() <= 1


def test_encode_keeps_rgb_order():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # red in RGB order
    bgr = cv2.imdecode(np.frombuffer(encode(rgb, "png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.all(bgr[..., 2] == 255) and not bgr[..., :2].any()
    np.testing.assert_array_equal(np.frombuffer(encode(rgb, "raw"), np.uint8).reshape(2, 2, 3), rgb)


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="image_format='webp'"):
        encode(np.zeros((2, 2, 1), np.uint8), "webp")
    with pytest.raises(ValueError, match="float32"):
        encode(np.zeros((2, 2, 1), np.float32), "png")
    with pytest.raises(ValueError, match="jpeg_quality=0"):
        encode(np.zeros((2, 2, 1), np.uint8), "jpeg", jpeg_quality=0)
