"""The converter: X-ray collections -> sharded TFRecords + dataset_info.json, resumable, reproducible.

Inputs: one or more collections (collect.py): folder layouts or labels CSVs, with patient ids.

Design (why one decode pass with a spill file): the val carve, --dedupe=drop, the reject
threshold and shard sizes all need every source's validity / hash / encoded size *before* the
final plan, yet decoding a 1000-2000 px JPEG is most of the cost, so decoding twice (a hashing
pass, then a writing pass) would halve throughput. Instead:
  1. ONE pass over the sources in a spawn-context worker pool: each source is read and decoded
     once; the worker returns its SourceInfo, perceptual hash and every encoded output it may
     need (original + all variants of its class if it is in train/). The main process appends
     each result to an append-only spill file in `<output_dir>/.build/` and keeps only a small
     index in memory (no 6.4k images in RAM);
  2. plan (pure, stable key + seed): drop rejects, carve test / val from the usable sources
     (stratified, by patient group when ids are given: shard_plan.assign_splits), dedupe,
     choose the augmented sources, cut shards by actual encoded bytes;
  3. write shards in plan order in the main process, reading the bytes back from the spill.
Runners: steps 1 and 3 run locally (_LocalRunner: the pool, the spill) or, with --runner=beam, as
Beam pipelines (beam_runner.py); step 2, the scan and the manifest are this module's either way,
so both runners write byte-identical records.
Resume: the spill survives a kill -9 (a torn last frame is cut off), so a rerun decodes only the
sources not yet in it; complete shards recorded in `.build/shards.json` are kept. Output depends
only on per-source results, never on worker count or order.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging

from xray_tfdata import __version__, files, labels, paths
from xray_tfdata.records import (
    collect,
    conversion_state,
    decode_pass,
    dedupe,
    features,
    manifest,
    offline_augment,
    patients,
    shard_plan,
    shard_writer,
    sources,
)
from xray_tfdata.records.conversion_config import NOT_COMPARED, ConversionConfig
from xray_tfdata.records.conversion_state import Spill, SpillEntry

__all__ = ["ConversionConfig", "ConversionError", "build_records"]


class ConversionError(RuntimeError):
    """The conversion cannot (or must not) complete; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Planning the inputs and processing them once.


def _augment_spec(config: ConversionConfig) -> dict[str, tuple[str, ...]]:
    return {name: tuple(op.name for op in ops)
            for name, ops in offline_augment.parse_augment_spec(
                config.augment, config.class_names()).items()}


def _plan_tasks(files: Sequence[sources.SourceFile], config: ConversionConfig
                ) -> list[decode_pass.Task]:
    """Every source, with every variant it may need: all ops of its class if it may be train.

    Which train sources end up in val, or past --augment_max_source, is only decided after the
    pass, among the *usable* ones (so a corrupt file never takes a val slot). Encoding a few
    unused variants of a small image costs far less than a second decode would.
    """
    spec = _augment_spec(config)
    return [decode_pass.Task(f.relpath, f.path,
                         ("none",) + (spec.get(f.class_name, ()) if _may_train(f, config) else ()))
            for f in files]


def _may_train(f: sources.SourceFile, config: ConversionConfig) -> bool:
    """Whether the split plan can put `f` in train (see shard_plan.assign_splits)."""
    if config.holdout_source:
        return f.source != config.holdout_source and f.split != "val"
    return f.split in ("train", "")


def _final_splits(usable: Sequence[sources.SourceFile], links: dict | None,
                  config: ConversionConfig) -> dict[str, str]:
    """relpath -> split: given splits kept, test and val carved per collection (assign_splits)."""
    if any(f.split == "val" for f in usable):
        logging.info("Using the data_dir's val split; val_fraction=%s is not applied to it.",
                     config.val_fraction)
    if config.test_fraction is not None and not config.holdout_source and all(
            "test" in {f.split for f in usable if f.source == name}
            for name in {f.source for f in usable}):
        logging.warning("--test_fraction=%s is not used: every collection has its own test split.",
                        config.test_fraction)
    return shard_plan.assign_splits(
        usable, val_fraction=config.val_fraction, seed=config.seed,
        test_fraction=config.test_fraction, holdout_source=config.holdout_source,
        group_of=None if links is None else collect.patient_groups(usable, links),
        classes=config.class_names())


def _check_patient_overlap(files: Sequence[sources.SourceFile], config: ConversionConfig) -> int:
    """Refuses (or, with --patient_overlap=warn, logs) patients the input puts in two splits."""
    overlaps = patients.overlapping_patients(files)
    if overlaps:
        message = patients.overlap_message(overlaps)
        if config.patient_overlap == "error":
            raise ConversionError(
                f"{message}. Fix the split column (or leave it empty for these patients: the "
                "converter then keeps each patient in one split), or pass "
                "--patient_overlap=warn to go on.")
        logging.warning("%s; going on (--patient_overlap=warn).", message)
    return len(overlaps)


def _unmapped_labels(inputs: collect.Inputs) -> collections.Counter:
    """Labels, findings or folders the scan skipped for want of a class, with their counts."""
    found: collections.Counter = collections.Counter()
    for facts in inputs.collections.values():
        found.update((facts.get("labels_csv") or {}).get("skipped_labels", {}))
        found.update((facts.get("preset") or {}).get("skipped_findings", {}))
    return found


def _check_class_coverage(inputs: collect.Inputs, config: ConversionConfig) -> None:
    """Every class of --classes needs an image; a labels CSV mostly skipped is worth a warning.

    Issue 16: a CSV whose labels did not map built a one-class set without a word. A class asked
    for explicitly (--classes) and absent fails, naming what was found instead; with the default
    classes (a test-only external set may lack one) it is a warning.
    """
    unmapped = _unmapped_labels(inputs)
    top = ", ".join(f"{label!r} {n}" for label, n in unmapped.most_common(5))
    for name, facts in sorted(inputs.collections.items()):
        csv_facts = facts.get("labels_csv") or {}
        rows, skipped = csv_facts.get("rows", 0), sum(csv_facts.get("skipped_labels", {}).values())
        if rows and skipped > rows / 2:
            labels_here = collections.Counter(csv_facts["skipped_labels"]).most_common(5)
            logging.warning(
                "%d of %d rows of %s were skipped: their labels map to no class of %s (most "
                "frequent: %s). Map them with --label_map='<label>=<CLASS>,...'.", skipped, rows,
                csv_facts.get("file", name or "the labels CSV"), config.classes,
                ", ".join(f"{label!r} {n}" for label, n in labels_here))
    counts = collections.Counter(f.class_name for f in inputs.files)
    missing = [c for c in config.class_names() if not counts[c]]
    if not missing or not inputs.files:
        return  # nothing usable at all is refused later, with the rejects' reasons
    found = ", ".join(f"{c} {counts[c]}" for c in config.class_names() if counts[c])
    message = (f"No image of class {', '.join(missing)} in data_dir={str(config.data_dir)!r} "
               f"(--classes={config.classes}): found {found}"
               + (f"; skipped unmapped labels {top}" if top else ""))
    if config.classes != ",".join(labels.DEFAULT_CLASSES):
        raise ConversionError(
            f"{message}. Map the source's names onto it with --label_map=<name>={missing[0]}, "
            "or leave it out of --classes.")
    logging.warning("%s. A model trained on these records never sees it; pass --classes=%s if "
                    "the collection has no such class.", message,
                    ",".join(c for c in config.class_names() if c not in missing))


def _check_train_classes(per_split: dict[str, list], files: dict[str, sources.SourceFile],
                         config: ConversionConfig) -> None:
    """Warns when a class has no training example (all of it went to val / test)."""
    train = per_split.get("train")
    if not train:
        return  # a test-only collection: nothing is trained on these records
    counts = collections.Counter(files[e.relpath].class_name for e in train)
    absent = [c for c in config.class_names() if not counts[c]]
    if absent:
        logging.warning("No training example of class %s (train holds %s): a model trained on "
                        "these records cannot learn it. Give it more images, or leave it out of "
                        "--classes.", ", ".join(absent),
                        ", ".join(f"{c} {counts[c]}" for c in config.class_names()))


# ---------------------------------------------------------------------------------------------
# After the pass: rejects, duplicates, shard plan, writing, manifest.

def _reason_counts(rejected: Sequence[dict[str, str]]) -> str:
    """e.g. "100000 missing, 2 corrupt JPEG": each reason's kind, the text before ':' or '('."""
    kinds = collections.Counter(r["reason"].split(":")[0].split("(")[0].strip()[:40]
                                for r in rejected)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(4)) + (
        ", ..." if len(kinds) > 4 else "")


def _check_rejects(rejected: list[dict[str, str]], total: int, usable: int,
                   config: ConversionConfig) -> None:
    """Refuses a build with nothing usable or too many rejects; names where all are listed.

    A refused build writes no manifest, so the full list goes to `.build/rejected.json` (kept
    until the build completes) and the message gives counts by kind and the first few paths.
    """
    fraction = len(rejected) / max(total, 1)
    refused = usable == 0 or fraction > config.max_reject_fraction
    out = paths.location(config.output_dir)
    # Nothing usable keeps nothing (see _build), so no list is promised then.
    listing = (None if usable == 0 else conversion_state.rejected_path(out) if refused
               else out / manifest.MANIFEST_NAME)
    for item in rejected[:20]:
        logging.warning("Rejected %s: %s", item["path"], item["reason"])
    if len(rejected) > 20:
        logging.warning("... and %d more rejected files%s.", len(rejected) - 20,
                        f" ({listing} lists all of them)" if listing else "")
    if not refused:
        return
    if listing:  # kept beside the resumable spill until the build completes
        files.write_json(listing, {"rejected": rejected})
    where = f"; all are listed in {listing}" if listing else ""
    first = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:3])
    if usable == 0:
        raise ConversionError(
            f"No usable images in data_dir={str(config.data_dir)!r}: {total} file(s) found, "
            f"{len(rejected)} rejected ({_reason_counts(rejected)}; e.g. {first}). Check the "
            "folder holds JPEG/PNG/BMP/DICOM X-rays in {train,val,test}/<CLASS>/ or <CLASS>/ "
            "folders, or that the --labels_csv paths are relative to --data_dir."
        )
    raise ConversionError(
        f"Rejected {len(rejected)} of {total} files ({fraction:.2%}), more than "
        f"max_reject_fraction={config.max_reject_fraction} ({_reason_counts(rejected)}; e.g. "
        f"{first}{where}). Fix or remove the bad files, or "
        f"accept the loss with --max_reject_fraction={min(1.0, round(fraction + 0.005, 3))}."
    )


def shard_records(examples: Sequence[shard_plan.PlannedExample], index: Mapping[str, SpillEntry],
                  files: Mapping[str, sources.SourceFile], config: ConversionConfig,
                  outputs: Callable[[SpillEntry], dict[str, bytes]]) -> Iterator[bytes]:
    """One shard's serialized records, in plan order; `outputs` reads a source's encoded images.

    Shared by every runner (the local spill, Beam's per-source files), so their shards match.
    """
    c = config
    for e in examples:
        entry, source = index[e.relpath], files[e.relpath]
        info = entry.info
        yield features.serialize(features.ExampleRecord(
            encoded=outputs(entry)[e.augmentation], image_format=c.image_format,
            height=c.image_size, width=c.image_size, channels=c.channels,
            label=source.label, class_text=source.class_name, source_path=e.relpath,
            source_sha256=info.sha256, source_width=info.width, source_height=info.height,
            source_mode=info.mode, source_format=info.format, source_bytes=info.num_bytes,
            augmentation=e.augmentation, source=source.source,
            patient_hash=source.patient, metadata=source.metadata, tags=info.tags,
        ))


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
            f = self.files[e.relpath]  # what the record says beyond the image (CSV label, patient)
            digest.update(f"{e.relpath}|{e.augmentation}|{self.index[e.relpath].info.sha256}|"
                          f"{e.num_bytes}|{f.label}|{f.source}|{f.patient}|{f.metadata}\n"
                          .encode("utf-8"))
        return digest.hexdigest()

    def write(self, split: str, shards: list[list[shard_plan.PlannedExample]]) -> list[dict]:
        entries = []
        for i, examples in enumerate(shards):
            name = shard_writer.shard_name(split, i, len(shards))
            fingerprint = self._fingerprint(examples)
            if (known := self.journal.intact(name, fingerprint)) is not None:
                entries.append(known)
                continue
            entry = shard_writer.write_shard(
                self.out / name, shard_records(examples, self.index, self.files, self.config,
                                               self.spill.outputs), self.config.compression)
            entries.append(entry)
            self.journal.record(name, fingerprint, entry)
            logging.info("Wrote %s: %d examples, %.1f MB", name, entry["num_examples"],
                         entry["bytes"] / 2**20)
        return entries


def _count(examples: Sequence[shard_plan.PlannedExample], files: dict[str, sources.SourceFile],
           originals: bool | None, classes: Sequence[str]) -> dict[str, int]:
    counts = {name: 0 for name in classes}
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


def _split_info(examples: Sequence[shard_plan.PlannedExample],
                files: dict[str, sources.SourceFile], shards: list[dict],
                classes: Sequence[str]) -> dict[str, Any]:
    """A split's manifest entry; per_source only for named collections, patients only with ids."""
    info: dict[str, Any] = {
        "num_examples": len(examples),
        "per_class": _count(examples, files, None, classes),
        "originals_per_class": _count(examples, files, True, classes),
        "variants_per_class": _count(examples, files, False, classes),
        "shards": shards,
    }
    names = sorted({files[e.relpath].source for e in examples})
    if names != [""]:
        info["per_source"] = {name: _count([e for e in examples
                                            if files[e.relpath].source == name], files, None,
                                           classes)
                              for name in names}
    hashes = {files[e.relpath].patient for e in examples}
    if any(hashes):
        info["patients"] = len(hashes - {""})
    return info


def _write_all(out: Path, plans: dict[str, list], per_split: dict[str, list],
               files: dict[str, sources.SourceFile],
               write: Callable[[dict[str, list]], dict[str, list[dict]]],
               classes: Sequence[str]) -> dict[str, Any]:
    conversion_state.remove_stale_shards(out, {shard_writer.shard_name(s, i, len(p))
                                               for s, p in plans.items() for i in range(len(p))})
    written = write(plans)
    return {split: _split_info(per_split[split], files, written[split], classes)
            for split in plans}


class _LocalRunner:
    """The heavy phases on this machine: a process pool into the spill, shards from the spill.

    Resumable after kill -9 (the spill and the shard journal). `--runner=beam` swaps in
    beam_runner.BeamRunner, which has the same three methods.
    """

    def __init__(self, out: Path, config: ConversionConfig, progress: bool) -> None:
        self.out, self.config, self.progress = out, config, progress
        self.spill = Spill(conversion_state.spill_path(out))  # local scratch for a URL

    def decode(self, tasks: list[decode_pass.Task]) -> tuple[dict[str, SpillEntry], float, int]:
        return decode_pass.run_pass(tasks, self.spill, self.config.workers(),
                                    self.config.settings(), self.progress)

    def write(self, plans: dict[str, list], index: dict[str, SpillEntry],
              files: dict[str, sources.SourceFile]) -> dict[str, list[dict]]:
        shards = _Shards(self.out, index, self.spill, files, self.config)
        return {split: shards.write(split, plan) for split, plan in plans.items()}

    def close(self) -> None:
        self.spill.close()


def _runner_class(config: ConversionConfig) -> type:
    """The runner of the decode pass and the shard writes; Beam is imported only when asked."""
    if config.runner != "beam":
        return _LocalRunner
    from xray_tfdata.records import beam_runner  # noqa: PLC0415 - apache_beam only with the extra

    beam_runner.import_beam()  # a missing extra fails here, before the output dir is touched
    beam_runner.check_output_dir(str(config.output_dir))  # likewise a scheme Beam lacks
    return beam_runner.BeamRunner


def _plan(per_split: dict[str, list], config: ConversionConfig) -> dict[str, list]:
    plans = {split: shard_plan.plan_shards(
        examples, num_shards=config.num_shards, shard_size_mb=config.shard_size_mb,
        min_shards=config.min_shards if split == "train" else 1, seed=config.seed)
        for split, examples in per_split.items()}
    if "train" in plans and len(plans["train"]) < config.min_shards:
        logging.warning("Only %d train examples: %d train shards, fewer than min_shards=%d.",
                        len(per_split["train"]), len(plans["train"]), config.min_shards)
    return plans


def _dedupe(usable: Sequence[sources.SourceFile], index: dict[str, SpillEntry],
            split_of: dict[str, str], links: dict | None, config: ConversionConfig
            ) -> tuple[dict, dict[str, str]]:
    """Duplicates with their final splits (`links`: found before the split, reused) + drops."""
    items = collect.hashed_items(usable, index, split_of)
    duplicates = (dedupe.find_duplicates(items, config.near_distance) if links is None
                  else dedupe.with_splits(links, split_of))
    drops = dedupe.plan_drops(items, duplicates) if config.dedupe == "drop" else {}
    counts = dedupe.summarize(duplicates)
    logging.info("Duplicates: %d exact groups, %d near pairs (%d cross-split); %s.",
                 counts["exact_groups"], counts["near_pairs"],
                 counts["exact_cross_split_groups"] + counts["near_cross_split_pairs"],
                 f"dropped {len(drops)}" if drops else f"none dropped (--dedupe={config.dedupe})")
    return duplicates, drops


_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "it is on a read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.ENOTDIR: "a part of its path is a file, not a directory"}


def build_records(config: ConversionConfig, progress: bool = True) -> dict[str, Any]:
    """Converts `config.data_dir` into shards + manifest in `config.output_dir`; returns the manifest.

    One build per output dir at a time (conversion_state.build_lock); a second is refused.

    Raises:
      ValueError: a layout or labels-CSV error in a data_dir (found vs expected).
      ConversionError: output_dir holds other data or records built with other arguments, is
        being built by another process, cannot be written (disk full, read-only), too many
        files were rejected, patients cross splits, or nothing usable was found.
    """
    start = time.monotonic()
    out, args = paths.location(config.output_dir), config.manifest_args()
    done = (None if config.overwrite
            else conversion_state.complete_manifest(out, args, NOT_COMPARED))
    if done:
        logging.info("Records in %s are complete and match these arguments; nothing to do "
                     "(pass --overwrite to rebuild).", out)
        return done
    runner_class = _runner_class(config)
    inputs = collect.scan(config.source_specs(), csv_columns=config.csv_columns,
                          label_map=config.label_map,
                          key=patients.derive_key(config.seed, config.patient_key),
                          rules=config.preset_rules())
    _check_class_coverage(inputs, config)
    overlapping = _check_patient_overlap(inputs.files, config)
    try:
        # Held from before the output dir is touched until .build/ is gone.
        with conversion_state.build_lock(out):
            return _build(config, inputs, overlapping, progress, start, runner_class)
    except (conversion_state.OutputDirError, decode_pass.WorkerDied) as err:
        raise ConversionError(str(err)) from None
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise ConversionError(
            f"Cannot write to output_dir={str(out)!r}{where}: {_WRITE_ERRORS[err.errno]} "
            f"({os.strerror(err.errno)}). Free space or fix the permissions, or choose another "
            "--output_dir; rerunning the same command resumes what was written.") from None


def _build(config: ConversionConfig, inputs: collect.Inputs, overlapping: int, progress: bool,
           start: float, runner_class: type) -> dict[str, Any]:
    """The build proper, under the output dir's lock: pass, plan, shards, manifest."""
    out, args = paths.location(config.output_dir), config.manifest_args()
    if not config.overwrite and (done := conversion_state.complete_manifest(out, args,
                                                                            NOT_COMPARED)):
        return done  # another build completed it while this one scanned
    conversion_state.prepare_output_dir(out, args, overwrite=config.overwrite,
                                        ignore=NOT_COMPARED)

    tasks = _plan_tasks(inputs.files, config)
    files = {f.relpath: f for f in inputs.files}
    logging.info("Found %d images in %s (%d other files); %d workers.", len(tasks),
                 config.data_dir, len(inputs.rejected), min(config.workers(), max(len(tasks), 1)))
    runner = runner_class(out, config, progress)
    try:
        index, rate, decoded = runner.decode(tasks)
        rejected = sorted([{"path": p, "reason": r} for p, r in inputs.rejected]
                          + [{"path": k, "reason": e.reason} for k, e in index.items() if e.reason],
                          key=lambda r: r["path"])
        usable = [f for f in inputs.files if not index[f.relpath].reason]
        try:
            _check_rejects(rejected, len(inputs.files) + len(inputs.rejected), len(usable),
                           config)
        except ConversionError:
            if not usable:  # nothing to resume; a corrected rerun (say, another --data_dir) is
                conversion_state.discard_work(out)  # a new build, not one to refuse
            raise
        # With patient ids, duplicate links join patients before the split: found once, here.
        links = (collect.find_links(usable, index, config.near_distance)
                 if any(f.patient for f in usable) else None)
        split_of = _final_splits(usable, links, config)
        duplicates, drops = _dedupe(usable, index, split_of, links, config)
        per_split = _split_examples([f for f in usable if f.relpath not in drops], index,
                                    split_of, config)
        _check_train_classes(per_split, files, config)
        splits_info = _write_all(out, _plan(per_split, config), per_split, files,
                                 lambda plans: runner.write(plans, index, files),
                                 config.class_names())
    finally:
        runner.close()

    result = {
        "format_version": features.FORMAT_VERSION,
        "created_by": f"xray_tfdata {__version__}",
        "args": args,
        "label_map": labels.label_map(config.class_names()),
        "image": {"size": config.image_size, "channels": config.channels,
                  "format": config.image_format, "resize_mode": config.resize_mode,
                  # Only when set: a default build's manifest stays byte-identical.
                  **({"intensity": config.intensity} if config.intensity != "none" else {})},
        "compression": config.compression,
        "splits": splits_info,
        "rejected": rejected,
        "duplicates": dedupe.manifest_section(duplicates, drops),
    }
    if not inputs.legacy:
        result["sources"] = inputs.collections
    if overlapping:
        result["patient_overlap"] = {"patients": overlapping, "mode": config.patient_overlap}
    manifest.write_manifest(out, result)
    # Complete: the spill (about the records' size) goes; build_lock removes .build/ itself.
    conversion_state.discard_work(out)
    total_bytes = sum(s["bytes"] for info in splits_info.values() for s in info["shards"])
    logging.info(
        "Done in %.1f s: %s; %d rejected, %d dropped as duplicates; %d sources decoded at "
        "%.1f images/s; %.1f MB in %s.", time.monotonic() - start,
        ", ".join(f"{s} {i['num_examples']} examples in {len(i['shards'])} shards"
                  for s, i in splits_info.items()),
        len(rejected), len(drops), decoded, rate, total_bytes / 2**20, out)
    return result
