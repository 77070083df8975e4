"""Runs one measurement in its own Python process, or in this one for fast smoke tests.

Why a process per variant: peak resident memory (ru_maxrss) only ever grows over a process's life,
so comparing loaders inside one process would charge the second for the first's peak. A fresh
process also gives each variant a fresh TF runtime, which is the only way to set the number of
logical CPU devices (for MirroredStrategy with 1, 2, 4 replicas) after another variant ran.

Child protocol: `python -m xray_tfdata.benchmarking.isolate SPEC.json RESULT.json`, where SPEC is
{"target": "package.module:function", "kwargs": {...}, "logical_cpus": N}; the child writes the
function's result dict plus its memory figures to RESULT (or {"error": traceback}).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from xray_tfdata import files
from xray_tfdata.benchmarking import harness


class BenchmarkError(RuntimeError):
    """A measurement failed; the message carries the variant and the child's last log lines."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One measurement: a function (by import path) and its JSON-able keyword arguments."""

    name: str
    target: str  # "xray_tfdata.benchmarking.input_bench:measure_ours"
    kwargs: dict[str, Any]
    # > 1: split the CPU into this many logical devices before TF starts (ignored with GPUs).
    logical_cpus: int = 0
    # Load TF before the baseline RSS is taken, so every variant's peak includes the same runtime.
    import_tensorflow: bool = True


def _resolve(target: str):
    module_name, _, func_name = target.partition(":")
    if not func_name:
        raise ValueError(f"Task target {target!r} must look like 'package.module:function'.")
    return getattr(importlib.import_module(module_name), func_name)


def configure_logical_cpus(count: int) -> None:
    """Splits the physical CPU into `count` logical devices; a no-op with GPUs or count <= 1."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if count <= 1 or tf.config.list_physical_devices("GPU"):
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * count
    )


def run_task(task: Task, *, isolate: bool, log_dir: str | os.PathLike,
             timeout_s: float = 1800.0) -> dict[str, Any]:
    """Runs `task` and returns its result with peak_rss_mb, baseline_rss_mb, isolated, wall_s."""
    start = time.perf_counter()
    if isolate:
        result = _run_child(task, Path(log_dir), timeout_s)
    else:
        result = _run_here(task)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["isolated"] = isolate
    return result


def _run_here(task: Task) -> dict[str, Any]:
    """In-process: the peak is the RSS above this process's level when the task started."""
    func = _resolve(task.target)
    with harness.RssSampler() as sampler:
        try:
            result = dict(func(**task.kwargs))
        except Exception as err:
            raise BenchmarkError(f"Variant {task.name!r} failed: {err}") from err
    result["baseline_rss_mb"] = harness.to_mb(sampler.baseline_bytes)
    result["peak_rss_mb"] = harness.to_mb(sampler.peak_bytes)
    result["peak_rss_above_baseline_mb"] = harness.to_mb(sampler.peak_bytes - sampler.baseline_bytes)
    return result


def _run_child(task: Task, log_dir: Path, timeout_s: float) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() else "_" for c in task.name)[:80]
    with tempfile.TemporaryDirectory(prefix="bench-task-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        result_path = Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(task), default=str))
        log_path = log_dir / f"{safe}.log"
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xray_tfdata.benchmarking.isolate",
                 str(spec_path), str(result_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired as err:
                proc.kill()  # only the child we started
                proc.wait()
                raise BenchmarkError(
                    f"Variant {task.name!r} exceeded {timeout_s:.0f} s and was stopped; "
                    f"lower --steps/--repeats or use a smaller dataset. Log: {log_path}"
                ) from err
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if proc.returncode != 0 or "error" in result:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise BenchmarkError(
                f"Variant {task.name!r} failed (exit code {proc.returncode}). "
                f"{result.get('error', '')}\nLast lines of {log_path}:\n{tail}"
            )
        return result


def _child_main(spec_path: str, result_path: str) -> int:
    from absl import logging  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.INFO)  # the measured code's own summaries go to the log file
    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, Any]
    try:
        if spec.get("import_tensorflow", True):
            configure_logical_cpus(int(spec.get("logical_cpus") or 0))
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

        # Baseline: Python + TensorFlow loaded, before any data; every variant pays it alike.
        baseline = harness.current_rss_bytes()
        func = _resolve(spec["target"])
        out = dict(func(**spec["kwargs"]))
        peak = harness.peak_rss_bytes()
        out["baseline_rss_mb"] = harness.to_mb(baseline)
        out["peak_rss_mb"] = harness.to_mb(peak)
        out["peak_rss_above_baseline_mb"] = harness.to_mb(peak - baseline)
        code = 0
    except Exception:  # the parent shows this traceback with the variant's name
        out = {"error": traceback.format_exc()}
        code = 1
    files.write_json(result_path, out, default=str, indent=None, sort_keys=False)
    return code


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
