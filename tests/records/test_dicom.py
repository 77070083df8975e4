"""DICOM sources: display chain (rescale, window, VOI LUT, MONOCHROME1) to 8-bit with lungs dark,
technical tags into the record, rejections with reasons, and no PHI anywhere in the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests import fixtures
from tests.records import dicom_files as D
from xray_tfdata.records import dicom, features, image_format, image_io
from xray_tfdata.records.image_format import ImageReadError


def _decode(ds: Dataset, **kwargs):
    return image_io.decode_source_bytes(D.to_bytes(ds), **kwargs)


def _reason(data: bytes) -> str:
    with pytest.raises(ImageReadError) as err:
        image_io.decode_source_bytes(data)
    return err.value.reason


def _linear_window(x: float, center: float, width: float, y_min: float, y_max: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out independently of pydicom."""
    if x <= center - 0.5 - (width - 1) / 2:
        return y_min
    if x > center - 0.5 + (width - 1) / 2:
        return y_max
    return ((x - (center - 0.5)) / (width - 1) + 0.5) * (y_max - y_min) + y_min


def test_12bit_rescale_and_window_follow_the_standard():
    ds = D.chest_12bit_windowed()
    stored = D.displayed(600, 3400)
    stored[0, 0] = 1800  # one mid-grey pixel inside the window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    gray, info = _decode(ds)
    lungs = D.lung_mask()
    # Output range of the window: BitsStored's 0..4095 through the rescale: -1000..7190.
    y_min, y_max = -1000.0, 4095 * 2 - 1000.0
    mid = _linear_window(1800 * 2 - 1000, 3000, 5601, y_min, y_max)
    assert gray[0, 0] == round((mid - y_min) * 255 / (y_max - y_min)) == 109
    assert np.all(gray[lungs] == 0) and np.all(gray[~lungs & (np.arange(gray.size).reshape(
        gray.shape) != 0)] == 255)
    assert (info.format, info.mode, info.width, info.height) == ("DICOM", "MONOCHROME2", 40, 48)


def test_16bit_rescale_without_window_scales_by_bits_stored():
    gray, _ = _decode(D.chest_16bit_rescaled())
    lungs = D.lung_mask()
    # 8000 * 0.5 = 4000 and 60000 * 0.5 = 30000 over 0 .. 65535 * 0.5.
    assert np.all(gray[lungs] == round(4000 * 255 / 32767.5)) and gray[lungs][0] == 31
    assert np.all(gray[~lungs] == round(30000 * 255 / 32767.5)) and gray[~lungs][0] == 233


def test_bits_stored_not_min_max_decides_the_scale():
    # The same 12-bit image with a narrow value range stays dim; a min..max stretch would not.
    gray, _ = _decode(D.dataset(D.displayed(100, 1000), bits_stored=12))
    assert gray.max() == round(1000 * 255 / 4095) == 62 and gray.min() == round(100 * 255 / 4095)


def test_monochrome1_is_inverted_so_lungs_are_dark():
    gray, info = _decode(D.chest_monochrome1())
    lungs = D.lung_mask()
    assert info.mode == "MONOCHROME1"
    # Stored lungs 3795 (bright in MONOCHROME1 = dark on screen) -> 255 - round(3795*255/4095).
    assert np.all(gray[lungs] == 255 - round(3795 * 255 / 4095)) and gray[lungs][0] == 19
    assert np.all(gray[~lungs] == 255 - round(295 * 255 / 4095)) and gray[~lungs][0] == 237


@pytest.mark.parametrize("make", [D.chest_12bit_windowed, D.chest_16bit_rescaled,
                                  D.chest_monochrome1])
def test_every_variant_displays_dark_lungs_in_a_bright_body(make):
    gray, _ = _decode(make())
    lungs = D.lung_mask()
    assert gray[lungs].mean() + 100 < gray[~lungs].mean()


def test_voi_lut_sequence_is_preferred_to_the_window():
    stored = D.displayed(0, 4095)
    stored[0, 0] = 2000
    ds = D.dataset(stored, bits_stored=12, WindowCenter=100, WindowWidth=10)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4096 entries, first maps 0, 16-bit output
    lut = (65535 - np.arange(4096) * 65535 // 4095).astype("<u2")  # an inverting LUT
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    ds.VOILUTSequence = [item]
    gray, _ = _decode(ds)
    lungs = D.lung_mask()
    body = ~lungs
    body[0, 0] = False
    assert np.all(gray[lungs] == 255) and np.all(gray[body] == 0)  # the LUT, not the window
    assert gray[0, 0] == round(int(lut[2000]) * 255 / 65535) == 130


def test_signed_pixels_with_rescale():
    stored = D.displayed(-2000, 2000)  # signed 16-bit, e.g. a CT-style export
    gray, _ = _decode(D.dataset(stored, bits_stored=16, signed=True, RescaleSlope=1,
                                RescaleIntercept=0))
    lungs = D.lung_mask()
    assert np.all(gray[lungs] == round((-2000 + 32768) * 255 / 65535))
    assert np.all(gray[~lungs] == round((2000 + 32768) * 255 / 65535))


def test_technical_tags_kept_and_nothing_else():
    ds = D.chest_12bit_windowed(**D.PHI)
    _, info = _decode(ds)
    assert dict(info.tags) == {
        "Modality": "DX", "ViewPosition": "PA", "PhotometricInterpretation": "MONOCHROME2",
        "BitsStored": "12", "Manufacturer": "Acme Detectors", "PixelSpacing": "0.139\\0.139"}
    assert set(dicom.TECHNICAL_TAGS) == set(features.DICOM_TAG_KEYS)
    text = repr(info)
    assert not [v for v in D.PHI.values() if v in text]


def test_extensionless_dicom_is_a_source_file(tmp_path):
    path = D.write(tmp_path / "IM000001", D.chest_12bit_windowed())
    (tmp_path / "README").write_text("not a scan\n")
    assert image_format.is_source_file(path) and image_format.is_source_file(tmp_path / "x.DCM")
    assert not image_format.is_source_file(tmp_path / "README")
    assert not image_format.is_source_file(tmp_path / "notes.txt")
    gray, info = image_io.read_source(path)
    assert info.format == "DICOM" and gray.shape == (D.ROWS, D.COLS)


def test_multi_frame_no_pixels_and_truncated_are_rejected_with_reasons():
    assert _reason(D.to_bytes(D.multi_frame())) == (
        "multi-frame DICOM (3 frames): only single-image files are converted")
    assert _reason(D.to_bytes(D.structured_report())) == (
        "DICOM without pixel data (SR, Basic Text SR Storage): a report or presentation state, "
        "not an image")
    data = D.to_bytes(D.chest_12bit_windowed())
    assert _reason(data[:-100]) == "truncated DICOM (pixel data has 3740 of 3840 bytes)"
    assert _reason(data[:400]).startswith(
        "truncated DICOM (Digital X-Ray Image Storage - For Presentation without pixel data")
    assert _reason(data[:300]).startswith("truncated DICOM")
    assert _reason(data[:132] + b"\x00garbage").startswith("corrupt DICOM")


def test_unsupported_photometric_and_oversized_rejected():
    ds = D.chest_12bit_windowed()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    assert _reason(D.to_bytes(ds)).startswith(
        "unsupported DICOM PhotometricInterpretation PALETTE COLOR")
    with pytest.raises(ImageReadError, match=r"^40x48 = 1.9 kpixel is over the --max_pixels "):
        _decode(D.chest_12bit_windowed(), max_pixels=1000)


@pytest.mark.parametrize("syntax,plugin", [(RLELossless, ""), (JPEG2000Lossless, "pylibjpeg")])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(syntax, plugin):
    want, _ = _decode(D.chest_12bit_windowed())
    ds = D.chest_12bit_windowed()
    ds.compress(syntax, encoding_plugin=plugin)
    gray, info = _decode(ds)
    np.testing.assert_array_equal(gray, want)
    assert info.format == "DICOM"


_BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None\n"
_DECODE = ("from xray_tfdata.records import image_io\n"
           "try:\n    image_io.read_source(sys.argv[1])\n"
           "except image_io.ImageReadError as e:\n    print(e.reason)\n")


def _reason_without(modules: tuple[str, ...], path: Path) -> str:
    code = _BLOCK.format(mods=modules) + _DECODE
    env = {**os.environ, "PYTHONPATH": str(fixtures.REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_compressed_without_decoder_names_the_extra(tmp_path):
    ds = D.chest_12bit_windowed()
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    path = D.write(tmp_path / "j2k.dcm", ds)
    # Every plugin pydicom could use for JPEG 2000 is made unimportable.
    reason = _reason_without(("pylibjpeg", "openjpeg", "libjpeg", "rle", "PIL", "gdcm"), path)
    assert reason == ("compressed DICOM (JPEG 2000 Image Compression (Lossless Only)) needs a "
                      "decoder: pip install -e '.[dicom]' (installs pylibjpeg with its libjpeg, "
                      "openjpeg and rle plugins)")


def test_without_pydicom_a_dicom_gets_a_reason_naming_the_extra(tmp_path):
    path = D.write(tmp_path / "a.dcm", D.chest_12bit_windowed())
    assert _reason_without(("pydicom",), path) == (
        "DICOM needs the [dicom] extra: pip install -e '.[dicom]'")


def test_tags_become_optional_record_features():
    base = dict(encoded=b"x", image_format="raw", height=1, width=1, channels=1, label=0,
                class_text="NORMAL", source_path="a", source_sha256="0", source_width=1,
                source_height=1, source_mode="L", source_format="PNG", source_bytes=1)
    plain = features.serialize(features.ExampleRecord(**base))
    tagged = features.serialize(features.ExampleRecord(
        **base, tags=(("Modality", "DX"), ("ViewPosition", "AP"), ("Manufacturer", ""))))
    keys = features.DICOM_TAG_KEYS
    assert not any(k.encode() in plain for k in keys.values())  # non-DICOM: bytes unchanged
    parsed = tf.io.parse_example(tf.constant([plain, tagged]), features.parse_spec())
    assert parsed[keys["Modality"]].numpy().tolist() == [b"", b"DX"]
    assert parsed[keys["ViewPosition"]].numpy().tolist() == [b"", b"AP"]
    assert parsed[keys["Manufacturer"]].numpy().tolist() == [b"", b""]
    with pytest.raises(ValueError, match="Unknown source tags"):
        features.ExampleRecord(**base, tags={"PatientName": "x"}).as_features()


def test_decoding_a_dicom_in_a_worker_does_not_import_tensorflow(tmp_path):
    path = D.write(tmp_path / "a.dcm", D.chest_monochrome1())
    code = ("import sys\nfrom xray_tfdata.records import image_io\n"
            "gray, info = image_io.read_source(sys.argv[1])\n"
            "assert info.format == 'DICOM'\n"
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)\n")
    env = {**os.environ, "PYTHONPATH": str(fixtures.REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
