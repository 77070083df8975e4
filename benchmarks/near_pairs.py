r"""Near-duplicate search (issue 18): the multi-index search vs all pairs (vs faiss, if installed).

  python benchmarks/near_pairs.py --counts=20000,100000,400000 --kinds=random,clustered,correlated \
      --out=benchmarks/near_pairs_results.json

Hash sets (256 bits, seeded):
  random      uniform hashes; 2 % of them replaced by copies of others with 0-20 bits flipped.
  clustered   groups of 1-30 images sharing a base hash, each with 0-11 bits flipped (re-encodes
              and crops of one X-ray); many true pairs.
  correlated  every hash a copy of one of 20 prototypes with each bit flipped with p=0.2, so
              distinct hashes sit ~80 bits apart as on the real sample (>= 78, not ~128), plus the
              2 % planted copies: chunks agree far more often than on uniform hashes.
Wall time is what the loaded machine gave; CPU time (this process) is the cost of the work.
All pairs and faiss run only up to --brute_max hashes (they grow as n^2); where they run, their
pairs are checked to equal the index's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from absl import app, flags

from xray_tfdata import files
from xray_tfdata.benchmarking import harness
from xray_tfdata.records import dedupe, near_pairs

FLAGS = flags.FLAGS
flags.DEFINE_list("counts", ["20000", "100000", "400000"], "Numbers of hashes.")
flags.DEFINE_list("kinds", ["random", "clustered", "correlated"], "Hash sets (see the docstring).")
flags.DEFINE_list("distances", [str(dedupe.DEFAULT_NEAR_DISTANCE)], "--near_distance values.")
flags.DEFINE_integer("brute_max", 20000, "Run all pairs (and faiss) only up to this many hashes.")
flags.DEFINE_string("out", "benchmarks/near_pairs_results.json", "JSON written here.")


def _flip_rows(rng: np.random.Generator, rows: np.ndarray, max_flips: int) -> np.ndarray:
    bits = np.unpackbits(rows.astype(">u8").view(np.uint8), axis=1)
    for row in bits:
        row[rng.choice(256, size=int(rng.integers(0, max_flips + 1)), replace=False)] ^= 1
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def _plant(rng: np.random.Generator, words: np.ndarray) -> np.ndarray:
    n = len(words)
    src, dst = rng.integers(0, n, n // 50), rng.integers(0, n, n // 50)
    words[dst] = _flip_rows(rng, words[src], 20)
    return words


def hashes(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        words = rng.integers(0, 1 << 63, (n, 4), dtype=np.uint64) << np.uint64(1)
        return _plant(rng, words | rng.integers(0, 2, (n, 4), dtype=np.uint64))
    if kind == "clustered":
        sizes = rng.integers(1, 31, n)
        base = np.repeat(np.arange(len(sizes)), sizes)[:n]
        bases = rng.integers(0, 1 << 63, (int(base[-1]) + 1, 4), dtype=np.uint64) << np.uint64(1)
        return _flip_rows(rng, bases[base], 11)[rng.permutation(n)]
    if kind == "correlated":
        protos = np.unpackbits(rng.integers(0, 256, (20, 32), dtype=np.uint8), axis=1)
        bits = protos[rng.integers(0, 20, n)] ^ (rng.random((n, 256)) < 0.2)
        return _plant(rng, np.packbits(bits, axis=1).view(">u8").astype(np.uint64))
    raise ValueError(f"kind must be one of random, clustered, correlated. Received: {kind!r}.")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _pairs(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist()))


def _faiss_pairs(words: np.ndarray, distance: int) -> set[tuple[int, int]] | None:
    try:
        import faiss  # noqa: PLC0415 - optional, measured only when installed
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    data = words.astype(">u8").view(np.uint8).copy()
    index = faiss.IndexBinaryFlat(near_pairs.BITS)
    index.add(data)
    lims, _, found = index.range_search(data, distance + 1)  # radius is exclusive
    rows = np.repeat(np.arange(len(words)), np.diff(lims).astype(np.int64))
    keep = found > rows
    return _pairs(rows[keep], found[keep])


def measure(kind: str, n: int, distance: int) -> dict[str, Any]:
    words = hashes(kind, n)
    row: dict[str, Any] = {"kind": kind, "n": n, "distance": distance}
    plan, row["plan_wall_s"], _ = _timed(
        lambda: near_pairs.choose_plan(near_pairs.permuted_bytes(words), distance))
    row["plan"] = "all pairs" if plan is None else "chunks={} bits={} radius={}".format(*plan)
    found, row["index_wall_s"], row["index_cpu_s"] = _timed(
        lambda: near_pairs.close_pairs(words, distance))
    row["pairs"] = len(found)
    if n <= FLAGS.brute_max:
        (i, j, _), row["brute_wall_s"], row["brute_cpu_s"] = _timed(
            lambda: near_pairs.brute_force(words, distance))
        row["brute_equal"] = _pairs(i, j) == {(a, b) for a, b, _ in found}
        faiss_found, wall, cpu = _timed(lambda: _faiss_pairs(words, distance))
        if faiss_found is not None:
            row["faiss_flat_wall_s"], row["faiss_flat_cpu_s"] = wall, cpu
            row["faiss_equal"] = faiss_found == {(a, b) for a, b, _ in found}
    print(json.dumps(row), flush=True)
    return row


COLUMNS = (("kind", "hashes"), ("n", "n"), ("distance", "d"), ("plan", "plan"),
           ("pairs", "pairs"), ("index_cpu_s", "index CPU s"), ("index_wall_s", "index wall s"),
           ("brute_cpu_s", "all pairs CPU s"), ("faiss_flat_cpu_s", "faiss flat CPU s"),
           ("brute_equal", "same pairs"))


def main(argv: list[str]) -> None:
    del argv
    rows = [measure(kind, int(n), int(d)) for d in FLAGS.distances for kind in FLAGS.kinds
            for n in FLAGS.counts]
    for row in rows:
        row["brute_equal"] = {True: "yes", False: "NO"}.get(row.get("brute_equal"), "-")
    print(harness.format_table(rows, COLUMNS))
    out = Path(FLAGS.out)
    out.write_text(json.dumps({"machine": harness.machine_facts(),
                               "versions": files.versions(),
                               "settings": {"counts": FLAGS.counts, "kinds": FLAGS.kinds,
                                            "distances": FLAGS.distances,
                                            "brute_max": FLAGS.brute_max},
                               "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
