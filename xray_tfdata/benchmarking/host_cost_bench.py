"""The host's CPU budget per image, and the tf.data service, for the input mode (issue 11).

Host cost: our pipeline with no model running, measured as this process's CPU seconds over the
images it delivered (`host_cpu_us_per_image`, all threads), for augmentation on the host vs on
the device (where the host pipeline only reads cached uint8, shuffles, batches and prefetches),
jpeg vs raw records, cached vs not. From it: the cores a host needs to feed 10k and 50k images/s
(cores = rate x CPU seconds per image), the budget of a GPU host whose accelerators train a small
CNN at tens of thousands of images/s.

Data service: the same training pipeline (jpeg, host augmentation, no cache: the service's
workers see different files every epoch) read locally (0 workers) or through a dispatcher in this
process and 1 or 2 worker processes of `python -m xray_tfdata.data_service` on this machine. The
trainer's own CPU per image shows what moves off the trainer; the workers' CPU is reported apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from xray_tfdata.benchmarking import harness
from xray_tfdata.benchmarking.isolate import Task

_HERE = "xray_tfdata.benchmarking.host_cost_bench"
_INPUT = "xray_tfdata.benchmarking.input_bench"
SPLIT = "train"
RATES = (10_000, 50_000)  # images/s a GPU host must feed
# (image format, cached, augment_on): every combination, jpeg and raw 1-channel records.
VARIANTS = tuple((fmt, cached, where) for fmt in ("jpeg", "raw") for cached in (True, False)
                 for where in ("host", "device"))
TARGET_RATIO = 0.2  # device augmentation's host CPU per image <= 0.2 x host augmentation's


def variant_name(image_format: str, cached: bool, augment_on: str) -> str:
    return (f"host cost {image_format} 1ch {'cached' if cached else 'no cache'}, "
            f"augment on {augment_on}")


def service_name(workers: int) -> str:
    return "data service: local (0 workers)" if workers == 0 else \
        f"data service: {workers} local worker{'s' if workers > 1 else ''}"


def plan(*, records: dict[str, str], common: dict[str, Any], seed: int,
         service_workers: tuple[int, ...], steps: int, warmup_steps: int) -> list[Task]:
    """Host-cost variants (run by input_bench.measure_ours), then the data-service variants."""
    tasks = [Task(variant_name(fmt, cached, where), f"{_INPUT}:measure_ours",
                  {**common, "records_dir": records[f"{fmt}-1"], "channels": 1, "seed": seed,
                   "overrides": {"cache": "memory" if cached else "none", "augment_on": where}})
             for fmt, cached, where in VARIANTS]
    tasks += [Task(service_name(n), f"{_HERE}:measure_service",
                   {**common, "records_dir": records["jpeg-1"], "seed": seed, "workers": n,
                    "steps": steps, "warmup_steps": warmup_steps})
              for n in service_workers]
    return tasks


def _start_worker(dispatcher: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xray_tfdata.data_service", "--role=worker",
         "--port=0", f"--dispatcher_address={dispatcher}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening" in line:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"data_service worker exited {proc.returncode}: "
                               f"{proc.stdout.read()[-2000:]}")
    proc.kill()
    raise RuntimeError("data_service worker did not start within 120 s")


def _cpu_snapshot(procs: list[subprocess.Popen]) -> tuple[dict[tuple[int, str], int], float]:
    """Per-thread run time (ns, Linux schedstat) and process-wide user + system seconds.

    schedstat is exact but per live thread: a thread that exits inside the window takes its time
    with it, so summing live threads at both ends can go negative (seen in CI). psutil's
    process-wide times keep exited threads but count 10 ms ticks. `_cpu_seconds_between` uses both.
    """
    threads, ticks = {}, 0.0
    for proc in procs:
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                stat = Path(f"/proc/{proc.pid}/task/{tid}/schedstat").read_text()
                threads[(proc.pid, tid)] = int(stat.split()[0])
        except (OSError, ValueError, IndexError):
            pass  # not Linux, or the thread ended while listed: the process-wide count covers it
        times = psutil.Process(proc.pid).cpu_times()
        ticks += times.user + times.system
    return threads, ticks


def _cpu_seconds_between(start: tuple[dict[tuple[int, str], int], float],
                         end: tuple[dict[tuple[int, str], int], float]) -> float:
    """CPU seconds used between two snapshots, never negative: threads alive at the end count their
    exact growth (threads born inside the window count from 0); the process-wide tick count is the
    floor, so time of threads that ended inside the window is not lost."""
    (threads0, ticks0), (threads1, ticks1) = start, end
    exact = sum(ns - threads0.get(key, 0) for key, ns in threads1.items()) / 1e9
    return max(exact, ticks1 - ticks0, 0.0)


def measure_service(records_dir: str, image_size: int, batch_size: int, repeats: int,
                    seed: int, workers: int, steps: int, warmup_steps: int) -> dict[str, Any]:
    """Images/s and CPU per image of the training pipeline, locally or through the service."""
    from xray_tfdata.inputs import pipeline, service  # pylint: disable=C0415

    dispatcher, procs = None, []
    try:
        address = ""
        if workers:
            dispatcher = service.start_dispatcher()
            address = dispatcher.target
            procs = [_start_worker(address.removeprefix("grpc://")) for _ in range(workers)]
        config = pipeline.InputConfig(
            global_batch_size=batch_size, image_size=image_size, channels=1, training=True,
            cache="none", augment=True, seed=seed, data_service=address,
            job_prefix=f"bench-{workers}")
        per_epoch = pipeline.steps_per_epoch(records_dir, SPLIT, batch_size)
        batches = max(steps, per_epoch)
        iterator = iter(pipeline.build_dataset(records_dir, SPLIT, config))
        harness.consume(iterator, max(warmup_steps, 2) + per_epoch // 2)
        worker_cpu0 = _cpu_snapshot(procs)
        rates, trainer_us = harness.timed_with_cpu(
            lambda: harness.consume(iterator, batches), repeats)
        worker_cpu = _cpu_seconds_between(worker_cpu0, _cpu_snapshot(procs))
        worker_us = 1e6 * worker_cpu / (repeats * batches * batch_size)
        batch = next(iterator)[0]
        iterator = None  # releases the service job before the servers stop
        return {"steady_images_per_sec": harness.summarize(rates),
                "host_cpu_us_per_image": harness.summarize(trainer_us),
                "worker_cpu_us_per_image": round(worker_us, 1),
                "augment_on": "host", "workers": workers, "batches_per_repeat": batches,
                "batch_shape": list(batch.shape), "batch_dtype": batch.dtype.name,
                "input_config": {"cache": "none", "augment": True, "data_service": address}}
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if dispatcher is not None:
            dispatcher.stop()


HOST_COLUMNS = (("variant", "variant"), ("augment_on", "augment on"),
                ("steady", "img/s (no model)"), ("cpu_us", "host CPU us/img"),
                ("cores_10k", "cores for 10k img/s"), ("cores_50k", "cores for 50k img/s"))
SERVICE_COLUMNS = (("variant", "variant"), ("steady", "img/s"), ("spread_pct", "spread %"),
                   ("cpu_us", "trainer CPU us/img"), ("worker_cpu_us", "workers' CPU us/img"))


def cores_needed(cpu_us_per_image: float, rate: float) -> float:
    """CPU cores kept busy delivering `rate` images/s at this cost per image."""
    return cpu_us_per_image * rate / 1e6


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The host-cost and data-service tables, ratios and the 0.2x target (pure)."""
    host_rows, ratios = [], {}
    for fmt, cached, where in VARIANTS:
        result = results.get(variant_name(fmt, cached, where))
        if not result:
            continue
        cpu = result["host_cpu_us_per_image"]["median"]
        host_rows.append({"variant": variant_name(fmt, cached, where), "augment_on": where,
                          "steady": result["steady_images_per_sec"]["median"], "cpu_us": cpu,
                          **{f"cores_{r // 1000}k": cores_needed(cpu, r) for r in RATES}})
    by_name = {row["variant"]: row for row in host_rows}
    for fmt, cached, _ in VARIANTS[::2]:
        host = by_name.get(variant_name(fmt, cached, "host"))
        device = by_name.get(variant_name(fmt, cached, "device"))
        if host and device and host["cpu_us"]:
            key = f"host_cpu_device_vs_host_{fmt}_{'cached' if cached else 'uncached'}"
            ratios[key] = device["cpu_us"] / host["cpu_us"]
    service_rows = []
    for name, result in results.items():
        if "workers" not in result:
            continue
        service_rows.append({"variant": name, "steady": result["steady_images_per_sec"]["median"],
                             "spread_pct": result["steady_images_per_sec"]["spread_pct"],
                             "cpu_us": result["host_cpu_us_per_image"]["median"],
                             "worker_cpu_us": result["worker_cpu_us_per_image"]})
    base = next((r for r in service_rows if r["variant"] == service_name(0)), None)
    for row in service_rows:
        workers = int(row["variant"].split(": ")[1][0]) if base and row is not base else 0
        if base and workers:
            ratios[f"data_service_{workers}_workers_vs_local"] = row["steady"] / base["steady"]
            ratios[f"data_service_{workers}_workers_trainer_cpu_vs_local"] = \
                row["cpu_us"] / base["cpu_us"]
    targets = [harness.target(
        f"device augmentation host CPU/image <= {TARGET_RATIO}x host's (jpeg 1ch cached)",
        ratios.get("host_cpu_device_vs_host_jpeg_cached"), TARGET_RATIO, higher_is_better=False)]
    tables = []
    if host_rows:
        tables.append(("host CPU per image (no model)", host_rows, HOST_COLUMNS))
    if service_rows:
        tables.append(("tf.data service (jpeg 1ch, host augmentation, no cache)", service_rows,
                       SERVICE_COLUMNS))
    return {"tables": tables, "ratios": ratios, "targets": targets if host_rows else []}
