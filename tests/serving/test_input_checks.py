"""serving.predict's checks before decoding: the converter's format table (records/image_format:
JPEG, PNG, BMP; GIF refused by both), sizes read from headers, and decompression bombs refused
without decoding a pixel."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from xray_tfdata.records import image_format
from xray_tfdata.serving import predict


def _encoded(ext: str, height: int, width: int, channels: int = 1) -> bytes:
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.default_rng(height * width).integers(0, 256, shape, dtype=np.uint8)
    return cv2.imencode(ext, image)[1].tobytes()


@pytest.mark.parametrize("data, size", [
    (_encoded(".png", 37, 53), (53, 37)),
    (_encoded(".png", 20, 30, 4), (30, 20)),
    (_encoded(".jpg", 41, 29, 3), (29, 41)),
    (_encoded(".bmp", 23, 31, 3), (31, 23)),
])
def test_header_size_without_decoding(data, size):
    fmt = image_format.sniff_encoded(data)
    assert tuple(image_format.header_size(data, fmt)) == size
    assert predict.check_image(data) is None


def test_bombs_are_refused_by_their_header_in_every_format():
    for data, (w, h) in [(_encoded(".png", 300, 200), (200, 300)),
                         (_encoded(".jpg", 300, 200), (200, 300)),
                         (_encoded(".bmp", 300, 200), (200, 300))]:
        reason = predict.check_image(data, max_pixels=50_000)
        assert reason == (f"decompression bomb refused: the header says {w} x {h} = "
                          f"{w * h:,} pixels, more than the 50,000 allowed"), reason


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"II*\x00" + bytes(100), "unsupported format TIFF (allowed: JPEG, PNG, BMP)"),
    (b"%PDF-1.7\n" + bytes(100), "unsupported format PDF (allowed: JPEG, PNG, BMP)"),
    (b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00\x00\x00;",
     "unsupported format GIF (allowed: JPEG, PNG, BMP)"),
    (bytes(128) + b"DICM" + bytes(20), "unsupported format DICOM here (allowed: JPEG, PNG, BMP); "
                                       "convert DICOM files with `python -m xray_tfdata.build_records`"),
    (b"hello\n", "not an image (looks like text)"),
    (b"\x00\x01\x02\x03" * 10, "not an image (unknown header 0001020300010203)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "corrupt PNG (no IHDR chunk)"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "corrupt JPEG (no frame header)"),
    (b"BM\x00\x00", "not an image (unknown header 424d0000)"),
])
def test_reasons(data, reason):
    assert predict.check_image(data) == reason


def test_dicom_becomes_the_converters_grey_image():
    from tests.records import dicom_files
    from xray_tfdata.records import image_io

    data = dicom_files.to_bytes(dicom_files.chest_12bit_windowed())
    png = predict.dicom_to_png(data)
    served = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    converter, _ = image_io.decode_source_bytes(data)
    np.testing.assert_array_equal(served, converter)
    assert served[dicom_files.lung_mask()].mean() < served[~dicom_files.lung_mask()].mean()
