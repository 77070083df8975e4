"""The benchmark tool: harness pieces, flag validation, and every mode end to end on tiny data.

The end-to-end runs are in-process (isolate=False) on the "tiny" synthetic preset with 32 px
images: they check that the tool runs and writes well-formed JSON, not how fast anything is. One
test runs a real child process with a known memory footprint to check the isolation protocol.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from xray_tfdata import files
from xray_tfdata.benchmarking import (
    datasets,
    harness,
    isolate,
    plot,
    suite,
    train_bench,
)
from xray_tfdata.records import synthetic

REPEATS = 2
# conftest.py splits the CPU into 2 logical devices when it can (before TF initialises).
LOGICAL_CPUS = len(tf.config.list_logical_devices("CPU"))
REPLICAS = (1, 2) if LOGICAL_CPUS >= 2 else (1,)
SUMMARY_KEYS = {"median", "min", "max", "mean", "stdev", "spread_pct", "n", "values"}
MEASUREMENT_KEYS = {"schema_version", "kind", "run_id", "timestamp", "mode", "variant", "machine",
                    "versions", "settings", "task", "metrics", "details", "isolated", "wall_s"}
SUMMARY_RECORD_KEYS = {"schema_version", "kind", "run_id", "timestamp", "mode", "machine",
                       "versions", "settings", "ratios", "targets"}


# ------------------------------------------------------------------------------ harness pieces
def test_summarize_reports_median_and_range_spread():
    s = harness.summarize([10.0, 12.0, 11.0])
    assert s["median"] == 11.0 and s["min"] == 10.0 and s["max"] == 12.0
    assert s["spread_pct"] == pytest.approx(100 * 2 / 11)
    assert s["n"] == 3 and s["values"] == [10.0, 12.0, 11.0]
    assert s["stdev"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one value"):
        harness.summarize([])


def test_time_repeats_runs_warmup_once_then_returns_one_rate_per_repeat():
    calls = []
    rates = harness.time_repeats(lambda: calls.append("run") or 100, repeats=3,
                                 warmup=lambda: calls.append("warmup"))
    assert calls == ["warmup", "run", "run", "run"]
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_format_table_is_markdown_with_aligned_columns():
    table = harness.format_table([{"a": "x", "b": 1234.5}, {"a": "longer", "b": 0.5}],
                                 [("a", "name"), ("b", "rate")])
    lines = table.splitlines()
    assert lines[0].startswith("| name") and set(lines[1]) <= {"|", "-"}
    assert "1,234" in lines[2] or "1,235" in lines[2]
    assert "0.50" in lines[3]
    assert len({len(line) for line in lines}) == 1


def test_append_jsonl_appends_whole_lines(tmp_path):
    out = tmp_path / "sub" / "r.jsonl"
    harness.append_jsonl(out, [{"a": 1}, {"b": Path("/x")}])
    harness.append_jsonl(out, [{"c": np.float32(2.5)}])
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"b": "/x"}, {"c": 2.5}]


def test_machine_facts_and_versions_name_the_hardware_and_libraries():
    facts = harness.machine_facts()
    assert facts["cpu_logical_cores"] >= 1 and facts["ram_gb"] > 0
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert isinstance(facts["gpus"], list)
    versions = files.versions()
    assert versions["tensorflow"] == tf.__version__
    assert versions["numpy"] == np.__version__


def test_presets_mirror_the_kaggle_counts():
    assert datasets.PRESETS["kaggle"].counts == synthetic.KAGGLE_COUNTS
    assert datasets.PRESETS["kaggle"].num_images == 6432
    assert datasets.PRESETS["kaggle"].min_size >= 1000


def test_plot_writes_a_small_png(tmp_path):
    rows = [{"variant": "keras", "first": 90.0, "steady": 90.0},
            {"variant": "ours", "first": 1500.0, "steady": 30000.0}]
    path = plot.plot_mode("input", rows, tmp_path / "input.png", title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("overrides, message", [
    ({"mode": "speed"}, "mode must be convert | input | train | all. Received: mode='speed'"),
    ({"batch_size": 0}, "batch_size must be an integer in [1, 4096]. Received: batch_size=0."),
    ({"repeats": 0}, "Received: repeats=0."),
    ({"steps": 0}, "Received: steps=0."),
    ({"channels": 2}, "channels must be 1 or 3. Received: channels=2."),
    ({"workers": ()}, "workers must be a non-empty list"),
    ({"workers": (1, 1)}, "Received: workers='1,1'"),
    ({"replicas": (0, 2)}, "Received: replicas='0,2'"),
    ({"precisions": ("float8",)}, "precisions must be a non-empty list of float32, mixed"),
    ({"strategy": "tpu"}, "strategy must be mirrored | one_device. Received: strategy='tpu'"),
    ({"strategy": "one_device", "replicas": (1, 2)}, "only 1 with --strategy=one_device"),
    ({"synthetic": "huge"}, "synthetic must be tiny | small | kaggle. Received: synthetic='huge'"),
    ({"data_dir": "/no/such/dir"}, "data_dir must be an existing"),
])
def test_bench_config_refuses_bad_values_naming_field_and_allowed_range(overrides, message):
    settings = {"mode": "input", **overrides}
    with pytest.raises(ValueError) as err:
        suite.BenchConfig(**settings)
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["--batch_size=0"], "--batch_size must be an integer in [1, 4096]. Received: --batch_size=0."),
    (["--replicas=1,x"], "--replicas=1,x must be a comma-separated list of integers"),
    (["--precision=float8"], "Received: --precision='float8'"),
    (["--data_dir=/tmp", "--synthetic=tiny"], "Pass either --data_dir=/tmp or --synthetic=tiny"),
    (["--mode=speed"], "value should be one of <convert|input|train|all>"),
])
def test_cli_refuses_bad_flags_before_any_work(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.benchmark", *args,
         f"--work_dir={tmp_path / 'w'}", f"--output={tmp_path / 'r.jsonl'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------ isolation
def test_child_process_reports_its_own_peak_memory(tmp_path):
    task = isolate.Task("probe", "tests.benchmarking.probe_task:memory_probe",
                        {"megabytes": 200}, import_tensorflow=False)
    result = isolate.run_task(task, isolate=True, log_dir=tmp_path)
    assert result["isolated"] is True and result["megabytes"] == 200
    assert 190 <= result["peak_rss_above_baseline_mb"] < 400
    assert result["peak_rss_mb"] >= result["baseline_rss_mb"] + 190


def test_child_failure_names_the_variant_and_the_error(tmp_path):
    task = isolate.Task("bad probe", "tests.benchmarking.probe_task:memory_probe",
                        {"megabytes": -1}, import_tensorflow=False)
    with pytest.raises(isolate.BenchmarkError, match=r"(?s)'bad probe' failed.*megabytes=-1"):
        isolate.run_task(task, isolate=True, log_dir=tmp_path)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bench")
    datasets.synthetic_sources("tiny", work)  # shared by every mode's run
    return work


def _run(work_dir: Path, tmp_path: Path, mode: str, **overrides) -> tuple[list[dict], str]:
    settings = dict(mode=mode, synthetic="tiny", work_dir=str(work_dir),
                    output=str(tmp_path / "results.jsonl"), image_size=32, batch_size=4,
                    steps=2, warmup_steps=1, repeats=REPEATS, isolate=False, replicas=REPLICAS,
                    precisions=("float32",), workers=(1, 2), convert_images=0)
    settings.update(overrides)
    printed: list[str] = []
    records = suite.run(suite.BenchConfig(**settings), echo=printed.append)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(records, default=str))  # what it returns is on disk
    for record in lines:
        expected = MEASUREMENT_KEYS if record["kind"] == "measurement" else SUMMARY_RECORD_KEYS
        assert expected <= set(record), expected - set(record)
        assert record["schema_version"] == harness.SCHEMA_VERSION and record["mode"] == mode
        assert {"cpu_model", "cpu_logical_cores", "ram_gb", "gpus"} <= set(record["machine"])
        assert "tensorflow" in record["versions"]
        assert set(dict(suite.BenchConfig(mode=mode).to_dict())) <= set(record["settings"])
    assert lines[-1]["kind"] == "summary"
    for target in lines[-1]["targets"]:
        assert {"target", "value", "needed", "comparison", "met"} <= set(target)
    return lines, "\n".join(printed)


def _check_summary(summary: dict, repeats: int = REPEATS) -> None:
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n"] == repeats and len(summary["values"]) == repeats
    assert summary["min"] <= summary["median"] <= summary["max"] and summary["median"] > 0


def test_convert_mode_end_to_end(work_dir, tmp_path):
    lines, printed = _run(work_dir, tmp_path, "convert")
    measured = {r["variant"]: r for r in lines if r["kind"] == "measurement"}
    assert list(measured) == ["tutorial cv2 loop", "cv2 loop, 1 thread",
                              "cv2 loop, 1 thread x 2 processes", "ours build_records 1 worker",
                              "ours build_records 2 workers"]
    num_sources = datasets.PRESETS["tiny"].num_images
    for record in measured.values():
        _check_summary(record["metrics"]["images_per_sec"])
        assert record["metrics"]["peak_rss_mb"] > 0
        assert record["details"]["images"] == num_sources
    summary = lines[-1]
    assert set(summary["ratios"]) == {"1_worker_vs_tutorial", "2_workers_vs_1",
                                      "machine_2_process_scaling"}
    assert measured["cv2 loop, 1 thread x 2 processes"]["details"]["processes"] == 2
    assert [t["needed"] for t in summary["targets"]] == [1.0, 1.8]
    assert "| tutorial cv2 loop" in printed and "2 workers >= 1.8x 1 worker" in printed


def test_a_failing_variant_is_recorded_and_the_run_goes_on(work_dir, tmp_path, monkeypatch):
    real_run_task = isolate.run_task

    def flaky(task, **kwargs):
        if task.name == "ours build_records 1 worker":
            raise isolate.BenchmarkError(f"Variant {task.name!r} failed: simulated")
        return real_run_task(task, **kwargs)

    monkeypatch.setattr(isolate, "run_task", flaky)
    with pytest.raises(isolate.BenchmarkError, match="1 variant.s. failed: convert: ours "
                                                     "build_records 1 worker"):
        _run(work_dir, tmp_path, "convert", repeats=1)
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r.get("variant") for r in lines] == [
        "tutorial cv2 loop", "cv2 loop, 1 thread", "cv2 loop, 1 thread x 2 processes",
        "ours build_records 1 worker", "ours build_records 2 workers", None]
    assert "simulated" in lines[3]["details"]["error"] and lines[3]["metrics"] == {}
    assert lines[4]["metrics"]["images_per_sec"]["median"] > 0
    # Ratios needing the failed variant are left out, not invented.
    assert set(lines[5]["ratios"]) == {"machine_2_process_scaling"}


def test_input_mode_end_to_end_with_ablation(work_dir, tmp_path):
    # One repeat: eleven variants, each building several pipelines, must stay within seconds.
    lines, printed = _run(work_dir, tmp_path, "input", plot=True, plot_dir=str(tmp_path),
                          repeats=1, host_cost=False, service_workers=())
    measured = {r["variant"]: r for r in lines if r["kind"] == "measurement"}
    assert len(measured) == 2 + 4 + 5
    for name, record in measured.items():
        _check_summary(record["metrics"]["first_epoch_images_per_sec"], repeats=1)
        _check_summary(record["metrics"]["steady_images_per_sec"], repeats=1)
        if name.startswith("ours"):
            channels = 3 if " 3ch" in name else 1
            assert record["details"]["batch_shape"] == [4, 32, 32, channels]
            assert record["details"]["batch_dtype"] == "uint8"
    assert measured["ours jpeg 1ch no cache"]["details"]["input_config"]["cache"] == "none"
    assert measured["ours jpeg 1ch no prefetch"]["details"]["input_config"]["prefetch"] is False
    assert measured["tutorial loader (cv2 + float32 numpy)"]["details"]["batch_shape"] == \
        [4, 32, 32, 3]
    targets = [t["target"] for t in lines[-1]["targets"]]
    assert targets == ["ours jpeg 1ch steady state >= 60x keras",
                       "ours jpeg 1ch first epoch >= 8x keras",
                       "ours jpeg 1ch peak RSS <= 1/4 tutorial loader"]
    assert (tmp_path / "input.png").is_file() and "steady x keras" in printed


@pytest.mark.slow
def test_input_mode_host_cost_and_data_service(work_dir, tmp_path, monkeypatch):
    from xray_tfdata.benchmarking import input_bench

    monkeypatch.setattr(input_bench, "MIN_REPEAT_SECONDS", 0.05)  # tiny images: keep it quick
    lines, printed = _run(work_dir, tmp_path, "input", repeats=1, baselines=False,
                          ablation=False, service_workers=(0, 1))
    measured = {r["variant"]: r for r in lines if r["kind"] == "measurement"}
    host = {name: r for name, r in measured.items() if name.startswith("host cost")}
    assert len(host) == 8  # jpeg/raw x cached/not x host/device
    for name, record in host.items():
        where = name.rsplit(" ", 1)[1]
        assert record["details"]["augment_on"] == where
        assert record["details"]["input_config"]["cache"] == ("none" if "no cache" in name
                                                              else "memory")
        _check_summary(record["metrics"]["host_cpu_us_per_image"], repeats=1)
    service = [measured["data service: local (0 workers)"],
               measured["data service: 1 local worker"]]
    assert [r["details"]["workers"] for r in service] == [0, 1]
    assert service[0]["details"]["input_config"]["data_service"] == ""
    assert service[1]["details"]["input_config"]["data_service"].startswith("grpc://")
    assert service[1]["details"]["worker_cpu_us_per_image"] > 0  # the worker did the decoding
    for record in service:
        assert record["details"]["batch_shape"] == [4, 32, 32, 1]
        _check_summary(record["metrics"]["steady_images_per_sec"], repeats=1)
    ratios = lines[-1]["ratios"]
    for fmt in ("jpeg", "raw"):
        for cache in ("cached", "uncached"):
            key = f"host_cpu_device_vs_host_{fmt}_{cache}"
            device = host[f"host cost {fmt} 1ch {'cached' if cache == 'cached' else 'no cache'}"
                          ", augment on device"]
            hosted = host[device["variant"].replace("on device", "on host")]
            assert ratios[key] == pytest.approx(
                device["metrics"]["host_cpu_us_per_image"]["median"]
                / hosted["metrics"]["host_cpu_us_per_image"]["median"])
    assert "data_service_1_workers_vs_local" in ratios
    assert [t["target"] for t in lines[-1]["targets"]] == [
        "device augmentation host CPU/image <= 0.2x host's (jpeg 1ch cached)"]
    assert "cores for 50k img/s" in printed and "workers' CPU us/img" in printed


def test_worker_cpu_between_snapshots_survives_threads_that_exit():
    """CI once measured -6667 us/image: a worker thread that exits inside the window took its
    time out of the live-thread sum. Survivors count their growth, new threads count from zero,
    the process-wide tick count is the floor."""
    from xray_tfdata.benchmarking import host_cost_bench

    between = host_cost_bench._cpu_seconds_between  # pylint: disable=protected-access
    start = ({(1, "1"): 1_000_000_000, (1, "2"): 5_000_000_000}, 6.0)
    # thread 2 (5 s) exited, thread 1 grew by 0.5 s, thread 3 was born and ran 0.25 s
    end = ({(1, "1"): 1_500_000_000, (1, "3"): 250_000_000}, 6.8)
    assert between(start, end) == pytest.approx(0.8)  # ticks saw more than the survivors
    end_exact = ({(1, "1"): 1_500_000_000, (1, "2"): 5_010_000_000}, 6.5)
    assert between(start, end_exact) == pytest.approx(0.51)  # exact beats 10 ms ticks
    assert between(start, ({}, 6.0)) == 0.0  # everything exited, no tick: zero, not negative


def test_cores_needed_is_rate_times_cpu_per_image():
    from xray_tfdata.benchmarking import host_cost_bench

    assert host_cost_bench.cores_needed(100.0, 10_000) == pytest.approx(1.0)
    assert host_cost_bench.cores_needed(250.0, 50_000) == pytest.approx(12.5)


def test_train_mode_end_to_end_real_vs_synthetic_and_replicas(work_dir, tmp_path):
    lines, printed = _run(work_dir, tmp_path, "train")
    measured = {r["variant"]: r for r in lines if r["kind"] == "measurement"}
    assert list(measured) == ["float32 x1, augment on host", "float32 x1, augment on device"] + [
        f"float32 x{n}, augment on host" for n in REPLICAS[1:]]
    for name, record in measured.items():
        metrics = record["metrics"]
        for feed in ("real", "synthetic"):
            _check_summary(metrics[f"{feed}_images_per_sec"])
            _check_summary(metrics[f"{feed}_step_time_ms"])
            wait = metrics[f"{feed}_input_wait_ms_per_step"]
            assert SUMMARY_KEYS <= set(wait)
            assert 0 <= wait["median"] <= metrics[f"{feed}_step_time_ms"]["max"]
        _, replicas, where = train_bench.parse_variant(name)
        assert record["details"]["augment_on"] == where
        assert record["details"]["replicas_resolved"] == replicas
        assert record["details"]["global_batch"] == 4 * replicas
        assert record["details"]["element_spec"] == \
            {"images": [[4, 32, 32, 1], "uint8"], "labels": [[4], "int32"]}
        assert np.isfinite(record["details"]["final_loss"])
        assert metrics["peak_rss_mb"] > 0
    ratios = lines[-1]["ratios"]
    for where in ("host", "device"):
        tag = f"float32_x1_augment_{where}"
        assert {f"real_vs_synthetic_{tag}", f"input_bound_fraction_{tag}"} <= set(ratios)
        assert ratios[f"input_bound_fraction_{tag}"] == \
            pytest.approx(1 - ratios[f"real_vs_synthetic_{tag}"])
    assert "real_device_vs_host_augment_float32_x1" in ratios
    if 2 in REPLICAS:
        assert "scaling_efficiency_float32_x2_augment_host" in ratios
    assert "real >= 0.95 x synthetic (float32, 1 replica, augment on host)" in printed


def test_synthetic_feed_delivers_the_real_batches_shapes_to_the_model(work_dir):
    source = datasets.synthetic_sources("tiny", work_dir)
    records = datasets.records_for(source, work_dir, image_size=32, channels=1,
                                   image_format="jpeg")
    n = REPLICAS[-1]
    strategy = train_bench.make_strategy("mirrored", n)
    feeds = train_bench.build_feeds(str(records), 32, 1, 4 * n, 0, strategy)
    batches = {}
    for feed in ("real", "synthetic"):
        batch = next(iter(strategy.distribute_datasets_from_function(feeds[feed])))
        batches[feed] = [(tuple(t.shape), t.dtype) for part in batch
                         for t in strategy.experimental_local_results(part)]
    assert batches["real"] == batches["synthetic"] == \
        [((4, 32, 32, 1), tf.uint8)] * n + [((4,), tf.int32)] * n


def test_too_many_replicas_in_process_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"replicas=64 but only \d CPU device\(s\).*Run isolated"):
        train_bench.make_strategy("mirrored", 64)


# ------------------------------------------------------------------ each mode on its defaults
def _scaled_defaults(mode: str, work_dir: Path, tmp_path: Path, **overrides) -> dict:
    """BenchConfig's defaults for `mode`, with only the amounts scaled down to the tiny preset:
    the same share of the sources for the convert subset, tiny images, few steps, one repeat."""
    defaults = suite.BenchConfig(mode=mode)
    share = defaults.convert_images / datasets.PRESETS[defaults.synthetic].num_images
    settings = dict(synthetic="tiny", work_dir=str(work_dir),
                    output=str(tmp_path / "results.jsonl"), image_size=32, batch_size=4,
                    steps=2, warmup_steps=1, repeats=1, isolate=False,
                    convert_images=max(1, round(share * datasets.PRESETS["tiny"].num_images)),
                    replicas=REPLICAS)
    settings.update(overrides)
    return settings


def test_convert_mode_on_its_defaults_converts_a_subset(work_dir, tmp_path):
    # The default (2,000 of 6,432 sources) takes the subset path: it once crashed there.
    settings = _scaled_defaults("convert", work_dir, tmp_path)
    assert 0 < settings["convert_images"] < datasets.PRESETS["tiny"].num_images
    lines, _ = _run(work_dir, tmp_path, "convert",
                    **{k: v for k, v in settings.items() if k != "work_dir"})
    measured = [r for r in lines if r["kind"] == "measurement"]
    assert measured and all(r["metrics"] for r in measured)
    assert {r["details"]["images"] for r in measured} == {settings["convert_images"]}
    assert lines[0]["settings"]["data"]["convert_images"] == settings["convert_images"]


@pytest.mark.slow
def test_all_mode_on_its_defaults_runs_each_mode_in_order(work_dir, tmp_path):
    # Every mode once, in order; the variants each mode multiplies are cut to one apiece (the
    # modes' own tests above run them all).
    settings = _scaled_defaults("all", work_dir, tmp_path, ablation=False, host_cost=False,
                                baselines=False, service_workers=(), precisions=("float32",),
                                replicas=(1,), augment_on=("host",), workers=(1,))
    printed: list[str] = []
    records = suite.run(suite.BenchConfig(mode="all", **settings), echo=printed.append)
    summaries = [r["mode"] for r in records if r["kind"] == "summary"]
    assert summaries == list(suite.RUN_ORDER)
    assert all(r["metrics"] for r in records if r["kind"] == "measurement")
