"""The run spec: the settings that define a training run, recorded in its model dir.

A rerun of `train` into a model dir with a checkpoint resumes that run. Without a record of what
the run was, a rerun with other settings (--sampling=balanced over a class-weighted run, records
of another size) would silently continue the old run under the new settings, and summary.json
would report the new ones as if they had applied from step 0 (or fail deep in TensorFlow when the
shapes differ). So the first session writes run_spec.json (atomically, before the first step),
and every resume compares against it:

- SESSION_SETTINGS steer a session, not what is learned: how fast and where it runs, how often
  it saves, when it stops, what it writes at the end. They may change on resume.
- GROWING_SETTINGS may only grow: `epochs` (the cosine schedule then stretches over the new
  total from the step reached) and `freeze_backbone_epochs` (the phase is a function of the
  epoch, so a longer head-only phase is picked up by the epochs still to run).
- Everything else defines the run and must match: model, weights, dropout, optimizer, learning
  rate and schedule, batch size, sampling, class weights, augmentation, seed, val split, the
  resolved image size, steps per epoch and precision, and the records' identity (a digest of the
  image spec, the label map and the train / val shards; the same records moved elsewhere match).
  A setting added later defines the run until it is listed here as a session setting; a spec
  recorded before it existed matches it at its default (the run had the default's behaviour).

A mismatch is refused in one line naming each differing setting, old -> new, and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tensorflow as tf
from absl import logging

from xray_tfdata import console, files, settings
from xray_tfdata.records.manifest import DatasetInfo
from xray_tfdata.training import checkpointing
from xray_tfdata.training.config import TrainConfig
from xray_tfdata.training.setup import ResolvedData

RUN_SPEC_FILE = "run_spec.json"
SPEC_VERSION = 1

GROWING_SETTINGS: frozenset[str] = frozenset({"epochs", "freeze_backbone_epochs"})
SESSION_SETTINGS: frozenset[str] = GROWING_SETTINGS | frozenset({
    "patience", "checkpoint_every", "max_checkpoints", "profile_steps", "steps_per_execution",
    "jit_compile", "augment_on", "deterministic", "calibrate", "export", "positive_class",
    "cache", "shuffle_buffer", "data_service", "data_service_job",
    # Paths: the records' identity is compared instead of their path; model_dir is the run.
    "records_dir", "model_dir",
})


class RunSpecMismatch(ValueError):
    """A rerun into a model dir whose run was made with different run-defining settings."""


def records_identity(info: DatasetInfo, val_split: str) -> str:
    """16 hex digits of sha256 over what the run reads from the records: the image spec, the
    label map (the class set) and the train and val shards (name, count, sha256)."""
    key = json.dumps(info.identity(["train", val_split]), sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_spec(config: TrainConfig, data: ResolvedData, precision: str) -> dict[str, Any]:
    """The spec of this session: every setting (resolved where the command left it to the run)
    and the records it reads."""
    run = settings.to_flat(config)
    run.update(image_size=data.image_size, steps_per_epoch=data.steps_per_epoch,
               precision=precision, weights=run["weights"] or None)
    return {
        "spec_version": SPEC_VERSION,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in run.items()},
        "records": {"identity": records_identity(data.info, config.val_split),
                    "dir": str(Path(config.records_dir).resolve()),
                    "image": f"{data.image_size}x{data.image_size}x{data.channels}",
                    "num_train": data.num_train,
                    "classes": list(data.classes)},
    }


def differences(recorded: dict[str, Any], current: dict[str, Any]
                ) -> tuple[list[str], list[str]]:
    """(refused, allowed): `name old -> new` for each run-defining and each session setting
    that differs between two specs."""
    refused, allowed = [], []
    old, new = recorded.get("settings", {}), current["settings"]
    defaults = _default_settings()
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name) or (
                name not in old and name in defaults and new.get(name) == defaults[name]):
            continue
        change = f"{name} {old.get(name)!r} -> {new.get(name)!r}"
        if name in GROWING_SETTINGS and isinstance(old.get(name), int) \
                and new[name] < old[name]:
            refused.append(f"{change} (may only grow)")
        elif name in SESSION_SETTINGS:
            allowed.append(change)
        else:
            refused.append(change)
    old_records, new_records = recorded.get("records", {}), current["records"]
    if old_records.get("classes") and old_records["classes"] != new_records.get("classes"):
        refused.append(f"classes {','.join(old_records['classes'])} -> "
                       f"{','.join(new_records.get('classes') or [])}")
    if old_records.get("identity") != new_records["identity"]:
        refused.append(f"records {_describe(old_records)} -> {_describe(new_records)}")
    elif old_records.get("dir") != new_records["dir"]:
        allowed.append(f"records_dir {old_records.get('dir')!r} -> {new_records['dir']!r} "
                       "(the same records)")
    return refused, allowed


def _default_settings() -> dict[str, Any]:
    """Every setting at its default, as a spec records it (tuples as lists)."""
    flat = settings.to_flat(TrainConfig(records_dir="-", model_dir="-"))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def _describe(records: dict[str, Any]) -> str:
    return (f"{records.get('dir')!r} ({records.get('image')}, {records.get('num_train')} train, "
            f"identity {records.get('identity')})")


def check_recorded(model_dir: Path, spec: dict[str, Any],
                   fix: str = "Rerun with the recorded settings to resume it, pass --overwrite "
                              "to start a new run there, or pass a new --model_dir.") -> list[str]:
    """Refuses (RunSpecMismatch, naming each difference and `fix`) a run in `model_dir` whose
    recorded run-defining settings differ from `spec` (make_spec); returns the session
    settings that changed. Nothing recorded: nothing to refuse."""
    path = model_dir / RUN_SPEC_FILE
    if not path.is_file():
        return []
    refused, changed = differences(json.loads(path.read_text()), spec)
    if refused:
        raise RunSpecMismatch(f"The run in {str(model_dir)!r} was made with other settings "
                              f"({path.name}): {'; '.join(refused)}. {fix}")
    return changed


def check_and_record(config: TrainConfig, data: ResolvedData, precision: str, model_dir: Path,
                     chief: bool) -> list[str]:
    """Refuses a resume whose run-defining settings differ from the recorded spec; otherwise
    (re)writes the spec (chief only) and returns the session settings that changed.

    Without a checkpoint there is nothing to resume: the spec is (re)written for a new run. A
    checkpoint without a spec (a run from before specs) resumes as before, with a warning.
    Call before anything else is written: it is also the session's first write into model_dir."""
    spec = make_spec(config, data, precision)
    path = model_dir / RUN_SPEC_FILE
    resuming = tf.train.latest_checkpoint(
        str(model_dir / checkpointing.CHECKPOINT_SUBDIR)) is not None
    changed: list[str] = []
    if resuming and path.is_file():
        changed = check_recorded(model_dir, spec)
        if changed:
            console.say(f"Resuming with changed session settings: {'; '.join(changed)}.")
    elif resuming:
        logging.warning("%s has a checkpoint but no %s (a run from an older version): its "
                        "settings cannot be checked; recording this session's.", model_dir,
                        RUN_SPEC_FILE)
    if chief:
        files.write_json(path, spec)
    return changed
