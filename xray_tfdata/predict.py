r"""Class probabilities for image files from an exported model.

  python -m xray_tfdata.predict --model_path=workspace/model/export \
      [--output_json=preds.json] [--batch_size=32] a.png b.jpg c.bmp

Any size and mode the converter accepts (8/16-bit grey, RGB, RGBA, palette; PNG, JPEG, BMP). Prints
one table row per file; a file that cannot be read or decoded gets an error row with the reason,
the good files are still predicted, and the exit status is 1 if any file failed.
"""

from __future__ import annotations

import os

# Quiet TensorFlow's C++ INFO/WARNING lines (a failed decode logs a rendezvous warning per batch);
# the per-file error rows say what went wrong.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from xray_tfdata import cli, paths
from xray_tfdata.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this entry point's flags; called only when run as a program, so importing this
    module from a test or another entry point cannot clash with their flags."""
    flags.DEFINE_string("model_path", "workspace/model/export",
                        "SavedModel directory written by training (export_serving).")
    flags.DEFINE_string("output_json", "", "Also write the results to this JSON file.")
    flags.DEFINE_integer("batch_size", 32, "Files decoded and predicted per call.", lower_bound=1)


def main(argv: list[str]) -> int:
    image_paths = argv[1:]
    if not image_paths:
        raise app.UsageError("No image files given; usage: python -m xray_tfdata.predict "
                             "--model_path=<export dir> file1.png [file2.jpg ...]")
    try:
        paths.check("model_path", FLAGS.model_path)  # a gs:// export is read through gfile
    except ConfigError as err:
        raise cli.usage_error(err) from err
    if not paths.join(FLAGS.model_path, "saved_model.pb").is_file():
        raise app.UsageError(
            f"--model_path={FLAGS.model_path} is not a SavedModel directory (no saved_model.pb); "
            "pass the export written by training, e.g. workspace/model/export.")

    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.serving import predict  # noqa: PLC0415
    from xray_tfdata.serving.export import load_serving  # noqa: PLC0415 - TF import after flag checks

    serving = load_serving(FLAGS.model_path)
    results = predict.predict_files(serving, image_paths, FLAGS.batch_size)
    print(predict.format_table(results, serving.class_names))
    failed = sum("error" in r for r in results)
    # Calibrated exports (training's temperature scaling) say so in their metadata.
    calibrated = serving.metadata.get("probabilities", "uncalibrated softmax")
    print(f"\nProbabilities: {calibrated}.")
    print(f"{len(results) - failed} predicted, {failed} failed.")
    if FLAGS.output_json:
        payload = {"model_path": FLAGS.model_path, "metadata": serving.metadata,
                   "results": results}
        out = files.write_json(FLAGS.output_json, payload, sort_keys=False)
        print(f"Wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
