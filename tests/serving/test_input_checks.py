"""serving.predict's checks before decoding: formats named, sizes read from headers (PNG, JPEG,
BMP, GIF) and decompression bombs refused without decoding a pixel."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from xray_tfdata.serving import predict


def _encoded(ext: str, height: int, width: int, channels: int = 1) -> bytes:
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.default_rng(height * width).integers(0, 256, shape, dtype=np.uint8)
    return cv2.imencode(ext, image)[1].tobytes()


def _gif(width: int, height: int) -> bytes:
    # Header and logical screen descriptor only: all that header_size reads.
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b";"


@pytest.mark.parametrize("data, size", [
    (_encoded(".png", 37, 53), (53, 37)),
    (_encoded(".png", 20, 30, 4), (30, 20)),
    (_encoded(".jpg", 41, 29, 3), (29, 41)),
    (_encoded(".bmp", 23, 31, 3), (31, 23)),
    (_gif(640, 480), (640, 480)),
])
def test_header_size_without_decoding(data, size):
    assert tuple(predict.header_size(data)) == size
    assert predict.check_image(data) is None


def test_bombs_are_refused_by_their_header_in_every_format():
    for data, (w, h) in [(_encoded(".png", 300, 200), (200, 300)),
                         (_encoded(".jpg", 300, 200), (200, 300)),
                         (_encoded(".bmp", 300, 200), (200, 300)),
                         (_gif(300, 200), (300, 200))]:
        reason = predict.check_image(data, max_pixels=50_000)
        assert reason == (f"decompression bomb refused: the header says {w} x {h} = "
                          f"{w * h:,} pixels, more than the 50,000 allowed"), reason


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"II*\x00" + bytes(100), "unsupported format TIFF (PNG, JPEG, BMP or GIF expected)"),
    (b"%PDF-1.7\n" + bytes(100), "unsupported format PDF (PNG, JPEG, BMP or GIF expected)"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "unsupported format WebP (PNG, JPEG, BMP or GIF expected)"),
    (bytes(128) + b"DICM" + bytes(20), "unsupported format DICOM (PNG, JPEG, BMP or GIF expected)"),
    (b"hello\n", "not an image (looks like text)"),
    (b"\x00\x01\x02\x03" * 10, "not an image (unknown format; PNG, JPEG, BMP or GIF expected)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "corrupt PNG (no IHDR chunk)"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "corrupt JPEG (no frame header)"),
    (b"BM\x00\x00", "corrupt BMP (header cut short)"),
])
def test_reasons(data, reason):
    assert predict.check_image(data) == reason
