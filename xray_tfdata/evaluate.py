r"""Evaluates a trained model: metrics with 95% CIs, calibration, operating point, probe, Grad-CAM.

  python -m xray_tfdata.evaluate --model_path=workspace/model/best.keras \
      --records_dir=workspace/records --split=test [--external_records_dir=other_records]

Writes metrics.json, report.txt, confusion_matrix.png, reliability.png and tensorboard/ into
--output_dir (default <dir of model>/eval/<split>); with several records directories
(--records_dir=a,b or --external_records_dir) one subdirectory each plus comparison.{json,txt},
a side-by-side table. The shortcut probe, the temperature and the --positive_class threshold come
from the records the model was TRAINED on (the run's summary.json, or --train_records_dir), so an
external test-only collection needs no train split.
"""

from __future__ import annotations

from absl import app

from xray_tfdata import cli, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import evaluator

cli.define_flags(evaluator.EvalConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass settings as --flags.")
    config = cli.settings_from_flags(evaluator.EvalConfig)
    if not paths.location(config.model_path).is_file():
        raise app.UsageError(f"--model_path={config.model_path} does not exist. Train first, or "
                             f"pass the best.keras written under --model_dir.")
    for records_dir in config.records_dirs:
        if not paths.join(records_dir, "dataset_info.json").is_file():
            raise app.UsageError(f"No records at {records_dir!r} (no dataset_info.json). Build "
                                 f"them with python -m xray_tfdata.build_records.")
    from xray_tfdata.evaluation import metrics, reference
    from xray_tfdata.records.manifest import ManifestError

    try:
        result = evaluator.evaluate(config)
    except ManifestError as err:  # records that do not fit the model: one line, no traceback
        cli.fail(str(err))
    except ConfigError as err:  # e.g. --collections names a collection the records lack
        raise cli.usage_error(err) from err
    out = config.resolved_output_dir
    print(f"Evaluated {config.model_path} on {config.split} ({result['num_examples']} examples)")
    print(f"  {metrics.classes_note(result)}")
    if result.get("class_note"):
        print("  " + result["class_note"])
    for key in ("accuracy", "macro_f1", "macro_sensitivity", "macro_auc"):
        print(f"  {key:<17} {metrics.headline(result, key)}")
    for name in result["class_names"]:
        print(f"  sensitivity {name:<10} {metrics.headline(result, 'sensitivity/' + name)}")
    cal = result["calibration"]
    line = f"  ECE {cal['ece']:.4f}"
    if cal.get("temperature") is not None:
        line += f" -> {cal['ece_calibrated']:.4f} at temperature {cal['temperature']:.3f}"
    print(line)
    if "operating_point" in result:
        print("  " + evaluator.operating_point_text(result["operating_point"]))
    if "by_collection" in result:
        from xray_tfdata.evaluation import by_collection

        print(by_collection.TITLE)
        print(by_collection.format_table(result["by_collection"], result["class_names"]))
    if "shortcut_probe" in result:
        print("  " + result["shortcut_probe"]["message"])
    if "border_attention" in result:
        print("  " + result["border_attention"]["message"])
    if "comparison" in result:
        print(reference.comparison_table(result["comparison"]))
        print(f"Wrote {out / 'comparison.txt'}, {out / 'comparison.json'} and one directory per "
              f"records dir under {out}/")
    else:
        print(f"Wrote {out / evaluator.METRICS_FILE}, {out / evaluator.REPORT_FILE}, "
              f"{out / evaluator.CONFUSION_FILE}, {out / evaluator.RELIABILITY_FILE} and "
              f"{out / evaluator.TENSORBOARD_DIR}/")


if __name__ == "__main__":
    cli.run(main)
