r"""Class probabilities for image files from an exported model.

  python -m xray_tfdata.predict --model_path=workspace/model/export \
      [--output_json=preds.json] [--batch_size=32] a.png b.jpg c.bmp

Any size and mode the converter accepts (8/16-bit grey, RGB, RGBA, palette; PNG, JPEG, BMP). Prints
one table row per file; a file that cannot be read or decoded gets an error row with the reason,
the good files are still predicted, and the exit status is 1 if any file failed.
"""

from __future__ import annotations

import os
import re

# Quiet TensorFlow's C++ INFO/WARNING lines (a failed decode logs a rendezvous warning per batch);
# the per-file error rows say what went wrong.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this entry point's flags; called only when run as a program, so importing
    `predict_files` from a test or another entry point cannot clash with their flags."""
    flags.DEFINE_string("model_path", "workspace/model/export",
                        "SavedModel directory written by training (export_serving).")
    flags.DEFINE_string("output_json", "", "Also write the results to this JSON file.")
    flags.DEFINE_integer("batch_size", 32, "Files decoded and predicted per call.", lower_bound=1)


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
          (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


def sniff(data: bytes) -> str | None:
    """Returns a short reason the bytes are not a supported image, or None if they may be one."""
    if not data:
        return "empty file"
    if any(data.startswith(magic) for magic, _ in _MAGIC):
        return None
    head = data[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image (looks like text)"
    return "not an image (unknown format; PNG, JPEG, BMP or GIF expected)"


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


def main(argv: list[str]) -> int:
    image_paths = argv[1:]
    if not image_paths:
        raise app.UsageError("No image files given; usage: python -m xray_tfdata.predict "
                             "--model_path=<export dir> file1.png [file2.jpg ...]")
    if not (Path(FLAGS.model_path) / "saved_model.pb").is_file():
        raise app.UsageError(
            f"--model_path={FLAGS.model_path} is not a SavedModel directory (no saved_model.pb); "
            "pass the export written by training, e.g. workspace/model/export.")

    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.serving.export import load_serving  # noqa: PLC0415 - TF import after flag checks

    serving = load_serving(FLAGS.model_path)
    results = predict_files(serving, image_paths, FLAGS.batch_size)
    print(format_table(results, serving.class_names))
    failed = sum("error" in r for r in results)
    print(f"\n{len(results) - failed} predicted, {failed} failed.")
    if FLAGS.output_json:
        payload = {"model_path": FLAGS.model_path, "metadata": serving.metadata,
                   "results": results}
        out = files.write_json(FLAGS.output_json, payload, sort_keys=False)
        print(f"Wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
