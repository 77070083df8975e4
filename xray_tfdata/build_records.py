r"""Builds sharded TFRecords + dataset_info.json from chest X-ray collections (folders or CSVs).

  python -m xray_tfdata.build_records --data_dir=workspace/raw/Data \
      --output_dir=workspace/records --augment=COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3

Rerunning the same command after a crash resumes; see docs for every flag.
"""

from __future__ import annotations

import sys

from absl import app, flags

# Only TensorFlow-free modules at import time, so `--help` and flag errors answer instantly; the
# converter (which imports TensorFlow) is imported inside main().
from xray_tfdata import cli, console
from xray_tfdata.records import dedupe, image_io, presets

_DATA_DIR = flags.DEFINE_string(
    "data_dir", "workspace/raw/Data",
    "The collection: {train,val,test}/<CLASS>/* (any subset of splits, e.g. the extracted "
    "Kaggle folder), <CLASS>/** (no splits), or the folder a --labels_csv's paths are relative "
    "to. Several collections: name=path entries, e.g. kaggle=/data/kaggle,nih=/data/nih.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "workspace/records",
                                  "Where shards and dataset_info.json are written.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output images are size x size.")
_RESIZE_MODE = flags.DEFINE_enum("resize_mode", "stretch", list(image_io.RESIZE_MODES),
                                 "stretch (the seed's behaviour) or pad (keep aspect, black).")
_CHANNELS = flags.DEFINE_integer("channels", 1, "1 (gray, 3x smaller) or 3 (gray repeated).")
_IMAGE_FORMAT = flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png", "raw"],
                                  "Encoding inside the records; raw = uncompressed uint8.")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality 1-100.")
_COMPRESSION = flags.DEFINE_enum("compression", "none", ["none", "gzip"],
                                 "TFRecord file compression.", case_sensitive=False)
_SHARD_SIZE_MB = flags.DEFINE_float("shard_size_mb", 100.0,
                                    "Target shard size when --num_shards=0.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0,
                                   "Fixed shards per split (0 = by --shard_size_mb).")
_MIN_SHARDS = flags.DEFINE_integer("min_shards", 8,
                                   "At least this many train shards (>= readers of a job).")
_VAL_FRACTION = flags.DEFINE_float(
    "val_fraction", 0.1, "Fraction of each train class carved out as validation (per collection "
    "without a val split; by patient when the CSV gives patient ids).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every split/shard/augmentation decision.")
_AUGMENT = flags.DEFINE_string(
    "augment", "", "Offline train-only variants, e.g. "
    "'COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3;PNEUMONIA:mean3'.")
_AUGMENT_MAX_SOURCE = flags.DEFINE_integer(
    "augment_max_source", 0, "Augment at most this many train images per class (0 = all).")
_DEDUPE = flags.DEFINE_enum("dedupe", "report", ["report", "drop"],
                            "report duplicates, or drop train/val copies of test images and "
                            "repeats within a split.")
_NEAR_DISTANCE = flags.DEFINE_integer("near_distance", dedupe.DEFAULT_NEAR_DISTANCE,
                                      "Max perceptual-hash Hamming distance of near duplicates.")
_MAX_REJECT_FRACTION = flags.DEFINE_float(
    "max_reject_fraction", 0.01, "Fail if more than this fraction of files is unusable.")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", None, "Fraction carved as test from a collection without a test split "
    "(default 0.2 there; a collection with a test split keeps it).")
_LABELS_CSV = flags.DEFINE_string(
    "labels_csv", "", "A CSV listing the images: path (relative to --data_dir), label, optional "
    "split and patient_id, other columns kept as metadata. Several: name=file.csv entries.")
_CSV_COLUMNS = flags.DEFINE_string(
    "csv_columns", "", "Column names, e.g. 'path=Image Index,label=Finding Labels,"
    "patient_id=Patient ID' (defaults: path,label,split,patient_id).")
_LABEL_MAP = flags.DEFINE_string(
    "label_map", "", "Source labels onto the 3 classes, e.g. 'No Finding=NORMAL,"
    "COVID-19=COVID19,Pneumonia=PNEUMONIA'; unmapped rows are skipped and counted.")
_PATIENT_OVERLAP = flags.DEFINE_enum(
    "patient_overlap", "error", ["error", "warn"],
    "What to do when the input puts one patient in two splits.")
_PATIENT_KEY = flags.DEFINE_string(
    "patient_key", "", "Secret key of the patient-id HMAC (default: derived from --seed, which "
    "the manifest shows). Never written; use a long random key for records you share.")
_HOLDOUT_SOURCE = flags.DEFINE_string(
    "holdout_source", "", "A collection named in --data_dir whose images are the whole test "
    "split (leave-one-collection-out).")
_LAYOUT = flags.DEFINE_string(
    "layout", "folders", "How --data_dir is laid out: folders (or the --labels_csv when given), "
    "or a public collection as downloaded: " + ", ".join(presets.PRESETS) + ". Several: "
    "name=layout entries, e.g. nih=chestxray14,rsna=rsna_pneumonia (README: the table).")
_VIEWS = flags.DEFINE_string(
    "views", "frontal", "Views a preset keeps when its collection records them: frontal (PA/AP), "
    "all, or a list of view values such as PA,AP; the others are counted in the manifest.")
_UNCERTAIN = flags.DEFINE_enum(
    "uncertain", "skip", list(presets.UNCERTAIN_MODES),
    "A finding labelled uncertain (-1, CheXpert / MIMIC): skip the image, or count the finding "
    "as positive / negative.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "Worker processes (0 = all cores).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", image_io.DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this, read from the header "
    "before decoding (at most 2^30, OpenCV's limit); the reason is listed in the manifest.")
_RUNNER = flags.DEFINE_enum(
    "runner", "local", ["local", "beam"],
    "Where the decode pass and shard writes run: local (this machine's worker processes, "
    "resumable) or beam (an Apache Beam pipeline; pip install -e '.[beam]'). Same records.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "",
    "With --runner=beam: Beam's options, comma-separated, e.g. '--runner=DataflowRunner,"
    "--project=my-project,--region=europe-west1,--temp_location=gs://bucket/tmp' (default: "
    "Beam's in-process FnApiRunner).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Delete existing shards/manifest in --output_dir and start over.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments {argv[1:]}; all inputs are flags.")
    # Imported here, not at the top: see the import note there.
    from xray_tfdata.records import convert, manifest  # noqa: PLC0415

    compression = "" if _COMPRESSION.value.lower() == "none" else "GZIP"
    config = cli.settings_from_flags(convert.ConversionConfig, compression=compression)
    try:
        info = convert.build_records(config)
    except (ValueError, convert.ConversionError) as err:
        print(f"build_records: error: {err}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{split} {s['num_examples']}" for split, s in info["splits"].items())
    console.say(f"Records in {config.output_dir}: {counts} examples; {len(info['rejected'])} "
                f"rejected (see {manifest.MANIFEST_NAME}).")
    return 0


if __name__ == "__main__":
    cli.run(main)
