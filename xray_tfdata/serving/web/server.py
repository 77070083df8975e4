"""Start-up: configure Django, load the model once, warm it up, serve with waitress.

waitress (pure Python, on PyPI, production-grade, a fixed pool of worker threads) runs the WSGI
app; Django's runserver is for development only. Its buffers are sized so that a request body up
to the limit, and the no-JS result page that embeds the upload, stay in memory (waitress would
otherwise spool bodies over 512 kB and answers over 1 MB to temporary files).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from xray_tfdata import console
from xray_tfdata.serving.web import guard
from xray_tfdata.serving.web.settings import WebSettings, configure

# Bodies a little over the limit still reach Django and get its JSON 413; beyond this margin
# waitress refuses them from the Content-Length header alone, without reading the body (a JSON
# 413 too: guard.JsonErrorTask).
_BODY_MARGIN = 1 << 20


def warm_up(loaded: Any) -> float:
    """One prediction on a tiny grey PNG, so the first request does not pay for the runtime's
    first call (and a model that cannot predict fails at start-up); returns the seconds taken."""
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    png = cv2.imencode(".png", np.full((8, 8), 128, np.uint8))[1].tobytes()
    start = time.perf_counter()
    probs = loaded.serving.predict([png])
    if probs.shape != (1, len(loaded.class_names)):
        raise ValueError(f"The model answered shape {probs.shape} for one image; expected "
                         f"(1, {len(loaded.class_names)}), one probability per class.")
    return time.perf_counter() - start


def waitress_options(cfg: WebSettings) -> dict[str, Any]:
    """The keyword arguments for waitress.create_server (pure; tested)."""
    body_max = cfg.max_upload_bytes + _BODY_MARGIN
    return {
        "host": cfg.host, "port": cfg.port, "threads": cfg.threads,
        "max_request_body_size": body_max,
        "inbuf_overflow": body_max + 1,  # never spool a request body to disk
        "outbuf_overflow": 2 * body_max,  # the no-JS page embeds the upload (base64, 4/3)
        "ident": "xray_tfdata",
        "expose_tracebacks": False,
        "channel_timeout": 60,  # idle seconds; a slow sender is cut by cfg.request_timeout
        "connection_limit": cfg.max_connections,
        "cleanup_interval": guard.CLEANUP_SECONDS,  # how often the request deadline is checked
        "asyncore_use_poll": True,  # select() stops at 1024 file descriptors
    }


def plain_access_log(enabled: bool) -> None:
    """The access log is the server's one routine output: on by default even when the command's
    other logs are quiet (cli.run), off with --noaccess_log; plain lines on stderr,
    "2026-12-04 16:00:39 GET /healthz 200 in=0B out=15B 1.2ms" (UTC), without absl's prefix."""
    import sys  # noqa: PLC0415

    access = logging.getLogger("xray_tfdata.serve.access")
    access.setLevel(logging.INFO if enabled else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    access.handlers = [handler]
    access.propagate = False  # not again through absl's handler on the root logger


def create(cfg: WebSettings):
    """Configures Django, binds the socket, loads and installs the model; returns the waitress
    server (not yet running). Raises OSError for a taken port (in about a second: before the
    model's TensorFlow import), ValueError/FileNotFoundError for a model path that does not load."""
    import waitress  # noqa: PLC0415
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415

    configure(cfg)
    plain_access_log(cfg.access_log)
    server = guard.guard(waitress.create_server(get_wsgi_application(), **waitress_options(cfg)),
                         cfg.request_timeout, cfg.max_upload_bytes)
    try:
        from xray_tfdata.serving.web import model as model_lib  # noqa: PLC0415 - imports TF

        start = time.perf_counter()
        loaded = model_lib.load(cfg.model_path, cfg.resize_mode)
        warm = warm_up(loaded)
        console.say(f"Loaded {cfg.model_path} ({loaded.kind}, sha256 {loaded.sha256[:12]}) in "
                    f"{time.perf_counter() - start:.1f} s; first prediction {1000 * warm:.0f} ms")
        model_lib.install(loaded)
    except BaseException:
        server.close()
        raise
    return server


def listening(server: Any) -> list[tuple[str, int]]:
    """(host, port) of every socket a waitress server listens on (the real port for port 0)."""
    if hasattr(server, "effective_port"):
        return [(server.effective_host, server.effective_port)]
    return [(host, port) for host, port in server.effective_listen]  # MultiSocketServer


def serve(cfg: WebSettings) -> None:
    """Serves until SIGINT/SIGTERM. Prints "Serving on http://HOST:PORT/" once listening (the
    real port when cfg.port is 0)."""
    server = create(cfg)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    for host, port in listening(server):
        console.say(f"Serving on http://{host}:{port}/ with {cfg.threads} threads "
                    "(research use only, not for diagnosis); Ctrl-C stops.")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        from xray_tfdata.serving.web import model as model_lib  # noqa: PLC0415

        server.close()
        model_lib.install(None)
