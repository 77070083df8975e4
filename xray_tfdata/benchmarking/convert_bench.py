"""Converter throughput: build_records at 1..N workers vs the tutorial's sequential cv2 loop.

Both read the same full-size source files from a warm page cache (the suite reads every file once
before timing), so the comparison is decode + resize (+ for us: hashing, encoding, shard writing)
and not disk speed. images/s = source images / wall time of the whole call, pool start-up,
duplicate search, shard fsyncs and manifest included: what a user waits for.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from xray_tfdata.benchmarking import harness
from xray_tfdata.benchmarking.isolate import Task

_HERE = "xray_tfdata.benchmarking.convert_bench"
TUTORIAL = "tutorial cv2 loop"
CEILING_1 = "cv2 loop, 1 thread"


def plan(*, data_dir: str, work_dir: str, image_size: int, workers: tuple[int, ...],
         repeats: int, warmup: bool) -> list[Task]:
    """The convert mode's variants: the tutorial loop, then ours at each worker count."""
    common = {"data_dir": data_dir, "image_size": image_size, "repeats": repeats, "warmup": warmup}
    tasks = [Task(TUTORIAL, f"{_HERE}:measure_tutorial_loop", dict(common))]
    # The machine's own parallel ceiling for this work: the same loop on one OpenCV thread, then
    # split over N processes. What N workers can reach here is bounded by this ratio (shared or
    # SMT cores scale below N), so the converter's worker scaling is read against it.
    if max(workers) > 1:
        tasks.append(Task(CEILING_1, f"{_HERE}:measure_tutorial_loop",
                          {**common, "processes": 1, "threads": 1}))
        tasks.append(Task(f"cv2 loop, 1 thread x {max(workers)} processes",
                          f"{_HERE}:measure_tutorial_loop",
                          {**common, "processes": max(workers), "threads": 1}))
    for n in workers:
        tasks.append(Task(f"ours build_records {n} worker{'s' if n > 1 else ''}",
                          f"{_HERE}:measure_converter",
                          {**common, "work_dir": work_dir, "num_workers": n}))
    return tasks


def warm_page_cache(data_dir: str) -> int:
    """Reads every source file once so no variant pays the first cold read; returns bytes read."""
    from xray_tfdata.benchmarking import datasets  # pylint: disable=import-outside-toplevel

    total = 0
    for path, _ in datasets.source_files(data_dir):
        total += len(Path(path).read_bytes())
    return total


def tutorial_load(paths: list[str], image_size: int) -> list[Any]:
    """The source tutorial's loop: cv2.imread (3-channel BGR) then cv2.resize, one file at a time."""
    import cv2  # pylint: disable=import-outside-toplevel

    images = []
    for path in paths:
        image = cv2.imread(path)
        images.append(cv2.resize(image, (image_size, image_size)))
    return images


def _init_worker(threads: int | None) -> None:
    import cv2  # pylint: disable=import-outside-toplevel

    if threads:
        cv2.setNumThreads(threads)


def _load_count(paths: list[str], image_size: int) -> int:
    return len(tutorial_load(paths, image_size))


def measure_tutorial_loop(data_dir: str, image_size: int, repeats: int, warmup: bool,
                          processes: int = 1, threads: int | None = None) -> dict[str, Any]:
    """The tutorial loop over every file; optionally on `threads` OpenCV threads and split
    across `processes` processes (a started, warmed pool: start-up is not timed)."""
    import multiprocessing  # pylint: disable=import-outside-toplevel

    import cv2  # pylint: disable=import-outside-toplevel

    from xray_tfdata.benchmarking import datasets  # pylint: disable=import-outside-toplevel

    paths = [p for p, _ in datasets.source_files(data_dir)]
    if processes <= 1:
        default_threads = cv2.getNumThreads()
        _init_worker(threads)
        try:
            if warmup:
                tutorial_load(paths[: min(8, len(paths))], image_size)
            rates = harness.time_repeats(lambda: _load_count(paths, image_size), repeats=repeats)
        finally:
            cv2.setNumThreads(default_threads)
    else:
        chunks = [paths[i::processes] for i in range(processes)]
        # spawn: this process holds TensorFlow's threads, which fork would copy unsafely.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes, initializer=_init_worker, initargs=(threads,)) as pool:
            pool.starmap(_load_count, [(c[:2], image_size) for c in chunks])  # imports, warm-up
            rates = harness.time_repeats(
                lambda: sum(pool.starmap(_load_count, [(c, image_size) for c in chunks])),
                repeats=repeats)
    return {"images": len(paths), "processes": processes, "opencv_threads": threads or "default",
            "images_per_sec": harness.summarize(rates)}


def measure_converter(data_dir: str, work_dir: str, image_size: int, num_workers: int,
                      repeats: int, warmup: bool) -> dict[str, Any]:
    """Full build_records runs into a fresh temporary output dir each time (removed after)."""
    from xray_tfdata.records import convert, manifest  # pylint: disable=import-outside-toplevel

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    written = {"examples": 0, "rejected": 0}

    def run_once() -> float:
        out = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=work_dir))
        try:
            config = convert.ConversionConfig(
                data_dir=data_dir, output_dir=str(out / "records"), image_size=image_size,
                num_workers=num_workers)
            info = manifest.info_from_dict(convert.build_records(config, progress=False))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        written["examples"] = info.num_written
        written["rejected"] = info.num_rejected
        # Count every source handled (written or rejected): both cost a decode.
        return written["examples"] + written["rejected"]

    # No untimed warm-up run: every build_records call starts its own worker pool anyway, and a
    # user pays that start-up on every conversion; imports and the page cache are already warm.
    del warmup
    rates = harness.time_repeats(run_once, repeats=repeats)
    return {"images": written["examples"] + written["rejected"], "examples": written["examples"],
            "rejected": written["rejected"], "num_workers": num_workers,
            "images_per_sec": harness.summarize(rates)}


TABLE_COLUMNS = (("variant", "variant"), ("median", "images/s"), ("min", "min"), ("max", "max"),
                 ("spread_pct", "spread %"), ("peak_rss_mb", "peak RSS MB"),
                 ("vs_tutorial", "x tutorial"))


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Table rows, ratios and the issue's targets from one run's results (pure)."""
    tutorial = results.get(TUTORIAL, {}).get("images_per_sec", {}).get("median")
    single = results.get(CEILING_1, {}).get("images_per_sec", {}).get("median")
    rows, ours = [], {}
    for name, result in results.items():
        rate = result["images_per_sec"]
        if "num_workers" in result:
            ours[int(result["num_workers"])] = rate["median"]
        rows.append({"variant": name, **{k: rate[k] for k in ("median", "min", "max")},
                     "spread_pct": rate["spread_pct"], "peak_rss_mb": result.get("peak_rss_mb"),
                     "vs_tutorial": rate["median"] / tutorial if tutorial else None})
    ratios: dict[str, float] = {}
    targets = []
    if 1 in ours and tutorial:
        ratios["1_worker_vs_tutorial"] = ours[1] / tutorial
        targets.append(harness.target("1 worker >= tutorial cv2 loop",
                                      ratios["1_worker_vs_tutorial"], 1.0))
    for n in sorted(ours):
        if n > 1 and 1 in ours:
            ratios[f"{n}_workers_vs_1"] = ours[n] / ours[1]
    for name, result in results.items():
        if result.get("processes", 1) > 1 and single:
            # The best any N-worker converter can scale on this machine.
            ratios[f"machine_{result['processes']}_process_scaling"] = (
                result["images_per_sec"]["median"] / single)
    if 2 in ours and 1 in ours:
        targets.append(harness.target("2 workers >= 1.8x 1 worker", ratios["2_workers_vs_1"], 1.8))
    return {"rows": rows, "columns": TABLE_COLUMNS, "ratios": ratios, "targets": targets}

