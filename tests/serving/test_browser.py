"""The real server (python -m xray_tfdata.serve, waitress, a child process on 127.0.0.1) over
HTTP, and the upload page in a real headless Chromium driven by selenium: real X-rays from
../shared/real_cxr_sample are uploaded and the class and probabilities are read off the page.

Chromium missing: skipped on a developer's machine, a FAILURE in CI (CI=true), where .ci/run
installs Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import select
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests import fixtures
from xray_tfdata import files

IN_CI = os.environ.get("CI", "").lower() == "true"
MAX_UPLOAD_MB = 2  # the real samples are < 400 kB; small enough to test both 413 paths quickly
REQUEST_TIMEOUT = 5  # seconds a client has to send a request: short, so slow sockets die quickly
ARTIFACT_DIR = fixtures.REPO_ROOT / "workspace" / "test_artifacts"
pytestmark = pytest.mark.slow  # child processes: the server, chromedriver and Chromium


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must install it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return fixtures.tiny_export(tmp_path_factory.mktemp("browser") / "export")


@pytest.fixture(scope="module")
def server(export_dir):
    from xray_tfdata.serving.web import launch

    launched = launch.start(str(export_dir), [f"--max_upload_mb={MAX_UPLOAD_MB}", "--threads=4",
                                              f"--request_timeout={REQUEST_TIMEOUT}"],
                            cwd=str(fixtures.REPO_ROOT),
                            env={"PYTHONPATH": str(fixtures.REPO_ROOT)})
    yield launched
    code = launched.stop()
    assert code == 0, launched.output()[-3000:]  # SIGTERM is a clean shutdown


@pytest.fixture(scope="module")
def serving(export_dir):
    from xray_tfdata.serving.export import load_serving

    return load_serving(export_dir)


def _http(url: str, body: bytes | None = None, method: str | None = None,
          headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _predict_json(url: str, data: bytes, timeout: float = 60) -> tuple[int, dict]:
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    return _http(f"{url}/v1/models/xray:predict", body,
                 headers={"Content-Type": "application/json"}, timeout=timeout)


def _real_files(sample_dir: Path) -> list[Path]:
    """One real X-ray per class (PNG and JPEG, different sizes and modes)."""
    return [sorted((sample_dir / name).glob("*.*"))[0]
            for name in ("NORMAL", "COVID19", "PNEUMONIA")]


# ------------------------------------------------------------------------------ HTTP


def test_real_server_routes_and_errors(server, serving, real_sample_dir):
    assert _http(f"{server.url}/healthz") == (200, {"status": "ok"})
    status, info = _http(f"{server.url}/v1/models/xray")
    assert status == 200 and info["classes"] == ["NORMAL", "COVID19", "PNEUMONIA"]
    data = _real_files(real_sample_dir)[2].read_bytes()
    status, answer = _predict_json(server.url, data)
    assert status == 200
    np.testing.assert_allclose(answer["predictions"], serving.predict([data]), atol=1e-6)
    status, answer = _predict_json(server.url, b"not an image\n")
    assert status == 400 and "not an image (looks like text)" in answer["error"]
    assert _http(f"{server.url}/healthz", b"x", method="PUT")[0] == 405
    assert _predict_json(server.url, data)[0] == 200  # still serving after each refusal


def test_real_server_413_json_near_the_limit_and_early_far_above(server):
    limit = MAX_UPLOAD_MB * 1048576
    status, answer = _predict_json(server.url, bytes(int(limit * 0.76)))  # base64: 4/3 > limit
    assert status == 413 and "request body too large" in answer["error"]
    # Far over the limit waitress answers from the Content-Length header, before any body byte.
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/models/xray:predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(50 * limit))
    conn.endheaders()
    response = conn.getresponse()
    # JSON like every other refusal (it was waitress's plain text), before any body byte.
    assert response.status == 413 and response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read()) == {
        "error": f"request body too large: {50 * limit:,} bytes, the limit is {limit:,} "
                 f"(--max_upload_mb={MAX_UPLOAD_MB})"}
    conn.close()
    assert _http(f"{server.url}/healthz")[0] == 200


def test_real_server_refuses_unknown_hosts(server):
    status, answer = _http(f"{server.url}/healthz", headers={"Host": "evil.example"})
    assert status == 400 and "--allowed_hosts" in answer["error"]
    assert "evil.example" not in server.output()  # logs carry no request content


def test_real_server_logs_status_and_sizes_only(server, real_sample_dir):
    path = _real_files(real_sample_dir)[0]
    _predict_json(server.url, path.read_bytes())
    log = server.output()
    assert "POST /v1/models/xray:predict 200 in=" in log
    assert path.name not in log and path.stem[:12] not in log
    # Plain access-log lines: "2026-12-04 16:00:39 POST /v1/... 200 in=...", no absl prefix.
    access = [line for line in log.splitlines() if " in=" in line and " out=" in line]
    assert access and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (GET|POST|PUT|HEAD) "
                                       r"/\S* \d{3} in=\d+B out=(\d+B|stream) [\d.]+ms", line)
                          for line in access), access[:3]
    assert "middleware.py" not in log


SLOW_SOCKETS = 150  # more than waitress's default 100-connection limit


def test_slow_clients_cannot_lock_others_out(server, real_sample_dir):
    """150 sockets trickling a request head at one byte a second (they held waitress's 100
    connection slots forever): /healthz and a prediction are still answered meanwhile, and the
    server cuts each slow socket once --request_timeout has passed. Bounded: 150 sockets, at
    most REQUEST_TIMEOUT + 15 seconds, all closed at the end."""
    host, port = server.url.removeprefix("http://").split(":")
    head = b"POST /v1/models/xray:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60
    sockets = []
    opened = time.monotonic()  # before the first byte: no deadline can pass earlier than this
    try:
        for _ in range(SLOW_SOCKETS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(head[:1])
            sockets.append(sock)
        closed_at: dict[int, float] = {}

        def trickle(position: int) -> None:  # one byte to every socket still open
            for i, sock in enumerate(sockets):
                if i in closed_at:
                    continue
                try:
                    sock.send(head[position % len(head):position % len(head) + 1])
                except OSError:
                    closed_at[i] = time.monotonic() - opened
            readable = select.select([s for i, s in enumerate(sockets) if i not in closed_at],
                                     [], [], 0)[0]
            for sock in readable:  # the server closed it (EOF or reset)
                try:
                    data = sock.recv(1024)
                except OSError:
                    data = b""
                if not data:
                    closed_at[sockets.index(sock)] = time.monotonic() - opened

        trickle(1)
        status, answer = _predict_json(server.url, _real_files(real_sample_dir)[0].read_bytes(),
                                       timeout=REQUEST_TIMEOUT - 1)
        assert status == 200 and len(answer["predictions"]) == 1
        assert _http(f"{server.url}/healthz", timeout=REQUEST_TIMEOUT - 1) == (200,
                                                                                {"status": "ok"})
        assert time.monotonic() - opened < REQUEST_TIMEOUT  # answered while all were held
        assert not closed_at  # none cut before its deadline
        position = 2
        while len(closed_at) < SLOW_SOCKETS and time.monotonic() - opened < REQUEST_TIMEOUT + 15:
            time.sleep(1.0)
            trickle(position)
            position += 1
        assert len(closed_at) == SLOW_SOCKETS, f"{len(closed_at)} of {SLOW_SOCKETS} cut"
        assert min(closed_at.values()) >= REQUEST_TIMEOUT - 0.5, sorted(closed_at.values())[:3]
    finally:
        for sock in sockets:
            sock.close()
    assert _http(f"{server.url}/healthz")[0] == 200


# ------------------------------------------------------------------------------ browser


def _chrome(user_data_dir: Path, javascript: bool = True):
    from xray_tfdata.serving.web import launch

    _require(Path(launch.CHROMIUM).is_file() and Path(launch.CHROMEDRIVER).is_file(),
             f"headless Chromium not installed ({launch.CHROMIUM}, {launch.CHROMEDRIVER}): "
             "apt-get install chromium chromium-driver")
    return launch.headless_chrome(user_data_dir, javascript=javascript)


@pytest.fixture()
def browser(tmp_path):
    driver = _chrome(tmp_path / "chrome-profile")
    yield driver
    driver.quit()


def _read_results(driver) -> list[dict]:
    from selenium.webdriver.common.by import By

    out = []
    for card in driver.find_elements(By.CSS_SELECTOR, "#results .result"):
        errors = card.find_elements(By.CSS_SELECTOR, ".error")
        if errors:
            out.append({"file": card.find_element(By.CSS_SELECTOR, ".file").text,
                        "error": errors[0].text})
            continue
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        out.append({
            "file": card.find_element(By.CSS_SELECTOR, ".file").text,
            "predicted": card.find_element(By.CSS_SELECTOR, ".predicted").text,
            "probs": {b.get_attribute("data-class"): float(b.get_attribute("data-p"))
                      for b in bars},
            "percent": [b.find_element(By.CSS_SELECTOR, ".pct").text for b in bars],
            "image": card.find_element(By.CSS_SELECTOR, "img.xray").get_attribute("src"),
        })
    return out


def _check(results: list[dict], paths: list[Path], serving) -> None:
    want = serving.predict([p.read_bytes() for p in paths])
    assert [r["file"] for r in results] == [p.name for p in paths]
    for result, row in zip(results, want):
        names = list(serving.class_names)
        got = [result["probs"][n] for n in names]
        np.testing.assert_allclose(got, row, atol=1e-6)
        assert result["predicted"] == names[int(np.argmax(row))]
        assert result["percent"] == [f"{100 * p:.1f}%" for p in row]


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    png = driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG")
    files.write_atomic(ARTIFACT_DIR / name, png)  # the artefact a developer or CI can open
    return files.write_atomic(tmp_path / name, png)


def test_page_in_chromium_uploads_several_real_xrays(server, serving, real_sample_dir, browser,
                                                     tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = _real_files(real_sample_dir)
    browser.get(server.url + "/")
    notice = browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert "Research use only, not for diagnosis." in notice
    assert browser.find_element(By.ID, "upload").get_attribute("data-enhanced") == "true"
    browser.find_element(By.ID, "image").send_keys("\n".join(str(p) for p in paths))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "3")
    results = _read_results(browser)
    _check(results, paths, serving)
    assert all(r["image"].startswith("blob:") for r in results)  # the image itself, shown
    # The images really rendered (naturalWidth is 0 for a broken image).
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.xray')).map(i => i.naturalWidth)")
    assert all(w > 100 for w in widths), widths
    shot = _screenshot(browser, tmp_path, "serve_page_js.png")
    assert shot.stat().st_size > 10_000


def test_picking_files_then_pressing_classify_sends_each_file_once(server, serving,
                                                                   real_sample_dir, browser):
    """The change handler classifies picked files; Classify must not send them again (it did:
    7 cards for 4 files, 8 requests)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = [*_real_files(real_sample_dir), sorted((real_sample_dir / "NORMAL").glob("*.*"))[1]]
    browser.get(server.url + "/")
    before = server.output().count("POST /v1/models/xray:predict ")
    browser.find_element(By.ID, "image").send_keys("\n".join(str(p) for p in paths))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "4")
    time.sleep(1.5)  # anything sent twice would have arrived by now (each answer takes ms)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 4
    assert server.output().count("POST /v1/models/xray:predict ") - before == 4
    _check(_read_results(browser), paths, serving)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # the same files again
    time.sleep(1.0)
    assert server.output().count("POST /v1/models/xray:predict ") - before == 4


def test_drag_and_drop_and_a_bad_file(server, serving, real_sample_dir, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    good = _real_files(real_sample_dir)[1]
    bad = tmp_path / "notes.png"
    bad.write_text("not an x-ray\n")
    browser.get(server.url + "/")
    # A detached file input (no listener) holds the files; a real DragEvent carries them.
    browser.execute_script("const i = document.createElement('input'); i.type = 'file';"
                           "i.multiple = true; i.id = 'dnd'; document.body.append(i);")
    browser.find_element(By.ID, "dnd").send_keys(f"{good}\n{bad}")
    browser.execute_script(
        "const dt = new DataTransfer(); for (const f of document.getElementById('dnd').files)"
        " dt.items.add(f); document.getElementById('drop').dispatchEvent("
        "new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "2")
    results = _read_results(browser)
    assert results[1] == {"file": "notes.png",
                          "error": "Cannot read this file: not an image (looks like text)"}
    _check(results[:1], [good], serving)


def test_page_without_javascript_posts_the_form(server, serving, real_sample_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chrome(tmp_path / "chrome-nojs", javascript=False)
    try:
        path = _real_files(real_sample_dir)[0]
        driver.get(server.url + "/")
        assert driver.find_element(By.ID, "upload").get_attribute("data-enhanced") is None
        driver.find_element(By.ID, "image").send_keys(str(path))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # CSRF token included
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".predicted"))
        results = _read_results(driver)
        _check(results, [path], serving)
        assert results[0]["image"].startswith("data:image/")
        _screenshot(driver, tmp_path, "serve_page_nojs.png")
    finally:
        driver.quit()


def test_grad_cam_overlay_in_chromium_for_a_keras_file(real_sample_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from xray_tfdata.models import build_model
    from xray_tfdata.serving.web import launch

    build_model("seed_cnn", 32, 1, seed=0).save(tmp_path / "best.keras")
    driver = _chrome(tmp_path / "chrome-cam")
    server = launch.start(str(tmp_path / "best.keras"), cwd=str(fixtures.REPO_ROOT),
                          env={"PYTHONPATH": str(fixtures.REPO_ROOT)})
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "image").send_keys(str(_real_files(real_sample_dir)[2]))
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "1")
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('img.overlay')).map(i => i.naturalWidth)")
        assert widths == [32]  # the overlay at the model's input size, rendered
        assert driver.find_element(By.CSS_SELECTOR, ".predicted").text in (
            "NORMAL", "COVID19", "PNEUMONIA")
    finally:
        driver.quit()
        assert server.stop() == 0
