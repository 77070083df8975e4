"""The converter's settings: one frozen dataclass, validated on construction (ConfigError).

`manifest_args` is what the manifest records and a resumed run must repeat: execution-only
fields are left out, and the collection options (issue 10) only when set, so a plain Kaggle
build's manifest is byte-identical to the one earlier versions wrote.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from xray_tfdata import errors, files, labels, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import (
    decode_pass,
    dedupe,
    image_io,
    intensity,
    labels_csv,
    offline_augment,
    patients,
    preset_reader,
    presets,
    resize,
    sources,
)
from xray_tfdata.settings import setting

DEDUPE_MODES: tuple[str, ...] = ("report", "drop")
# Where the decode pass and the shard writes run; the records are byte-identical either way.
RUNNERS: tuple[str, ...] = ("local", "beam")
_DEFAULT_NEAR_DISTANCE = dedupe.DEFAULT_NEAR_DISTANCE  # the `dedupe` field shadows the module
# Not written to the manifest: they change how the run executes, not what it writes (so 1 and 8
# workers give byte-identical manifests), or would make a copied records dir lie (output_dir).
_NOT_IN_MANIFEST = ("output_dir", "num_workers", "overwrite", "runner", "beam_pipeline_options")
# Also not compared on resume: a rerun with a looser threshold must be allowed.
NOT_COMPARED = ("max_reject_fraction",)
_SOURCE_FIELDS = ("classes", "labels_csv", "csv_columns", "label_map", "test_fraction",
                  "patient_overlap", "patient_key", "holdout_source", "max_pixels", "layout",
                  "views", "uncertain", "intensity")
_VIEW_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]*$")



@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides the records; validated on construction (raises ConfigError)."""

    data_dir: str = setting(
        help="The collection: {train,val,test}/<CLASS>/* (any subset of splits, e.g. the "
             "extracted Kaggle folder), <CLASS>/** (no splits), or the folder a --labels_csv's "
             "paths are relative to. Several collections: name=path entries, e.g. "
             "kaggle=/data/kaggle,nih=/data/nih.", flag_default="workspace/raw/Data")
    output_dir: str = setting(help="Where shards and dataset_info.json are written.",
                              flag_default="workspace/records")
    # The class set (labels.py): label ids follow this order. Left out of the manifest's args
    # when default, so a default build's manifest stays byte-identical; its label_map has it.
    classes: str = setting(
        ",".join(labels.DEFAULT_CLASSES), "The classes, in label-id order: 2 or more upper-case "
        "names, e.g. NORMAL,PNEUMONIA (NIH, RSNA, paediatric sets) or "
        "NORMAL,COVID19,PNEUMONIA,LUNG_OPACITY. Folder names, CSV labels and presets map onto "
        "them (--label_map); every class needs at least one image.")
    image_size: int = setting(224, "Output images are size x size.")
    resize_mode: str = setting("stretch", "stretch (the seed's behaviour) or pad (keep aspect, "
                               "black).", allowed=image_io.RESIZE_MODES)
    channels: int = setting(1, "1 (gray, 3x smaller) or 3 (gray repeated).")
    image_format: str = setting("jpeg", "Encoding inside the records; raw = uncompressed uint8.",
                                allowed=resize.ENCODE_FORMATS)
    jpeg_quality: int = setting(95, "JPEG quality 1-100.")
    # "" | "GZIP" (TFRecordWriter's names, as the manifest records them); the flag says none|gzip.
    compression: str = setting("", "TFRecord file compression.", allowed=("none", "gzip"),
                               flag_default="none")
    shard_size_mb: float = setting(100.0, "Target shard size when --num_shards=0.")
    num_shards: int = setting(0, "Fixed shards per split (0 = by --shard_size_mb).")
    min_shards: int = setting(8, "At least this many train shards (>= readers of a job).")
    val_fraction: float = setting(
        0.1, "Fraction of each train class carved out as validation (per collection without a "
        "val split; by patient when the CSV gives patient ids).")
    seed: int = setting(0, "Seed of every split/shard/augmentation decision.")
    augment: str = setting("", "Offline train-only variants, e.g. "
                           "'COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3;PNEUMONIA:mean3'.")
    augment_max_source: int = setting(
        0, "Augment at most this many train images per class (0 = all).")
    dedupe: str = setting("report", "report duplicates, or drop train/val copies of test images "
                          "and repeats within a split.", allowed=DEDUPE_MODES)
    near_distance: int = setting(_DEFAULT_NEAR_DISTANCE,
                                 "Max perceptual-hash Hamming distance of near duplicates.")
    max_reject_fraction: float = setting(
        0.01, "Fail if more than this fraction of files is unusable.")
    num_workers: int = setting(0, "Worker processes (0 = all cores).")
    overwrite: bool = setting(False,
                              "Delete existing shards/manifest in --output_dir and start over.")
    # Sources beyond the Kaggle layout (issue 10). Left at their defaults they are not written to
    # the manifest's args, so a Kaggle build's manifest stays byte-identical to earlier versions.
    labels_csv: str = setting(
        "", "A CSV listing the images: path (relative to --data_dir), label, optional split and "
        "patient_id, other columns kept as metadata. Several: name=file.csv entries.")
    csv_columns: str = setting(
        "", "Column names, e.g. 'path=Image Index,label=Finding Labels,patient_id=Patient ID' "
        "(defaults: path,label,split,patient_id).")
    label_map: str = setting(
        "", "Source labels or class folder names onto the --classes, e.g. 'No Finding=NORMAL,"
        "COVID-19=COVID19,Pneumonia=PNEUMONIA' or 'COVID=COVID19,Viral Pneumonia=PNEUMONIA'; "
        "unmapped CSV rows are skipped and counted.")
    test_fraction: float | None = setting(
        None, "Fraction carved as test from a collection without a test split (default 0.2 "
        "there; a collection with a test split keeps it).")
    patient_overlap: str = setting("error", "What to do when the input puts one patient in two "
                                   "splits.", allowed=patients.OVERLAP_MODES)
    # A secret: never written (the manifest holds a fingerprint) nor shown in a repr.
    patient_key: str = dataclasses.field(default="", repr=False, metadata=setting(
        help="Secret key of the patient-id HMAC (default: derived from --seed, which the "
             "manifest shows). Never written; use a long random key for records you share."
    ).metadata)
    holdout_source: str = setting(
        "", "A collection named in --data_dir whose images are the whole test split "
        "(leave-one-collection-out).")
    # Refuse sources with more pixels than this, from the header before decoding (image_io).
    max_pixels: int = setting(
        image_io.DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this, read from the "
        "header before decoding (at most 2^30, OpenCV's limit); the reason is listed in the "
        "manifest.")
    # The public collections (issue 15): a preset per collection (presets.py), or per named
    # collection as name=preset; "folders" reads folders, or the --labels_csv when given.
    layout: str = setting(
        "folders", "How --data_dir is laid out: folders (or the --labels_csv when given), or a "
        "public collection as downloaded: " + ", ".join(presets.PRESETS) + ". Several: "
        "name=layout entries, e.g. nih=chestxray14,rsna=rsna_pneumonia (README: the table).")
    views: str = setting(
        "frontal", "Views a preset keeps when its collection records them: frontal (PA/AP), "
        "all, or a list of view values such as PA,AP; the others are counted in the manifest.")
    uncertain: str = setting(
        "skip", "A finding labelled uncertain (-1, CheXpert / MIMIC): skip the image, or count "
        "the finding as positive / negative.", allowed=presets.UNCERTAIN_MODES)
    # records/intensity.py, before the resize; "none" is not written to the manifest (issue 19).
    intensity: str = setting(
        "none", "Normalise each 8-bit gray image before the resize: none, equalize (global "
        "histogram equalisation) or clahe (8x8 tiles, clip limit 2). The manifest records it; "
        "the exported model applies the same to uploads.", allowed=intensity.INTENSITY_MODES)
    # Execution only (not in the manifest): local = this machine's process pool (resumable);
    # beam = an Apache Beam pipeline (records/beam_runner.py, the [beam] extra), with Beam's own
    # options passed through, e.g. "--runner=DataflowRunner,--project=my-project".
    runner: str = setting(
        "local", "Where the decode pass and shard writes run: local (this machine's worker "
        "processes, resumable) or beam (an Apache Beam pipeline; pip install -e '.[beam]'). "
        "Same records.", allowed=RUNNERS)
    beam_pipeline_options: str = setting(
        "", "With --runner=beam: Beam's options, comma-separated, e.g. '--runner=DataflowRunner,"
        "--project=my-project,--region=europe-west1,--temp_location=gs://bucket/tmp' (default: "
        "Beam's in-process FnApiRunner).")

    def __post_init__(self) -> None:
        try:  # normalised ("NORMAL, PNEUMONIA" -> "NORMAL,PNEUMONIA"): the manifest compares it
            object.__setattr__(self, "classes", ",".join(labels.parse_classes(self.classes)))
        except (ValueError, AttributeError) as err:
            raise ConfigError("classes", self.classes,
                              "2 or more distinct upper-case class names, comma-separated",
                              f"Here: {err}.") from err
        if (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                or not 1 <= self.max_pixels <= image_io.OPENCV_MAX_PIXELS):
            raise ConfigError("max_pixels", self.max_pixels,
                              f"an integer in [1, {image_io.OPENCV_MAX_PIXELS}] (OpenCV's limit)")
        if not str(self.data_dir):
            raise ConfigError("data_dir", self.data_dir, "a folder path",
                              "Pass --data_dir=<the extracted Kaggle folder>.")
        if not str(self.output_dir):
            raise ConfigError("output_dir", self.output_dir, "a folder path")
        paths.check("output_dir", self.output_dir)  # a URL's scheme must be one TF knows
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ConfigError("image_size", self.image_size, "an integer in [8, 4096]")
        errors.in_range("image_size", self.image_size, 8, 4096,
                        allowed="an integer in [8, 4096] (224 is the default)")
        errors.one_of("resize_mode", self.resize_mode, image_io.RESIZE_MODES)
        errors.one_of("intensity", self.intensity, intensity.INTENSITY_MODES)
        errors.one_of("channels", self.channels, (1, 3),
                      "X-rays are gray: 1 is 3x smaller; 3 repeats the gray channel.")
        errors.one_of("image_format", self.image_format, resize.ENCODE_FORMATS)
        errors.positive_int("jpeg_quality", self.jpeg_quality)
        errors.in_range("jpeg_quality", self.jpeg_quality, 1, 100, allowed="an integer in [1, 100]")
        # The flag's none | gzip, any case, as TFRecordWriter names them.
        spelled = {"none": "", "gzip": "GZIP"}.get(str(self.compression).lower())
        if spelled is not None:
            object.__setattr__(self, "compression", spelled)
        # Imported here: it loads TensorFlow, and the command defines its flags from this class.
        from xray_tfdata.records import shard_writer  # noqa: PLC0415

        if self.compression not in shard_writer.COMPRESSIONS:
            raise ConfigError("compression", self.compression, "'' (none) or 'GZIP'")
        if not (isinstance(self.shard_size_mb, (int, float)) and self.shard_size_mb > 0):
            raise ConfigError("shard_size_mb", self.shard_size_mb, "a number > 0",
                              "About 100 MB per shard reads well; or set num_shards.")
        errors.non_negative_int("num_shards", self.num_shards)
        errors.positive_int("min_shards", self.min_shards)
        errors.in_range("val_fraction", self.val_fraction, 0.0, 1.0, closed_high=False)
        errors.non_negative_int("seed", self.seed)
        try:
            offline_augment.parse_augment_spec(self.augment, self.class_names())
        except ValueError as err:
            raise ConfigError("augment", self.augment, "a valid augmentation spec",
                              str(err)) from err
        errors.non_negative_int("augment_max_source", self.augment_max_source)
        errors.one_of("dedupe", self.dedupe, DEDUPE_MODES)
        errors.non_negative_int("near_distance", self.near_distance)
        errors.in_range("near_distance", self.near_distance, 0, dedupe.HASH_BITS,
                        allowed=f"an integer in [0, {dedupe.HASH_BITS}] (Hamming bits)")
        errors.in_range("max_reject_fraction", self.max_reject_fraction, 0.0, 1.0)
        errors.non_negative_int("num_workers", self.num_workers)
        self._check_sources()
        self._check_runner()

    def _check_runner(self) -> None:
        errors.one_of("runner", self.runner, RUNNERS)
        if self.beam_pipeline_options and self.runner != "beam":
            raise ConfigError("beam_pipeline_options", self.beam_pipeline_options,
                              "empty unless --runner=beam",
                              "Add --runner=beam, or drop --beam_pipeline_options.")
        odd = [a for a in beam_args(self.beam_pipeline_options) if not a.startswith("--")]
        if odd:
            raise ConfigError("beam_pipeline_options", self.beam_pipeline_options,
                              "Beam options separated by commas, each starting with --",
                              f"e.g. '--runner=DataflowRunner,--project=my-project' "
                              f"(not {odd[0]!r}).")

    def _check_sources(self) -> None:
        """The issue-10 settings: pure parsing only (no file-system access)."""
        try:
            specs = self.source_specs()
        except ValueError as err:
            field = next((f for f in ("layout", "labels_csv") if f in str(err)), "data_dir")
            allowed = ("folders, csv or a collection preset, alone or as name=layout entries"
                       if field == "layout"
                       else "a path, or name=path entries separated by commas")
            raise ConfigError(field, getattr(self, field), allowed, f"Here: {err}.") from err
        for spec in specs:
            paths.check("data_dir", spec.data_dir)
            if spec.labels_csv:
                paths.check("labels_csv", spec.labels_csv)
        self._check_preset_rules()
        for field, parse in (("csv_columns", labels_csv.parse_columns),
                             ("label_map", self.label_mapping)):
            try:
                parse(getattr(self, field))
            except ValueError as err:
                raise ConfigError(field, getattr(self, field), "a comma-separated list",
                                  f"Here: {err}.") from err
        if self.test_fraction is not None:
            errors.in_range("test_fraction", self.test_fraction, 0.0, 1.0, closed_high=False)
            if self.test_fraction + self.val_fraction >= 1.0:
                raise ConfigError("test_fraction", self.test_fraction,
                                  f"below 1 - val_fraction = {1 - self.val_fraction:g}",
                                  "Nothing would be left for training.")
        errors.one_of("patient_overlap", self.patient_overlap, patients.OVERLAP_MODES)
        if self.holdout_source:
            names = [spec.name for spec in specs]
            if self.holdout_source not in names or len(names) < 2:
                raise ConfigError("holdout_source", self.holdout_source,
                                  f"one of the collections named in data_dir ({names})",
                                  "It needs at least one other collection to train on, e.g. "
                                  "--data_dir=kaggle=/a,nih=/b --holdout_source=nih.")

    def _check_preset_rules(self) -> None:
        errors.one_of("uncertain", self.uncertain, presets.UNCERTAIN_MODES,
                      "skip drops images with an uncertain (-1) finding; positive / negative "
                      "count it as present / absent.")
        listed = [v.strip() for v in str(self.views).split(",")]
        if self.views not in presets.VIEW_MODES and not all(_VIEW_RE.match(v) for v in listed):
            raise ConfigError("views", self.views,
                              f"one of {list(presets.VIEW_MODES)} or view values such as PA,AP",
                              "Views are compared case-insensitively with the collection's "
                              "view column (e.g. NIH `View Position`, PadChest `Projection`).")

    def class_names(self) -> tuple[str, ...]:
        """The class set, in label-id order."""
        return tuple(self.classes.split(","))

    def label_mapping(self, text: str | None = None) -> dict[str, str]:
        """--label_map parsed against the class set: case-folded label or folder -> class."""
        return labels_csv.parse_label_map(self.label_map if text is None else text,
                                          self.class_names())

    def source_specs(self) -> list[sources.SourceSpec]:
        return sources.parse_source_specs(self.data_dir, self.labels_csv, self.layout)

    def preset_rules(self) -> preset_reader.Rules:
        """The preset settings (the patient key is added by the scan)."""
        return preset_reader.Rules(classes=self.class_names(), views=self.views,
                                   uncertain=self.uncertain)

    def manifest_args(self) -> dict[str, Any]:
        """The arguments the manifest records (and a resumed run must repeat)."""
        args = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_MANIFEST}
        args["data_dir"] = str(self.data_dir)
        for field in dataclasses.fields(self):
            if field.name in _SOURCE_FIELDS and args[field.name] == field.default:
                del args[field.name]  # absent = default: older manifests compare equal
        if self.patient_key:
            args["patient_key"] = patients.key_fingerprint(self.patient_key)
        return args

    def workers(self) -> int:
        return self.num_workers or files.usable_cpus()

    def settings(self) -> decode_pass.ProcessSettings:
        return decode_pass.ProcessSettings(self.image_size, self.resize_mode, self.channels,
                                       self.image_format, self.jpeg_quality, self.max_pixels,
                                       self.intensity)


def beam_args(text: str) -> list[str]:
    """"--a=1,--b=x,y" -> ["--a=1", "--b=x,y"]: a comma starts a new option only before "--"."""
    return [part.strip() for part in re.split(r",(?=\s*--)", text) if part.strip()]
