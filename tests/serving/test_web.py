"""The web app through Django's test client: every route, every bad input, 413, 405, CSRF on the
form, uploads kept in memory, logs free of image data, and concurrent predictions."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.test import Client, override_settings  # noqa: E402

from tests import fixtures  # noqa: E402
from xray_tfdata import files  # noqa: E402
from xray_tfdata.errors import ConfigError  # noqa: E402
from xray_tfdata.serving.web import model as model_lib  # noqa: E402
from xray_tfdata.serving.web.settings import WebSettings, configure  # noqa: E402

PREDICT = "/v1/models/xray:predict"
CLASSES = ["NORMAL", "COVID19", "PNEUMONIA"]


def png(value: int, size: tuple[int, int] = (40, 32)) -> bytes:
    """A grey PNG whose brightness the tiny model maps to class BRIGHTNESS.index(value)."""
    rng = np.random.default_rng(value)
    image = np.clip(value + rng.normal(0, 6, size), 0, 255).astype(np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


IMAGES = {label: png(value) for label, value in enumerate(fixtures.BRIGHTNESS)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    export_dir = fixtures.tiny_export(tmp_path_factory.mktemp("web") / "export")
    from django.conf import settings

    if not settings.configured:
        configure(WebSettings(model_path=str(export_dir), allowed_hosts=("testserver",)))
    loaded = model_lib.load(export_dir)
    model_lib.install(loaded)
    yield loaded
    model_lib.install(None)


@pytest.fixture()
def client(loaded) -> Client:
    return Client()


def post_json(client: Client, payload, path: str = PREDICT):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return client.post(path, data=body, content_type="application/json")


# ------------------------------------------------------------------------------ routes


def test_page_has_form_notice_and_security_headers(client):
    response = client.get("/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "Research use only, not for diagnosis." in page
    assert 'enctype="multipart/form-data"' in page and 'name="csrfmiddlewaretoken"' in page
    assert 'type="file" name="image" multiple' in page
    assert '<script src="/static/app.js"' in page and "<script>" not in page  # no inline JS
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "--max_pixels" not in page
    assert response["Cache-Control"] == "no-store"


def test_static_files_and_unknown_paths(client):
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js["Content-Type"].startswith("text/javascript")
    assert b"/v1/models/xray:" in b"".join(js.streaming_content)
    assert client.get("/static/app.css")["Content-Type"].startswith("text/css")
    assert client.get("/static/settings.py").status_code == 404
    assert client.get("/admin/").json()["error"].startswith("no such route /admin/")


def test_healthz_is_200_once_loaded_and_503_before(client, loaded):
    assert client.get("/healthz").json() == {"status": "ok"}
    model_lib.install(None)
    try:
        assert client.get("/healthz").status_code == 503
        assert post_json(client, {"instances": []}).status_code == 503
    finally:
        model_lib.install(loaded)
    assert client.get("/healthz").status_code == 200


def test_model_status_names_classes_size_and_sha256(client, loaded):
    info = client.get("/v1/models/xray").json()
    assert info["name"] == "xray" and info["classes"] == CLASSES
    assert info["input"]["image_size"] == fixtures.TINY_SIZE and info["input"]["channels"] == 1
    # The fingerprint changes with every file of the export; recompute it independently.
    root = Path(loaded.source)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    assert info["sha256"] == digest.hexdigest()
    assert info["model_version_status"][0]["state"] == "AVAILABLE"


def test_signature_metadata_like_tf_serving(client):
    meta = client.get("/v1/models/xray/metadata").json()
    assert meta["model_spec"]["name"] == "xray"
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert sig["inputs"]["image_bytes"]["tensor_shape"] == {"dim": [{"size": "-1"}]}
    assert sig["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert sig["outputs"]["probabilities"]["tensor_shape"] == {"dim": [{"size": "-1"},
                                                                       {"size": "3"}]}


def test_predict_json_matches_the_model(client, loaded):
    payload = {"instances": [{"b64": b64(IMAGES[k])} for k in range(3)]}
    response = post_json(client, payload)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["classes"] == CLASSES
    want = loaded.serving.predict([IMAGES[k] for k in range(3)])
    np.testing.assert_allclose(answer["predictions"], want, atol=1e-6)
    assert [int(np.argmax(p)) for p in answer["predictions"]] == [0, 1, 2]


def test_predict_accepts_named_input_and_urlsafe_unpadded_base64(client, loaded):
    data = IMAGES[2] + b"\xff\xfe"  # trailing bytes make the urlsafe alphabet and padding matter
    text = base64.urlsafe_b64encode(data).decode().rstrip("=")
    answer = post_json(client, {"signature_name": "serving_default",
                                "instances": [{"image_bytes": {"b64": text}}]}).json()
    np.testing.assert_allclose(answer["predictions"], loaded.serving.predict([data]), atol=1e-6)


def test_predict_multipart_several_files(client, loaded):
    uploads = {"image": [_upload("a.png", IMAGES[0]), _upload("b.png", IMAGES[1])]}
    answer = client.post(PREDICT, uploads).json()
    want = loaded.serving.predict([IMAGES[0], IMAGES[1]])
    np.testing.assert_allclose(answer["predictions"], want, atol=1e-6)


def _upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


# ------------------------------------------------------------------------------ bad input


def _bomb() -> bytes:
    # A real file, not a forged header: 8000 x 6000 black pixels (48 MP) compress to ~50 kB.
    return cv2.imencode(".png", np.zeros((6000, 8000), np.uint8))[1].tobytes()


BAD_JSON = {
    "empty body": (b"", "empty body"),
    "malformed JSON": (b'{"instances": [', "malformed JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "missing instances": ({"inputs": {"b64": "eA=="}}, 'missing "instances"'),
    "empty instances": ({"instances": []}, "non-empty list"),
    "bare string": ({"instances": [b64(IMAGES[0])]}, "bare string is not decoded as base64"),
    "not b64 object": ({"instances": [{"bytes": "eA=="}]}, 'expected {"b64"'),
    "bad base64": ({"instances": [{"b64": "ab$%cd"}]}, "instances[0]: bad base64"),
    "not an image": ({"instances": [{"b64": b64(b"patient notes, not pixels\n")}]},
                     "instances[0]: not an image (looks like text)"),
    "unsupported format": ({"instances": [{"b64": b64(b"II*\x00" + bytes(200))}]},
                           "instances[0]: unsupported format TIFF (allowed: JPEG, PNG, BMP)"),
    "GIF": ({"instances": [{"b64": b64(b"GIF89a" + bytes(40))}]},
            "instances[0]: unsupported format GIF"),
    "empty image": ({"instances": [{"b64": ""}]}, "instances[0]: empty file"),
    "deeply nested": ('{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}",
                      "JSON nested 100001 levels deep; at most 32 are allowed"),
    "huge integer": ('{"instances": [{"b64": ' + "9" * 5000 + "}]}",
                     "malformed JSON (a number too long to read: over 4300 digits)"),
    "truncated PNG": ({"instances": [{"b64": b64(IMAGES[1][:60])}]},
                      "instances[0]: truncated or corrupt PNG"),
    "decompression bomb": ({"instances": [{"b64": b64(_bomb())}]},
                           "instances[0]: decompression bomb refused: the header says 8000 x 6000 "
                           "= 48,000,000 pixels, more than the 40,000,000 allowed"),
    "too many": ({"instances": [{"b64": b64(IMAGES[0])}] * 65}, "65 images in one request"),
    "unknown signature": ({"signature_name": "explain", "instances": [{"b64": "eA=="}]},
                          "unknown signature_name 'explain'"),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_json_input_is_a_400_naming_the_problem_and_serving_goes_on(client, case):
    payload, message = BAD_JSON[case]
    response = post_json(client, payload)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    good = post_json(client, {"instances": [{"b64": b64(IMAGES[2])}]})
    assert good.status_code == 200 and np.argmax(good.json()["predictions"][0]) == 2


def test_bad_multipart_uploads(client):
    broken = client.post(PREDICT, data=b"garbage", content_type="multipart/form-data")
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("malformed multipart/form-data (Invalid boundary")
    none = client.post(PREDICT, {"note": "no file"})
    assert none.status_code == 400 and "no file uploaded" in none.json()["error"]
    text = client.post(PREDICT, {"image": [_upload(n, b"hello, world\n") for n in "ab"]})
    assert text.status_code == 400
    assert text.json()["error"] == "file 0 (13 bytes): not an image (looks like text)"
    assert text.json()["errors"] == ["not an image (looks like text)"] * 2


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_body_over_the_limit_is_413(client, kind):
    with override_settings(XRAY_MAX_UPLOAD_BYTES=2000):
        if kind == "json":
            response = post_json(client, {"instances": [{"b64": b64(bytes(3000))}]})
        else:
            response = client.post(PREDICT, {"image": _upload("big.png", bytes(3000))})
        assert response.status_code == 413
        assert "request body too large" in response.json()["error"]
        assert "the limit is 2,000" in response.json()["error"]
        small = post_json(client, {"instances": [{"b64": b64(IMAGES[0])}]})  # under the limit
        assert small.status_code == 200


@pytest.mark.parametrize("method, path", [("put", "/healthz"), ("get", PREDICT),
                                          ("delete", "/"), ("post", "/v1/models/xray"),
                                          ("patch", "/static/app.js")])
def test_wrong_method_is_405_with_allow(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert method.upper() in response.json()["error"]
    assert response["Allow"]


# ------------------------------------------------------------------------------ the form


def test_form_post_needs_the_csrf_token_and_shows_the_result(loaded):
    browser = Client(enforce_csrf_checks=True)
    refused = browser.post("/", {"image": _upload("n.png", IMAGES[0])})
    assert refused.status_code == 403
    page = browser.get("/").content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    response = browser.post("/", {"csrfmiddlewaretoken": token,
                                  "image": _upload("pneumonia.png", IMAGES[2])})
    html = response.content.decode()
    assert response.status_code == 200
    assert '<h2 class="predicted" data-class="PNEUMONIA">PNEUMONIA</h2>' in html
    want = loaded.serving.predict([IMAGES[2]])[0]
    shown = [float(html.split(f'data-class="{name}" data-p="')[1].split('"')[0])
             for name in CLASSES]
    np.testing.assert_allclose(shown, want, atol=1e-6)
    assert f'src="data:image/png;base64,{b64(IMAGES[2])}"' in html  # the image itself
    assert "Research use only, not for diagnosis." in html


def test_form_post_errors_are_shown_on_the_page(client):
    missing = client.post("/", {})
    assert missing.status_code == 400 and "No file uploaded" in missing.content.decode()
    bad = client.post("/", {"image": _upload("notes.png", b"just text\n")})
    assert bad.status_code == 400
    assert "Cannot read this file: not an image (looks like text)." in bad.content.decode()


# ------------------------------------------------------------------------------ privacy


def test_uploads_never_touch_the_disk(client, monkeypatch):
    """A 3 MB upload would go to a temporary file under Django's default handlers (> 2.5 MB)."""
    import django.core.files.temp as django_temp
    import django.core.files.uploadhandler as handlers

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(django_temp, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(handlers.TemporaryUploadedFile, "__init__", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    noise = np.random.default_rng(3).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    big = cv2.imencode(".png", noise)[1].tobytes()
    assert len(big) > 3_000_000
    response = client.post(PREDICT, {"image": _upload("big.png", big)})
    assert response.status_code == 200, response.content


def test_logs_carry_sizes_and_status_not_names_or_bytes(client, caplog):
    with caplog.at_level(logging.INFO, logger="xray_tfdata.serve"):
        client.post(PREDICT, {"image": _upload("jane_doe_1970.png", IMAGES[1])})
        post_json(client, {"instances": [{"b64": b64(b"secret text\n")}]})
    lines = [r.getMessage() for r in caplog.records if r.name == "xray_tfdata.serve.access"]
    assert len(lines) == 2
    assert lines[0].startswith(f"POST {PREDICT} 200 in=") and "ms" in lines[0]
    assert lines[1].startswith(f"POST {PREDICT} 400 in=")
    text = "\n".join(lines)
    assert "jane_doe" not in text and "secret" not in text and b64(IMAGES[1])[:20] not in text


# ------------------------------------------------------------------------------ the model


def test_concurrent_predictions_equal_serial_ones(loaded):
    """The shared SavedModel is called from 16 threads at once without a lock."""
    from xray_tfdata.serving.predict import predict_bytes

    rng = np.random.default_rng(5)
    images = [png(int(v), (int(h), int(w))) for v, h, w in zip(
        rng.integers(20, 235, 48), rng.integers(16, 90, 48), rng.integers(16, 90, 48))]
    serial = [loaded.serving.predict([data])[0] for data in images]
    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(lambda data: predict_bytes(loaded.serving, [data])[0], images))
    got = [[r["probabilities"][n] for n in CLASSES] for r in parallel]
    np.testing.assert_allclose(got, serial, atol=1e-6)
    assert len({int(np.argmax(p)) for p in serial}) == 3  # the images really differ


def test_concurrent_http_requests(loaded):
    def ask(k: int):
        answer = post_json(Client(), {"instances": [{"b64": b64(IMAGES[k % 3])}]})
        return answer.status_code, int(np.argmax(answer.json()["predictions"][0]))

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, range(24))) == [(200, k % 3) for k in range(24)]


def test_a_keras_file_is_served_through_the_real_export(loaded, tmp_path):
    keras_file = fixtures.tiny_model_file(tmp_path / "best.keras")
    before = set(Path(tempfile.gettempdir()).glob("xray_tfdata_serve-*"))
    from_keras = model_lib.load(keras_file)
    assert set(Path(tempfile.gettempdir()).glob("xray_tfdata_serve-*")) == before  # cleaned up
    assert from_keras.kind == "keras" and from_keras.sha256 == files.sha256_file(keras_file)
    assert from_keras.serving.metadata["resize_mode"] == "stretch"
    data = [IMAGES[k] for k in range(3)]
    np.testing.assert_allclose(from_keras.serving.predict(data), loaded.serving.predict(data),
                               atol=1e-6)


def test_load_refuses_other_paths(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="neither a SavedModel export directory nor"):
        model_lib.load(tmp_path / "model.h5")
    with pytest.raises(ValueError, match="no saved_model.pb"):
        model_lib.load(tmp_path)


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("field, value", [("port", 70000), ("port", -1), ("threads", 0),
                                          ("max_upload_mb", 0), ("max_pixels", 0),
                                          ("resize_mode", "crop"), ("host", "")])
def test_settings_name_the_bad_field(field, value):
    with pytest.raises(ConfigError) as err:
        WebSettings(model_path="m", **{field: value})
    assert err.value.field == field and f"Received: {field}=" in str(err.value)


def test_allowed_hosts_default_and_flag():
    assert WebSettings("m", host="10.1.2.3").hosts() == ["localhost", "127.0.0.1", "[::1]",
                                                        "10.1.2.3"]
    assert WebSettings("m", host="0.0.0.0").hosts() == ["localhost", "127.0.0.1", "[::1]"]
    assert WebSettings("m", allowed_hosts="a.example, b.example").hosts() == ["a.example",
                                                                             "b.example"]
    assert WebSettings("m", max_upload_mb=2).max_upload_bytes == 2 * 1024 * 1024


def test_unknown_host_header_is_refused(client):
    response = client.get("/healthz", HTTP_HOST="evil.example")
    assert response.status_code == 400 and "--allowed_hosts" in response.json()["error"]


def test_dicom_is_served_as_the_converter_sees_it(client, loaded, caplog):
    from tests.records import dicom_files
    from xray_tfdata.serving.predict import dicom_to_png

    data = dicom_files.to_bytes(dicom_files.chest_12bit_windowed())
    with caplog.at_level(logging.INFO, logger="xray_tfdata.serve"):
        answer = post_json(client, {"instances": [{"b64": b64(data)}]})
        page = client.post("/", {"image": _upload("study.dcm", data)}).content.decode()
    assert answer.status_code == 200, answer.content
    np.testing.assert_allclose(answer.json()["predictions"],
                               loaded.serving.predict([dicom_to_png(data)]), atol=1e-6)
    assert 'class="predicted"' in page and 'class="xray"' not in page  # no <img> for DICOM
    shown = answer.content.decode() + page + caplog.text
    assert not [v for v in dicom_files.PHI.values() if v in shown]


def test_the_page_and_status_say_whether_probabilities_are_calibrated(client, loaded, tmp_path):
    assert client.get("/v1/models/xray").json()["probabilities"] == "uncalibrated softmax"
    assert "Probabilities: uncalibrated softmax." in client.get("/").content.decode()
    # Training writes best.keras and, beside it, an export whose metadata notes the calibration.
    import keras

    from xray_tfdata.serving import export

    keras_file = fixtures.tiny_model_file(tmp_path / "best.keras")
    note = "calibrated: softmax(logits / 1.2500), temperature scaling on val"
    export.export_serving(keras.models.load_model(keras_file, compile=False), tmp_path / "export",
                          fixtures.TINY_SIZE, 1, "pad", extra_metadata={"probabilities": note})
    from_keras = model_lib.load(keras_file)
    assert from_keras.probabilities == note
    assert from_keras.serving.metadata["resize_mode"] == "pad"  # the records' mode, from beside
    model_lib.install(from_keras)
    try:
        assert client.get("/v1/models/xray").json()["probabilities"] == note
        assert f"Probabilities: {note}." in client.get("/").content.decode()
    finally:
        model_lib.install(loaded)


def test_grad_cam_overlays_for_a_keras_file_and_404_for_an_export(client, loaded, tmp_path):
    from xray_tfdata.models import build_model

    assert post_json(client, {"instances": [{"b64": b64(IMAGES[0])}]},
                     "/v1/models/xray:explain").status_code == 404  # the export: no layers
    build_model("seed_cnn", 32, 1, seed=0).save(tmp_path / "best.keras")
    with_cam = model_lib.load(tmp_path / "best.keras")
    assert with_cam.explainer is not None and with_cam.describe()["explain"] is True
    model_lib.install(with_cam)
    try:
        answer = post_json(client, {"instances": [{"b64": b64(IMAGES[k])} for k in range(2)]},
                           "/v1/models/xray:explain").json()
        np.testing.assert_allclose(answer["predictions"],
                                   with_cam.serving.predict([IMAGES[0], IMAGES[1]]), atol=1e-6)
        assert answer["layer"] == "conv3"
        overlays = [cv2.imdecode(np.frombuffer(base64.b64decode(o), np.uint8), cv2.IMREAD_COLOR)
                    for o in answer["overlays"]]
        assert [o.shape for o in overlays] == [(32, 32, 3)] * 2
        assert all(o.std() > 0 for o in overlays)
        bad = post_json(client, {"instances": [{"b64": b64(b"text\n")}]}, "/v1/models/xray:explain")
        assert bad.status_code == 400 and "looks like text" in bad.json()["error"]
        page = client.post("/", {"image": _upload("x.png", IMAGES[1])}).content.decode()
        assert 'class="xray overlay" src="data:image/png;base64,' in page
        assert 'data-explain="true"' in client.get("/").content.decode()
    finally:
        model_lib.install(loaded)
