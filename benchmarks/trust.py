r"""Can you trust it? Defaults vs balanced sampling vs no weighting, next to the metadata probe.

  python benchmarks/trust.py --work_dir=/tmp/trust_bench --datasets=real,synthetic \
      --image_size=64 --epochs=8

Datasets (each built into records once, cached under --work_dir):
  real       ../shared/real_cxr_sample (36 adult images, labels.csv) + ../shared/real_cxr_paediatric
             (300 NORMAL + 300 PNEUMONIA children) in a Kaggle layout made of symlinks. As in the
             Kaggle set, COVID19 comes only from the adult collection. Test: every third adult
             patient per class and 20% of the paediatric images (by sorted file name).
  synthetic  the synthetic Kaggle preset (synthetic.KAGGLE_COUNTS, 6,432 images; 256-384 px to
             keep generation short).
Variants: defaults (--class_weights=balanced), --sampling=balanced, --class_weights=none; the
seed CNN, same seed, same epochs. Each is evaluated on test by evaluator.evaluate (1000-resample
bootstrap CIs, shortcut probe fitted on the training records, ECE, border attention) and the rows
are printed as a Markdown table and appended as JSON lines to <work_dir>/trust.jsonl.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VARIANTS = {
    "defaults (class_weights=balanced)": {},
    "sampling=balanced": {"sampling": "balanced"},
    "class_weights=none": {"class_weights": "none"},
}

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/trust_bench", "Data, records, runs and trust.jsonl.")
flags.DEFINE_list("datasets", ["real", "synthetic"], "real and/or synthetic.")
flags.DEFINE_integer("image_size", 64, "Records and model input side.")
flags.DEFINE_integer("epochs", 8, "Training epochs per variant.")
flags.DEFINE_integer("global_batch_size", 32, "Batch size.")
flags.DEFINE_integer("seed", 0, "Seed of data splits, training and the bootstrap.")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def real_layout(out: Path) -> Path:
    """Kaggle layout of symlinks to the two real collections (patient-level for the adults)."""
    if (out / "test").is_dir():
        return out
    sample = SHARED / "real_cxr_sample"
    with (sample / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    for label in ("COVID19", "NORMAL", "PNEUMONIA"):
        patients = sorted({r["patientid"] for r in rows if r["label"] == label})
        test_patients = set(patients[2::3])
        for r in rows:
            if r["label"] == label:
                split = "test" if r["patientid"] in test_patients else "train"
                path = sample / r["path"]
                _link(path, out / split / label / f"adult_{path.name}")
    for label in ("NORMAL", "PNEUMONIA"):
        names = sorted((SHARED / "real_cxr_paediatric" / label).iterdir())
        for i, path in enumerate(names):
            split = "test" if i % 5 == 0 else "train"
            _link(path, out / split / label / f"child_{path.name}")
    return out


def synthetic_layout(out: Path) -> Path:
    from xray_tfdata.records import synthetic

    if not (out / "test").is_dir():
        synthetic.generate_dataset(out, synthetic.KAGGLE_COUNTS, min_size=256, max_size=384,
                                   seed=FLAGS.seed, num_workers=2)
    return out


def build(data_dir: Path, records_dir: Path) -> Path:
    if (records_dir / "dataset_info.json").is_file():
        return records_dir
    subprocess.run([sys.executable, "-m", "xray_tfdata.build_records", f"--data_dir={data_dir}",
                    f"--output_dir={records_dir}", f"--image_size={FLAGS.image_size}",
                    "--val_fraction=0.2", "--image_format=png", "--num_workers=2",
                    f"--seed={FLAGS.seed}"], check=True)
    return records_dir


def run_variant(records_dir: Path, model_dir: Path, overrides: dict) -> dict:
    from xray_tfdata.evaluation import evaluator
    from xray_tfdata.settings import from_flat
    from xray_tfdata.training import loop
    from xray_tfdata.training.config import TrainConfig

    if not (model_dir / "summary.json").is_file():
        loop.train(from_flat(TrainConfig, records_dir=str(records_dir), model_dir=str(model_dir),
                               epochs=FLAGS.epochs, global_batch_size=FLAGS.global_batch_size,
                               seed=FLAGS.seed, export=False, **overrides))
    return evaluator.evaluate(evaluator.EvalConfig(
        model_path=str(model_dir / "best.keras"), records_dir=str(records_dir), split="test",
        bootstrap=1000, seed=FLAGS.seed, gradcam_per_class=16))


def _ci(value, ci) -> str:
    if ci and ci.get("low") is not None:
        return f"{value:.3f} [{ci['low']:.2f}, {ci['high']:.2f}]"
    return f"{value:.3f}"


def row(dataset: str, variant: str, result: dict) -> dict:
    cis = result["confidence_intervals"]
    return {
        "dataset": dataset, "variant": variant, "num_test": result["num_examples"],
        "test_support": {n: r["support"] for n, r in result["per_class"].items()},
        "train_records_dir": result["settings"]["reference"]["train_records_dir"],
        "macro_f1": result["macro_f1"], "macro_f1_ci": cis["macro_f1"],
        "sensitivity": {n: r["sensitivity"] for n, r in result["per_class"].items()},
        "sensitivity_ci": {n: cis[f"sensitivity/{n}"] for n in result["per_class"]},
        "probe_macro_f1": result["shortcut_probe"].get("probe_macro_f1"),
        "ece": result["calibration"]["ece"],
        "ece_calibrated": result["calibration"].get("ece_calibrated"),
        "border_attention": result.get("border_attention", {}).get("overall"),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| data | variant | test n | macro-F1 [95% CI] | sens NORMAL | sens COVID19 | "
             "sens PNEUMONIA | metadata probe F1 | ECE raw -> calibrated | border attn |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sens = " | ".join(_ci(r["sensitivity"][n], r["sensitivity_ci"][n])
                          for n in ("NORMAL", "COVID19", "PNEUMONIA"))
        probe = "n/a" if r["probe_macro_f1"] is None else f"{r['probe_macro_f1']:.3f}"
        border = "n/a" if r["border_attention"] is None else f"{r['border_attention']:.3f}"
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['num_test']} | "
                     f"{_ci(r['macro_f1'], r['macro_f1_ci'])} | {sens} | {probe} | "
                     f"{r['ece']:.3f} -> {r['ece_calibrated']:.3f} | {border} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    work = Path(FLAGS.work_dir)
    layouts = {"real": real_layout, "synthetic": synthetic_layout}
    rows = []
    for dataset in FLAGS.datasets:
        started = time.time()
        data_dir = layouts[dataset](work / f"{dataset}_data")
        records = build(data_dir, work / f"{dataset}_records_{FLAGS.image_size}")
        for name, overrides in VARIANTS.items():
            slug = name.split(" ")[0].replace("=", "_")
            model_dir = work / "runs" / f"{dataset}_{slug}_s{FLAGS.seed}"
            result = run_variant(records, model_dir, overrides)
            rows.append(row(dataset, name, result))
            record = {**rows[-1], "epochs": FLAGS.epochs, "image_size": FLAGS.image_size,
                      "seed": FLAGS.seed, "seconds_so_far": time.time() - started}
            with (work / "trust.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(markdown(rows[-1:]), flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    app.run(main)
