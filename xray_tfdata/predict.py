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

from absl import app

from xray_tfdata import cli, paths


def main(argv: list[str]) -> None:
    from xray_tfdata.serving import predict  # noqa: PLC0415  (no TF import)

    config = cli.settings_from_flags(predict.PredictConfig)
    image_paths = argv[1:]
    if not image_paths:
        raise app.UsageError("No image files given; usage: python -m xray_tfdata.predict "
                             "--model_path=<export dir> file1.png [file2.jpg ...]")
    if not paths.join(config.model_path, "saved_model.pb").is_file():
        raise app.UsageError(
            f"--model_path={config.model_path} is not a SavedModel directory (no saved_model.pb); "
            "pass the export written by training, e.g. workspace/model/export.")

    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.serving.export import load_serving  # noqa: PLC0415 - TF import after flag checks

    serving = load_serving(config.model_path)
    results = predict.predict_files(serving, image_paths, config.batch_size)
    print(predict.format_table(results, serving.class_names))
    failed = sum("error" in r for r in results)
    # Calibrated exports (training's temperature scaling) say so in their metadata.
    calibrated = serving.metadata.get("probabilities", "uncalibrated softmax")
    print(f"\nProbabilities: {calibrated}.")
    print(f"{len(results) - failed} predicted, {failed} failed.")
    if config.output_json:
        payload = {"model_path": config.model_path, "metadata": serving.metadata,
                   "results": results}
        out = files.write_json(config.output_json, payload, sort_keys=False)
        print(f"Wrote {out}")
    if failed:
        cli.fail(f"{failed} of {len(results)} file(s) could not be predicted (see the table).")


if __name__ == "__main__":
    # Defined only when run as a program, so importing this module (a test, another entry
    # point) cannot clash with their flags.
    from xray_tfdata.serving.predict import PredictConfig

    cli.define_flags(PredictConfig)
    cli.run(main)
