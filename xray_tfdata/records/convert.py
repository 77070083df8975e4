"""The converter: Kaggle folder -> sharded TFRecords + dataset_info.json, resumable and reproducible.

Design (why one decode pass with a spill file): the val carve, --dedupe=drop, the reject
threshold and shard sizes all need every source's validity / hash / encoded size *before* the
final plan, yet decoding a 1000-2000 px JPEG is most of the cost, so decoding twice (a hashing
pass, then a writing pass) would halve throughput. Instead:
  1. ONE pass over the sources in a spawn-context worker pool: each source is read and decoded
     once; the worker returns its SourceInfo, perceptual hash and every encoded output it may
     need (original + all variants of its class if it is in train/). The main process appends
     each result to an append-only spill file in `<output_dir>/.build/` and keeps only a small
     index in memory (no 6.4k images in RAM);
  2. plan (pure, stable key + seed): drop rejects, carve val from the usable train sources
     (stratified), dedupe, choose the augmented sources, cut shards by actual encoded bytes;
  3. write shards in plan order in the main process, reading the bytes back from the spill.
Resume: the spill survives a kill -9 (a torn last frame is cut off), so a rerun decodes only the
sources not yet in it; complete shards recorded in `.build/shards.json` are kept. Output depends
only on per-source results, never on worker count or order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
from absl import logging

from xray_tfdata import __version__, errors, files, labels
from xray_tfdata.records import (
    dedupe,
    features,
    image_io,
    manifest,
    offline_augment,
    conversion_state,
    shard_plan,
    shard_writer,
    sources,
)
from xray_tfdata.errors import ConfigError
from xray_tfdata.records.conversion_state import Spill, SpillEntry

DEDUPE_MODES: tuple[str, ...] = ("report", "drop")
_DEFAULT_NEAR_DISTANCE = dedupe.DEFAULT_NEAR_DISTANCE  # the `dedupe` field shadows the module
# Not written to the manifest: they change how the run executes, not what it writes (so 1 and 8
# workers give byte-identical manifests), or would make a copied records dir lie (output_dir).
_NOT_IN_MANIFEST = ("output_dir", "num_workers", "overwrite")
# Also not compared on resume: a rerun with a looser threshold must be allowed.
_NOT_COMPARED = ("max_reject_fraction",)


class ConversionError(RuntimeError):
    """The conversion cannot (or must not) complete; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides the records; validated on construction (raises ConfigError)."""

    data_dir: str
    output_dir: str
    image_size: int = 224
    resize_mode: str = "stretch"
    channels: int = 1
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    compression: str = ""
    shard_size_mb: float = 100.0
    num_shards: int = 0
    min_shards: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    augment: str = ""
    augment_max_source: int = 0
    dedupe: str = "report"
    near_distance: int = _DEFAULT_NEAR_DISTANCE
    max_reject_fraction: float = 0.01
    num_workers: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not str(self.data_dir):
            raise ConfigError("data_dir", self.data_dir, "a folder path",
                              "Pass --data_dir=<the extracted Kaggle folder>.")
        if not str(self.output_dir):
            raise ConfigError("output_dir", self.output_dir, "a folder path")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ConfigError("image_size", self.image_size, "an integer in [8, 4096]")
        errors.in_range("image_size", self.image_size, 8, 4096,
                        allowed="an integer in [8, 4096] (224 is the default)")
        errors.one_of("resize_mode", self.resize_mode, image_io.RESIZE_MODES)
        errors.one_of("channels", self.channels, (1, 3),
                      "X-rays are gray: 1 is 3x smaller; 3 repeats the gray channel.")
        errors.one_of("image_format", self.image_format, features.IMAGE_FORMATS)
        errors.positive_int("jpeg_quality", self.jpeg_quality)
        errors.in_range("jpeg_quality", self.jpeg_quality, 1, 100, allowed="an integer in [1, 100]")
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
            offline_augment.parse_augment_spec(self.augment)
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

    def manifest_args(self) -> dict[str, Any]:
        args = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_MANIFEST}
        args["data_dir"] = str(self.data_dir)
        return args

    def workers(self) -> int:
        if self.num_workers:
            return self.num_workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # macOS / Windows
            return os.cpu_count() or 1

    def settings(self) -> sources.ProcessSettings:
        return sources.ProcessSettings(self.image_size, self.resize_mode, self.channels,
                                       self.image_format, self.jpeg_quality)


# ---------------------------------------------------------------------------------------------
# Planning the inputs and processing them once.


def _augment_spec(config: ConversionConfig) -> dict[str, tuple[str, ...]]:
    return {name: tuple(op.name for op in ops)
            for name, ops in offline_augment.parse_augment_spec(config.augment).items()}


def _plan_tasks(files: Sequence[sources.SourceFile], config: ConversionConfig
                ) -> list[sources.Task]:
    """Every source, with every variant it may need: all ops of its class if it is in train/.

    Which train sources end up in val, or past --augment_max_source, is only decided after the
    pass, among the *usable* ones (so a corrupt file never takes a val slot). Encoding a few
    unused variants of a small image costs far less than a second decode would.
    """
    spec = _augment_spec(config)
    return [sources.Task(f.relpath, f.path,
                         ("none",) + (spec.get(f.class_name, ()) if f.split == "train" else ()))
            for f in files]


def _final_splits(usable: Sequence[sources.SourceFile], config: ConversionConfig
                  ) -> dict[str, str]:
    """relpath -> split: val carved (stratified, seeded) from usable train unless val/ exists."""
    split_of = {f.relpath: f.split for f in usable}
    if any(f.split == "val" for f in usable):
        logging.info("Using the data_dir's val folder; val_fraction=%s is not applied.",
                     config.val_fraction)
        return split_of
    _, val = shard_plan.split_train_val([f for f in usable if f.split == "train"],
                                        config.val_fraction, config.seed)
    split_of.update({f.relpath: "val" for f in val})
    return split_of


class _Progress:
    """Logs `done/total, images/s, ETA` at most every `every` seconds, and at the end."""

    def __init__(self, total: int, label: str, enabled: bool, every: float = 5.0) -> None:
        self.total, self.label, self.enabled, self.every = total, label, enabled, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            logging.info("%s: %d/%d images (%.0f%%), %.1f images/s, ETA %s", self.label,
                         self.done, self.total, 100.0 * self.done / max(self.total, 1), rate,
                         time.strftime("%H:%M:%S", time.gmtime(eta)))

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)


def _process(tasks: Sequence[sources.Task], config: ConversionConfig
             ) -> Iterator[sources.Processed]:
    workers = min(config.workers(), len(tasks))
    settings = config.settings()
    if workers <= 1:
        # In-process: no pickling, no pool start-up; same function, so same bytes. One OpenCV
        # thread, as in a pool worker, so --num_workers=1 really means one core.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for task in tasks:
                yield sources.process_source(task, settings)
        finally:
            cv2.setNumThreads(threads)
        return
    # spawn (not fork): the parent holds TensorFlow's threads and state, which fork would copy
    # unsafely. Workers import sources.py, which never imports TensorFlow.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    work = functools.partial(sources.process_source, settings=settings)
    with _main_module_hidden():
        pool = ctx.Pool(workers, initializer=sources.init_worker)
    with pool:
        yield from pool.imap(work, tasks, chunksize=chunk)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Starts spawn workers without re-importing the caller's __main__.

    spawn re-runs the parent's main module (script, notebook kernel, `-m` entry) in every worker
    so that functions defined there can be unpickled. Ours live in sources.py, and a main module
    that imports TensorFlow would cost each worker seconds and ~600 MB (measured: 700 MB RSS
    per worker instead of 75 MB). Workers are created inside this block only.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _run_pass(tasks: list[sources.Task], spill: Spill, config: ConversionConfig,
              progress: bool) -> tuple[dict[str, SpillEntry], float, int]:
    """Processes every task not already in the spill; returns the index, images/s, count done."""
    reusable = {}
    for task in tasks:
        entry = spill.index.get(task.key)
        if (entry is not None and (entry.reason or entry.augmentations == task.augmentations)
                and entry.signature == sources.file_signature(task.path)):
            reusable[task.key] = entry
    todo = [t for t in tasks if t.key not in reusable]
    if reusable:
        logging.info("Resuming: %d of %d sources already processed.", len(reusable), len(tasks))
    meter = _Progress(len(todo), "Converting", progress)
    for processed in _process(todo, config):
        reusable[processed.key] = spill.append(processed)
        meter.update()
    return reusable, meter.rate(), len(todo)


# ---------------------------------------------------------------------------------------------
# After the pass: rejects, duplicates, shard plan, writing, manifest.

# Near pairs grow as n^2 on pathological data (a 64-bit hash once listed 856k pairs: a 220 MB
# manifest that every pipeline build had to parse). The manifest keeps the closest pairs, cross-
# split first, and the full counts; --dedupe=drop always acts on all pairs.
MAX_NEAR_PAIRS_IN_MANIFEST = 10_000


def _manifest_duplicates(duplicates: dict, drops: dict[str, str]) -> dict:
    near, counts = duplicates["near"], dedupe.summarize(duplicates)
    kept = sorted(near, key=lambda p: (not p["cross_split"], p["distance"], p["paths"]))
    kept = sorted(kept[:MAX_NEAR_PAIRS_IN_MANIFEST], key=lambda p: p["paths"])
    return {
        "exact": duplicates["exact"],
        "near": kept,
        "near_pairs_total": counts["near_pairs"],
        "near_cross_split_total": counts["near_cross_split_pairs"],
        "near_pairs_listed": len(kept),
        "dropped": [{"path": k, "reason": drops[k]} for k in sorted(drops)],
    }


def _check_rejects(rejected: list[dict[str, str]], total: int, usable: int,
                   config: ConversionConfig) -> None:
    for item in rejected[:20]:
        logging.warning("Rejected %s: %s", item["path"], item["reason"])
    if len(rejected) > 20:
        logging.warning("... and %d more rejected files (the manifest lists all of them).",
                        len(rejected) - 20)
    first = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:3])
    if usable == 0:
        raise ConversionError(
            f"No usable images in data_dir={str(config.data_dir)!r}: {total} file(s) found, "
            f"{len(rejected)} rejected ({first}). Check the folder holds JPEG/PNG/BMP X-rays in "
            "train|test/<class>/ folders."
        )
    fraction = len(rejected) / max(total, 1)
    if fraction > config.max_reject_fraction:
        raise ConversionError(
            f"Rejected {len(rejected)} of {total} files ({fraction:.2%}), more than "
            f"max_reject_fraction={config.max_reject_fraction} ({first}...). Fix or remove the "
            "bad files (the log above lists up to 20), or accept the loss with "
            f"--max_reject_fraction={min(1.0, round(fraction + 0.005, 3))}."
        )


class _Shards:
    """Writes planned shards from the spill; keeps shards a previous (killed) run completed.

    `.build/shards.json` maps each written shard to its entry and a fingerprint of its planned
    content, so a resumed run keeps a shard only if it is intact and still what the plan wants.
    """

    def __init__(self, out: Path, index: dict[str, SpillEntry], spill: Spill,
                 files: dict[str, sources.SourceFile], config: ConversionConfig) -> None:
        self.out, self.index, self.spill, self.files, self.config = out, index, spill, files, config
        self.journal = conversion_state.ShardJournal(out)

    def _fingerprint(self, examples: Sequence[shard_plan.PlannedExample]) -> str:
        digest = hashlib.sha256()
        for e in examples:
            digest.update(f"{e.relpath}|{e.augmentation}|{self.index[e.relpath].info.sha256}|"
                          f"{e.num_bytes}\n".encode("utf-8"))
        return digest.hexdigest()

    def _records(self, examples: Sequence[shard_plan.PlannedExample]) -> Iterator[bytes]:
        c = self.config
        for e in examples:
            entry, source = self.index[e.relpath], self.files[e.relpath]
            info = entry.info
            # deterministic=True: tf.train.Features is a protobuf map whose default serialization
            # order varies between processes, which would break byte-identical reruns.
            yield features.make_example(features.ExampleRecord(
                encoded=self.spill.outputs(entry)[e.augmentation], image_format=c.image_format,
                height=c.image_size, width=c.image_size, channels=c.channels,
                label=source.label, class_text=source.class_name, source_path=e.relpath,
                source_sha256=info.sha256, source_width=info.width, source_height=info.height,
                source_mode=info.mode, source_format=info.format, source_bytes=info.num_bytes,
                augmentation=e.augmentation,
            )).SerializeToString(deterministic=True)

    def write(self, split: str, shards: list[list[shard_plan.PlannedExample]]) -> list[dict]:
        entries = []
        for i, examples in enumerate(shards):
            name = shard_writer.shard_name(split, i, len(shards))
            fingerprint = self._fingerprint(examples)
            if (known := self.journal.intact(name, fingerprint)) is not None:
                entries.append(known)
                continue
            entry = shard_writer.write_shard(self.out / name, self._records(examples),
                                             self.config.compression)
            entries.append(entry)
            self.journal.record(name, fingerprint, entry)
            logging.info("Wrote %s: %d examples, %.1f MB", name, entry["num_examples"],
                         entry["bytes"] / 2**20)
        return entries


def _count(examples: Sequence[shard_plan.PlannedExample], files: dict[str, sources.SourceFile],
           originals: bool | None) -> dict[str, int]:
    counts = {name: 0 for name in labels.CLASS_NAMES}
    for e in examples:
        if originals is None or (e.augmentation == "none") == originals:
            counts[files[e.relpath].class_name] += 1
    return counts


def _split_examples(kept: Sequence[sources.SourceFile], index: dict[str, SpillEntry],
                    split_of: dict[str, str], config: ConversionConfig
                    ) -> dict[str, list[shard_plan.PlannedExample]]:
    """The records to write per split: originals, plus the chosen train sources' variants."""
    train = [f for f in kept if split_of[f.relpath] == "train"]
    variants = shard_plan.select_augmented(train, _augment_spec(config),
                                           config.augment_max_source, config.seed)
    per_split: dict[str, list[shard_plan.PlannedExample]] = {s: [] for s in labels.SPLITS}
    for f in kept:
        entry = index[f.relpath]
        sizes = dict(zip(entry.augmentations, entry.sizes))
        per_split[split_of[f.relpath]] += [
            shard_plan.PlannedExample(f.relpath, name, sizes[name])
            for name in ("none",) + variants.get(f.relpath, ())]
    return {s: examples for s, examples in per_split.items() if examples}


def build_records(config: ConversionConfig, progress: bool = True) -> dict[str, Any]:
    """Converts `config.data_dir` into shards + manifest in `config.output_dir`; returns the manifest.

    Raises:
      ValueError: a layout error in data_dir (unknown folders: found vs expected).
      ConversionError: output_dir holds other data or records built with other arguments, too
        many files were rejected, or nothing usable was found.
    """
    start = time.monotonic()
    out, args = Path(config.output_dir), config.manifest_args()
    if not config.overwrite and (done := conversion_state.complete_manifest(out, args, _NOT_COMPARED)):
        logging.info("Records in %s are complete and match these arguments; nothing to do "
                     "(pass --overwrite to rebuild).", out)
        return done
    scan = sources.scan_sources(config.data_dir)
    try:
        conversion_state.prepare_output_dir(out, args, overwrite=config.overwrite, ignore=_NOT_COMPARED)
    except conversion_state.OutputDirError as err:
        raise ConversionError(str(err)) from err

    tasks = _plan_tasks(scan.files, config)
    files = {f.relpath: f for f in scan.files}
    logging.info("Found %d images in %s (%d other files); %d workers.", len(tasks),
                 config.data_dir, len(scan.rejected), min(config.workers(), max(len(tasks), 1)))
    spill = Spill(out / conversion_state.WORK_DIR / "pass1.spill")
    try:
        index, rate, decoded = _run_pass(tasks, spill, config, progress)
        rejected = sorted([{"path": p, "reason": r} for p, r in scan.rejected]
                          + [{"path": k, "reason": e.reason} for k, e in index.items() if e.reason],
                          key=lambda r: r["path"])
        usable = [f for f in scan.files if not index[f.relpath].reason]
        _check_rejects(rejected, len(scan.files) + len(scan.rejected), len(usable), config)
        split_of = _final_splits(usable, config)

        items = [dedupe.HashedItem(f.relpath, split_of[f.relpath], index[f.relpath].info.sha256,
                                   index[f.relpath].phash) for f in usable]
        duplicates = dedupe.find_duplicates(items, config.near_distance)
        drops = dedupe.plan_drops(items, duplicates) if config.dedupe == "drop" else {}
        counts = dedupe.summarize(duplicates)
        logging.info("Duplicates: %d exact groups, %d near pairs (%d cross-split); %s.",
                     counts["exact_groups"], counts["near_pairs"],
                     counts["exact_cross_split_groups"] + counts["near_cross_split_pairs"],
                     f"dropped {len(drops)}" if drops else f"none dropped (--dedupe={config.dedupe})")

        kept = [f for f in usable if f.relpath not in drops]
        per_split = _split_examples(kept, index, split_of, config)
        plans = {split: shard_plan.plan_shards(
            examples, num_shards=config.num_shards, shard_size_mb=config.shard_size_mb,
            min_shards=config.min_shards if split == "train" else 1, seed=config.seed)
            for split, examples in per_split.items()}
        if len(plans.get("train", ())) < config.min_shards:
            logging.warning("Only %d train examples: %d train shards, fewer than min_shards=%d.",
                            len(per_split.get("train", ())), len(plans.get("train", ())),
                            config.min_shards)
        conversion_state.remove_stale_shards(out, {shard_writer.shard_name(s, i, len(p))
                                         for s, p in plans.items() for i in range(len(p))})
        shards = _Shards(out, index, spill, files, config)
        splits_info = {split: {
            "num_examples": len(per_split[split]),
            "per_class": _count(per_split[split], files, None),
            "originals_per_class": _count(per_split[split], files, True),
            "variants_per_class": _count(per_split[split], files, False),
            "shards": shards.write(split, plan),
        } for split, plan in plans.items()}
    finally:
        spill.close()

    result = {
        "format_version": features.FORMAT_VERSION,
        "created_by": f"xray_tfdata {__version__}",
        "args": args,
        "label_map": dict(labels.LABEL_MAP),
        "image": {"size": config.image_size, "channels": config.channels,
                  "format": config.image_format, "resize_mode": config.resize_mode},
        "compression": config.compression,
        "splits": splits_info,
        "rejected": rejected,
        "duplicates": _manifest_duplicates(duplicates, drops),
    }
    manifest.write_manifest(out, result)
    shutil.rmtree(out / conversion_state.WORK_DIR)  # complete: the spill (about the records' size) goes
    total_bytes = sum(s["bytes"] for info in splits_info.values() for s in info["shards"])
    logging.info(
        "Done in %.1f s: %s; %d rejected, %d dropped as duplicates; %d sources decoded at "
        "%.1f images/s; %.1f MB in %s.", time.monotonic() - start,
        ", ".join(f"{s} {i['num_examples']} examples in {len(i['shards'])} shards"
                  for s, i in splits_info.items()),
        len(rejected), len(drops), decoded, rate, total_bytes / 2**20, out)
    return result
