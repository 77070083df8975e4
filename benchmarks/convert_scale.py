r"""Converter cost as the work grows (issue 18): images/s, peak RSS and time per phase at 10k-160k.

  python benchmarks/convert_scale.py --sizes=10000,40000,160000 --runners=local \
      --work_dir=/tmp/convert_scale --out=benchmarks/convert_scale_results.json

Sources: tiny generated X-ray-like PNGs (--side px, blurred noise: every image distinct, so the
duplicate search has its real work and finds nothing), 3 classes, train/ and test/ folders,
written once under --work_dir/sources_<n> and reused. Each (runner, size) runs in a fresh
subprocess so its peak RSS (VmHWM) is its own. Phases are timed by wrapping the converter's
stage functions in the child (the converter itself is unchanged, its output byte-identical):
  scan      collect.scan: walking the folders, labels, patients
  decode    decode_pass.run_pass: the worker pool's read + decode + hash + encode, the spill
  plan      rejects, duplicate search, split + shard plan (what build_records does between)
  write     the shards, read back from the spill
  manifest  dataset_info.json, and the .build/ clean-up
Runners: `local` (build_records, the process pool) and `beam` (--runner=beam on the in-process
FnApiRunner, multi-process with 2+ workers; the [beam] extra). Each is an entry of RUNNERS: a
function (data_dir, output_dir, workers, image_size) -> manifest that runs inside the child.
The phase times wrap the local runner's functions; for beam only the total is meaningful.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from absl import app, flags

from xray_tfdata import files
from xray_tfdata.benchmarking import datasets

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["10000", "40000", "160000"], "Numbers of source images.")
flags.DEFINE_list("runners", ["local"], "Runners to measure (see RUNNERS).")
flags.DEFINE_integer("workers", 2, "Converter worker processes.")
flags.DEFINE_integer("side", 48, "Generated image side, px.")
flags.DEFINE_integer("image_size", 32, "--image_size of the records.")
flags.DEFINE_string("work_dir", "/tmp/convert_scale", "Generated sources and outputs.")
flags.DEFINE_string("out", "benchmarks/convert_scale_results.json", "JSON written here.")
flags.DEFINE_string("child", "", "Internal: run one measurement (JSON settings) and print it.")


def _local(data_dir: str, output_dir: str, workers: int, image_size: int) -> dict[str, Any]:
    from xray_tfdata.records import convert  # noqa: PLC0415 - imported in the child only

    config = convert.ConversionConfig(data_dir=data_dir, output_dir=output_dir,
                                      image_size=image_size, num_workers=workers, overwrite=True)
    return convert.build_records(config, progress=False)


def _beam(data_dir: str, output_dir: str, workers: int, image_size: int) -> dict[str, Any]:
    """The same build on Beam's in-process FnApiRunner with `workers` worker processes."""
    from xray_tfdata.records import convert  # noqa: PLC0415 - imported in the child only

    options = ("--direct_running_mode=multi_processing,"
               f"--direct_num_workers={workers}" if workers > 1 else "")
    config = convert.ConversionConfig(data_dir=data_dir, output_dir=output_dir,
                                      image_size=image_size, num_workers=workers, overwrite=True,
                                      runner="beam", beam_pipeline_options=options)
    return convert.build_records(config, progress=False)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"local": _local, "beam": _beam}


def _timed_phases() -> dict[str, float]:
    """Wraps the converter's stage functions; returns the dict their times accumulate in."""
    from xray_tfdata.records import collect, convert, decode_pass, manifest  # noqa: PLC0415

    phases: dict[str, float] = {}

    def wrap(module: Any, name: str, phase: str) -> None:
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start
        setattr(module, name, timed)

    wrap(convert.collect, "scan", "scan")
    wrap(convert.decode_pass, "run_pass", "decode")
    wrap(convert, "_write_all", "write")
    writer = manifest.write_manifest

    def write_manifest(*args: Any, **kwargs: Any) -> Any:
        phases["manifest_start"] = time.perf_counter()  # manifest: from here to the end
        return writer(*args, **kwargs)
    convert.manifest.write_manifest = write_manifest
    del collect, decode_pass
    return phases


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool): load-independent cost."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child(settings: dict[str, Any]) -> dict[str, Any]:
    from xray_tfdata.benchmarking import harness  # noqa: PLC0415

    phases = _timed_phases()
    cpu = _cpu_seconds()
    with harness.RssSampler(0.05) as rss:
        start = time.perf_counter()
        info = RUNNERS[settings["runner"]](settings["data_dir"], settings["output_dir"],
                                           settings["workers"], settings["image_size"])
        end = time.perf_counter()
    total, cpu = end - start, _cpu_seconds() - cpu
    phases["manifest"] = end - phases.pop("manifest_start")
    phases["plan"] = total - sum(phases.values())
    examples = sum(int(s["num_examples"]) for s in info["splits"].values())
    return {**settings, "total_s": total, "images_per_s": settings["n"] / total,
            "cpu_s": cpu, "images_per_cpu_s": settings["n"] / cpu,
            "examples": examples, "rejected": len(info["rejected"]),
            "near_pairs": info["duplicates"]["near_pairs_total"],
            "baseline_rss_mb": harness.to_mb(rss.baseline_bytes),
            "peak_rss_mb": harness.to_mb(harness.peak_rss_bytes()),
            **{f"{p}_s": phases.get(p, 0.0) for p in ("scan", "decode", "plan", "write",
                                                     "manifest")}}


COLUMNS = (("runner", "runner"), ("n", "sources"), ("images_per_s", "images/s"),
           ("images_per_cpu_s", "images/CPU s"),
           ("total_s", "total s"), ("scan_s", "scan s"), ("decode_s", "decode s"),
           ("plan_s", "plan+dedupe s"), ("write_s", "write s"), ("manifest_s", "manifest s"),
           ("peak_rss_mb", "peak RSS MB"), ("rss_per_source_b", "RSS B/source vs smallest"))


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.child:
        print("RESULT " + json.dumps(child(json.loads(FLAGS.child))), flush=True)
        return
    from xray_tfdata.benchmarking import harness  # noqa: PLC0415

    work = Path(FLAGS.work_dir)
    rows = []
    for runner in FLAGS.runners:
        for n in map(int, FLAGS.sizes):
            start = time.perf_counter()
            data = datasets.noise_sources(work / f"sources_{n}_{FLAGS.side}px", n, FLAGS.side)
            print(f"sources_{n}: ready in {time.perf_counter() - start:.0f} s", flush=True)
            settings = {"runner": runner, "n": n, "workers": FLAGS.workers,
                        "image_size": FLAGS.image_size, "data_dir": str(data),
                        "output_dir": str(work / f"records_{runner}_{n}")}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(next(line for line in proc.stdout.splitlines()
                                  if line.startswith("RESULT "))[7:])
            shutil.rmtree(settings["output_dir"], ignore_errors=True)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for runner in FLAGS.runners:
        mine = [r for r in rows if r["runner"] == runner]
        for row in mine:
            row["rss_per_source_b"] = (round((row["peak_rss_mb"] - mine[0]["peak_rss_mb"]) * 2**20
                                             / (row["n"] - mine[0]["n"]))
                                       if row["n"] > mine[0]["n"] else None)
    print(harness.format_table(rows, COLUMNS))
    Path(FLAGS.out).write_text(json.dumps(
        {"machine": harness.machine_facts(), "versions": files.versions(),
         "settings": {k: getattr(FLAGS, k) for k in ("sizes", "runners", "workers", "side",
                                                     "image_size")},
         "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
