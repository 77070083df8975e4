"""What an evaluation is measured against: the model's own training run, not the evaluated set.

A model evaluated on an external collection must be judged with what it was trained on:
- the shortcut probe is fitted on the metadata of the TRAINING records (the run's summary.json
  records `settings.records_dir`; a model file's run directory is its parent), never on the
  evaluated records' own train split (an external set may have none, and its sources are not the
  ones the model may have learned);
- the temperature and the operating point (of the positive class, COVID19 by default) come
  from the training records' val split (or the temperature the training run stored in
  calibration.json), so the evaluated split is never used to choose them.
`comparison_table` puts several evaluated records directories side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_tfdata import paths
from xray_tfdata.evaluation import calibration

SUMMARY_FILE = "summary.json"


def run_dir(model_path: str | Path) -> Path | paths.RemotePath:
    """The training run's directory: the model file's parent (best.keras sits in --model_dir)."""
    return paths.location(model_path).resolve().parent


def read_json(path: Path | paths.RemotePath) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # a URL's errors are OSErrors too (paths.py)
        return None


def training_records_dir(model_path: str | Path, override: str = "") -> tuple[str | None, str]:
    """(records dir the model was trained on, or None; how it was found)."""
    if override:
        return override, "--train_records_dir"
    summary = read_json(run_dir(model_path) / SUMMARY_FILE)
    recorded = ((summary or {}).get("resolved", {}).get("records_dir")
                or (summary or {}).get("settings", {}).get("records_dir"))
    if not recorded:
        return None, (f"no {SUMMARY_FILE} with the training records next to {model_path}; pass "
                      f"--train_records_dir=<the records the model was trained on>")
    candidates = [paths.location(recorded)]
    if not candidates[0].is_absolute():
        # summary.json stores the path as typed; try it from here and from the run's parent.
        candidates.append(run_dir(model_path).parent / recorded)
    for candidate in candidates:
        if (candidate / "dataset_info.json").is_file():
            return str(candidate), f"{SUMMARY_FILE} of the training run"
    return None, (f"the training records {recorded!r} named in {SUMMARY_FILE} are not found "
                  f"from here; pass --train_records_dir")


def run_calibration(model_path: str | Path) -> dict[str, Any] | None:
    """The temperature the training run stored (calibration.json) for this model file, or
    None (no record, or a record of another file: the model is uncalibrated)."""
    return calibration.model_record(model_path)


def operating_point(val_probs: np.ndarray | None, val_labels: np.ndarray | None,
                    target_sensitivity: float, stored: dict[str, Any] | None, *,
                    positive: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Temperature (stored by the run, else fitted on val) and the threshold on P(class
    `positive`) (on val), with the number of val positives it was chosen on and, under
    calibration.MIN_OPERATING_POSITIVES, a `warning`.

    `val_probs` are the model's outputs on the training records' val split. When the run's model
    already returns calibrated probabilities (stored["applied_in_model"]), the raw ones are
    recovered with temperature 1/T (softmax(log p * T) undoes softmax(log q / T) exactly).
    """
    out: dict[str, Any] = {"target_sensitivity": target_sensitivity, "temperature": None,
                           "temperature_source": None, "threshold": None,
                           "positive": positive, "positive_class": class_names[positive],
                           "num_val_positive": None, "warning": None,
                           "applied_in_model": bool(stored and stored.get("applied_in_model"))}
    if stored:
        out.update(temperature=float(stored["temperature"]),
                   temperature_source=f"training run ({calibration.CALIBRATION_FILE})")
    if val_probs is None:
        out["note"] = "no val split of the training records: no threshold"
        return out
    raw_val = uncalibrated(val_probs, out)
    if out["temperature"] is None:
        out.update(temperature=calibration.fit_temperature(raw_val, val_labels),
                   temperature_source="fitted on the training records' val split")
    calibrated_val = calibration.apply_temperature(raw_val, out["temperature"])
    chosen = calibration.operating_threshold(calibrated_val, val_labels, positive, class_names,
                                             target_sensitivity)
    out.update(threshold=chosen["threshold"], num_val_positive=chosen["num_positive"],
               warning=chosen["warning"], num_val=int(val_labels.size))
    if out["threshold"] is None:
        out["note"] = f"no {class_names[positive]} example in the val split: no threshold"
    return out


def uncalibrated(probs: np.ndarray, point: dict[str, Any]) -> np.ndarray:
    """The model's raw probabilities (undoing a temperature built into the model)."""
    if point.get("applied_in_model") and point.get("temperature"):
        return calibration.apply_temperature(probs, 1.0 / point["temperature"])
    return np.asarray(probs, np.float64)


def comparison_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The side-by-side numbers of one evaluated records directory."""
    probe = result.get("shortcut_probe") or {}
    attention = result.get("border_attention") or {}
    cal = result.get("calibration") or {}
    return {
        "name": name, "records_dir": result.get("settings", {}).get("records_dir"),
        "num_examples": result["num_examples"], "macro_f1": result["macro_f1"],
        "macro_f1_ci": result.get("confidence_intervals", {}).get("macro_f1"),
        "macro_auc": result["macro_auc"],
        "classes": list(result["class_names"]), "absent_classes": result.get("absent_classes", []),
        "sensitivity": {n: r["sensitivity"] for n, r in result["per_class"].items()},
        "support": {n: r["support"] for n, r in result["per_class"].items()},
        "ece": cal.get("ece"), "ece_calibrated": cal.get("ece_calibrated"),
        "probe_macro_f1": probe.get("probe_macro_f1"), "probe_warning": probe.get("warning"),
        "border_attention": attention.get("overall"),
        "border_warning": attention.get("warning"),
    }


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width table: one line per records directory (every row is of the same model, so of
    the same classes); a class a directory lacks reads 'absent'."""
    classes = rows[0]["classes"]
    header = (f"{'records':<18} {'n':>5} {'macro-F1 [95% CI]':>22} "
              + " ".join(f"{n:>10}" for n in classes)
              + f" {'AUC':>6} {'ECE':>13} {'probe F1':>9} {'border':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        ci = row.get("macro_f1_ci") or {}
        f1 = _f(row["macro_f1"]) + (f" [{_f(ci.get('low'))}, {_f(ci.get('high'))}]"
                                    if ci.get("low") is not None else "")
        sens = " ".join(
            f"{(_f(row['sensitivity'][n]) if row['support'][n] else 'absent'):>10}"
            for n in classes)
        ece = _f(row["ece"]) + ("" if row["ece_calibrated"] is None
                                else f"->{_f(row['ece_calibrated'])}")
        probe = _f(row["probe_macro_f1"]) + ("!" if row["probe_warning"] else "")
        border = _f(row["border_attention"]) + ("!" if row["border_warning"] else "")
        lines.append(f"{row['name'][:18]:<18} {row['num_examples']:>5} {f1:>22} {sens} "
                     f"{_f(row['macro_auc']):>6} {ece:>13} {probe:>9} {border:>7}")
    lines.append(f"{' / '.join(classes)}: sensitivity ('absent': none in that directory). "
                 "macro-F1: over the classes each directory holds. ECE: before->after "
                 "temperature scaling. probe F1: metadata only, fitted on the training records. "
                 "'!': probe within its warning threshold of the CNN, or border attention above "
                 "the uniform 0.4375.")
    return "\n".join(lines)
