"""image_io: every source mode decodes to the right gray pixels; bad inputs named; resize/encode."""

from __future__ import annotations

import csv
import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from xray_tfdata.records.image_format import ImageReadError
from xray_tfdata.records.image_io import decode_source_bytes, read_source
from xray_tfdata.records.resize import resize


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes],
         plte: bytes | None = None, trns: bytes | None = None) -> bytes:
    """A minimal hand-rolled PNG, so the test controls the exact IHDR mode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 per row
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _png16_gray(values: np.ndarray) -> bytes:
    rows = [b"".join(struct.pack(">H", int(v)) for v in row) for row in values]
    return _png(values.shape[1], values.shape[0], 16, 0, rows)


def _cv2_bytes(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


GRAY = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17  # 3x5, 0..238


# --- modes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".bmp", "BMP")])
def test_lossless_gray_exact_pixels(ext, fmt):
    gray, info = decode_source_bytes(_cv2_bytes(ext, GRAY))
    np.testing.assert_array_equal(gray, GRAY)
    assert (info.width, info.height, info.mode, info.format) == (5, 3, "L", fmt)


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".bmp", "BMP")])
def test_rgb_and_rgba_reported_and_converted_with_bt601_weights(ext, fmt):
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # pure red -> 0.299 * 255 = 76
    bgr[0, 1] = (255, 0, 0)  # pure blue -> 0.114 * 255 = 29
    bgr[1, :] = 90  # gray stored as RGB stays exactly 90
    gray, info = decode_source_bytes(_cv2_bytes(ext, bgr))
    assert info.mode == "RGB" and info.format == fmt
    assert gray.dtype == np.uint8 and gray.shape == (2, 3)
    assert gray[0, 0] == 76 and gray[0, 1] == 29 and np.all(gray[1] == 90)

    bgra = np.dstack([bgr, np.full((2, 3), 7, np.uint8)])  # alpha is dropped, not composited
    gray_a, info_a = decode_source_bytes(_cv2_bytes(ext, bgra))
    assert info_a.mode == "RGBA"
    np.testing.assert_array_equal(gray_a, gray)


def test_jpeg_gray_and_rgb():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (40, 60), dtype=np.uint8), (9, 9), 3)
    gray, info = decode_source_bytes(_cv2_bytes(".jpg", smooth))
    assert (info.mode, info.format, gray.shape) == ("L", "JPEG", (40, 60))
    assert np.abs(gray.astype(int) - smooth).max() <= 8  # lossy, but close
    gray3, info3 = decode_source_bytes(_cv2_bytes(".jpg", np.dstack([smooth] * 3)))
    assert info3.mode == "RGB" and gray3.shape == (40, 60)


def test_palette_png_expanded():
    data = _png(2, 1, 8, 3, [bytes([0, 1])], plte=bytes([255, 0, 0, 0, 0, 255]))
    gray, info = decode_source_bytes(data)
    assert info.mode == "P"
    np.testing.assert_array_equal(gray, [[76, 29]])  # red, blue through BT.601
    _, info_t = decode_source_bytes(_png(2, 1, 8, 3, [bytes([0, 1])], plte=bytes(6), trns=b"\x80"))
    assert info_t.mode == "P"  # transparency does not change the reported mode


def test_gray_alpha_png():
    gray, info = decode_source_bytes(_png(2, 1, 8, 4, [bytes([10, 255, 200, 0])]))
    assert info.mode == "LA"
    np.testing.assert_array_equal(gray, [[10, 200]])  # alpha dropped


def test_one_bit_png():
    gray, info = decode_source_bytes(_png(8, 1, 1, 0, [bytes([0b10100000])]))
    assert info.mode == "1"
    np.testing.assert_array_equal(gray, [[255, 0, 255, 0, 0, 0, 0, 0]])


def test_16bit_gray_scaled_by_actual_range_not_truncated():
    # A 12-bit detector image stored in 16 bits: truncating to the high byte would give 3..11.
    values = np.array([[1000, 2000, 3000], [1500, 2500, 3000]], dtype=np.uint16)
    gray, info = decode_source_bytes(_png16_gray(values))
    assert info.mode == "I;16" and info.format == "PNG"
    # (v - 1000) * 255 / 2000: 0, 127.5 -> 128 (round half to even), 255, 63.75 -> 64, 191.25 -> 191
    np.testing.assert_array_equal(gray, [[0, 128, 255], [64, 191, 255]])


def test_16bit_constant_image_gives_zeros():
    gray, info = decode_source_bytes(_png16_gray(np.full((3, 4), 4095, np.uint16)))
    assert info.mode == "I;16"
    assert gray.dtype == np.uint8 and gray.shape == (3, 4) and not gray.any()


def test_16bit_rgba_full_range():
    row = struct.pack(">HHHH", 1000, 1000, 1000, 65535) + struct.pack(">HHHH", 9000, 9000, 9000, 0)
    gray, info = decode_source_bytes(_png(2, 1, 16, 6, [row]))
    assert info.mode == "RGBA;16"
    np.testing.assert_array_equal(gray, [[0, 255]])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (2500, 3000)])
def test_any_size_decodes(shape):
    image = (np.indices(shape).sum(axis=0) % 256).astype(np.uint8)
    gray, info = decode_source_bytes(_cv2_bytes(".png", image))
    assert gray.shape == shape and (info.height, info.width) == shape
    np.testing.assert_array_equal(gray, image)


def test_source_info_bytes_and_sha256(tmp_path):
    data = _cv2_bytes(".png", GRAY)
    path = tmp_path / "looks_like.jpg"  # extension is not trusted: sniffed as PNG
    path.write_bytes(data)
    gray, info = read_source(path)
    assert info.format == "PNG" and info.num_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(gray, GRAY)


def test_jpeg_with_trailing_zero_padding_accepted():
    for padding in (16, 5000):  # 5000: more zeros than the fast tail check looks at
        gray, info = decode_source_bytes(_cv2_bytes(".jpg", GRAY) + b"\x00" * padding)
        assert info.format == "JPEG" and gray.shape == (3, 5)


def _smooth(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (shape[0] // 16, shape[1] // 16), np.uint8)
    return cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def test_target_size_reduced_jpeg_decode_matches_full_decode_closely():
    source = _smooth((1800, 2000))  # fine detail: about 8 px per cycle
    data = _cv2_bytes(".jpg", source)
    full, info_full = decode_source_bytes(data)
    for target, ok in ((224, True), (450, True), (451, False)):  # half scale iff 1800 >= 4 * target
        small, info = decode_source_bytes(data, target_size=target)
        assert info == info_full and (info.width, info.height, info.mode) == (2000, 1800, "L")
        assert small.shape == ((900, 1000) if ok else (1800, 2000))
        diff = np.abs(resize(small, target).astype(int) - resize(full, target).astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 4, (target, diff.mean(), diff.max())
    png_full, _ = decode_source_bytes(_cv2_bytes(".png", source), target_size=224)
    assert png_full.shape == (1800, 2000)  # only JPEG has DCT-domain scaling


def _exif_tiff(orientation: int, order: str = "MM") -> bytes:
    e = ">" if order == "MM" else "<"
    return (order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00")


def with_exif_orientation(encoded: bytes, orientation: int, order: str = "MM") -> bytes:
    """The JPEG (APP1 after SOI) or PNG (eXIf after IHDR) with an EXIF orientation tag."""
    tiff = _exif_tiff(orientation, order)
    if encoded.startswith(b"\x89PNG"):
        crc = struct.pack(">I", zlib.crc32(b"eXIf" + tiff) & 0xFFFFFFFF)
        return encoded[:33] + struct.pack(">I", len(tiff)) + b"eXIf" + tiff + crc + encoded[33:]
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return encoded[:2] + app1 + encoded[2:]


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_as_cv2_imread_does(tmp_path, ext, orientation):
    source = _smooth((32, 48))
    source[:6, :10] = 255  # a bright top-left corner makes every flip visible
    data = with_exif_orientation(_cv2_bytes(ext, source), orientation,
                                 "II" if orientation % 2 else "MM")
    path = tmp_path / f"o{orientation}{ext}"
    path.write_bytes(data)
    want = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # OpenCV's default honours the tag
    gray, info = read_source(path)
    np.testing.assert_array_equal(gray, want)
    assert (info.height, info.width) == want.shape  # the size as displayed
    assert want.shape == ((48, 32) if orientation >= 5 else (32, 48))


def test_exif_orientation_6_turns_a_landscape_jpeg_portrait_at_half_scale_too():
    source = _smooth((64, 96))
    data = with_exif_orientation(_cv2_bytes(".jpg", source), 6)  # "rotate 90 CW"
    gray, info = decode_source_bytes(data)
    assert gray.shape == (96, 64) and (info.width, info.height) == (64, 96)
    small, small_info = decode_source_bytes(data, target_size=8)  # DCT 1/2 scale
    assert small.shape == (48, 32) and small_info == info
    np.testing.assert_array_equal(gray, np.rot90(decode_source_bytes(
        _cv2_bytes(".jpg", source))[0], -1))


def test_jpeg_trailing_bytes_after_eoi_are_valid():
    jpeg = _cv2_bytes(".jpg", _smooth((48, 64)))
    want = decode_source_bytes(jpeg)[0]
    # 16 bytes of editor trailer (the ieee8023 COVID file), a long text trailer, a zero pad.
    for trailer in (bytes(range(16)), b"edited with SomeTool 1.0\n" * 400, b"\x00" * 5000):
        gray, info = decode_source_bytes(jpeg + trailer)
        np.testing.assert_array_equal(gray, want)
        assert info.num_bytes == len(jpeg) + len(trailer)


def test_truncated_jpeg_still_rejected_whatever_its_tail():
    jpeg = _cv2_bytes(".jpg", _smooth((96, 128), seed=5))
    for cut in (len(jpeg) - 2, len(jpeg) - 40, len(jpeg) // 2, 700):
        assert _reason(jpeg[:cut]).startswith("truncated JPEG"), cut


def _png_with_size(width: int, height: int) -> bytes:
    return _png(width, height, 8, 0, [b"\x00" * 4])  # header says huge; the data is a stub


def test_oversized_image_gets_a_plain_reason_before_decoding():
    png = _png_with_size(40000, 40000)
    with pytest.raises(ImageReadError) as err:
        decode_source_bytes(png)
    assert err.value.reason.startswith(
        "40000x40000 = 1.6 Gpixel is over the --max_pixels limit of 200.0 Mpixel")
    jpeg = bytearray(_cv2_bytes(".jpg", GRAY))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 30000, 20000)  # height, width
    with pytest.raises(ImageReadError, match=r"^20000x30000 = 600.0 Mpixel is over"):
        decode_source_bytes(bytes(jpeg))
    bmp = bytearray(_cv2_bytes(".bmp", GRAY))
    bmp[18:26] = struct.pack("<ii", 5, 3)
    assert decode_source_bytes(bytes(bmp), max_pixels=15)[0].shape == (3, 5)  # at the limit
    with pytest.raises(ImageReadError, match=r"^5x3 = 15 pixel is over the --max_pixels limit "
                                             r"of 14 pixel \(14 pixels\)"):
        decode_source_bytes(bytes(bmp), max_pixels=14)
    with pytest.raises(ValueError, match="max_pixels=0"):
        decode_source_bytes(png, max_pixels=0)


# --- bad inputs --------------------------------------------------------------------------------

def _reason(data: bytes) -> str:
    with pytest.raises(ImageReadError) as info:
        decode_source_bytes(data)
    return info.value.reason


def test_bad_bytes_have_short_reasons():
    jpeg = _cv2_bytes(".jpg", np.full((64, 64), 128, np.uint8))
    png = _cv2_bytes(".png", np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    bmp = _cv2_bytes(".bmp", GRAY)
    assert _reason(b"") == "empty file"
    assert _reason(b"\xff\xd8\xff\xd9") == "corrupt JPEG (no frame header)"
    assert _reason(jpeg[: len(jpeg) // 2]).startswith("truncated JPEG")
    assert _reason(png[:-12]).startswith("truncated PNG")
    assert _reason(png[:40]).startswith("truncated PNG")
    assert _reason(bmp[:-10]).startswith("truncated BMP")
    assert _reason(b"patient,label\n1,COVID19\n") == "not an image (looks like text)"
    assert _reason(b"GIF89a" + bytes(20)) == "unsupported format GIF (allowed: JPEG, PNG, BMP, DICOM)"
    assert _reason(bytes(range(200, 256))).startswith("not an image (unknown header")
    # Corrupt compressed data with an intact chunk layout: libpng's CRC/zlib check rejects it.
    idat = png.index(b"IDAT") + 8
    corrupt = png[:idat] + bytes(b ^ 0xFF for b in png[idat:idat + 20]) + png[idat + 20:]
    assert _reason(corrupt).startswith("corrupt PNG (libpng: ")


def test_damaged_jpeg_scan_rejected_but_odd_framing_tolerated(capfd):
    jpeg = _cv2_bytes(".jpg", _smooth((96, 128), seed=3))
    scan = jpeg.index(b"\xff\xda") + 12
    middle = scan + (len(jpeg) - scan) // 2
    # Bytes cut from the entropy-coded data, EOI intact: OpenCV still returns an image, and only
    # libjpeg's stderr warning says the lower part is garbage.
    assert _reason(jpeg[:middle] + jpeg[middle + 64:]).startswith("corrupt JPEG (libjpeg: ")
    # Junk before the EOI marker: libjpeg warns "extraneous bytes", but every pixel is intact.
    padded = jpeg[:-2] + b"\x00\x01\x02" + jpeg[-2:]
    gray, _ = decode_source_bytes(padded)
    np.testing.assert_array_equal(gray, decode_source_bytes(jpeg)[0])
    assert "extraneous" not in capfd.readouterr().err  # codec noise is not printed


def test_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(ImageReadError) as err:
        read_source(tmp_path)
    assert err.value.reason.startswith("unreadable: ")  # IsADirectoryError
    with pytest.raises(ImageReadError) as err:
        read_source(tmp_path / "missing.png")
    assert err.value.reason == "unreadable: FileNotFoundError"

    locked = tmp_path / "locked.png"
    locked.write_bytes(_cv2_bytes(".png", GRAY))

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)  # root ignores chmod, so simulate EACCES
    with pytest.raises(ImageReadError) as err:
        read_source(locked)
    assert err.value.reason == "unreadable: PermissionError"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read chmod-000 files")
def test_chmod_000_unreadable(tmp_path):
    locked = tmp_path / "locked.png"
    locked.write_bytes(_cv2_bytes(".png", GRAY))
    locked.chmod(0)
    with pytest.raises(ImageReadError, match="PermissionError"):
        read_source(locked)


# --- real sample -------------------------------------------------------------------------------

def _expected_mode(mode: str, bits: str) -> str:
    if bits == "16":
        return "I;16" if mode in ("L", "I") else f"{mode};16"
    return mode


def test_real_sample_decodes_to_labelled_size_and_mode(real_sample_dir):
    with open(real_sample_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        path = real_sample_dir / row["path"]
        gray, info = read_source(path)
        assert gray.dtype == np.uint8 and gray.ndim == 2, row["path"]
        assert gray.shape == (int(row["height"]), int(row["width"])), row["path"]
        assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
        assert info.mode == _expected_mode(row["mode"], row["bits"]), row["path"]
        assert info.format == row["format"] and info.num_bytes == int(row["bytes"])
        assert int(gray.max()) - int(gray.min()) > 100, f"{row['path']} decoded nearly flat"


def test_worker_modules_do_not_import_tensorflow():
    code = (
        "import sys; import xray_tfdata.records.image_io, xray_tfdata.records.offline_augment, "
        "xray_tfdata.records.dedupe, xray_tfdata.records.resize; "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()


def test_concurrent_decodes_leave_stderr_intact():
    from concurrent.futures import ThreadPoolExecutor

    before = os.fstat(2)
    data = _cv2_bytes(".jpg", _smooth((64, 64)))
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: decode_source_bytes(data)[0].shape, range(16)))
    after = os.fstat(2)
    assert shapes == [(64, 64)] * 16
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
