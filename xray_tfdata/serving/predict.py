"""Class probabilities for encoded image files or bytes from an exported SavedModel.

The library behind `python -m xray_tfdata.predict` (and the web app): every input is checked
before the model sees it, so a bad file gets its own reason instead of failing its batch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from xray_tfdata.records import image_format


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


def predict_files(serving: Any, paths: Sequence[str], batch_size: int = 32) -> list[dict]:
    """Predicts each file; returns one dict per path, in order, with "probabilities" or "error".

    `serving` is an `export.ServingModel`. A batch that fails to decode is retried file by file so
    one bad file costs only its own result.
    """
    import tensorflow as tf  # noqa: PLC0415 - keep `--help` fast

    results: list[dict] = []
    pending: list[tuple[int, bytes]] = []
    for path in paths:
        result: dict[str, Any] = {"file": str(path)}
        results.append(result)
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            result["error"] = f"unreadable: {type(err).__name__}: {err.strerror or err}"
            continue
        reason = sniff(data)
        if reason:
            result["error"] = reason
            continue
        pending.append((len(results) - 1, data))

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
