r"""Grad-CAM: where does the model look? Overlays, contact sheets and border attention.

  python -m xray_tfdata.explain --model_path=workspace/model/best.keras \
      --records_dir=workspace/records --split=test --per_class=8 --output_dir=workspace/explain

Writes overlays/<CLASS>/*.png, sheet_<CLASS>.png and explain.json into --output_dir (default
<dir of model>/explain/<split>) and prints the border attention per class: the share of Grad-CAM
mass in the outer 12.5% band, 0.4375 for uniform attention.
"""

from __future__ import annotations

from absl import app

from xray_tfdata import cli, paths
from xray_tfdata.evaluation import gradcam_report

cli.define_flags(gradcam_report.ExplainConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass settings as --flags.")
    config = cli.settings_from_flags(gradcam_report.ExplainConfig)
    if not paths.location(config.model_path).is_file():
        raise app.UsageError(f"--model_path={config.model_path} does not exist. Train first, or "
                             f"pass the best.keras written under --model_dir.")
    from xray_tfdata.records.manifest import ManifestError

    try:
        report = gradcam_report.explain(config)
    except ManifestError as err:  # records that do not fit the model: one line, no traceback
        cli.fail(str(err))
    except ValueError as err:
        if "layer" in str(err):
            raise app.UsageError(str(err).replace("layer=", "--layer=")) from err
        raise
    attention = report["border_attention"]
    out = config.resolved_output_dir
    print(f"Grad-CAM of {config.model_path} on {len(report['images'])} {config.split} images "
          f"(layer {report['layer']}, map {report['feature_map_shape']})")
    if report.get("class_note"):
        print("  " + report["class_note"])
    for name, value in attention["per_class"].items():
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  border attention {name:<10} {shown}")
    print("  " + attention["message"])
    print(f"Wrote {out / gradcam_report.EXPLAIN_FILE}, {len(report['sheets'])} contact sheet(s) and "
          f"{out / 'overlays'}/")


if __name__ == "__main__":
    cli.run(main)
