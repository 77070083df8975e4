"""Runs the benchmark modes: prepares data, runs each variant, prints tables, writes JSON lines.

JSON lines (one object per line, appended to `output`), schema_version 1:
  kind="measurement": run_id, timestamp, mode, variant, machine, versions, settings, task (the
      variant's arguments), load_average_at_start, metrics (each timed quantity as {median, min, max, mean, stdev,
      spread_pct, n, values} plus peak_rss_mb / baseline_rss_mb / peak_rss_above_baseline_mb),
      details (everything else the variant reported; {"error": ...} if it failed), isolated,
      wall_s.
  kind="summary": run_id, timestamp, mode, machine, versions, settings, ratios, targets
      ([{target, value, needed, comparison, met}]).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from xray_tfdata import files
from xray_tfdata.benchmarking import datasets, harness, isolate, train_bench
from xray_tfdata.errors import ConfigError
from xray_tfdata.settings import setting

MODES = ("convert", "input", "train", "all")
RUN_ORDER = ("convert", "input", "train")
_LIMITS = {"batch_size": (1, 4096), "image_size": (16, 1024), "steps": (1, 100_000),
           "warmup_steps": (0, 100_000), "repeats": (1, 100), "seed": (0, 2**31 - 1),
           "convert_images": (0, 10_000_000)}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Everything one benchmark run depends on; validated on construction."""

    mode: str = setting(help="What to measure.", allowed=MODES, flag_default="all")
    data_dir: str = setting("", "Existing Kaggle-layout folder "
                            "(<data_dir>/{train,test}/{COVID19,NORMAL,PNEUMONIA}/*). Empty: "
                            "--synthetic.")
    synthetic: str = setting(
        "kaggle", "Generated dataset when --data_dir is empty: tiny (smoke test, small images), "
        "small (360 full-size), kaggle (6,432 full-size at the Kaggle class counts).",
        allowed=tuple(datasets.PRESETS))
    work_dir: str = setting("workspace/benchmarks/data", "Cache for generated sources, records, "
                            "subsets and per-variant logs.")
    output: str = setting("workspace/benchmarks/results.jsonl",
                          "JSON-lines file the results are appended to.")
    batch_size: int = setting(64, "Batch size (input mode: batch; train mode: per-replica "
                              "batch).")
    image_size: int = setting(224, "Square image side of records/batches.")
    channels: int = setting(1, "Train mode image channels (1 or 3).")  # input mode: 1 and 3
    model: str = setting("seed_cnn", "Train mode model (xray_tfdata.models.MODEL_NAMES).")
    precisions: tuple[str, ...] = setting(
        ("float32", "mixed"), "Train mode precisions: float32, mixed (float16 on GPU, bfloat16 "
        "elsewhere), mixed_float16, mixed_bfloat16.", flag="precision")
    strategy: str = setting("mirrored", "Train mode tf.distribute strategy.",
                            allowed=train_bench.STRATEGY_NAMES)
    replicas: tuple[int, ...] = setting(
        (1, 2, 4), "Train mode replica counts (GPUs, or logical CPU devices without GPUs).")
    steps: int = setting(20, "Timed steps/batches per repeat.")
    warmup_steps: int = setting(3, "Untimed steps before timing.")
    repeats: int = setting(3, "Timed repeats per variant (median, spread).")
    workers: tuple[int, ...] = setting((1, 2), "Convert mode worker counts.")
    convert_images: int = setting(
        2000, "Convert mode: number of source images (spread over the set; 0 = all).")
    ablation: bool = setting(True, "Input mode: also run ours with each optimisation switched "
                             "off.")
    baselines: bool = setting(True, "Input mode: also run the Keras image_dataset_from_directory "
                              "and tutorial loaders.")
    host_cost: bool = setting(
        True, "Input mode: host CPU per image (no model) for augmentation on host vs device, "
        "jpeg vs raw, cached vs not, and the cores needed for 10k / 50k images/s.")
    augment_on: tuple[str, ...] = setting(
        ("host", "device"), "Train mode: where augmentation runs, host (tf.data) and/or device "
        "(inside the step); each is measured real vs synthetic.")
    service_workers: tuple[int, ...] = setting(
        (0, 1, 2), "Input mode: tf.data service variants with this many local worker processes "
        "(0 = the same pipeline locally). Empty: none.")
    isolate: bool = setting(
        True, "Run each variant in its own process (fair peak memory; needed for several "
        "logical CPU replicas). --noisolate: in-process, for quick smoke runs.")
    plot: bool = setting(False, "Also write a PNG chart per mode.")
    plot_dir: str = setting("", "Where the PNGs go (default: beside --output).")
    seed: int = setting(0, "Seed for shuffling and synthetic batches.")
    timeout_s: float = setting(1800.0, "Seconds before a variant is stopped.", flag="timeout")

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str, fix: str = "") -> ConfigError:
            value = getattr(self, field)
            shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
            return ConfigError(field, shown, allowed, fix)

        if self.mode not in MODES:
            raise bad("mode", " | ".join(MODES))
        if self.data_dir:
            if not Path(self.data_dir).is_dir():
                raise bad("data_dir", "an existing Kaggle-layout folder "
                          "(<data_dir>/{train,test}/{COVID19,NORMAL,PNEUMONIA}/*)",
                          "Or leave it empty to use a generated --synthetic set.")
        elif self.synthetic not in datasets.PRESETS:
            raise bad("synthetic", " | ".join(datasets.PRESETS))
        for field, (low, high) in _LIMITS.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise bad(field, f"an integer in [{low}, {high}]")
        if self.channels not in (1, 3):
            raise bad("channels", "1 or 3")
        for field, values, allowed in (("workers", self.workers, range(1, 257)),
                                       ("replicas", self.replicas, range(1, 65))):
            object.__setattr__(self, field, tuple(values))
            if not values or any(isinstance(v, bool) or v not in allowed for v in values) \
                    or len(set(values)) != len(values):
                raise bad(field, f"a non-empty list of distinct integers in "
                          f"[{allowed.start}, {allowed.stop - 1}], e.g. 1,2,4")
        object.__setattr__(self, "augment_on", tuple(self.augment_on))
        if not self.augment_on or any(a not in train_bench.AUGMENT_ON for a in self.augment_on) \
                or len(set(self.augment_on)) != len(self.augment_on):
            raise bad("augment_on", "a non-empty list of distinct " + ", ".join(
                train_bench.AUGMENT_ON))
        object.__setattr__(self, "service_workers", tuple(self.service_workers))
        if any(isinstance(v, bool) or v not in range(0, 9) for v in self.service_workers) \
                or len(set(self.service_workers)) != len(self.service_workers):
            raise bad("service_workers", "a list of distinct integers in [0, 8] (0 = local "
                      "pipeline), e.g. 0,1,2; empty = no data-service variants")
        object.__setattr__(self, "precisions", tuple(self.precisions))
        if not self.precisions or any(p not in train_bench.PRECISION_NAMES
                                      for p in self.precisions):
            raise bad("precisions", "a non-empty list of " + ", ".join(train_bench.PRECISION_NAMES),
                      "'mixed' = float16 on GPUs, bfloat16 elsewhere.")
        if self.strategy not in train_bench.STRATEGY_NAMES:
            raise bad("strategy", " | ".join(train_bench.STRATEGY_NAMES))
        if self.strategy == "one_device" and self.replicas != (1,):
            raise bad("replicas", "only 1 with --strategy=one_device",
                      "Use --strategy=mirrored to compare replica counts.")
        if not self.timeout_s > 0:
            raise bad("timeout_s", "a number of seconds > 0")

    @property
    def modes(self) -> tuple[str, ...]:
        return RUN_ORDER if self.mode == "all" else (self.mode,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _source_dir(config: BenchConfig) -> tuple[str, dict[str, Any]]:
    if config.data_dir:
        return config.data_dir, {"kind": "data_dir", "path": config.data_dir}
    folder = datasets.synthetic_sources(config.synthetic, config.work_dir)
    preset = datasets.PRESETS[config.synthetic]
    return str(folder), {"kind": "synthetic", "preset": preset.name, "path": str(folder),
                         "num_images": preset.num_images,
                         "side_px": [preset.min_size, preset.max_size],
                         "formats": list(preset.formats), "modes": list(preset.modes)}


def _plan_convert(config: BenchConfig, source: str, data: dict[str, Any]):
    from xray_tfdata.benchmarking import convert_bench  # pylint: disable=C0415

    subset = datasets.convert_subset(source, config.work_dir, config.convert_images)
    data["convert_dir"] = str(subset)
    data["convert_images"] = len(datasets.source_files(subset))
    data["page_cache_warmed_bytes"] = convert_bench.warm_page_cache(str(subset))
    return convert_bench, convert_bench.plan(
        data_dir=str(subset), work_dir=str(Path(config.work_dir) / "convert-out"),
        image_size=config.image_size, workers=config.workers, repeats=config.repeats,
        warmup=config.warmup_steps > 0)


def _plan_input(config: BenchConfig, source: str, data: dict[str, Any]):
    from xray_tfdata.benchmarking import convert_bench, input_bench  # pylint: disable=C0415

    records = {}
    for image_format, channels in input_bench.FORMATS:
        records[f"{image_format}-{channels}"] = str(datasets.records_for(
            source, config.work_dir, image_size=config.image_size, channels=channels,
            image_format=image_format))
    data["records"] = records
    data["page_cache_warmed_bytes"] = convert_bench.warm_page_cache(source)
    return input_bench, input_bench.plan(
        data_dir=source, records=records, image_size=config.image_size,
        batch_size=config.batch_size, warmup_steps=config.warmup_steps, steps=config.steps,
        repeats=config.repeats, seed=config.seed, ablation=config.ablation,
        baselines=config.baselines, host_cost=config.host_cost,
        service_workers=config.service_workers)


def _plan_train(config: BenchConfig, source: str, data: dict[str, Any]):
    from xray_tfdata.benchmarking import train_bench  # pylint: disable=C0415

    records = str(datasets.records_for(source, config.work_dir, image_size=config.image_size,
                                       channels=config.channels, image_format="jpeg"))
    data["records"] = records
    return train_bench, train_bench.plan(
        records_dir=records, model=config.model, image_size=config.image_size,
        channels=config.channels, batch_size=config.batch_size, precisions=config.precisions,
        strategy=config.strategy, replicas=config.replicas, warmup_steps=config.warmup_steps,
        steps=config.steps, repeats=config.repeats, seed=config.seed,
        augment_on=config.augment_on)


_PLANNERS: dict[str, Callable] = {"convert": _plan_convert, "input": _plan_input,
                                  "train": _plan_train}


def _split_metrics(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Timed summaries and memory figures -> metrics; the rest -> details."""
    metrics, details = {}, {}
    for key, value in result.items():
        if (isinstance(value, dict) and "median" in value) or key.endswith("_rss_mb"):
            metrics[key] = value
        elif key not in ("isolated", "wall_s"):
            details[key] = value
    return metrics, details


def run(config: BenchConfig, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Runs the configured mode(s); returns the JSON-line records it appended to config.output."""
    run_id = harness.new_run_id()
    machine = harness.machine_facts()
    versions = files.versions()
    source, data = _source_dir(config)
    echo(f"Benchmark run {run_id} on {machine['cpu_model']} ({machine['cpu_usable_cores']} "
         f"cores, {machine['ram_gb']} GB RAM, GPUs: {len(machine['gpus'])}), "
         f"load average {machine['load_average_1_5_15']}")
    all_records: list[dict[str, Any]] = []
    failures: list[str] = []
    for mode in config.modes:
        mode_data = dict(data)
        module, tasks = _PLANNERS[mode](config, source, mode_data)
        settings = {**config.to_dict(), "data": mode_data}
        base = {"schema_version": harness.SCHEMA_VERSION, "run_id": run_id, "mode": mode,
                "machine": machine, "versions": versions, "settings": settings}
        results: dict[str, dict[str, Any]] = {}
        records = []
        for i, task in enumerate(tasks, 1):
            echo(f"[{mode} {i}/{len(tasks)}] {task.name} ...")
            load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
            record = {**base, "kind": "measurement", "timestamp": harness.utc_now(),
                      "variant": task.name, "task": task.kwargs, "load_average_at_start": load}
            try:
                result = isolate.run_task(task, isolate=config.isolate,
                                          log_dir=Path(config.work_dir) / "logs" / run_id,
                                          timeout_s=config.timeout_s)
            except isolate.BenchmarkError as err:
                # Keep going: one broken variant should not cost the other measurements.
                echo(f"    FAILED: {err}")
                failures.append(f"{mode}: {task.name}")
                records.append({**record, "metrics": {}, "details": {"error": str(err)},
                                "isolated": config.isolate, "wall_s": None})
                continue
            results[task.name] = result
            metrics, details = _split_metrics(result)
            records.append({**record, "metrics": metrics, "details": details,
                            "isolated": result["isolated"], "wall_s": result["wall_s"]})
            rates = ", ".join(f"{key} {harness.format_number(value['median'])} "
                              f"(±{value['spread_pct']:.0f}%)"
                              for key, value in metrics.items() if isinstance(value, dict))
            echo(f"    {rates}; peak RSS {result.get('peak_rss_mb')} MB; {result['wall_s']:.0f} s")
        summary = module.report(results)
        records.append({**base, "kind": "summary", "timestamp": harness.utc_now(),
                        "ratios": summary["ratios"], "targets": summary["targets"]})
        harness.append_jsonl(config.output, records)
        all_records.extend(records)
        echo(f"\n## {mode} ({'isolated processes' if config.isolate else 'in-process'}, "
             f"median of {config.repeats} repeats)\n")
        if summary["rows"]:
            echo(harness.format_table(summary["rows"], summary["columns"]))
        for title, rows, columns in summary.get("tables", ()):
            echo(f"\n### {title}\n")
            echo(harness.format_table(rows, columns))
        if summary["targets"]:
            echo("")
            echo(harness.format_table(harness.target_rows(summary["targets"]),
                                      harness.TARGET_COLUMNS))
        if config.plot and summary["rows"]:
            from xray_tfdata.benchmarking import plot  # pylint: disable=C0415

            plot_dir = Path(config.plot_dir or Path(config.output).parent)
            path = plot.plot_mode(mode, summary["rows"], plot_dir / f"{mode}.png",
                                  title=f"{mode}: {machine['cpu_model']}, "
                                        f"{machine['cpu_usable_cores']} cores")
            echo(f"\nChart: {path}")
    echo(f"\nJSON lines appended to {os.path.abspath(config.output)}")
    if failures:
        raise isolate.BenchmarkError(
            f"{len(failures)} variant(s) failed: {'; '.join(failures)}. Their errors are in the "
            f"JSON lines (details.error) and the logs under "
            f"{Path(config.work_dir) / 'logs' / run_id}.")
    return all_records
