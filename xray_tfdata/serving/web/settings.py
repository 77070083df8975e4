"""The web app's settings: one frozen dataclass, and the Django settings built from it in code.

There is no settings.py module for DJANGO_SETTINGS_MODULE: `configure(WebSettings(...))` calls
`django.conf.settings.configure` once per process. Choices that matter for a medical-image upload
service, and why:
- DEBUG off (no tracebacks or settings in error pages), a random SECRET_KEY per process (it only
  signs the CSRF cookie; there are no sessions or accounts to keep across restarts).
- Uploads stay in memory: only MemoryFileUploadHandler, and both upload limits at max_upload_mb,
  so Django never spools a file to a temporary file (the server's buffers are sized to match in
  server.py). Bodies over the limit get a 413 before they are read (middleware.BodyLimit).
- SecurityMiddleware (nosniff, Referrer-Policy, Cross-Origin-Opener-Policy) and X-Frame-Options
  DENY; a Content-Security-Policy with no inline script (middleware.SecurityHeaders).
- No database, no sessions, no auth, no admin: the app keeps no state but the loaded model.
- Limits against what a network can send (README, "What bad input gets"): connections, the time
  to send a request (guard.py), images per request, decoded bytes per image and per request
  (intake.py, from the headers before decoding).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Any

from xray_tfdata import errors, paths
from xray_tfdata.records import image_format
from xray_tfdata.records.resize import RESIZE_MODES  # the converter's, mirrored by the export
from xray_tfdata.settings import setting

WEB_DIR = Path(__file__).resolve().parent
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Uploads come from a network: a stricter pixel ceiling than the converter's 200 M for a trusted
# folder. The largest digital chest X-rays are about 4300 x 3500 (15 Mpixel), while a 50 kB PNG
# can claim 50000 x 50000, which a decoder would try to allocate (gigabytes) before failing.
WEB_MAX_PIXELS = 40_000_000
MAX_INSTANCES = 64  # images per request: bounds one request's decode memory
# Files Django parses out of one multipart body before refusing it: above MAX_INSTANCES so the
# refusal can say how many were sent, bounded so a body of tiny parts cannot cost a long parse.
MAX_MULTIPART_FILES = 1000
# Decoded bytes (width x height x channels x bytes per sample, x frames for a DICOM), read from
# the headers before any decoding. One 4300 x 3500 16-bit grey DICOM is 30 MB, a 6000 x 6000
# 16-bit RGB one 216 MB; 64 images of 8 MB fit one request. Derived from the converter's one
# per-image cap (records/image_format.py) so the two cannot drift apart: a request may decode
# what the converter allows one image, one uploaded image half of that (a server holds several).
WEB_MAX_REQUEST_DECODED_MB = image_format.DEFAULT_MAX_DECODED_BYTES / (1 << 20)  # 512
WEB_MAX_IMAGE_DECODED_MB = WEB_MAX_REQUEST_DECODED_MB / 2  # 256
# Slow clients (issue 16, item 9): waitress's own limit is 100 connections, held for as long as
# a client sends a byte a minute; here a request must arrive whole within REQUEST_TIMEOUT.
MAX_CONNECTIONS = 500
REQUEST_TIMEOUT = 60.0  # seconds; a 20 MiB upload needs ~3 Mbit/s


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """Everything `serve` needs; validated on construction (ConfigError names the field)."""

    model_path: str = setting(
        help="The SavedModel export directory written by train (<model_dir>/export), or a Keras "
             "file (<model_dir>/best.keras), exported in memory at start.",
        flag_default="workspace/model/export")
    host: str = setting("127.0.0.1", "Address to listen on: 127.0.0.1 = this machine only, "
                        "0.0.0.0 = every interface (then set --allowed_hosts).")
    port: int = setting(8000, "TCP port; 0 = any free port (printed at start-up).")
    threads: int = setting(4, "Request worker threads sharing the one loaded model.")
    max_upload_mb: float = setting(
        20.0, "Largest request body in MiB (base64 JSON is 4/3 of the image); larger requests "
        "get 413.")
    # () = DEFAULT_ALLOWED_HOSTS plus `host`
    allowed_hosts: tuple[str, ...] = setting(
        (), "Host names the server answers to (Django's ALLOWED_HOSTS), comma-separated; empty "
        "= localhost, 127.0.0.1, [::1] and --host.")
    max_pixels: int = setting(
        WEB_MAX_PIXELS, "Largest image, width x height read from its header before decoding "
        "(stricter than the converter's 200 M: uploads come from a network); larger ones are "
        "refused as decompression bombs.")
    resize_mode: str = setting(
        "", "For a .keras --model_path only: the converter's --resize_mode; empty = the sibling "
        "export/'s, else stretch.", allowed=("", *RESIZE_MODES))
    access_log: bool = setting(True, "One stderr line per request: method, route, status, bytes "
                               "in/out, ms (never a file name, header or image byte).")
    max_connections: int = setting(
        MAX_CONNECTIONS, "Open connections at once (at most 900); more wait in the listen "
        "backlog until one closes.")
    request_timeout: float = setting(
        REQUEST_TIMEOUT, "Seconds a client has to send a whole request (head and body); a "
        "slower one is disconnected, so trickling clients cannot hold every connection.")
    max_image_decoded_mb: float = setting(
        WEB_MAX_IMAGE_DECODED_MB, "Largest decoded image in MiB (width x height x channels x "
        "bytes per sample, x frames for a DICOM), read from its header before decoding; a "
        "larger one gets its own error, the rest of the batch is answered.")
    max_request_decoded_mb: float = setting(
        WEB_MAX_REQUEST_DECODED_MB, "Largest sum of the decoded sizes of one request's images "
        "(MiB, from the headers, before decoding); a request over it gets 413.")

    def __post_init__(self) -> None:
        paths.check("model_path", self.model_path)  # a gs:// export is read through gfile
        if not str(self.model_path):
            raise errors.ConfigError(
                "model_path", self.model_path, "a SavedModel export directory or a .keras file",
                "Pass e.g. workspace/model/export (written by train) or "
                "workspace/model/best.keras.")
        if not self.host:
            raise errors.ConfigError(
                "host", self.host, "an address to listen on",
                "Use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).")
        errors.non_negative_int("port", self.port)
        if self.port > 65535:
            raise errors.ConfigError("port", self.port,
                                     "an integer in [0, 65535] (0 = any free port)")
        errors.positive_int("threads", self.threads)
        errors.in_range("max_upload_mb", self.max_upload_mb, 0.001, 1024.0,
                        allowed="a number of megabytes in (0, 1024]")
        errors.positive_int("max_pixels", self.max_pixels)
        errors.in_range("max_connections", self.max_connections, 1, 900,
                        allowed="an integer in [1, 900] (file descriptors are ~1024 a process)")
        errors.in_range("request_timeout", self.request_timeout, 1.0, 3600.0,
                        allowed="seconds in [1, 3600]")
        errors.in_range("max_image_decoded_mb", self.max_image_decoded_mb, 1.0, 65536.0,
                        allowed="megabytes in [1, 65536]")
        per_image = self.max_image_decoded_mb
        errors.in_range("max_request_decoded_mb", self.max_request_decoded_mb, per_image, 65536.0,
                        allowed=f"megabytes in [--max_image_decoded_mb={per_image:g}, 65536]")
        if self.resize_mode:
            errors.one_of("resize_mode", self.resize_mode, RESIZE_MODES,
                          "Pass the converter's --resize_mode, or '' to take the export's.")
        if isinstance(self.allowed_hosts, str):
            object.__setattr__(self, "allowed_hosts", split_hosts(self.allowed_hosts))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def hosts(self) -> list[str]:
        """ALLOWED_HOSTS: the flag's list, or localhost names plus the listening address."""
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        extra = [] if self.host in ("0.0.0.0", "::", "") else [self.host]
        return list(dict.fromkeys([*DEFAULT_ALLOWED_HOSTS, *extra]))


def split_hosts(text: str) -> tuple[str, ...]:
    """'a.example, b.example' -> ('a.example', 'b.example')."""
    return tuple(h.strip() for h in text.split(",") if h.strip())


def django_settings(cfg: WebSettings) -> dict[str, Any]:
    """The keyword arguments for `django.conf.settings.configure`."""
    limit = cfg.max_upload_bytes
    return {
        "DEBUG": False,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": cfg.hosts(),
        "ROOT_URLCONF": "xray_tfdata.serving.web.urls",
        "INSTALLED_APPS": [],
        "DATABASES": {},
        "MIDDLEWARE": [
            "xray_tfdata.serving.web.middleware.AccessLog",
            "xray_tfdata.serving.web.middleware.HostCheck",
            "django.middleware.security.SecurityMiddleware",
            "xray_tfdata.serving.web.middleware.SecurityHeaders",
            "xray_tfdata.serving.web.middleware.BodyLimit",
            "xray_tfdata.serving.web.middleware.AllowedMethods",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        "TEMPLATES": [{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [str(WEB_DIR / "templates")],
            "APP_DIRS": False,
            "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
        }],
        # Uploads never touch the disk: memory handler only, limits at the body limit.
        "FILE_UPLOAD_HANDLERS": ["django.core.files.uploadhandler.MemoryFileUploadHandler"],
        "FILE_UPLOAD_MAX_MEMORY_SIZE": limit,
        "DATA_UPLOAD_MAX_MEMORY_SIZE": limit,
        "DATA_UPLOAD_MAX_NUMBER_FILES": MAX_MULTIPART_FILES,
        "XRAY_MAX_UPLOAD_BYTES": limit,
        "XRAY_MAX_PIXELS": cfg.max_pixels,
        "XRAY_MAX_IMAGE_DECODED_BYTES": int(cfg.max_image_decoded_mb * 1048576),
        "XRAY_MAX_REQUEST_DECODED_BYTES": int(cfg.max_request_decoded_mb * 1048576),
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "SECURE_REFERRER_POLICY": "same-origin",
        "SECURE_CROSS_ORIGIN_OPENER_POLICY": "same-origin",
        "X_FRAME_OPTIONS": "DENY",
        "CSRF_COOKIE_HTTPONLY": True,
        "CSRF_COOKIE_SAMESITE": "Strict",
        "USE_TZ": True,
        "USE_I18N": False,
        "LOGGING_CONFIG": None,  # keep absl's logging; Django's default would add handlers
        "DEFAULT_CHARSET": "utf-8",
    }


def configure(cfg: WebSettings) -> None:
    """Configures Django for this process (once; a second call with other settings fails)."""
    import django  # noqa: PLC0415 - the [web] extra is imported only when serving
    from django.conf import settings  # noqa: PLC0415

    if settings.configured:
        raise RuntimeError("Django is already configured in this process; start one server "
                           "per process (settings.configure can run only once).")
    settings.configure(**django_settings(cfg))
    django.setup()
    # Django logs every 4xx as a warning naming the path, and a refused Host with the header's
    # value: the access log already has the status, and logs carry no request content.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    logging.getLogger("django.security").setLevel(logging.CRITICAL)
