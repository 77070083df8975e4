"""Export and predict: the SavedModel serves raw image bytes of any size and mode, decodes them
like the converter (checked against OpenCV), and matches the Keras model; the predict CLI reports
good and bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.models import build_model
from xray_tfdata.records import image_io, intensity, resize
from xray_tfdata.serving import export
from xray_tfdata.serving import intensity as serving_intensity
from xray_tfdata.serving.predict import predict_files

SIZE = 32
REPO_ROOT = fixtures.REPO_ROOT


def _images() -> dict[str, tuple[bytes, np.ndarray]]:
    """Encoded test files of different formats/sizes/modes and their OpenCV 8-bit grey decoding."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    bgr = rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)
    bgra = rng.integers(0, 256, (33, 45, 4), dtype=np.uint8)
    deep = rng.integers(1000, 3000, (40, 41), dtype=np.uint16)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8), (9, 9), 3)
    deep_ref = np.round((deep - deep.min()) * 255.0 / (deep.max() - deep.min())).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return {
        "gray.png": (cv2.imencode(".png", gray)[1].tobytes(), gray),
        "rgb.png": (cv2.imencode(".png", bgr)[1].tobytes(), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "rgba.png": (cv2.imencode(".png", bgra)[1].tobytes(),
                     cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2GRAY)),
        "16bit.png": (cv2.imencode(".png", deep)[1].tobytes(), deep_ref),
        "rgb.jpg": (jpeg, cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8),
                                                    cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)),
        "rgb.bmp": (cv2.imencode(".bmp", bgr)[1].tobytes(), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_model("seed_cnn", SIZE, 1, seed=0)
    # Train a little (brightness -> class) so the probabilities are not all ~1/3 and depend on the
    # input: a preprocessing mismatch between serving and Keras would then show.
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    labels = np.arange(24) % 3
    levels = np.array([60.0, 128.0, 196.0])[labels]
    x = np.clip(levels[:, None, None, None] + rng.normal(0, 40, (24, SIZE, SIZE, 1)), 0, 255)
    model.fit(x.astype(np.uint8), labels, epochs=3, batch_size=8, verbose=0)
    export_dir = tmp_path_factory.mktemp("export") / "export"
    export.export_serving(model, export_dir, SIZE, 1)
    return model, export_dir, export.load_serving(export_dir)


def test_signature_and_metadata(exported):
    _, export_dir, serving = exported
    inputs = serving.signature.structured_input_signature[1]
    outputs = serving.signature.structured_outputs
    assert inputs["image_bytes"].dtype == tf.string
    assert inputs["image_bytes"].shape.as_list() == [None]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 3]
    meta = json.loads((export_dir / "xray_tfdata.json").read_text())
    assert meta["class_names"] == ["NORMAL", "COVID19", "PNEUMONIA"]
    assert (meta["image_size"], meta["channels"], meta["resize_mode"]) == (SIZE, 1, "stretch")
    assert not [p for p in export_dir.parent.iterdir() if ".tmp-" in p.name]


def test_decoding_matches_opencv_converter_conventions():
    preprocess = export.make_preprocess_fn(SIZE, 1)
    for name, (data, gray) in _images().items():
        decoded = export.decode_gray(tf.constant(data)).numpy()[..., 0]
        # Rounding of the luma weights may differ by one grey level from OpenCV's fixed point.
        diff = np.abs(decoded.astype(int) - gray.astype(int))
        assert decoded.shape == gray.shape, name
        assert diff.max() <= 1 and diff.mean() < 0.1, name
        want = cv2.resize(gray, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        got = preprocess(tf.constant([data])).numpy()[0, ..., 0]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_small_images_are_enlarged_bilinearly_like_opencv():
    small = np.random.default_rng(2).integers(0, 256, (20, 24), dtype=np.uint8)
    data = cv2.imencode(".png", small)[1].tobytes()
    got = export.make_preprocess_fn(SIZE, 1)(tf.constant([data])).numpy()[0, ..., 0]
    want = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("resize_mode", ["stretch", "pad"])
def test_serving_pixels_match_the_converter(resize_mode):
    """The export's bytes -> pixels equals image_io's (the converter's) within one grey level."""
    preprocess = export.make_preprocess_fn(SIZE, 3, resize_mode)
    for name, (data, _) in _images().items():
        gray, _ = image_io.decode_source_bytes(data)
        want = resize.resize(resize.to_channels(gray, 3), SIZE, resize_mode)
        got = preprocess(tf.constant([data])).numpy()[0]
        assert got.shape == want.shape, name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_pad_mode_keeps_aspect_with_black_borders():
    white = cv2.imencode(".png", np.full((20, 40), 255, np.uint8))[1].tobytes()
    out = export.make_preprocess_fn(SIZE, 3, "pad")(tf.constant([white])).numpy()[0]
    assert out.shape == (SIZE, SIZE, 3)
    rows = out[..., 0].mean(axis=1)
    np.testing.assert_array_equal(rows[:8], 0)
    np.testing.assert_array_equal(rows[8:24], 255)
    np.testing.assert_array_equal(rows[24:], 0)


def test_serving_matches_keras_model_on_mixed_batch(exported):
    model, _, serving = exported
    files = _images()
    data = [d for d, _ in files.values()]
    served = serving.predict(data)
    assert served.shape == (len(data), 3) and served.dtype == np.float32
    same_input = export.make_preprocess_fn(SIZE, 1)(tf.constant(data)).numpy()
    np.testing.assert_allclose(served, model.predict(same_input, verbose=0), atol=1e-5)
    # And against OpenCV-preprocessed pixels: one grey level of decoder rounding moves little.
    opencv = np.stack([cv2.resize(g, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[..., None]
                       for _, g in files.values()])
    np.testing.assert_allclose(served, model.predict(opencv, verbose=0), atol=2e-2)
    assert served.std(axis=0).max() > 1e-3  # a trained model: the inputs give different answers


def test_mixed_precision_rgb_export(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("seed_cnn", SIZE, 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = export.export_serving(model, tmp_path / "export", SIZE, 3, resize_mode="pad")
    data = [d for d, _ in _images().values()][:3]
    served = export.load_serving(out).predict(data)
    assert served.dtype == np.float32
    images = export.make_preprocess_fn(SIZE, 3, "pad")(tf.constant(data)).numpy()
    np.testing.assert_allclose(served, model.predict(images, verbose=0), atol=1e-3)


def test_export_refuses_mismatched_shape_and_mode(exported, tmp_path):
    model = exported[0]
    with pytest.raises(ValueError, match=r"model takes images of shape \(32, 32, 1\)"):
        export.export_serving(model, tmp_path / "e", 64, 1)
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        export.export_serving(model, tmp_path / "e", SIZE, 1, resize_mode="crop")
    assert not (tmp_path / "e").exists()


def _write_files(folder: Path) -> dict[str, Path]:
    files = {name: folder / name for name in ("gray.png", "rgb.jpg")}
    images = _images()
    for name, path in files.items():
        path.write_bytes(images[name][0])
    bad = {
        "notes.png": b"these are notes, not pixels\n",
        "empty.jpg": b"",
        "truncated.jpg": images["rgb.jpg"][0][:300],
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    files["missing.png"] = folder / "missing.png"
    return files


def test_predict_files_reports_each_file(exported, tmp_path):
    _, _, serving = exported
    files = _write_files(tmp_path)
    results = predict_files(serving, [str(p) for p in files.values()], batch_size=4)
    by_name = {Path(r["file"]).name: r for r in results}
    assert [Path(r["file"]).name for r in results] == list(files)
    want = serving.predict([files["gray.png"].read_bytes(), files["rgb.jpg"].read_bytes()])
    for row, name in zip(want, ("gray.png", "rgb.jpg")):
        got = [by_name[name]["probabilities"][c] for c in ("NORMAL", "COVID19", "PNEUMONIA")]
        np.testing.assert_allclose(got, row, atol=1e-6)
    assert by_name["notes.png"]["error"] == "not an image (looks like text)"
    assert by_name["empty.jpg"]["error"] == "empty file"
    assert "JPEG" in by_name["truncated.jpg"]["error"]
    assert by_name["missing.png"]["error"].startswith("unreadable: FileNotFoundError")


def test_predict_cli_good_and_bad_files(exported, tmp_path):
    _, export_dir, _ = exported
    files = _write_files(tmp_path)
    out_json = tmp_path / "out" / "predictions.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.predict", f"--model_path={export_dir}",
         f"--output_json={out_json}", *map(str, files.values())],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "2 predicted, 4 failed." in proc.stdout
    # This export was not written by train (no temperature scaling): predict says so.
    assert "Probabilities: uncalibrated softmax." in proc.stdout
    assert "ERROR: not an image (looks like text)" in proc.stdout
    results = json.loads(out_json.read_text())["results"]
    assert sum("probabilities" in r for r in results) == 2
    assert {Path(r["file"]).name for r in results if "error" in r} == {
        "notes.png", "empty.jpg", "truncated.jpg", "missing.png"}


def test_real_xrays_serve_like_the_converter(exported, real_sample_dir):
    """Real files (8/16-bit, grey/RGB/RGBA, PNG/JPEG of many sizes) decode as the converter does
    and are served in one batch."""
    paths = sorted(p for p in real_sample_dir.glob("*/*") if p.suffix.lower() != ".md")
    data = [p.read_bytes() for p in paths]
    preprocess = export.make_preprocess_fn(SIZE, 1)
    got = preprocess(tf.constant(data)).numpy()
    for path, blob, pixels in zip(paths, data, got):
        gray, _ = image_io.decode_source_bytes(blob)
        want = resize.resize(resize.to_channels(gray, 1), SIZE, "stretch")
        assert np.abs(pixels.astype(int) - want.astype(int)).max() <= 1, path.name
    served = exported[2].predict(data)
    assert served.shape == (len(paths), 3)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


# --- EXIF orientation and the one magic-byte table ----------------------------------------------

@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_exif_orientation_served_as_converted_and_as_cv2_imread(tmp_path, ext):
    """Orientation 6 (a landscape photo of a portrait film) comes out portrait in the converter
    AND the SavedModel preprocessing, for all eight orientations, within one grey level."""
    from tests.records.test_image_io import with_exif_orientation

    rng = np.random.default_rng(4)
    landscape = cv2.GaussianBlur(rng.integers(0, 256, (40, 64), dtype=np.uint8), (7, 7), 2)
    landscape[:8, :12] = 255  # a bright corner: any wrong flip moves it
    for orientation in range(1, 9):
        data = with_exif_orientation(cv2.imencode(ext, landscape)[1].tobytes(), orientation,
                                     "II" if orientation % 2 else "MM")
        path = tmp_path / f"o{orientation}{ext}"
        path.write_bytes(data)
        want = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        converted, _ = image_io.read_source(path)
        served = export.decode_gray(tf.constant(data)).numpy()[..., 0]
        assert int(export.exif_orientation(tf.constant(data))) == orientation
        assert converted.shape == served.shape == want.shape, orientation
        if orientation == 6:
            assert served.shape == (64, 40)  # portrait
        assert np.abs(served.astype(int) - converted.astype(int)).max() <= 1, orientation
        for mode in ("stretch", "pad"):
            got = export.make_preprocess_fn(SIZE, 1, mode)(tf.constant([data])).numpy()[0]
            ref = resize.resize(resize.to_channels(converted, 1), SIZE, mode)
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, (orientation, mode)


def test_exif_parse_survives_malformed_headers():
    jpeg = cv2.imencode(".jpg", np.full((8, 8), 90, np.uint8))[1].tobytes()
    bad_exif = jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00XX\x00\x00\xff\xff" + jpeg[2:]
    for data in (jpeg, bad_exif, jpeg[:40], b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"):
        assert int(export.exif_orientation(tf.constant(data))) == 1


def test_predict_sniff_uses_the_converters_magic_bytes():
    from xray_tfdata.records import image_format
    from xray_tfdata.serving.predict import sniff

    jpeg = cv2.imencode(".jpg", np.full((8, 8), 90, np.uint8))[1].tobytes()
    assert sniff(jpeg) is None
    assert sniff(b"GIF89a" + bytes(20)) == "unsupported format GIF (allowed: JPEG, PNG, BMP)"
    dicom_like = bytes(128) + b"DICM" + bytes(64)
    assert sniff(dicom_like).startswith("unsupported format DICOM here (allowed: JPEG, PNG, BMP)")
    assert sniff(b"") == "empty file"
    with pytest.raises(image_format.ImageReadError):  # the converter agrees on every case
        image_format.sniff_format(b"GIF89a" + bytes(20))


# --- intensity normalisation (build_records --intensity) ----------------------------------------

def _gray_sources() -> dict[str, bytes]:
    """Sources whose 8-bit grey decoding is exact on both sides (grey PNG/JPEG/BMP, 16-bit PNG):
    equalisation maps neighbouring grey levels far apart, so the comparison must start from the
    same grey image for a one-level bound to test the transform itself."""
    rng = np.random.default_rng(5)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (90, 70), dtype=np.uint8), (9, 9), 3)
    narrow = (rng.normal(90, 12, (61, 83))).clip(0, 255).astype(np.uint8)  # a dim, flat film
    deep = rng.integers(1000, 3000, (40, 41), dtype=np.uint16)
    return {
        "smooth.png": cv2.imencode(".png", smooth)[1].tobytes(),
        "narrow.jpg": cv2.imencode(".jpg", narrow, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
        "narrow.bmp": cv2.imencode(".bmp", narrow)[1].tobytes(),
        "16bit.png": cv2.imencode(".png", deep)[1].tobytes(),
        "flat.png": cv2.imencode(".png", np.full((12, 20), 77, np.uint8))[1].tobytes(),
    }


def _converted(data: bytes, mode: str, resize_mode: str = "stretch") -> np.ndarray:
    gray, _ = image_io.decode_source_bytes(data)
    return resize.resize(resize.to_channels(intensity.normalise(gray, mode), 1), SIZE, resize_mode)


@pytest.mark.parametrize("mode", intensity.INTENSITY_MODES)
def test_served_intensity_matches_the_converter(mode):
    """--intensity: the signature's TF ops give the converter's (OpenCV's) pixels, +-1 level."""
    preprocess = export.make_preprocess_fn(SIZE, 1, "pad", mode)
    for name, data in _gray_sources().items():
        want = _converted(data, mode, "pad")
        got = preprocess(tf.constant([data])).numpy()[0]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (mode, name)
    if mode != "none":  # the transform is not the identity on these images
        plain = _converted(_gray_sources()["narrow.bmp"], "none")
        assert np.abs(_converted(_gray_sources()["narrow.bmp"], mode).astype(int)
                      - plain.astype(int)).max() > 20


@pytest.mark.parametrize("mode", ["equalize", "clahe"])
def test_intensity_ops_equal_opencv_before_the_resize(mode):
    """The full-size transform alone, on sizes that do and do not divide into the CLAHE grid
    (OpenCV then mirrors the image out to a multiple of it), down to 1 x 1 and one grey level."""
    rng = np.random.default_rng(7)
    for shape in [(64, 64), (37, 53), (3, 5), (1, 1), (100, 24), (17, 200)]:
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        gray[: shape[0] // 2] //= 4  # an uneven histogram: clipping and redistribution matter
        want = intensity.normalise(gray, mode)
        got = serving_intensity.normalise(tf.constant(gray[..., None]), mode).numpy()[..., 0]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, shape


def test_real_xrays_served_with_intensity_like_the_converter(real_sample_dir):
    paths = sorted(p for p in real_sample_dir.glob("*/*") if p.suffix.lower() != ".md")[::6]
    for mode in ("equalize", "clahe"):
        preprocess = tf.function(export.make_preprocess_fn(SIZE, 1, "stretch", mode))
        for path in paths:
            data = path.read_bytes()
            got = preprocess(tf.constant([data])).numpy()[0]
            assert np.abs(got.astype(int) - _converted(data, mode).astype(int)).max() <= 1, \
                (mode, path.name)


def test_export_records_intensity_and_refuses_unknown(exported, tmp_path):
    model = exported[0]
    export_dir = export.export_serving(model, tmp_path / "eq", SIZE, 1, intensity="equalize")
    assert export.read_metadata(export_dir)["intensity"] == "equalize"
    narrow = _gray_sources()["narrow.bmp"]
    served = export.load_serving(export_dir).predict([narrow])
    want = model(_converted(narrow, "equalize")[None], training=False).numpy()
    np.testing.assert_allclose(served, want, atol=1e-4)
    with pytest.raises(ValueError, match="intensity must be one of"):
        export.make_preprocess_fn(SIZE, 1, "stretch", "gamma")
