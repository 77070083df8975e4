"""`python -m xray_tfdata.serve`: its flags, one-line usage errors before any TensorFlow work,
and a clean error for a port that is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests import fixtures

ENV = {**os.environ, "PYTHONPATH": str(fixtures.REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _serve(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xray_tfdata.serve", *argv], env=ENV,
                          cwd=fixtures.REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_helpfull_lists_the_flags():
    proc = _serve("--helpfull")
    for flag in ("--model_path", "--host", "--port", "--threads", "--max_upload_mb",
                 "--allowed_hosts", "--max_pixels", "--resize_mode", "--max_connections",
                 "--request_timeout", "--max_image_decoded_mb", "--max_request_decoded_mb"):
        assert flag in proc.stdout, flag
    assert "best.keras" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--model_path=/nonexistent/export"], "--model_path=/nonexistent/export does not exist"),
    (["--threads=0"], "--threads must be an integer >= 1. Received: --threads=0."),
    (["--port=70000"], "--port must be an integer in [0, 65535] (0 = any free port). "
                       "Received: --port=70000."),
    (["--max_upload_mb=0"], "--max_upload_mb must be a number of megabytes in (0, 1024]"),
    (["extra_arg"], "Unexpected arguments ['extra_arg']"),
    (["--max_connections=5000"], "--max_connections must be an integer in [1, 900]"),
    (["--request_timeout=0"], "--request_timeout must be seconds in [1, 3600]"),
    (["--max_image_decoded_mb=600"],
     "--max_request_decoded_mb must be megabytes in [--max_image_decoded_mb=600, 65536]"),
])
def test_bad_flags_are_one_line_usage_errors(argv, message, tmp_path):
    proc = _serve(f"--model_path={tmp_path}", *argv, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "See --helpfull" in proc.stderr


def test_a_directory_without_a_saved_model_is_refused(tmp_path):
    proc = _serve(f"--model_path={tmp_path}")
    assert proc.returncode == 1 and "no saved_model.pb" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_taken_port_is_a_usage_error(tmp_path):
    export_dir = tmp_path / "export"  # the port is bound before the model is read
    export_dir.mkdir()
    (export_dir / "saved_model.pb").write_bytes(b"never read")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(f"--model_path={export_dir}", f"--port={port}")
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
