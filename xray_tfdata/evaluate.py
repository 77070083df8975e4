r"""Evaluates a trained model on one split: metrics with 95% CIs, report, confusion matrix, probe.

  python -m xray_tfdata.evaluate --model_path=workspace/model/best.keras \
      --records_dir=workspace/records --split=test

Writes metrics.json, report.txt, confusion_matrix.png and tensorboard/ into --output_dir
(default <dir of model>/eval/<split>) and prints a short summary.
"""

from __future__ import annotations

from absl import app, flags

from xray_tfdata import cli, labels
from xray_tfdata.evaluation import shortcut

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", "workspace/model/best.keras", "The .keras model to evaluate.")
flags.DEFINE_string("records_dir", "workspace/records", "Records directory (dataset_info.json).")
flags.DEFINE_enum("split", "test", list(labels.SPLITS), "Split to evaluate.")
flags.DEFINE_string("output_dir", "", "Output directory; default <dir of model>/eval/<split>.")
flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for 95% CIs; 0 disables them.")
flags.DEFINE_integer("seed", 0, "Seed of the bootstrap and of the shortcut probe.")
flags.DEFINE_bool("shortcut_probe", True,
                  "Fit a metadata-only classifier (no pixels) and compare its macro-F1.")
flags.DEFINE_enum("shortcut_model", shortcut.PROBE_MODELS[0], list(shortcut.PROBE_MODELS),
                  "Classifier of the shortcut probe.")
flags.DEFINE_float("shortcut_threshold", shortcut.DEFAULT_THRESHOLD,
                   "Warn when probe macro-F1 >= this fraction of the CNN's.")


def _config():
    from xray_tfdata.evaluation import evaluator

    return cli.settings_from_flags(evaluator.EvalConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass settings as --flags.")
    from pathlib import Path

    config = _config()
    if not Path(config.model_path).is_file():
        raise app.UsageError(f"--model_path={config.model_path} does not exist. Train first, or "
                             f"pass the best.keras written under --model_dir.")
    from xray_tfdata.evaluation import evaluator, metrics

    result = evaluator.evaluate(config)
    out = config.resolved_output_dir
    print(f"Evaluated {config.model_path} on {config.split} ({result['num_examples']} examples)")
    for key in ("accuracy", "macro_f1", "macro_auc"):
        print(f"  {key:<10} {metrics.headline(result, key)}")
    for name in labels.CLASS_NAMES:
        print(f"  sensitivity {name:<10} {metrics.headline(result, 'sensitivity/' + name)}")
    if "shortcut_probe" in result:
        print("  " + result["shortcut_probe"]["message"])
    print(f"Wrote {out / evaluator.METRICS_FILE}, {out / evaluator.REPORT_FILE}, "
          f"{out / evaluator.CONFUSION_FILE} and {out / evaluator.TENSORBOARD_DIR}/")


if __name__ == "__main__":
    cli.run(main)
