"""Leave-one-collection-out: train without one collection, score on it, for each in turn.

A model scored on its own test split is scored on the collections it learned from; when classes
come from different hospitals it can score well by recognising the hospital (issue 19: macro-F1
0.89 on its own test split, 0.09 on another hospital's films). Holding a whole collection out of
training and scoring on it measures what transfers. `run` does it for every collection that holds
at least two classes (or the named ones):

  for each held-out collection h:
    train   `train`'s own loop with --exclude_collections=h into <work_dir>/<h>/ (a killed fold
            resumes through train's checkpoints and run_spec.json)
    score   h: every split's original images (h was never trained on; offline-augmented
            variants left out), macro-F1 over the classes h holds with its bootstrap CI, per-class
            sensitivity (evaluation/by_collection.py), the metadata-only shortcut probe (fitted on
            the fold's own training records) and Grad-CAM border attention;
            the internal test: the test split of the other collections, scored the same way
    write   <work_dir>/<h>/loco_fold.json; a rerun reuses it (no retraining) if the fold's
            run-defining settings are unchanged, and only scores again if the scoring settings
            changed
  then one table (mean over folds) and <work_dir>/loco.json.

The records are read once per pass; the collection filter runs in the input pipeline after the
cache, so no fold needs its own records.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import reduce
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from xray_tfdata import console, errors, files, paths, settings
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import by_collection, gradcam, inference, metrics, shortcut
from xray_tfdata.inputs import collection_select
from xray_tfdata.records import collection_table
from xray_tfdata.records import manifest as manifest_lib
from xray_tfdata.settings import setting
from xray_tfdata.training import checkpointing, distribute, epochs, loop, run_spec, setup
from xray_tfdata.training.config import TrainConfig

FOLD_FILE = "loco_fold.json"
RESULTS_FILE = "loco.json"
SUMMARY_FILE = "summary.json"  # train's
# Score the held-out collection's splits in this order: Grad-CAM takes the first images of each
# class, and test and val hold originals only.
_SPLIT_ORDER = ("test", "val", "train")


class LocoError(ValueError):
    """A fold cannot run, or its recorded results cannot be reused; the message says why."""


@dataclasses.dataclass(frozen=True)
class LocoConfig:
    """The loco command's own settings (training's are train's: TrainConfig)."""

    work_dir: str = setting(
        help="One model dir per fold, <work_dir>/<held-out collection>/, and loco.json. A rerun "
             "skips finished folds and resumes a killed one.", flag_default="workspace/loco")
    holdout: tuple[str, ...] = setting(
        (), "Collections to hold out, one fold each (names of build_records' "
        "--data_dir=name=path,...); empty = every collection holding at least two classes.")
    shortcut_checks: bool = setting(
        True, "Per fold, the metadata-only shortcut probe and Grad-CAM border attention "
        "(--noshortcut_checks skips both).")
    gradcam_per_class: int = setting(16, "Images per class for border attention; 0 = off.")
    bootstrap: int = setting(1000, "Bootstrap resamples for the 95% CIs; 0 = none.")
    eval_batch_size: int = setting(64, "Batch size of the scoring passes.")

    def __post_init__(self) -> None:
        if not self.work_dir:
            raise ConfigError("work_dir", self.work_dir, "a directory for the folds' runs")
        paths.check("work_dir", self.work_dir)
        object.__setattr__(self, "holdout", collection_select.parse_names(self.holdout))
        errors.non_negative_int("gradcam_per_class", self.gradcam_per_class)
        errors.non_negative_int("bootstrap", self.bootstrap)
        errors.positive_int("eval_batch_size", self.eval_batch_size)

    def scoring(self, seed: int) -> dict[str, Any]:
        """What a fold's scores depend on besides its model: a change rescores, never retrains."""
        return {"shortcut_checks": self.shortcut_checks, "bootstrap": self.bootstrap,
                "gradcam_per_class": self.gradcam_per_class if self.shortcut_checks else 0,
                "seed": seed}


@dataclasses.dataclass(frozen=True)
class Fold:
    """One held-out collection: its training run and what it is scored on."""

    holdout: str
    config: TrainConfig  # train's settings with --exclude_collections=<holdout>
    data: setup.ResolvedData
    held_out_splits: tuple[str, ...]  # the splits holding the held-out collection
    trained_on: tuple[str, ...]  # the collections of the fold's train split
    internal: tuple[str, ...]  # the other collections of the test split (empty: no internal)

    @property
    def model_dir(self):
        return paths.location(self.config.model_dir)


# ----------------------------------------------------------------------------- the plan


def holdouts(manifest: manifest_lib.DatasetInfo, named: Sequence[str] = ()) -> list[str]:
    """The collections to hold out: `named`, else each holding at least two classes.

    Raises:
      ConfigError: records of fewer than two collections (field records_dir), a name the records
        lack, or no collection holding two classes (field holdout).
    """
    table = collection_table.counts(manifest)
    known = sorted(table)
    if len(known) < 2:
        raise ConfigError("records_dir", known, "records of several collections",
                          "Build them with build_records --data_dir=name=path,name=path,...")
    unknown = [name for name in named if name not in table]
    if unknown:
        raise ConfigError("holdout", ",".join(named), f"collections of these records: {known}",
                          "Collections are the names of build_records' --data_dir=name=path,...")
    if named:
        return list(named)
    folds = [name for name, row in table.items() if sum(1 for n in row.values() if n) >= 2]
    if not folds:
        raise ConfigError("holdout", "", f"the collections to hold out when none of {known} "
                          "holds two classes (scored alone, a one-class collection measures only "
                          "that class's sensitivity)", "Pass --holdout=<name>,...")
    return folds


def _holding(manifest: manifest_lib.DatasetInfo, split: str, exclude: str = "",
             only: str = "") -> tuple[str, ...]:
    """Collections of `split` with at least one example (all but `exclude`, or just `only`)."""
    if split not in manifest.splits:
        return ()
    return tuple(name for name, row in sorted(collection_select.per_source(manifest,
                                                                           split).items())
                 if sum(int(n) for n in row.values()) and name != exclude
                 and (not only or name == only))


def plan(base: TrainConfig, work_dir: str, named: Sequence[str] = ()) -> list[Fold]:
    """Every fold, checked before any training (cheap: the manifest only, no TF op).

    Raises:
      ConfigError: see `holdouts`.
      LocoError: a fold whose other collections lack train or val examples.
    """
    manifest = manifest_lib.read_info(base.records_dir)
    folds = []
    for name in holdouts(manifest, named):
        config = dataclasses.replace(
            base, model_dir=str(paths.join(work_dir, name)),
            input=dataclasses.replace(base.input, collections=(), exclude_collections=(name,)))
        try:
            data = setup.resolve_data(config)
        except ConfigError as err:
            raise LocoError(f"Fold {name!r} cannot train on the other collections "
                            f"(--exclude_collections={name}): {err} Or leave this fold out: "
                            f"--holdout=<the others>.") from err
        held = tuple(split for split in _SPLIT_ORDER if _holding(manifest, split, only=name))
        folds.append(Fold(name, config, data, held, _holding(manifest, "train", exclude=name),
                          _holding(manifest, "test", exclude=name)))
    return folds


# ----------------------------------------------------------------------------- scoring


def score(model, predict, records_dir: str, splits: Sequence[str], collections: Sequence[str],
          config: LocoConfig, seed: int, train_meta: dict[str, np.ndarray] | None,
          class_names: Sequence[str]) -> dict[str, Any]:
    """The model (its inference.predict_fn `predict`) on `collections` of `splits`, originals
    only: by_collection.held_class_metrics, a per-collection table when there are several, and
    with config.shortcut_checks the shortcut probe (fitted on `train_meta`) and border
    attention."""
    image_size, channels = inference.input_spec(model)
    collections = tuple(collections)
    datasets, ys, probs, metas = [], [], [], []
    for split in splits:
        dataset = inference.eval_dataset(records_dir, split, image_size, channels,
                                         config.eval_batch_size, collections)
        y, (p, *_) = inference.run_model(model, dataset, predict=predict)
        metas.append(inference.aligned_metadata(records_dir, split, collections, y))
        datasets.append(dataset)
        ys.append(y)
        probs.append(p)
    meta = {key: np.concatenate([m[key] for m in metas]) for key in metas[0]}
    keep = shortcut.is_original(meta["augmentation"])
    y, p = np.concatenate(ys)[keep], np.concatenate(probs)[keep]
    meta = {key: values[keep] for key, values in meta.items()}
    row = by_collection.held_class_metrics(y, p, class_names, n_resamples=config.bootstrap,
                                           seed=seed)
    row.update(splits=list(splits), collections=list(collections))
    if len(set(meta["source"].tolist())) > 1:
        row["by_collection"] = by_collection.collection_table(
            y, p, meta["source"], class_names, n_resamples=config.bootstrap, seed=seed)
    if config.shortcut_checks and train_meta is not None:
        # The probe's own definition (macro-F1 over every class) on both sides of its ratio.
        cnn_f1 = metrics.compute_metrics(y, p, n_resamples=0, class_names=class_names)["macro_f1"]
        probe = shortcut.run_probe(train_meta, meta, cnn_f1, seed=seed,
                                   class_names=class_names)
        row["probe"] = {key: probe.get(key) for key in (
            "skipped", "probe_macro_f1", "cnn_macro_f1", "ratio", "warning",
            "source_alone_macro_f1", "message")}
    if config.shortcut_checks and config.gradcam_per_class:
        try:
            attention = gradcam.split_attention(model, reduce(tf.data.Dataset.concatenate,
                                                              datasets),
                                                per_class=config.gradcam_per_class,
                                                class_names=class_names)
        except gradcam.NoConvolutionError as err:  # e.g. a hand-built test model
            attention = {"skipped": True, "overall": None, "warning": False,
                         "message": f"Border attention skipped: {err}"}
        row["border_attention"] = {key: attention.get(key) for key in (
            "skipped", "overall", "per_class", "num_images", "warning", "message")}
    return row


def score_fold(fold: Fold, config: LocoConfig) -> dict[str, Any]:
    """The fold's best.keras on its held-out collection and on its internal test split."""
    records_dir, seed = fold.config.records_dir, fold.config.seed
    class_names = fold.data.classes
    model = inference.load_model(fold.model_dir / epochs.BEST_MODEL)
    train_meta = None
    if config.shortcut_checks:
        from xray_tfdata.inputs import pipeline  # noqa: PLC0415

        train_meta = pipeline.read_metadata(records_dir, "train", fold.trained_on)
    predict = inference.predict_fn(model)  # one trace per batch shape for both passes
    held = score(model, predict, records_dir, fold.held_out_splits, (fold.holdout,), config,
                 seed, train_meta, class_names)
    internal = (score(model, predict, records_dir, ("test",), fold.internal, config, seed,
                      train_meta, class_names) if fold.internal else None)
    return {"held_out": held, "internal": internal}


# ----------------------------------------------------------------------------- the folds


def _fix(model_dir) -> str:
    return (f"Rerun loco with the settings it was trained with, pass a new --work_dir, or delete "
            f"{str(model_dir)!r} to train that fold again.")


def _check_recorded(fold: Fold, strategy: tf.distribute.Strategy) -> None:
    """Refuses to reuse or resume a fold trained with other run-defining settings."""
    precision = distribute.resolve_precision(fold.config.precision, strategy)
    run_spec.check_recorded(fold.model_dir, run_spec.make_spec(fold.config, fold.data, precision),
                            fix=_fix(fold.model_dir))


def _train(fold: Fold, strategy: tf.distribute.Strategy,
           model_builder: setup.ModelBuilder | None) -> dict[str, Any]:
    """Trains the fold, or resumes it (train's checkpoints), or reuses a finished run."""
    summary_path = fold.model_dir / SUMMARY_FILE
    best = fold.model_dir / epochs.BEST_MODEL
    started = tf.train.latest_checkpoint(
        str(fold.model_dir / checkpointing.CHECKPOINT_SUBDIR)) is not None
    if started or summary_path.is_file():
        _check_recorded(fold, strategy)  # in loco's words, before train's own check
    if summary_path.is_file() and best.is_file():
        summary, seconds = json.loads(summary_path.read_text()), None
    else:
        start = time.monotonic()
        summary = loop.train(fold.config, strategy, model_builder=model_builder, data=fold.data)
        seconds = round(time.monotonic() - start, 1)
    if not best.is_file():
        raise LocoError(f"Fold {fold.holdout!r}: training ended ({summary['status']}) without a "
                        f"best model in {str(fold.model_dir)!r}; see its history.csv (a NaN loss: "
                        f"lower --learning_rate).")
    return {"status": summary["status"], "epochs_completed": summary["epochs_completed"],
            "best_val_macro_f1": summary["best"]["val_macro_f1"], "seconds": seconds,
            "trained_on": list(fold.trained_on)}


def run_fold(fold: Fold, config: LocoConfig, strategy: tf.distribute.Strategy,
             model_builder: setup.ModelBuilder | None = None) -> tuple[dict[str, Any], str]:
    """(the fold's results, how they were obtained: 'trained', 'rescored' or 'reused')."""
    path = fold.model_dir / FOLD_FILE
    scoring = config.scoring(fold.config.seed)
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded is not None:
        _check_recorded(fold, strategy)
        if recorded.get("scoring") == scoring:
            return recorded, "reused"
    training = _train(fold, strategy, model_builder) if recorded is None else recorded["training"]
    result = {"holdout": fold.holdout, "model_dir": str(fold.model_dir), "training": training,
              "scoring": scoring, **score_fold(fold, config)}
    if distribute.is_chief(strategy):
        files.write_json(path, result, nan_to_null=True)
    return result, "trained" if recorded is None else "rescored"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_over_folds(folds: Sequence[dict[str, Any]], class_names: Sequence[str]
                    ) -> dict[str, Any]:
    """Unweighted means over folds (each class's sensitivity over the folds holding it)."""
    held = [f["held_out"] for f in folds]
    internal = [f["internal"] for f in folds if f["internal"]]

    def checks(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        return {"probe_ratio": _mean([(r.get("probe") or {}).get("ratio") for r in rows]),
                "border_attention": _mean([(r.get("border_attention") or {}).get("overall")
                                           for r in rows])}

    return {
        "folds": len(folds),
        "held_out": {"macro_f1": _mean([r["macro_f1"] for r in held]),
                     "sensitivity": {c: _mean([r["sensitivity"].get(c) for r in held])
                                     for c in class_names},
                     **checks(held)},
        "internal": {"macro_f1": _mean([r["macro_f1"] for r in internal]), **checks(internal)},
    }


def _fold_line(index: int, total: int, result: dict[str, Any], how: str) -> str:
    held, internal = result["held_out"], result["internal"]
    training = result["training"]
    how = {"trained": f"trained {training['epochs_completed']} epoch(s)"
                      + (f" in {training['seconds']:.0f} s" if training["seconds"] else ""),
           "rescored": "scored again (scoring settings changed)",
           "reused": "finished earlier"}[how]
    line = (f"loco fold {index}/{total}: held out {result['holdout']} ({held['n']} images): "
            f"macro-F1 {by_collection.with_interval(held['macro_f1'], held['macro_f1_ci'])}")
    if internal:
        line += f"; internal test {by_collection.number(internal['macro_f1'])} ({internal['n']})"
    return f"{line}; {how}."


def run(config: LocoConfig, base: TrainConfig, strategy: tf.distribute.Strategy | None = None,
        *, model_builder: setup.ModelBuilder | None = None,
        say: Callable[[str], None] = console.say) -> dict[str, Any]:
    """Every fold (see the module docstring); returns loco.json's content (also written)."""
    strategy = strategy or tf.distribute.get_strategy()
    folds = plan(base, config.work_dir, config.holdout)
    class_names = folds[0].data.classes
    results = []
    for index, fold in enumerate(folds, 1):
        result, how = run_fold(fold, config, strategy, model_builder)
        say(_fold_line(index, len(folds), result, how))
        results.append(result)
    summary = {
        "records_dir": base.records_dir, "work_dir": config.work_dir,
        "class_names": list(class_names),
        "settings": {"train": {k: v for k, v in settings.to_flat(base).items()
                               if k not in ("model_dir", "collections", "exclude_collections")},
                     "loco": dataclasses.asdict(config)},
        "folds": results, "mean": mean_over_folds(results, class_names),
    }
    summary["table"] = format_table(summary)
    if distribute.is_chief(strategy):
        files.write_json(paths.join(config.work_dir, RESULTS_FILE), summary, nan_to_null=True)
    return summary


# ----------------------------------------------------------------------------- the table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _share(row: dict[str, Any] | None) -> tuple[str, str]:
    """(probe / CNN, border attention) of a scored row, '-' where not measured."""
    row = row or {}
    border = (row.get("border_attention") or {}).get("overall")
    return (_percent((row.get("probe") or {}).get("ratio")),
            "-" if border is None else f"{border:.2f}")


def format_table(summary: dict[str, Any]) -> str:
    """One line per fold, then the mean: the held-out collection (n, macro-F1 [CI] over the
    classes it holds, sensitivity per class, probe / CNN, border attention) next to the
    internal test of the same run (n, macro-F1 [CI], probe / CNN, border attention)."""
    names = summary["class_names"]
    width = max([len("held out")] + [len(f["holdout"]) for f in summary["folds"]])
    cols = [max(len(c), 6) for c in names]
    head = (f"{'held out':<{width}}  {'n':>5}  {'macro-F1 [95% CI]':<22}  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(names, cols))
            + f"  {'probe':>5}  {'border':>6}  |  {'internal n':>10}  {'macro-F1 [95% CI]':<22}  "
              f"{'probe':>5}  {'border':>6}")
    lines = [head]
    for fold in summary["folds"]:
        held, internal = fold["held_out"], fold["internal"]
        sens = [by_collection.number(held["sensitivity"][c]) if c in held["sensitivity"]
                else "-" for c in names]
        inner = ((f"{internal['n']:>10}  "
                  f"{by_collection.with_interval(internal['macro_f1'], internal['macro_f1_ci']):<22}")
                 if internal else f"{'-':>10}  {'-':<22}")
        lines.append(f"{fold['holdout']:<{width}}  {held['n']:>5}  "
                     f"{by_collection.with_interval(held['macro_f1'], held['macro_f1_ci']):<22}  "
                     + "  ".join(f"{s:>{w}}" for s, w in zip(sens, cols))
                     + "  {:>5}  {:>6}  |  ".format(*_share(held))
                     + inner + "  {:>5}  {:>6}".format(*_share(internal)))
    mean = summary["mean"]
    held, internal = mean["held_out"], mean["internal"]
    sens = [by_collection.number(held["sensitivity"][c]) if held["sensitivity"][c] is not None
            else "-" for c in names]

    def checks(row: dict[str, Any]) -> str:
        border = row["border_attention"]
        return f"{_percent(row['probe_ratio']):>5}  {'-' if border is None else f'{border:.2f}':>6}"

    lines.append(f"{'mean':<{width}}  {'':>5}  {by_collection.number(held['macro_f1']):<22}  "
                 + "  ".join(f"{s:>{w}}" for s, w in zip(sens, cols))
                 + f"  {checks(held)}  |  {'':>10}  "
                   f"{by_collection.number(internal['macro_f1']):<22}  {checks(internal)}")
    lines += ["", f"macro-F1 over the classes each held-out collection holds (sensitivity '-': "
                  f"none of that class); internal = the test split of the collections the fold "
                  f"trained on; probe = metadata-only macro-F1 / the CNN's (evaluate warns at "
                  f">= {shortcut.DEFAULT_THRESHOLD:.0%}); border = Grad-CAM attention share on "
                  f"the image's outer {gradcam.BORDER_FRACTION:.1%}."]
    return "\n".join(lines)
