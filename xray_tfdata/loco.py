r"""Leave-one-collection-out over a multi-collection records dir: `python -m xray_tfdata.loco`.

  python -m xray_tfdata.loco --records_dir=workspace/records --work_dir=workspace/loco \
      --epochs=10 --global_batch_size=32 [--holdout=nih,local] [--noshortcut_checks]

For each collection holding at least two classes (or each named in --holdout), trains with it
excluded (every `train` flag applies to every fold, as --exclude_collections=<it> would) into
<work_dir>/<it>/, scores on it and on the internal test split of the same run, and prints one
table with the mean over folds; loco.json in --work_dir holds every number. A rerun skips
finished folds and resumes a killed one (training/loco.py).
"""

from __future__ import annotations

from absl import app

from xray_tfdata import cli, models
from xray_tfdata.errors import ConfigError
from xray_tfdata.records.manifest import ManifestError
from xray_tfdata.training import config as train_config
from xray_tfdata.training import distribute, loco, run_spec

# train's flags (a flag added to TrainConfig appears here too), but the per-fold ones: each fold
# has its own model dir and excludes its collection.
cli.define_flags(train_config.TrainConfig,
                 exclude=("model_dir", "collections", "exclude_collections"))
cli.define_flags(distribute.StrategyConfig)
cli.define_flags(loco.LocoConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
    config = cli.settings_from_flags(loco.LocoConfig)
    base = cli.settings_from_flags(train_config.TrainConfig, model_dir=config.work_dir)
    from xray_tfdata.training import setup  # noqa: PLC0415

    try:
        folds = loco.plan(base, config.work_dir, config.holdout)  # manifest only: no TF op
        place = cli.settings_from_flags(distribute.StrategyConfig)
        strategy = distribute.make_strategy(place.strategy, tpu_address=place.tpu_address,
                                            devices=list(place.devices or ()) or None)
        distribute.per_replica_batch_size(base.global_batch_size, strategy)
        setup.prepare_process(base)
    except ConfigError as err:
        raise cli.usage_error(err) from err
    except ManifestError as err:
        raise app.UsageError(str(err)) from err
    except models.ImageNetWeightsUnavailable as err:
        cli.fail(f"--weights=imagenet: {err}")
    except loco.LocoError as err:
        cli.fail(str(err))
    print(f"Leave-one-collection-out: {len(folds)} fold(s), holding out "
          f"{', '.join(f.holdout for f in folds)}; runs in {config.work_dir}/<collection>/.")
    try:
        summary = loco.run(config, base, strategy)
    except (loco.LocoError, run_spec.RunSpecMismatch) as err:
        cli.fail(str(err))
    except OSError as err:  # disk full, read-only, a file where a directory should be
        from xray_tfdata import files  # noqa: PLC0415

        cli.fail(files.write_error_message(err, "a fold's run", "--work_dir; a rerun of the "
                                           "same command resumes"))
    if distribute.is_chief(strategy):
        print(summary["table"])
        print(f"Wrote {config.work_dir}/{loco.RESULTS_FILE} and one run per fold.")


if __name__ == "__main__":
    cli.run(main)
