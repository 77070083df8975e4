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
import json
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

from xray_tfdata import __version__, files, labels
from xray_tfdata.records import (
    dedupe,
    features,
    image_io,
    manifest,
    offline_augment,
    shard_plan,
    shard_writer,
    sources,
)
from xray_tfdata.records.shard_writer import Spill, SpillEntry

DEDUPE_MODES: tuple[str, ...] = ("report", "drop")
_DEFAULT_NEAR_DISTANCE = dedupe.DEFAULT_NEAR_DISTANCE  # the `dedupe` field shadows the module
# Not written to the manifest: they change how the run executes, not what it writes (so 1 and 8
# workers give byte-identical manifests), or would make a copied records dir lie (output_dir).
_NOT_IN_MANIFEST = ("output_dir", "num_workers", "overwrite")
# Also not compared on resume: a rerun with a looser threshold must be allowed.
_NOT_COMPARED = ("max_reject_fraction",)


class ConversionError(RuntimeError):
    """The conversion cannot (or must not) complete; the message says why and what to do."""


def _require(ok: bool, field: str, value: Any, allowed: str, fix: str = "") -> None:
    if not ok:
        raise ValueError(f"{field} must be {allowed}. Received: {field}={value!r}. {fix}".rstrip())


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides the records; validated on construction."""

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
        _require(bool(str(self.data_dir)), "data_dir", self.data_dir, "a folder path",
                 "Pass --data_dir=<the extracted Kaggle folder>.")
        _require(bool(str(self.output_dir)), "output_dir", self.output_dir, "a folder path")
        _require(isinstance(self.image_size, int) and 8 <= self.image_size <= 4096,
                 "image_size", self.image_size, "an int in [8, 4096]", "224 is the default.")
        _require(self.resize_mode in image_io.RESIZE_MODES, "resize_mode", self.resize_mode,
                 f"one of {image_io.RESIZE_MODES}")
        _require(self.channels in (1, 3), "channels", self.channels, "1 or 3",
                 "X-rays are gray: 1 is 3x smaller; 3 repeats the gray channel.")
        _require(self.image_format in features.IMAGE_FORMATS, "image_format", self.image_format,
                 f"one of {features.IMAGE_FORMATS}")
        _require(isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100,
                 "jpeg_quality", self.jpeg_quality, "an int in [1, 100]")
        _require(self.compression in shard_writer.COMPRESSIONS, "compression", self.compression,
                 "'' (none) or 'GZIP'")
        _require(self.shard_size_mb > 0, "shard_size_mb", self.shard_size_mb, "> 0",
                 "About 100 MB per shard reads well; or set num_shards.")
        _require(isinstance(self.num_shards, int) and self.num_shards >= 0, "num_shards",
                 self.num_shards, "an int >= 0 (0 = size shards by shard_size_mb)")
        _require(isinstance(self.min_shards, int) and self.min_shards >= 1, "min_shards",
                 self.min_shards, "an int >= 1",
                 "Use at least the number of readers (workers) of a multi-worker job.")
        _require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "in [0, 1)")
        _require(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an int >= 0")
        try:
            offline_augment.parse_augment_spec(self.augment)
        except ValueError as err:
            raise ValueError(f"augment={self.augment!r} is invalid: {err}") from err
        _require(isinstance(self.augment_max_source, int) and self.augment_max_source >= 0,
                 "augment_max_source", self.augment_max_source,
                 "an int >= 0 (0 = every train image of the class)")
        _require(self.dedupe in DEDUPE_MODES, "dedupe", self.dedupe, f"one of {DEDUPE_MODES}")
        _require(isinstance(self.near_distance, int)
                 and 0 <= self.near_distance <= dedupe.HASH_BITS, "near_distance",
                 self.near_distance, f"an int in [0, {dedupe.HASH_BITS}] (Hamming bits)")
        _require(0.0 <= self.max_reject_fraction <= 1.0, "max_reject_fraction",
                 self.max_reject_fraction, "in [0, 1]")
        _require(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers",
                 self.num_workers, "an int >= 0 (0 = all cores)")

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
    near = duplicates["near"]
    kept = sorted(near, key=lambda p: (not p["cross_split"], p["distance"], p["paths"]))
    kept = sorted(kept[:MAX_NEAR_PAIRS_IN_MANIFEST], key=lambda p: p["paths"])
    return {
        "exact": duplicates["exact"],
        "near": kept,
        "near_pairs_total": len(near),
        "near_cross_split_total": sum(p["cross_split"] for p in near),
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
        self.journal_path = out / shard_writer.WORK_DIR / "shards.json"
        self.journal = (json.loads(self.journal_path.read_text())
                        if self.journal_path.is_file() else {})

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
            path, fingerprint, known = self.out / name, self._fingerprint(examples), self.journal.get(name)
            if (known and known["fingerprint"] == fingerprint and path.is_file()
                    and path.stat().st_size == known["entry"]["bytes"]
                    and files.sha256_file(path) == known["entry"]["sha256"]):
                entries.append(known["entry"])
                continue
            entry = shard_writer.write_shard(path, self._records(examples), self.config.compression)
            entries.append(entry)
            self.journal[name] = {"fingerprint": fingerprint, "entry": entry}
            tmp = self.journal_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.journal, sort_keys=True))
            os.replace(tmp, self.journal_path)
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
    if not config.overwrite and (done := shard_writer.complete_manifest(out, args, _NOT_COMPARED)):
        logging.info("Records in %s are complete and match these arguments; nothing to do "
                     "(pass --overwrite to rebuild).", out)
        return done
    scan = sources.scan_sources(config.data_dir)
    try:
        shard_writer.prepare_output_dir(out, args, overwrite=config.overwrite, ignore=_NOT_COMPARED)
    except shard_writer.OutputDirError as err:
        raise ConversionError(str(err)) from err

    tasks = _plan_tasks(scan.files, config)
    files = {f.relpath: f for f in scan.files}
    logging.info("Found %d images in %s (%d other files); %d workers.", len(tasks),
                 config.data_dir, len(scan.rejected), min(config.workers(), max(len(tasks), 1)))
    spill = Spill(out / shard_writer.WORK_DIR / "pass1.spill")
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
        logging.info("Duplicates: %d exact groups, %d near pairs (%d cross-split); %s.",
                     len(duplicates["exact"]), len(duplicates["near"]),
                     sum(d["cross_split"] for d in duplicates["exact"] + duplicates["near"]),
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
        shard_writer.remove_stale_shards(out, {shard_writer.shard_name(s, i, len(p))
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
    shutil.rmtree(out / shard_writer.WORK_DIR)  # complete: the spill (about the records' size) goes
    total_bytes = sum(s["bytes"] for info in splits_info.values() for s in info["shards"])
    logging.info(
        "Done in %.1f s: %s; %d rejected, %d dropped as duplicates; %d sources decoded at "
        "%.1f images/s; %.1f MB in %s.", time.monotonic() - start,
        ", ".join(f"{s} {i['num_examples']} examples in {len(i['shards'])} shards"
                  for s, i in splits_info.items()),
        len(rejected), len(drops), decoded, rate, total_bytes / 2**20, out)
    return result
