r"""Bounded load test of the web app on 127.0.0.1 (issue 12): N concurrent clients, a fixed number
of TF Serving REST predict requests, per --threads setting side by side in one run.

  python benchmarks/serve_load.py --model_path=workspace/quickstart/model/export \
      [--images_dir=../shared/real_cxr_sample] [--clients=8] [--requests=320] [--threads=1,4,8]

For each --threads value one `python -m xray_tfdata.serve` (the real command and waitress) runs in a
child process on a free port. Each gets --warmup requests, then for --repeats rounds each server in
turn gets --requests requests from --clients threads (each with its own keep-alive connection,
images cycled in order). Prints a table (median over rounds of p50/p95/p99 latency and images/s;
errors summed) and appends one JSON line per setting and round to --output. Exit status 1 if any
request failed. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", "workspace/quickstart/model/export", "Export dir or .keras.")
flags.DEFINE_string("images_dir", str(REPO.parent / "shared" / "real_cxr_sample"),
                    "Folder searched recursively for .png/.jpg/.jpeg/.bmp request images.")
flags.DEFINE_integer("clients", 8, "Concurrent client threads.", lower_bound=1)
flags.DEFINE_integer("requests", 320, "Measured requests per setting (bounded).", lower_bound=1)
flags.DEFINE_integer("warmup", 16, "Unmeasured requests first.", lower_bound=0)
flags.DEFINE_integer("batch", 1, "Images per request (instances).", lower_bound=1)
flags.DEFINE_list("threads", ["1", "4", "8"],
                  "Server --threads values; one server each, all started first, measured in turn.")
flags.DEFINE_integer("repeats", 3, "Rounds; each round measures every setting once "
                     "(interleaved, so a busy moment on a shared machine hits all settings "
                     "alike).", lower_bound=1)
flags.DEFINE_string("output", "workspace/benchmarks/serve_load.jsonl", "JSON lines appended here.")


def _bodies(images_dir: Path, batch: int) -> list[bytes]:
    paths = sorted(p for p in images_dir.rglob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not paths:
        raise app.UsageError(f"--images_dir={images_dir} has no .png/.jpg/.jpeg/.bmp files.")
    images = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    return [json.dumps({"instances": [{"b64": images[(i + k) % len(images)]}
                                      for k in range(batch)]}).encode()
            for i in range(0, len(images), batch)]


def _client(url: str, bodies: list[bytes], jobs: list[int], latencies: list[float],
            errors: list[str]) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    for job in jobs:
        body = bodies[job % len(bodies)]
        start = time.perf_counter()
        try:
            conn.request("POST", "/v1/models/xray:predict", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200 or b'"predictions"' not in answer:
                errors.append(f"HTTP {response.status}: {answer[:200]!r}")
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException) as err:
            errors.append(f"{type(err).__name__}: {err}")
            conn.close()
        latencies.append(time.perf_counter() - start)
    conn.close()


def _load(url: str, bodies: list[bytes], count: int, clients: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    workers = [threading.Thread(target=_client,
                                args=(url, bodies, list(range(c, count, clients)), latencies,
                                      errors)) for c in range(clients)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"requests": count, "wall_s": round(wall, 3), "errors": len(errors),
            "first_errors": errors[:3], "requests_per_s": round(count / wall, 2),
            "images_per_s": round(count * FLAGS.batch / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def main(argv: list[str]) -> None:
    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.benchmarking import harness  # noqa: PLC0415
    from xray_tfdata.serving.web import launch  # noqa: PLC0415

    threads = [int(t) for t in FLAGS.threads]
    bodies = _bodies(Path(FLAGS.images_dir), FLAGS.batch)
    run_id = harness.new_run_id()
    # The benchmark harness's machine facts and versions, the web extra's included.
    machine = {**harness.machine_facts(),
               "versions": files.versions((*files.VERSIONED, "django", "waitress"))}
    servers = {}
    try:
        for count in threads:
            servers[count] = launch.start(FLAGS.model_path, [f"--threads={count}"],
                                          cwd=str(REPO), env={"PYTHONPATH": str(REPO)})
            if FLAGS.warmup:
                _load(servers[count].url, bodies, FLAGS.warmup, FLAGS.clients)
        lines = []
        for round_index in range(FLAGS.repeats):
            for count in threads:
                result = _load(servers[count].url, bodies, FLAGS.requests, FLAGS.clients)
                lines.append({"run": run_id, "benchmark": "serve_load", "round": round_index,
                              "server_threads": count, "clients": FLAGS.clients,
                              "batch": FLAGS.batch, "distinct_bodies": len(bodies),
                              "model_path": FLAGS.model_path, "images_dir": FLAGS.images_dir,
                              **result, "machine": machine})
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for count in threads:
        mine = [line for line in lines if line["server_threads"] == count]
        row = {"server_threads": count, "clients": FLAGS.clients, "requests": FLAGS.requests,
               "errors": sum(line["errors"] for line in mine)}
        for key in ("p50_ms", "p95_ms", "p99_ms", "images_per_s"):
            row[key] = round(float(np.median([line[key] for line in mine])), 1)
        rows.append(row)
    print(f"median of {FLAGS.repeats} rounds, {FLAGS.batch} image(s) per request, "
          f"{len(bodies)} distinct bodies from {FLAGS.images_dir}")
    header = (f"{'server threads':>14} {'clients':>7} {'requests':>8} {'p50 ms':>7} "
              f"{'p95 ms':>7} {'p99 ms':>7} {'images/s':>8} {'x 1 thread':>10} {'errors':>6}")
    print(header + "\n" + "-" * len(header))
    base = rows[0]["images_per_s"]
    for r in rows:
        print(f"{r['server_threads']:>14} {r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>7} "
              f"{r['p95_ms']:>7} {r['p99_ms']:>7} {r['images_per_s']:>8} "
              f"{r['images_per_s'] / base:>10.2f} {r['errors']:>6}")
    out = Path(FLAGS.output)
    previous = out.read_text() if out.is_file() else ""
    files.write_atomic(out, previous + "".join(json.dumps(line) + "\n" for line in lines))
    print(f"\nappended {len(lines)} JSON lines to {out}")
    if any(r["errors"] for r in rows):
        raise SystemExit("serve_load: some requests failed (see the errors column).")


if __name__ == "__main__":
    app.run(main)
