r"""The converter's runners side by side: local pool vs Beam (in-process, and N worker processes).

  python benchmarks/convert_beam.py --images=2000 --workers=2 --repeats=1 \
      --work_dir=/tmp/convert_beam --out=benchmarks/convert_beam_results.jsonl

Sources: --images tiny generated X-ray-like PNGs (--side px, blurred noise, 3 classes, 80 %
train / 20 % test), written once under --work_dir and reused. Each round runs every runner once
on the same sources, in one process (apache_beam and TensorFlow imported before timing), and
checks that their shards and manifests are byte-identical. Reported: wall time of
build_records, images/s, and each runner's ratio to the local runner of the same round (quote
the ratio: absolute times on a shared machine are noise).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from xray_tfdata.benchmarking import datasets

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 2000, "Number of source images.")
flags.DEFINE_integer("side", 48, "Generated image side, px.")
flags.DEFINE_integer("image_size", 32, "--image_size of the records.")
flags.DEFINE_integer("workers", 2, "Local pool workers, and Beam worker processes.")
flags.DEFINE_integer("repeats", 1, "Rounds (each runs every runner once).")
flags.DEFINE_string("work_dir", "/tmp/convert_beam", "Generated sources and outputs.")
flags.DEFINE_string("out", "benchmarks/convert_beam_results.jsonl", "JSON lines appended here.")


def runners(workers: int) -> dict[str, dict[str, Any]]:
    return {
        "local": {"num_workers": workers},
        "beam_in_process": {"runner": "beam"},
        f"beam_{workers}_processes": {
            "runner": "beam", "beam_pipeline_options":
            f"--direct_running_mode=multi_processing,--direct_num_workers={workers}"},
    }


def main(argv: list[str]) -> None:
    del argv
    import apache_beam  # noqa: F401, PLC0415 - imported before timing, as TensorFlow is

    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.benchmarking import harness  # noqa: PLC0415
    from xray_tfdata.records import convert  # noqa: PLC0415

    work = Path(FLAGS.work_dir)
    data = datasets.noise_sources(work / f"sources_{FLAGS.images}_{FLAGS.side}", FLAGS.images, FLAGS.side)
    run_id, machine = harness.new_run_id(), harness.machine_facts()
    rows: dict[str, list[float]] = {}
    for round_ in range(FLAGS.repeats):
        shas = {}
        for name, settings in runners(FLAGS.workers).items():
            out = work / f"out_{name}"
            config = convert.ConversionConfig(data_dir=str(data), output_dir=str(out),
                                              image_size=FLAGS.image_size, overwrite=True,
                                              **settings)
            start = time.perf_counter()
            convert.build_records(config, progress=False)
            rows.setdefault(name, []).append(time.perf_counter() - start)
            shas[name] = {p.name: files.sha256_file(p) for p in sorted(out.iterdir())}
        identical = all(s == shas["local"] for s in shas.values())
        print(f"round {round_ + 1}: outputs byte-identical across runners: {identical}")
    local = statistics.median(rows["local"])
    table = [{"runner": name, "seconds": statistics.median(times),
              "images_per_s": FLAGS.images / statistics.median(times),
              "speed_vs_local": local / statistics.median(times)}
             for name, times in rows.items()]
    print(harness.format_table(table, [("runner", "runner"), ("seconds", "s (median)"),
                                       ("images_per_s", "images/s"),
                                       ("speed_vs_local", "speed / local")]))
    settings = {"images": FLAGS.images, "side": FLAGS.side, "image_size": FLAGS.image_size,
                "workers": FLAGS.workers, "repeats": FLAGS.repeats}
    harness.append_jsonl(FLAGS.out, [{
        "run_id": run_id, "time": harness.utc_now(), "benchmark": "convert_beam",
        "machine": machine, "versions": files.versions(), "settings": settings,
        "identical": identical, **row, "all_seconds": rows[row["runner"]]} for row in table])


if __name__ == "__main__":
    app.run(main)
