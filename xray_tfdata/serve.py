r"""Serves one trained classifier as a web app (upload page + TensorFlow Serving's REST API).

  pip install -e '.[web]'
  python -m xray_tfdata.serve --model_path=workspace/model/export [--host=127.0.0.1]
      [--port=8000] [--threads=4] [--max_upload_mb=20] [--allowed_hosts=xray.example.org]
      [--max_connections=500] [--request_timeout=60] [--max_request_decoded_mb=512]

Inputs: JPEG, PNG, BMP (and DICOM with the [dicom] extra), decoded like the converter.
Routes: GET / (upload page), POST /v1/models/xray:predict ({"instances": [{"b64": ...}]} or a
multipart upload), GET /v1/models/xray (name, classes, input size, sha256), GET
/v1/models/xray/metadata (the signature, as TF Serving), GET /healthz.
Django run by waitress; uploads stay in memory and are never logged. Research use only.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from xray_tfdata import cli, paths  # noqa: E402


def define_flags() -> None:
    """Defines this entry point's flags (only when run as a program)."""
    from xray_tfdata.serving.web.settings import WebSettings  # noqa: PLC0415 - no TF import

    cli.define_flags(WebSettings)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; serve takes flags only.")
    from xray_tfdata.serving.web.settings import WebSettings  # noqa: PLC0415

    cfg = cli.settings_from_flags(WebSettings)
    path = paths.location(cfg.model_path)  # a gs:// export or best.keras is read through gfile
    if not path.exists():
        raise app.UsageError(
            f"--model_path={cfg.model_path} does not exist; pass the export directory or the "
            "best.keras written by train (python -m xray_tfdata.train --model_dir=...).")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        raise app.UsageError(
            f"--model_path={cfg.model_path} is not a SavedModel directory (no saved_model.pb); "
            "pass the export written by train, e.g. workspace/model/export, or a best.keras.")
    try:
        import django  # noqa: F401, PLC0415 - only whether the extra is installed
        import waitress  # noqa: F401, PLC0415
    except ImportError as err:
        raise app.UsageError(f"The web extra is not installed ({err.name} missing); run: "
                             "pip install -e '.[web]'") from err
    from xray_tfdata.serving.web import server  # noqa: PLC0415 - TF import after flag checks

    try:
        server.serve(cfg)
    except (ValueError, FileNotFoundError) as err:  # a model path that does not load
        raise app.UsageError(str(err)) from err
    except OSError as err:  # e.g. the port is taken
        raise app.UsageError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err}); "
                             "pick another --port or stop the other server.") from err


if __name__ == "__main__":
    define_flags()
    cli.run(main)
