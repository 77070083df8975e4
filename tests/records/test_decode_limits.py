"""Issue 16, per file: what a decoder will cost is bounded from the header (JPEG scan bombs,
decoded bytes), malformed DICOM tags are rejects with our own reasons, and no exception of one
source stops the converter's worker. The converter, `predict` and the web app share the checks."""

from __future__ import annotations

import struct
import time

import cv2
import numpy as np
import pytest

from tests.records import dicom_files as D
from tests.records import jpeg_bombs
from xray_tfdata.records import decode_pass, image_format, image_io
from xray_tfdata.records.image_format import ImageReadError
from xray_tfdata.serving import predict

_SETTINGS = decode_pass.ProcessSettings(16, "stretch", 1, "raw", 95)


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageReadError) as err:
        image_io.decode_source_bytes(data, **kwargs)
    return err.value.reason


def _process(tmp_path, name: str, data: bytes) -> decode_pass.Processed:
    """The converter's own per-source worker function, on one file."""
    path = tmp_path / name
    path.write_bytes(data)
    return decode_pass.process_source(decode_pass.Task(name, str(path), ("none",)), _SETTINGS)


# --- JPEG scan bombs (item 8) --------------------------------------------------------------------

def test_scan_count_walks_segments_not_bytes():
    gray, colour = jpeg_bombs.progressive(64), jpeg_bombs.progressive(64, channels=3)
    assert image_format.jpeg_scan_count(gray) == 6  # libjpeg's standard scripts
    assert image_format.jpeg_scan_count(colour) == 10
    assert image_format.jpeg_scan_count(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1]
                                        .tobytes()) == 1
    assert image_format.jpeg_scan_count(jpeg_bombs.scan_bomb(64, 1000)) == 1006
    # An SOS marker inside an APP segment (an EXIF thumbnail is a whole JPEG) is not a scan.
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 40) + b"Exif\x00\x00" + b"\xff\xda" * 17
    assert image_format.jpeg_scan_count(gray[:2] + app1 + gray[2:]) == 6


def test_scan_bomb_is_refused_from_the_header_before_decoding():
    bomb = jpeg_bombs.scan_bomb(1024, 1000)  # 40 KB; measured: ~350x the CPU of the plain file
    start = time.process_time()
    reason = _reason(bomb, target_size=224)
    refusal = time.process_time() - start
    assert reason == ("JPEG with 1006 scans refused before decoding: decoding costs one pass over "
                      "the image per scan, and 1006 x 1.0 Mpixel is over the limit (64 scans, "
                      "2.0 Gpixel x scans)")
    assert refusal < 0.2  # the header walk; decoding this file took 1.2 s of CPU here
    assert predict.check_image(bomb) == reason  # `predict` and the web app refuse it alike


def test_scan_work_bound_refuses_few_scans_over_many_pixels_and_keeps_real_files():
    jpeg = bytearray(jpeg_bombs.progressive(64))  # 6 scans
    sof = jpeg.index(b"\xff\xc2")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)  # 400 Mpixel x 6 scans = 2.4 G
    with pytest.raises(ImageReadError, match=r"^JPEG with 6 scans refused .* 6 x 400.0 Mpixel"):
        image_format.check_jpeg_scans(bytes(jpeg), 20000, 20000)
    # Standard progressive files of any mode decode as before.
    for channels in (1, 3):
        gray, info = image_io.decode_source_bytes(jpeg_bombs.progressive(96, channels))
        assert gray.shape == (96, 96) and info.format == "JPEG"


def test_converter_worker_rejects_the_bomb_with_a_reason(tmp_path):
    done = _process(tmp_path, "bomb.jpg", jpeg_bombs.scan_bomb(256, 200))
    assert done.reason.startswith("JPEG with 206 scans refused before decoding")
    assert done.outputs == ()


# --- decoded bytes (item 10) ---------------------------------------------------------------------

def test_decoded_bytes_from_header_facts():
    assert image_format.decoded_bytes(6000, 6000, 3, 16) == 216_000_000
    assert image_format.decoded_bytes(10, 10, 1, 12, frames=3) == 600  # 12 bits: 2 bytes
    png16 = cv2.imencode(".png", np.zeros((5, 7, 4), np.uint16))[1].tobytes()
    assert image_format.estimate_decoded_bytes(png16) == 5 * 7 * 4 * 2
    jpeg = jpeg_bombs.progressive(32, channels=3)
    assert image_format.estimate_decoded_bytes(jpeg) == 32 * 32 * 3
    bmp = cv2.imencode(".bmp", np.zeros((4, 6), np.uint8))[1].tobytes()  # palette: BGR out
    assert image_format.estimate_decoded_bytes(bmp) == 4 * 6 * 3
    rgb16 = D.to_bytes(D.rgb16_rle(6000, 6000))
    assert image_format.estimate_decoded_bytes(rgb16) == 216_000_000  # header only, via pydicom
    assert image_format.DEFAULT_MAX_DECODED_BYTES == 512 << 20


def test_decoded_bytes_cap_refuses_before_decoding_in_converter_and_predict():
    # 12000 x 12000 16-bit RGB: 144 Mpixel passes --max_pixels (200 M), 864 MB decoded does not.
    rgb16 = D.to_bytes(D.rgb16_rle(12000, 12000))
    want = ("decoding needs 824.0 MiB, over the limit of 512.0 MiB per image (refused before "
            "decoding)")
    assert _reason(rgb16) == want
    assert predict.model_input(rgb16) == (None, want)
    # A 16-bit RGBA PNG header claiming 10000 x 10000 (100 Mpixel, 800 MB).
    png = bytearray(cv2.imencode(".png", np.zeros((2, 2, 4), np.uint16))[1].tobytes())
    png[16:24] = struct.pack(">II", 10000, 10000)
    assert _reason(bytes(png)).startswith("decoding needs 762.9 MiB, over the limit")
    assert predict.check_image(bytes(png)).startswith("decoding needs 762.9 MiB")


def test_decoded_bytes_cap_is_exact_on_a_real_rle_dicom():
    from pydicom.uid import RLELossless  # noqa: PLC0415

    ds = D.dataset(np.zeros((8, 8), np.uint16))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3).tobytes()
    ds.compress(RLELossless)
    data = D.to_bytes(ds)
    from xray_tfdata.records import dicom  # noqa: PLC0415

    assert dicom.decode_dicom(data, max_pixels=64, max_decoded_bytes=8 * 8 * 3 * 2).gray.shape \
        == (8, 8)
    with pytest.raises(ImageReadError, match="^decoding needs 384 bytes, over the limit of 383"):
        dicom.decode_dicom(data, max_pixels=64, max_decoded_bytes=8 * 8 * 3 * 2 - 1)


# --- malformed DICOM (items 6, 7) ----------------------------------------------------------------

_MALFORMED = {
    "voi_lut_65535": (D.voi_lut(65535), "corrupt DICOM (VOI LUT bit depth 65535, allowed 1..16)"),
    "frames_abc": (D.number_of_frames(b"abc"),
                   "corrupt DICOM (NumberOfFrames is not a whole number)"),
    "frames_name": (D.number_of_frames(D.PHI["PatientName"].encode()),
                    "corrupt DICOM (NumberOfFrames is not a whole number)"),
    "bits_allocated_1": (D.bits_allocated_one(),
                         "unsupported DICOM BitsAllocated 1 (allowed: 8, 16, 32)"),
}


@pytest.mark.parametrize("name", sorted(_MALFORMED))
def test_malformed_dicom_tags_are_rejects_with_our_own_reasons(tmp_path, name):
    ds, want = _MALFORMED[name]
    data = D.to_bytes(ds)
    assert _reason(data) == want
    assert predict.model_input(data) == (None, want)
    assert _process(tmp_path, name, data).reason == want


def test_tag_values_never_enter_a_reason():
    ds = D.structured_report()
    ds.Modality = "QORBEL"  # not a defined term: not quoted
    ds.SOPClassUID = "1.2.3.4.5"
    assert _reason(D.to_bytes(ds)) == ("DICOM without pixel data (unknown modality, unknown SOP "
                                       "class): a report or presentation state, not an image")
    ds = D.chest_12bit_windowed()
    ds.PhotometricInterpretation = "ZYXWA"
    assert _reason(D.to_bytes(ds)).startswith(
        "unsupported DICOM PhotometricInterpretation (not a defined term) (allowed: ")


def test_any_exception_in_the_worker_becomes_a_reject_without_its_text(tmp_path, monkeypatch):
    """The per-source boundary: whatever a decoder raises, the source is a reject whose reason is
    our words plus the exception's type name, never its message."""
    png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()

    def explode(*args, **kwargs):
        raise OverflowError("int too large: Zyxwa^Qorbel")

    for where in ("resize", "encode"):
        with monkeypatch.context() as patch:
            patch.setattr(image_io, where, explode)
            done = _process(tmp_path, f"{where}.png", png)
        assert done.reason == "decode error: OverflowError (the file is skipped)"
    assert image_io.failure_reason(PermissionError(13, "denied", "/x/Zyxwa")) == \
        "unreadable: PermissionError"
    assert _process(tmp_path, "ok.png", png).reason == ""
