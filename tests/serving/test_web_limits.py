"""Issue 16 in the web app, through Django's test client: one bad file costs only its own answer
(and never shows an exception's text), the decoded-byte budget per image and per request,
JSON nesting and numbers, too many files. The slow-client and waitress-413 cases need the real
server: tests/serving/test_browser.py."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib

import numpy as np
import pytest

from tests.serving.test_web import (  # noqa: F401 - client and loaded are fixtures
    IMAGES, PREDICT, _upload, b64, client, loaded, post_json)


def test_json_depth_counts_brackets_outside_strings_only():
    from xray_tfdata.serving.web.payloads import json_depth

    for payload in ({"instances": [{"b64": "eA=="}]}, {"a": '\\"[[[', "b": "x\\"},
                    [[{"c": ["]]]", "\\\\"]}]]):
        text = json.dumps(payload).encode()
        depth, node = 0, payload
        while isinstance(node, (list, dict)):  # the first branch is the deepest in each
            depth, node = depth + 1, node[0] if isinstance(node, list) else next(
                iter(v for v in node.values() if isinstance(v, (list, dict))), None)
        assert json_depth(text) == depth, text


@pytest.mark.parametrize("count, message", [
    (65, "65 images in one request; at most 64 are allowed (split the batch)"),
    (1001, "more than 1,000 files in one request; at most 64 are allowed (split the batch)")])
def test_too_many_files_say_the_count_and_the_limit(client, count, message):
    response = client.post(PREDICT, {"image": [_upload(f"{i}.png", b"x") for i in range(count)]})
    assert response.status_code == 400 and response.json()["error"] == message


def _unreadable_dicom() -> bytes:
    """A DICOM whose NumberOfFrames holds a patient's name: int() of it raised a ValueError
    quoting the name, which turned the whole batch into a 500 (issue 16, items 6 and 7)."""
    from tests.records import dicom_files

    ds = dicom_files.chest_12bit_windowed()
    ds.NumberOfFrames = "12345678"
    data = dicom_files.to_bytes(ds)
    assert data.count(b"12345678") == 1
    return data.replace(b"12345678", b"DOE^JANE")


def test_one_bad_file_costs_only_its_own_answer(client, loaded, caplog):
    batch = [IMAGES[0], b"hello, world\n", _unreadable_dicom(), IMAGES[2]]
    with caplog.at_level(logging.INFO):
        answer = post_json(client, {"instances": [{"b64": b64(d)} for d in batch]})
        page = client.post("/", {"image": [_upload(f"{i}.dcm", d) for i, d in enumerate(batch)]})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    want = loaded.serving.predict([IMAGES[0], IMAGES[2]])
    np.testing.assert_allclose([body["predictions"][0], body["predictions"][3]], want, atol=1e-6)
    assert body["predictions"][1:3] == [None, None]
    assert body["errors"] == [None, "not an image (looks like text)",
                              "corrupt DICOM (NumberOfFrames is not a whole number)", None]
    assert page.status_code == 200 and page.content.decode().count('class="predicted"') == 2
    shown = answer.content.decode() + page.content.decode() + caplog.text
    assert "DOE^JANE" not in shown and "DOE" not in shown  # never the exception's text


def _png_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG that is only its signature and IHDR: the header is all the budget reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def _rle_rgb16_dicom(size: int) -> bytes:
    """A 16-bit RGB RLE Lossless DICOM whose header says size x size; the pixel data is a stub
    (the budget must refuse it from the header, before any decoder runs)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from tests.records import dicom_files

    ds = dicom_files.chest_12bit_windowed()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    for name in ("WindowCenter", "WindowWidth"):
        if name in ds:
            delattr(ds, name)
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_decoded_bytes_are_budgeted_per_request_and_per_image(client, loaded, monkeypatch):
    from xray_tfdata.records import dicom

    decoded = []
    real = dicom.decode_dicom
    monkeypatch.setattr(dicom, "decode_dicom", lambda *a, **k: decoded.append(1) or real(*a, **k))
    big = _rle_rgb16_dicom(6000)  # 6000 x 6000 x 3 x 2 bytes = 206 MiB decoded
    response = post_json(client, {"instances": [{"b64": b64(big)}] * 4})
    assert response.status_code == 413, response.content
    assert response.json()["error"] == (
        "the 4 images of this request decode to 824.0 MiB, more than the 512.0 MiB one request "
        "may (--max_request_decoded_mb); send fewer images per request")
    page = client.post("/", {"image": [_upload(f"{i}.dcm", big) for i in range(4)]})
    assert page.status_code == 413 and "decode to 824.0 MiB" in page.content.decode()
    assert decoded == []  # refused from the headers: nothing was decoded
    # Per image: a 16-bit RGBA PNG header of 6000 x 6000 (275 MiB, under --max_pixels) gets its
    # own error; the rest of the batch is answered.
    answer = post_json(client, {"instances": [{"b64": b64(_png_header(6000, 6000, 16, 6))},
                                              {"b64": b64(IMAGES[1])}]})
    assert answer.status_code == 200, answer.content
    assert answer.json()["errors"][0] == (
        "decodes to 274.7 MiB, more than the 256.0 MiB one image may (width x height x "
        "channels x bytes per sample, from its header)")
    np.testing.assert_allclose(answer.json()["predictions"][1],
                               loaded.serving.predict([IMAGES[1]])[0], atol=1e-6)
