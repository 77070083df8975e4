"""Small middlewares: the access log, the Host check, security headers, the body limit (413),
and 405 for a wrong method before the CSRF check could turn it into a 403.

The access log carries the method, the route, the status, the request and response sizes and
the time taken: never a query string, a header, a file name or any uploaded byte.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

# Its own logger: server.plain_access_log gives it a plain "time message" stderr handler
# instead of absl's "I1204 16:00:39.544398 1234 middleware.py:46]" prefix.
access_log = logging.getLogger("xray_tfdata.serve.access")

# No inline script or style anywhere, so the policy can forbid them; images come from the page
# itself (the no-JS result embeds the upload as a data: URL, the JS one as a blob: URL).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; "
                           "base-uri 'none'; frame-ancestors 'none'")

Handler = Callable[[HttpRequest], HttpResponse]


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class AccessLog:
    """One INFO line per request: method, path, status, bytes in/out, milliseconds."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed_ms = (time.perf_counter() - start) * 1000
        size = "stream" if response.streaming else f"{len(response.content)}B"
        access_log.info("%s %s %d in=%dB out=%s %.1fms", request.method, request.path,
                        response.status_code, _content_length(request), size, elapsed_ms)
        return response


class HostCheck:
    """Validates the Host header against ALLOWED_HOSTS on every request: Django checks it only
    when something calls get_host() (CSRF on a POST), so a GET would be answered for any host."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.get_host()  # raises DisallowedHost, which Django answers with 400
        return self.get_response(request)


class SecurityHeaders:
    """Content-Security-Policy and no caching of answers about patients' images."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


class BodyLimit:
    """413 with a JSON reason when Content-Length exceeds --max_upload_mb, before any byte of
    the body is read (Django alone would answer 400 for RequestDataTooBig)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.XRAY_MAX_UPLOAD_BYTES
        length = _content_length(request)
        if length > limit:
            return JsonResponse(
                {"error": f"request body too large: {length:,} bytes, the limit is {limit:,} "
                          f"(--max_upload_mb={limit / 1048576:g})"}, status=413)
        return self.get_response(request)


def method_not_allowed(request: HttpRequest, methods: tuple[str, ...]) -> JsonResponse:
    response = JsonResponse({"error": f"method {request.method} not allowed on {request.path}; "
                                      f"use {' or '.join(methods)}"}, status=405)
    response["Allow"] = ", ".join(methods)
    return response


class AllowedMethods:
    """405 (JSON, with Allow) when the view declares `allowed_methods` (views.allow) and the
    request's method is not one of them; runs before CsrfViewMiddleware's process_view."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable, view_args: tuple,
                     view_kwargs: dict) -> HttpResponse | None:
        methods = getattr(view_func, "allowed_methods", None)
        if methods and request.method not in methods:
            return method_not_allowed(request, methods)
        return None
