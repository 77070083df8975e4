"""The routes: the upload page, TF Serving's predict and model-status REST calls, /healthz.

Every refusal is a JSON `{"error": "..."}` naming the problem (the page shows the same message),
with 400 for bad input, 405 for a wrong method, 413 for a too-large body (middleware) or a
request over its decoded-byte budget (intake), 503 while no model is loaded. In a batch, an
image that cannot be read gets its own reason in "errors" and the rest are answered (intake).
The model and Django's settings are the only shared state.
"""

from __future__ import annotations

import base64
import functools
import logging
from pathlib import Path
from typing import Any, Callable

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from xray_tfdata.serving import predict
from xray_tfdata.serving.web import intake, middleware, payloads
from xray_tfdata.serving.web import model as model_lib
from xray_tfdata.serving.web.settings import MAX_INSTANCES, WEB_DIR

log = logging.getLogger("xray_tfdata.serve")

STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
NOTICE = "Research use only, not for diagnosis."
_BROWSER_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}


def error(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def allow(*methods: str) -> Callable:
    """Like require_http_methods, but the 405 carries a JSON reason (and the Allow header).
    The check runs in middleware.AllowedMethods, before CSRF, and again here for direct calls."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return middleware.method_not_allowed(request, methods)
            return view(request, *args, **kwargs)
        wrapped.allowed_methods = methods
        return wrapped
    return decorate


def _loaded() -> model_lib.LoadedModel | None:
    return model_lib.current()


def _predict(loaded: model_lib.LoadedModel,
             images: list[bytes]) -> tuple[list[dict], list[bytes | None]]:
    """Per image: a result ("probabilities" or "error") and the model input (None if refused).
    Raises payloads.BadRequest (413) over the request's decoded-byte budget."""
    return intake.predict_all(loaded.serving, images, max_pixels=settings.XRAY_MAX_PIXELS,
                              max_image_bytes=settings.XRAY_MAX_IMAGE_DECODED_BYTES,
                              max_request_bytes=settings.XRAY_MAX_REQUEST_DECODED_BYTES)


def _files(request: HttpRequest):
    """request.FILES, with a malformed multipart body as a BadRequest naming the problem."""
    from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent  # noqa: PLC0415
    from django.http.multipartparser import MultiPartParserError  # noqa: PLC0415

    try:
        return request.FILES
    except TooManyFilesSent as err:
        raise payloads.BadRequest(
            f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files in one request; at "
            f"most {MAX_INSTANCES} are allowed (split the batch)") from err
    except TooManyFieldsSent as err:
        raise payloads.BadRequest(
            f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} form fields in one request; "
            f"send at most {MAX_INSTANCES} files and no other fields") from err
    except MultiPartParserError as err:
        raise payloads.BadRequest(f"malformed multipart/form-data ({err})") from err


@allow("GET", "HEAD")
def healthz(request: HttpRequest) -> JsonResponse:
    if _loaded() is None:
        return JsonResponse({"status": "loading"}, status=503)
    return JsonResponse({"status": "ok"})


@allow("GET", "HEAD")
def model_status(request: HttpRequest) -> JsonResponse:
    loaded = _loaded()
    if loaded is None:
        return error("no model loaded yet", 503)
    return JsonResponse(loaded.describe())


@allow("GET", "HEAD")
def model_metadata(request: HttpRequest) -> JsonResponse:
    loaded = _loaded()
    if loaded is None:
        return error("no model loaded yet", 503)
    return JsonResponse(model_lib.signature_metadata(loaded))


def _images_and_labels(request: HttpRequest) -> tuple[list[bytes], list[str]]:
    """The request's images (JSON instances or multipart files) and how to name each in an
    error; raises payloads.BadRequest."""
    if request.content_type == "multipart/form-data":
        uploads = [f for name in _files(request) for f in request.FILES.getlist(name)]
        images = payloads.images_from_files(uploads, MAX_INSTANCES)
        labels = ([f"file {i} ({len(data):,} bytes)" for i, data in enumerate(images)]
                  if len(images) > 1 else [""])  # one file: the reason alone
        return images, labels
    images = payloads.images_from_json(request.body, MAX_INSTANCES)
    return images, [f"instances[{i}]" for i in range(len(images))]


def _answer(loaded: model_lib.LoadedModel, request: HttpRequest,
            explain: bool = False) -> JsonResponse:
    """200 with a prediction per image; an image that cannot be read gets null there and its
    reason in "errors" (same order), the rest answered. 400 when no image could be read."""
    try:
        images, labels = _images_and_labels(request)
        results, inputs = _predict(loaded, images)
    except payloads.BadRequest as err:
        return error(err.message, err.status)
    names = list(loaded.class_names)
    reasons = [r.get("error") for r in results]
    answer: dict[str, Any] = {
        "predictions": [None if "error" in r else [r["probabilities"][n] for n in names]
                        for r in results],
        "classes": names}
    if any(reasons):
        answer["errors"] = reasons
    if all(reasons):
        return JsonResponse({"error": payloads.first_error(results, labels), **answer},
                            status=400)
    if explain:
        good = [data for data in inputs if data is not None]
        overlays = iter(loaded.explainer.overlays(good))
        answer["overlays"] = [None if data is None else
                              base64.b64encode(next(overlays)).decode("ascii")
                              for data in inputs]
        answer["layer"] = loaded.explainer.layer
    return JsonResponse(answer)


@csrf_exempt  # a cookie-less JSON API for TF Serving clients; it changes nothing on the server
@allow("POST")
def model_predict(request: HttpRequest) -> JsonResponse:
    loaded = _loaded()
    if loaded is None:
        return error("no model loaded yet", 503)
    return _answer(loaded, request)


@csrf_exempt  # the same inputs as predict; answers carry Grad-CAM overlays (PNG, base64) too
@allow("POST")
def model_explain(request: HttpRequest) -> JsonResponse:
    loaded = _loaded()
    if loaded is None:
        return error("no model loaded yet", 503)
    if loaded.explainer is None:
        return error("Grad-CAM needs the Keras model with a convolution block: serve "
                     "--model_path=<model_dir>/best.keras (an export has no layers to explain)",
                     404)
    return _answer(loaded, request, explain=True)


def _page(request: HttpRequest, status: int = 200, **context: Any) -> HttpResponse:
    loaded = _loaded()
    context.update(notice=NOTICE, classes=list(loaded.class_names) if loaded else [],
                   explain=bool(loaded and loaded.explainer),
                   probabilities=loaded.probabilities if loaded else "",
                   max_upload_mb=settings.XRAY_MAX_UPLOAD_BYTES / 1048576)
    return render(request, "xray/index.html", context, status=status)


def _result_context(name: str, data: bytes, result: dict) -> dict[str, Any]:
    """What the template shows for one upload: the class, the bars, the image as a data: URL."""
    if "error" in result:
        return {"name": name, "error": f"Cannot read this file: {result['error']}."}
    bars = [{"name": n, "p": p, "percent": f"{100 * p:.1f}"}
            for n, p in result["probabilities"].items()]
    kind = predict.encoded_format(data)  # None for DICOM: browsers cannot show it
    image_url = (f"data:{_BROWSER_IMAGE_TYPES[kind]};base64,"
                 + base64.b64encode(data).decode("ascii")) if kind else ""
    return {"name": name, "predicted": result["predicted"], "bars": bars, "image_url": image_url}


@allow("GET", "HEAD", "POST")
def index(request: HttpRequest) -> HttpResponse:
    """GET: the upload page. POST (the form, works without JavaScript): a result per file."""
    if request.method != "POST":
        return _page(request)
    loaded = _loaded()
    if loaded is None:
        return _page(request, 503, error="The model is still loading; try again in a moment.")
    try:
        uploads = _files(request).getlist("image")
    except payloads.BadRequest as err:
        return _page(request, 400, error=err.message)
    if not uploads:
        return _page(request, 400, error="No file uploaded: choose a chest X-ray image first.")
    try:
        payloads.check_count(len(uploads), MAX_INSTANCES)
    except payloads.BadRequest as err:
        return _page(request, 400, error=err.message)
    images = [upload.read() for upload in uploads]
    try:
        outcomes, inputs = _predict(loaded, images)
    except payloads.BadRequest as err:
        return _page(request, err.status, error=err.message)
    results = [_result_context(upload.name, data, result)
               for upload, data, result in zip(uploads, images, outcomes)]
    if loaded.explainer is not None:
        good = [i for i, data in enumerate(inputs) if data is not None]
        pngs = loaded.explainer.overlays([inputs[i] for i in good]) if good else []
        for i, png in zip(good, pngs):
            results[i]["overlay_url"] = "data:image/png;base64," + base64.b64encode(png).decode()
    status = 400 if all("error" in r for r in results) else 200
    return _page(request, status, results=results)


@allow("GET", "HEAD")
def static(request: HttpRequest, name: str) -> FileResponse:
    """The page's two files, from the package (no collectstatic, no web server in front)."""
    if name not in STATIC_FILES:
        raise Http404(name)
    response = FileResponse(open(Path(WEB_DIR, "static", name), "rb"),
                            content_type=STATIC_FILES[name])
    response["Cache-Control"] = "max-age=3600"
    return response


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    from django.core.exceptions import DisallowedHost  # noqa: PLC0415

    if isinstance(exception, DisallowedHost):
        return error("Host header not allowed: add the name to --allowed_hosts")
    return error("bad request")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error(f"no such route {request.path}; see GET / and POST /v1/models/xray:predict", 404)


def server_error(request: HttpRequest) -> JsonResponse:
    log.error("%s %s failed with an internal error", request.method, request.path)
    return error("internal error (logged on the server)", 500)
