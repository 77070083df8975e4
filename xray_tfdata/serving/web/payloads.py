"""Request bodies -> lists of encoded images, with every bad input named (pure, no Django views).

TF Serving's REST predict format (`{"instances": [{"b64": "..."}]}`, or the named-input form
`{"instances": [{"image_bytes": {"b64": "..."}}]}`) and multipart/form-data uploads. Each
problem raises `BadRequest` with the message the client gets as `{"error": "..."}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Iterable

import numpy as np

from xray_tfdata.serving import export

SIGNATURES = (export.SIGNATURE,)
_B64_HINT = 'expected {"b64": "<base64 image bytes>"}'
# A predict body nests 4 deep ({"instances": [{"image_bytes": {"b64": ...}}]}); Python's parser
# would recurse until its stack limit (a RecursionError, once a 500) on "[[[[...".
MAX_JSON_DEPTH = 32
_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class BadRequest(ValueError):
    """A request the server refuses; `status` (400 or 413) and the client-facing message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _decode_b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where}: {_B64_HINT}; the b64 value is a {type(text).__name__}")
    # TF Serving accepts standard and URL-safe alphabets, with or without padding.
    cleaned = "".join(text.split()).replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{where}: bad base64 ({err})") from err


def _instance_bytes(instance: Any, where: str) -> bytes:
    if isinstance(instance, dict) and export.INPUT_KEY in instance:
        instance = instance[export.INPUT_KEY]  # the named-input form
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        return _decode_b64(instance["b64"], where)
    if isinstance(instance, str):
        raise BadRequest(f"{where}: {_B64_HINT}; a bare string is not decoded as base64 "
                         "(TF Serving's rule for binary inputs)")
    raise BadRequest(f"{where}: {_B64_HINT}")


def images_from_json(body: bytes, max_instances: int) -> list[bytes]:
    """A TF Serving predict body -> the encoded images, in order."""
    if not body.strip():
        raise BadRequest('empty body: send {"instances": [{"b64": "<base64 image bytes>"}]} '
                         "or a multipart/form-data upload")
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are "
                         "allowed (a predict body needs 3 or 4)")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"malformed JSON ({err})") from err
    except ValueError as err:  # an integer over Python's 4300-digit conversion limit
        raise BadRequest("malformed JSON (a number too long to read: over 4300 digits)") from err
    except RecursionError as err:  # unreachable after json_depth; kept as the last guard
        raise BadRequest(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from err
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object with \"instances\"; got a "
                         f"{type(payload).__name__}")
    signature = payload.get("signature_name", export.SIGNATURE)
    if signature not in SIGNATURES:
        raise BadRequest(f"unknown signature_name {signature!r}; this model has {list(SIGNATURES)}")
    if "instances" not in payload:
        hint = ' (the columnar "inputs" form is not supported)' if "inputs" in payload else ""
        raise BadRequest(f'missing "instances"{hint}: send {{"instances": [{{"b64": "..."}}]}}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of {"b64": "..."} objects')
    check_count(len(instances), max_instances)
    return [_instance_bytes(item, f"instances[{i}]") for i, item in enumerate(instances)]


def json_depth(body: bytes) -> int:
    """The deepest nesting of [ and { outside strings, without parsing: escapes dropped (a run
    of backslashes pairs up from the left, as JSON reads it), then every byte but quotes and
    brackets, in C; the few left are counted with numpy (a 27 MB base64 body: about half the
    time json.loads takes)."""
    if b"\\" in body:  # base64 has none: skip two passes over the body
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_STRUCTURE)
    marks = np.frombuffer(marks, np.uint8)
    outside = np.cumsum(marks == ord('"')) % 2 == 0  # the quotes themselves are not brackets
    steps = (np.isin(marks, _OPEN).astype(np.int32) - np.isin(marks, _CLOSE)) * outside
    return int(np.cumsum(steps).max(initial=0))


def images_from_files(uploads: Iterable[Any], max_instances: int) -> list[bytes]:
    """Uploaded files (Django UploadedFile, in memory) -> their bytes, in order."""
    images = [upload.read() for upload in uploads]
    if not images:
        raise BadRequest("no file uploaded: send the image as a multipart/form-data file field "
                         "(e.g. image=@xray.png)")
    check_count(len(images), max_instances)
    return images


def check_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise BadRequest(f"{count} images in one request; at most {max_instances} are allowed "
                         "(split the batch)")


def first_error(results: list[dict], labels: list[str]) -> str | None:
    """The first per-image error as one message naming the image, or None."""
    for label, result in zip(labels, results):
        if "error" in result:
            return f"{label}: {result['error']}" if label else result["error"]
    return None
