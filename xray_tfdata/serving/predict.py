"""Class probabilities for encoded image files or bytes from an exported SavedModel.

The library behind `python -m xray_tfdata.predict` (and the web app): every input is checked
before the model sees it, so a bad file gets its own reason instead of failing its batch.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path
from typing import Any, Sequence

from xray_tfdata import errors, paths
from xray_tfdata.records import image_format, image_io
from xray_tfdata.settings import setting

# The converter's ceiling on width x height (read from the header before decoding) for local
# files; the web app passes a stricter one for uploads (serving/web/settings.py).
DEFAULT_MAX_PIXELS = image_io.DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """Settings of `python -m xray_tfdata.predict` (the files come as arguments)."""

    model_path: str = setting("workspace/model/export",
                              "SavedModel directory written by training (export_serving).")
    output_json: str = setting("", "Also write the results to this JSON file.")
    batch_size: int = setting(32, "Files decoded and predicted per call.")

    def __post_init__(self) -> None:
        errors.positive_int("batch_size", self.batch_size)
        paths.check("model_path", self.model_path)  # a gs:// export is read through gfile


def sniff(data: bytes) -> str | None:
    """Returns a short reason the bytes are not a supported image, or None if they may be one.

    The same magic bytes as the converter (records/image_format.py): JPEG, PNG or BMP. GIF is
    refused, as the converter refuses it, so a model is never served what it was not trained on.
    """
    try:
        image_format.sniff_encoded(data)
    except image_format.ImageReadError as err:
        return err.reason
    return None


def encoded_format(data: bytes) -> str | None:
    """"JPEG", "PNG" or "BMP" from the magic bytes, or None."""
    try:
        return image_format.sniff_encoded(data)
    except image_format.ImageReadError:
        return None


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """`sniff` plus the header's width x height against `max_pixels`, the decoded bytes and a
    JPEG's scan count (records/image_format.check_decode_cost): a reason the bytes must not reach
    the decoder (a decompression or scan bomb among them), or None."""
    try:
        fmt = image_format.sniff_encoded(data)
        width, height = image_format.header_size(data, fmt)
    except image_format.ImageReadError as err:
        return err.reason
    except struct.error:  # a header cut short inside its size fields
        return "corrupt image (header cut short)"
    if width == 0 or height == 0:
        return f"corrupt {fmt} (the header says {width}x{height} pixels)"
    if width * height > max_pixels:
        # Worded for a client of the server, not with the converter's --max_pixels advice.
        return (f"decompression bomb refused: the header says {width} x {height} = "
                f"{width * height:,} pixels, more than the {max_pixels:,} allowed")
    try:  # the converter's own bounds: decoded bytes, a JPEG's scan count
        image_format.check_decode_cost(data, fmt)
    except image_format.ImageReadError as err:
        return err.reason
    return None


def _decode_error(data: bytes) -> str:
    """Why TensorFlow cannot decode `data`: its decoder's message, run eagerly to get it clean."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        message = re.sub(r"\{\{.*?\}\}", "", err.message).split(" [Op:")[0].strip()
        if "Uncompress failed" in message or "Premature end" in message:
            return f"truncated or corrupt JPEG ({message})"
        if "PNG" in message:
            return f"truncated or corrupt PNG ({message})"
        return f"cannot decode ({message})"
    return "cannot decode (the serving signature rejected it)"


def dicom_to_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A DICOM file -> an 8-bit grey PNG of the image exactly as the converter sees it (the
    display chain of records/dicom.py), which the SavedModel then resizes like the converter.

    Raises:
      image_format.ImageReadError: the [dicom] extra missing, or a file the converter refuses.
    """
    import cv2  # noqa: PLC0415

    from xray_tfdata.records import dicom  # noqa: PLC0415 - pydicom only when a DICOM arrives

    gray = dicom.decode_dicom(data, max_pixels=max_pixels).gray
    return cv2.imencode(".png", gray)[1].tobytes()


def model_input(data: bytes,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes | None, str | None]:
    """(bytes the SavedModel decodes, None) or (None, the reason to refuse the input)."""
    if image_format.is_dicom(data):
        try:
            return dicom_to_png(data, max_pixels), None
        except image_format.ImageReadError as err:
            return None, err.reason
    reason = check_image(data, max_pixels)
    return (None, reason) if reason else (data, None)


def predict_bytes(serving: Any, images: Sequence[bytes], batch_size: int = 32,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict]:
    """Predicts each encoded image (JPEG, PNG, BMP; DICOM with the [dicom] extra); one dict per
    image, in order: "probabilities" + "predicted", or "error" (the reason). Pure apart from
    `serving.predict`, so safe to call from threads.

    `serving` is an `export.ServingModel`. A batch that fails to decode is retried image by image
    so one bad image costs only its own result.
    """
    import tensorflow as tf  # noqa: PLC0415 - keep `--help` fast

    results: list[dict] = [{} for _ in images]
    pending: list[tuple[int, bytes]] = []
    for index, data in enumerate(images):
        prepared, reason = model_input(data, max_pixels)
        if reason:
            results[index]["error"] = reason
        else:
            pending.append((index, prepared))

    names = serving.class_names

    def record(index: int, probs) -> None:
        results[index]["probabilities"] = {n: float(p) for n, p in zip(names, probs)}
        results[index]["predicted"] = names[int(probs.argmax())]

    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        try:
            probs = serving.predict([data for _, data in chunk])
            for (index, _), row in zip(chunk, probs):
                record(index, row)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            for index, data in chunk:
                try:
                    record(index, serving.predict([data])[0])
                except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
                    results[index]["error"] = _decode_error(data)
    return results


def predict_files(serving: Any, paths: Sequence[str], batch_size: int = 32,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict]:
    """Predicts each file; returns one dict per path, in order, with "probabilities" or "error"
    (see `predict_bytes`; an unreadable file gets its own error)."""
    results: list[dict] = []
    readable: list[tuple[dict, bytes]] = []
    for path in paths:
        result: dict[str, Any] = {"file": str(path)}
        results.append(result)
        try:
            readable.append((result, Path(path).read_bytes()))
        except OSError as err:
            result["error"] = f"unreadable: {type(err).__name__}: {err.strerror or err}"
    predicted = predict_bytes(serving, [data for _, data in readable], batch_size, max_pixels)
    for (result, _), outcome in zip(readable, predicted):
        result.update(outcome)
    return results


def format_table(results: list[dict], class_names: Sequence[str]) -> str:
    """A fixed-width text table: file, predicted class, one probability column per class."""
    width = max([len("file")] + [len(r["file"]) for r in results])
    header = f"{'file':<{width}}  {'predicted':<10}" + "".join(f"  {n:>9}" for n in class_names)
    lines = [header, "-" * len(header)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['file']:<{width}}  ERROR: {r['error']}")
        else:
            probs = "".join(f"  {r['probabilities'][n]:>9.4f}" for n in class_names)
            lines.append(f"{r['file']:<{width}}  {r['predicted']:<10}{probs}")
    return "\n".join(lines)
