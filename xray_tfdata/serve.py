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
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from xray_tfdata import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this entry point's flags (only when run as a program)."""
    flags.DEFINE_string("model_path", "workspace/model/export",
                        "The SavedModel export directory written by train (<model_dir>/export), "
                        "or a Keras file (<model_dir>/best.keras), exported in memory at start.")
    flags.DEFINE_string("host", "127.0.0.1",
                        "Address to listen on: 127.0.0.1 = this machine only, 0.0.0.0 = every "
                        "interface (then set --allowed_hosts).")
    flags.DEFINE_integer("port", 8000, "TCP port; 0 = any free port (printed at start-up).")
    flags.DEFINE_integer("threads", 4, "Request worker threads sharing the one loaded model.")
    flags.DEFINE_float("max_upload_mb", 20.0,
                       "Largest request body in MiB (base64 JSON is 4/3 of the image); larger "
                       "requests get 413.")
    flags.DEFINE_list("allowed_hosts", [],
                      "Host names the server answers to (Django's ALLOWED_HOSTS), comma-"
                      "separated; empty = localhost, 127.0.0.1, [::1] and --host.")
    from xray_tfdata.serving.web import settings  # noqa: PLC0415 - no TF import

    flags.DEFINE_integer("max_pixels", settings.WEB_MAX_PIXELS,
                         "Largest image, width x height read from its header before decoding "
                         "(stricter than the converter's 200 M: uploads come from a network); "
                         "larger ones are refused as decompression bombs.")
    flags.DEFINE_float("max_image_decoded_mb", settings.WEB_MAX_IMAGE_DECODED_MB,
                       "Largest decoded image in MiB (width x height x channels x bytes per "
                       "sample, x frames for a DICOM), read from its header before decoding; "
                       "a larger one gets its own error, the rest of the batch is answered.")
    flags.DEFINE_float("max_request_decoded_mb", settings.WEB_MAX_REQUEST_DECODED_MB,
                       "Largest sum of the decoded sizes of one request's images (MiB, from the "
                       "headers, before decoding); a request over it gets 413.")
    flags.DEFINE_integer("max_connections", settings.MAX_CONNECTIONS,
                         "Open connections at once (at most 900); more wait in the listen "
                         "backlog until one closes.")
    flags.DEFINE_float("request_timeout", settings.REQUEST_TIMEOUT,
                       "Seconds a client has to send a whole request (head and body); a slower "
                       "one is disconnected, so trickling clients cannot hold every connection.")
    flags.DEFINE_bool("access_log", True,
                      "One stderr line per request: method, route, status, bytes in/out, ms "
                      "(never a file name, header or image byte).")
    flags.DEFINE_enum("resize_mode", "", ["", "stretch", "pad"],
                      "For a .keras --model_path only: the converter's --resize_mode; empty = "
                      "the sibling export/'s, else stretch.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; serve takes flags only.")
    from xray_tfdata.serving.web.settings import WebSettings  # noqa: PLC0415

    cfg = cli.settings_from_flags(WebSettings, allowed_hosts=tuple(FLAGS.allowed_hosts))
    if not Path(cfg.model_path).exists():
        raise app.UsageError(
            f"--model_path={cfg.model_path} does not exist; pass the export directory or the "
            "best.keras written by train (python -m xray_tfdata.train --model_dir=...).")
    path = Path(cfg.model_path)
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
