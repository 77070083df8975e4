r"""Leave-one-collection-out on the shared real X-rays (issue 19): which training recipe transfers?

  python benchmarks/loco.py --work_dir=/tmp/loco_bench --seeds=0,1,2 --epochs=12 --image_size=64
  python benchmarks/loco.py --smoke          # 1 seed, 1 epoch, 20 children per class: minutes

Collections (read in place, never copied; `--smoke` links a subset instead):
  paed   ../shared/real_cxr_paediatric: 300 NORMAL + 300 PNEUMONIA children (class folders:
         test 20% and val 10% carved per class)
  adult  ../shared/real_cxr_sample with its labels.csv: 12 NORMAL, 12 COVID19, 12 PNEUMONIA
         adults (val and test carved by patient)
Both hold two classes or more, so `python -m xray_tfdata.loco` makes two folds: hold out paed
(train on 36 adults, score on 600 children) and hold out adult (train on children only, score on
36 adults: COVID19 was never seen). Variants:
  defaults                    the records as built, train's defaults (class_weights=balanced)
  intensity=equalize, clahe   records rebuilt with build_records --intensity (their own dirs)
  balanced_collections        --sampling=balanced_collections
  adversary                   --collection_adversary=W, when train has that flag (else skipped,
                              with a note in the table and the JSON)
Each (variant, seed) is one `python -m xray_tfdata.loco` run into its own work dir (resumable:
a rerun of this script skips finished folds); the exact commands, every fold's numbers (loco.json)
and the machine are written to --out; one table is printed: per variant, seed and held-out
collection, then the mean over seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PAED, ADULT = SHARED / "real_cxr_paediatric", SHARED / "real_cxr_sample"
CSV_COLUMNS = "path=path,label=label,split=split,patient_id=patientid"
CLASSES = ("NORMAL", "COVID19", "PNEUMONIA")

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/loco_bench", "Records, loco work dirs (cached).")
flags.DEFINE_string("out", "", "JSON written here (default benchmarks/loco_results.json; "
                    "<work_dir>/loco_results_smoke.json with --smoke).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (each variant runs once per seed).")
flags.DEFINE_list("variants", ["defaults", "equalize", "clahe", "balanced_collections",
                               "adversary"], "Variants to run (see the docstring).")
flags.DEFINE_integer("image_size", 64, "Records and model input side.")
flags.DEFINE_integer("epochs", 12, "Training epochs per fold.")
flags.DEFINE_integer("global_batch_size", 16, "Batch size (the paed fold trains on about 25 "
                     "adults: at most that).")
flags.DEFINE_float("adversary_weight", 0.1, "--collection_adversary weight of that variant.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the CIs.")
flags.DEFINE_bool("smoke", False, "1 seed, 1 epoch, batch 8, 20 children per class, 50 resamples: "
                  "checks the script end to end in minutes; numbers meaningless.")

# variant -> (build_records flags, loco flags); "adversary" is filled in by _variants().
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "defaults": ({}, {}),
    "equalize": ({"intensity": "equalize"}, {}),
    "clahe": ({"intensity": "clahe"}, {}),
    "balanced_collections": ({}, {"sampling": "balanced_collections"}),
    # The two best of the above on their own (measured), together: the README's recipe.
    "clahe+balanced_collections": ({"intensity": "clahe"}, {"sampling": "balanced_collections"}),
}


def _variants(names: list[str], weight: float) -> tuple[dict[str, tuple], list[str]]:
    """The variants to run, and a note for each skipped one."""
    from xray_tfdata import settings  # noqa: PLC0415
    from xray_tfdata.training.config import TrainConfig  # noqa: PLC0415

    table, notes = dict(VARIANTS), []
    if "collection_adversary" in settings.flag_names(TrainConfig).values():
        table["adversary"] = ({}, {"collection_adversary": str(weight)})
    elif "adversary" in names:
        notes.append("adversary skipped: train has no --collection_adversary flag in this "
                     "checkout (issue 19's gradient-reversal head is not merged yet).")
    unknown = [n for n in names if n not in table and n != "adversary"]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}, "
                             f"adversary.")
    return {n: table[n] for n in names if n in table}, notes


def _smoke_paed(work: Path, per_class: int = 20) -> Path:
    """A class-folder layout of symlinks to the first `per_class` children of each class."""
    out = work / f"paed_subset_{per_class}"
    for label in ("NORMAL", "PNEUMONIA"):
        (out / label).mkdir(parents=True, exist_ok=True)
        for path in sorted((PAED / label).iterdir())[:per_class]:
            link = out / label / path.name
            if not link.exists():
                os.symlink(path.resolve(), link)
    return out


def _run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{cmd[2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def build(work: Path, paed: Path, intensity: str) -> tuple[Path, list[str]]:
    """The two-collection records for one intensity mode (a complete build is reused)."""
    out = work / f"records_{FLAGS.image_size}px_{intensity}"
    cmd = [sys.executable, "-m", "xray_tfdata.build_records",
           f"--data_dir=paed={paed},adult={ADULT}", f"--labels_csv=adult={ADULT / 'labels.csv'}",
           f"--csv_columns={CSV_COLUMNS}", f"--image_size={FLAGS.image_size}",
           f"--intensity={intensity}", f"--output_dir={out}", "--seed=0"]
    _run(cmd)
    return out, cmd


def rows_of(variant: str, seed: str, loco: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fold of a loco.json."""
    rows = []
    for fold in loco["folds"]:
        held, internal = fold["held_out"], fold["internal"] or {}
        ci = held["macro_f1_ci"]
        rows.append({
            "variant": variant, "seed": seed, "held_out": fold["holdout"], "n": held["n"],
            "macro_f1": held["macro_f1"], "ci_low": ci["low"], "ci_high": ci["high"],
            **{f"sens_{c}": held["sensitivity"].get(c) for c in CLASSES},
            "probe_ratio": (held.get("probe") or {}).get("ratio"),
            "border": (held.get("border_attention") or {}).get("overall"),
            "internal_n": internal.get("n"), "internal_macro_f1": internal.get("macro_f1"),
            "epochs": fold["training"]["epochs_completed"],
            "train_seconds": fold["training"]["seconds"]})
    return rows


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (variant, held-out collection), with the seeds' min and max."""
    out = []
    keys = dict.fromkeys((r["variant"], r["held_out"]) for r in rows)
    for variant, held_out in keys:
        mine = [r for r in rows if (r["variant"], r["held_out"]) == (variant, held_out)]

        def mean(key: str) -> float | None:
            values = [r[key] for r in mine if r[key] is not None]
            return sum(values) / len(values) if values else None

        f1s = [r["macro_f1"] for r in mine]
        out.append({"variant": variant, "seed": f"mean of {len(mine)}", "held_out": held_out,
                    "n": mine[0]["n"], "macro_f1": mean("macro_f1"), "ci_low": min(f1s),
                    "ci_high": max(f1s), **{f"sens_{c}": mean(f"sens_{c}") for c in CLASSES},
                    "probe_ratio": mean("probe_ratio"), "border": mean("border"),
                    "internal_n": mine[0]["internal_n"],
                    "internal_macro_f1": mean("internal_macro_f1")})
    return out


def _display(row: dict[str, Any]) -> dict[str, str]:
    """Counts as integers, scores with three decimals, '-' where not measured."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)
    return {key: cell(value) for key, value in row.items()}


COLUMNS = (("variant", "variant"), ("seed", "seed"), ("held_out", "held out"), ("n", "n"),
           ("macro_f1", "macro-F1"), ("ci_low", "CI low (mean row: min seed)"),
           ("ci_high", "CI high (max seed)"),
           *((f"sens_{c}", f"sens {c}") for c in CLASSES), ("probe_ratio", "probe / CNN"),
           ("border", "border"), ("internal_n", "internal n"),
           ("internal_macro_f1", "internal macro-F1"))


def main(argv: list[str]) -> None:
    del argv
    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.benchmarking import harness  # noqa: PLC0415

    if not (PAED.is_dir() and (ADULT / "labels.csv").is_file()):
        raise app.UsageError(f"The shared X-rays are not at {SHARED} (real_cxr_paediatric/, "
                             f"real_cxr_sample/labels.csv).")
    seeds = FLAGS.seeds[:1] if FLAGS.smoke else FLAGS.seeds
    epochs = 1 if FLAGS.smoke else FLAGS.epochs
    bootstrap = 50 if FLAGS.smoke else FLAGS.bootstrap
    batch = 8 if FLAGS.smoke else FLAGS.global_batch_size
    work = Path(FLAGS.work_dir) / ("smoke" if FLAGS.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    paed = _smoke_paed(work) if FLAGS.smoke else PAED
    variants, notes = _variants(FLAGS.variants, FLAGS.adversary_weight)
    start = time.time()
    builds, runs, rows = {}, [], []
    for variant, (build_flags, loco_flags) in variants.items():
        intensity = build_flags.get("intensity", "none")
        if intensity not in builds:
            builds[intensity] = build(work, paed, intensity)
        records, build_cmd = builds[intensity]
        for seed in seeds:
            run_dir = work / "runs" / f"{variant}_s{seed}"
            cmd = [sys.executable, "-m", "xray_tfdata.loco", f"--records_dir={records}",
                   f"--work_dir={run_dir}", f"--epochs={epochs}",
                   f"--global_batch_size={batch}", f"--seed={seed}",
                   f"--bootstrap={bootstrap}", "--noexport",
                   *(f"--{k}={v}" for k, v in loco_flags.items())]
            try:
                stdout = _run(cmd)
            except RuntimeError as err:
                # A recipe these records cannot take (e.g. the adversary when every fold trains
                # on one collection) is recorded with loco's own one-line reason, not fatal.
                reason = str(err).strip().splitlines()[-1]
                notes.append(f"{variant} seed {seed}: not run: {reason}")
                print("Not run: " + reason, flush=True)
                continue
            loco = json.loads((run_dir / "loco.json").read_text())
            print(stdout, flush=True)
            runs.append({"variant": variant, "seed": seed, "build_command": build_cmd,
                         "command": cmd, "loco": {k: v for k, v in loco.items() if k != "table"}})
            rows += rows_of(variant, seed, loco)
    means = mean_rows(rows) if len(seeds) > 1 else []
    table = harness.format_table([_display(r) for r in rows + means], COLUMNS)
    print(table)
    for note in notes:
        print("Note: " + note)
    out = Path(FLAGS.out or (work / "loco_results_smoke.json" if FLAGS.smoke
                             else REPO / "benchmarks" / "loco_results.json"))
    out.write_text(json.dumps({
        "command": [sys.executable, *sys.argv], "machine": harness.machine_facts(),
        "versions": files.versions(), "started_utc": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "minutes": (time.time() - start) / 60,
        "settings": {"seeds": seeds, "epochs": epochs, "image_size": FLAGS.image_size,
                     "global_batch_size": batch, "bootstrap": bootstrap,
                     "smoke": FLAGS.smoke, "variants": {k: {"build": b, "loco": lf}
                                                        for k, (b, lf) in variants.items()}},
        "notes": notes, "rows": rows, "means": means, "runs": runs, "table": table},
        indent=1, sort_keys=True) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
