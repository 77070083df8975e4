"""What every benchmark needs to be trusted: machine facts, versions, statistics, memory, output.

No TensorFlow import here: the parent process of a benchmark run only orchestrates, and the
measurements run in child processes (see isolate.py) that import what they measure.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from xray_tfdata import files

# Bump when a field of the JSON lines changes meaning; readers can filter on it.
SCHEMA_VERSION = 1

_MB = 1024.0 * 1024.0

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, str]]:
    """GPUs from nvidia-smi (no TF import in the parent); [] on CPU-only machines."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, memory, driver = (part.strip() for part in (line.split(",") + ["", ""])[:3])
        gpus.append({"name": name, "memory": memory, "driver": driver})
    return gpus


def machine_facts() -> dict[str, Any]:
    """CPU model and cores, GPUs, RAM and the load at the start (a busy machine skews timings)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_usable_cores": files.usable_cpus(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "ram_available_gb": round(psutil.virtual_memory().available / 1024**3, 1),
        "gpus": _gpus(),
        "load_average_1_5_15": [round(x, 2) for x in load],
    }


def timed_with_cpu(run, repeats: int) -> tuple[list[float], list[float]]:
    """Calls `run` (returns images delivered) `repeats` times: images/s (wall clock) and this
    process's CPU microseconds per image (all threads: the tf.data pool does the work)."""
    rates, cpu_us = [], []
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        images = run()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rates.append(images / wall if wall > 0 else math.inf)
        cpu_us.append(1e6 * cpu / max(images, 1))
    return rates, cpu_us


def consume(iterator, num_batches: int) -> int:
    """Pulls (images, labels) batches from a dataset iterator; returns images delivered. Tensors from tf.data are already computed."""
    images = 0
    for _ in range(num_batches):
        batch, _labels = next(iterator)
        images += int(batch.shape[0])
    return images


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements.

    spread_pct = 100 * (max - min) / median: with 3 repeats, the range is the honest spread.
    """
    if not values:
        raise ValueError("summarize() needs at least one value; received an empty sequence.")
    vals = [float(v) for v in values]
    median = statistics.median(vals)
    return {
        "median": median,
        "min": min(vals),
        "max": max(vals),
        "mean": statistics.fmean(vals),
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "spread_pct": 100.0 * (max(vals) - min(vals)) / median if median else 0.0,
        "n": len(vals),
        "values": vals,
    }


def time_repeats(
    run: Callable[[], float], *, repeats: int, warmup: Callable[[], Any] | None = None
) -> list[float]:
    """Calls `warmup` once, then `run` `repeats` times; `run` returns the work units it did.

    Returns units per second for each repeat (e.g. images/s).
    """
    if warmup is not None:
        warmup()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        units = run()
        elapsed = time.perf_counter() - start
        rates.append(units / elapsed if elapsed > 0 else math.inf)
    return rates


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux: VmHWM, the high-water mark of this process's own address space. ru_maxrss is only the
    fallback because Linux carries it across fork + exec: a child started by a parent holding
    700 MB of TensorFlow would report at least 700 MB whatever it does.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def to_mb(num_bytes: float) -> float:
    return round(num_bytes / _MB, 1)


class RssSampler:
    """Polls this process's RSS in a thread; the peak above the baseline at entry.

    ru_maxrss is exact but only ever grows over a process's life, so in-process measurements
    (tests, --noisolate) use this sampler to see each variant's own peak.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_bytes = 0
        self.peak_bytes = 0

    def _poll(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "RssSampler":
        self.baseline_bytes = current_rss_bytes()
        self.peak_bytes = self.baseline_bytes
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


def new_run_id() -> str:
    """UTC time plus a random suffix: sorts by time, unique across concurrent runs."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Appends one JSON object per line; flushed and fsynced so a crash keeps whole lines."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Not JSON serializable: {type(value).__name__} {value!r}")


def format_number(value: Any) -> str:
    """Three significant digits for rates, thousands separators for large ones."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    value = float(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub-markdown table (readable in a terminal too); columns are (key, header)."""
    header = [title for _, title in columns]
    body = [[format_number(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])


def target(name: str, value: float | None, needed: float,
           higher_is_better: bool = True) -> dict[str, Any]:
    """One of an issue's targets, checked against a ratio measured in this run."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        met = False
    else:
        met = value >= needed if higher_is_better else value <= needed
    return {"target": name, "value": value, "needed": needed,
            "comparison": ">=" if higher_is_better else "<=", "met": bool(met)}


TARGET_COLUMNS = (("target", "target"), ("value", "measured"), ("comparison", ""),
                  ("needed", "needed"), ("met_text", "met"))


def target_rows(targets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "met_text": "yes" if t["met"] else "NO"} for t in targets]
