r"""Builds sharded TFRecords + dataset_info.json from chest X-ray collections (folders or CSVs).

  python -m xray_tfdata.build_records --data_dir=workspace/raw/Data \
      --output_dir=workspace/records --augment=COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3

Rerunning the same command after a crash resumes; see docs for every flag.
"""

from __future__ import annotations

from absl import app

# Only TensorFlow-free modules at import time, so `--help` and flag errors answer instantly; the
# converter (which imports TensorFlow) is imported inside main().
from xray_tfdata import cli, console, labels
from xray_tfdata.records import conversion_config

cli.define_flags(conversion_config.ConversionConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments {argv[1:]}; all inputs are flags.")
    # Imported here, not at the top: see the import note there.
    from xray_tfdata.records import collection_table, convert, manifest  # noqa: PLC0415

    config = cli.settings_from_flags(conversion_config.ConversionConfig)
    try:
        info = manifest.info_from_dict(convert.build_records(config), config.output_dir)
    except (ValueError, convert.ConversionError) as err:
        cli.fail(str(err))
    counts = ", ".join(f"{split} {s.num_examples}" for split, s in info.splits.items())
    classes = ("" if info.classes == labels.DEFAULT_CLASSES
               else f" of classes {', '.join(info.classes)}")
    console.say(f"Records in {config.output_dir}: {counts} examples{classes}; {info.num_rejected} "
                f"rejected (see {manifest.MANIFEST_NAME}).")
    for line in collection_table.build_report(info):  # nothing for a single collection
        console.say(line)


if __name__ == "__main__":
    cli.run(main)
