"""Calibrated probabilities and an operating point for one positive class (numpy only, no TF).

- `expected_calibration_error`: top-label ECE over 15 equal-width confidence bins (Guo et al. 2017):
  ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|, bin b = (b/15, (b+1)/15]
  (the first bin also holds confidence 0).
- `reliability_png`: the reliability diagram (accuracy per confidence bin against the diagonal),
  before and, when given, after calibration.
- `fit_temperature` / `apply_temperature`: temperature scaling, one scalar T > 0 minimising the
  negative log-likelihood of softmax(log p / T) on the validation split. Dividing the logits by
  one positive scalar never changes the argmax, so accuracy and macro-F1 are untouched; only the
  confidences move. The model outputs probabilities, and log p equals the logits up to a per-row
  constant, which softmax ignores, so probabilities are enough.
- `operating_threshold` / `threshold_metrics`: the threshold on P(positive class) chosen on val
  to reach a target sensitivity, and sensitivity / specificity / PPV at it on another split, with
  percentile-bootstrap intervals from metrics.py's resampler (the sensitivity's interval is exact
  Clopper-Pearson below metrics.EXACT_BELOW positives). The positive class is an id into the
  model's classes (COVID19 by default, chosen at the command edge). A threshold chosen on fewer
  than MIN_OPERATING_POSITIVES val positives comes with a warning naming that number: with 5
  positives, 95% sensitivity means "all 5", and one more image can move the threshold anywhere.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_tfdata import files
from xray_tfdata.evaluation import metrics

NUM_BINS = 15
DEFAULT_TARGET_SENSITIVITY = 0.95
# Fewer val positives than this and the operating point is warned about: at 95% target
# sensitivity, 20 positives is the least that lets one miss be tolerated (19/20).
MIN_OPERATING_POSITIVES = 20
# The temperature a training run fitted, beside its best.keras (training writes, evaluation reads).
CALIBRATION_FILE = "calibration.json"
# The sha256 of the calibrated model file a record belongs to (see `model_record`).
MODEL_SHA256 = "model_sha256"
# Search range of log T: T in [0.05, 20] covers every temperature seen in practice (Guo et al.
# report 1-3); the bound keeps the 1-D search finite on a separable val split.
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
_EPS = 1e-12


def _as_arrays(probs: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape [num_examples > 0, num_classes] matching y_true "
                         f"[{y_true.shape[0]}]. Received: probs.shape={probs.shape}.")
    return probs, y_true


def reliability_bins(probs: Any, y_true: Any, num_bins: int = NUM_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of top-label confidence: count, mean confidence, accuracy."""
    probs, y_true = _as_arrays(probs, y_true)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # Bin b holds (b/B, (b+1)/B]; ceil puts an edge value in the lower bin, 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=num_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=num_bins)
    safe = np.maximum(count, 1.0)
    return {"count": count, "confidence": np.where(count > 0, conf_sum / safe, np.nan),
            "accuracy": np.where(count > 0, acc_sum / safe, np.nan),
            "edges": np.linspace(0.0, 1.0, num_bins + 1)}


def expected_calibration_error(probs: Any, y_true: Any, num_bins: int = NUM_BINS) -> float:
    """Top-label ECE with `num_bins` equal-width bins (see the module docstring)."""
    bins = reliability_bins(probs, y_true, num_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gap) / np.sum(bins["count"]))


def nll(probs: Any, y_true: Any) -> float:
    """Mean negative log-likelihood of the true class."""
    probs, y_true = _as_arrays(probs, y_true)
    return float(-np.mean(np.log(np.clip(probs[np.arange(y_true.size), y_true], _EPS, 1.0))))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities of logits divided by T."""
    if not (isinstance(temperature, (int, float)) and temperature > 0
            and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0. Received: "
                         f"temperature={temperature!r}.")
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probs: Any, y_true: Any, tolerance: float = 1e-4) -> float:
    """The T > 0 minimising the NLL of apply_temperature(probs, T): golden-section search on
    log T over [0.05, 20].

    NLL is convex in 1/T (a log-sum-exp of logits scaled by 1/T minus a linear term), hence
    unimodal in log T, so the golden-section search finds the minimum in the range.
    """
    probs, y_true = _as_arrays(probs, y_true)

    def loss(log_t: float) -> float:
        return nll(apply_temperature(probs, math.exp(log_t)), y_true)

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = _LOG_T_BOUNDS
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    while high - low > tolerance:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    best = math.exp((low + high) / 2.0)
    # Keep T = 1 exactly when scaling does not help (e.g. an already calibrated model).
    return best if loss(math.log(best)) < nll(probs, y_true) else 1.0


def calibration_summary(probs: Any, y_true: Any, temperature: float | None) -> dict[str, Any]:
    """ECE and NLL before and (when a temperature is known) after temperature scaling."""
    out: dict[str, Any] = {"num_bins": NUM_BINS, "ece": expected_calibration_error(probs, y_true),
                           "nll": nll(probs, y_true), "temperature": temperature}
    if temperature is not None:
        scaled = apply_temperature(probs, temperature)
        out.update(ece_calibrated=expected_calibration_error(scaled, y_true),
                   nll_calibrated=nll(scaled, y_true))
    return out


def _check_positive(positive: int, num_classes: int) -> int:
    if isinstance(positive, bool) or not isinstance(positive, (int, np.integer)) \
            or not 0 <= positive < num_classes:
        raise ValueError(f"positive must be a class id in [0, {num_classes - 1}]. Received: "
                         f"positive={positive!r}. Pass the id of the class the operating point "
                         f"is for (its index in the model's class list).")
    return int(positive)


def few_positives_warning(class_name: str, num_positive: int) -> str | None:
    """The one-line warning for an operating point chosen on too few positives (None if enough
    or none at all: then there is no operating point to warn about)."""
    if not 0 < num_positive < MIN_OPERATING_POSITIVES:
        return None
    return (f"The {class_name} operating point was chosen on only {num_positive} val "
            f"positive{'s' if num_positive != 1 else ''} (fewer than "
            f"{MIN_OPERATING_POSITIVES}): its threshold may move a lot with a few more images; "
            f"treat the sensitivity it promises as approximate.")


def operating_threshold(probs: Any, y_true: Any, positive: int, class_names: Sequence[str],
                        target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
                        ) -> dict[str, Any]:
    """The highest threshold t on P(class `positive`) with sensitivity (p >= t) >= target.

    The highest such t gives the best specificity at that sensitivity. Returns {"threshold"
    (None when these labels hold no positive: no sensitivity to reach), "positive" (the id),
    "positive_class" (its name), "num_positive" (the positives it was chosen on),
    "target_sensitivity", "warning" (few_positives_warning, or None)}.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1]. Received: "
                         f"target_sensitivity={target_sensitivity!r}.")
    probs, y_true = _as_arrays(probs, y_true)
    positive = _check_positive(positive, probs.shape[1])
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"class_names has {len(class_names)} names for {probs.shape[1]} "
                         f"probability columns. Received: class_names={list(class_names)}.")
    scores = np.sort(probs[y_true == positive, positive])[::-1]
    out: dict[str, Any] = {"threshold": None, "positive": positive,
                           "positive_class": class_names[positive],
                           "num_positive": int(scores.size),
                           "target_sensitivity": float(target_sensitivity),
                           "warning": few_positives_warning(class_names[positive], scores.size)}
    if scores.size:
        # k positives at or above t reach sensitivity k / n_pos; the small epsilon keeps
        # 0.95 * 20 = 19 from rounding up to 20.
        k = int(math.ceil(target_sensitivity * scores.size - 1e-9))
        out["threshold"] = float(scores[max(k, 1) - 1])
    return out


def threshold_metrics(probs: Any, y_true: Any, threshold: float, *, positive: int,
                      n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Class-`positive`-vs-rest sensitivity, specificity and PPV at `threshold`, with bootstrap
    CIs (the sensitivity's exact Clopper-Pearson below metrics.EXACT_BELOW positives)."""
    probs, y_true = _as_arrays(probs, y_true)
    positive = _check_positive(positive, probs.shape[1])
    is_positive = (y_true == positive).astype(np.int64)
    called = (probs[:, positive] >= threshold).astype(np.int64)
    # 2x2 confusion with class 1 = the positive class: recall = sensitivity, precision = PPV.
    cm = np.zeros((2, 2))
    np.add.at(cm, (is_positive, called), 1.0)
    rates = metrics.rates_from_confusion(cm)
    num_positive = int(is_positive.sum())
    out: dict[str, Any] = {
        "threshold": float(threshold), "num_examples": int(y_true.size),
        "num_positive": num_positive,
        "sensitivity": float(rates["recall"][1]) if num_positive else None,
        "specificity": float(rates["specificity"][1]) if (1 - is_positive).any() else None,
        "ppv": float(rates["precision"][1]) if called.any() else None,
        "confidence_intervals": {},
    }
    if n_resamples > 0:
        sens, spec, ppv = [], [], []
        for _, cms in metrics.bootstrap_confusions(is_positive, called, 2,
                                                   n_resamples=n_resamples, seed=seed):
            r = metrics.rates_from_confusion(cms)
            # A resample without positives (or without any call) has no such rate: NaN, dropped.
            sens.append(np.where(r["support"][:, 1] > 0, r["recall"][:, 1], np.nan))
            spec.append(np.where(r["support"][:, 0] > 0, r["specificity"][:, 1], np.nan))
            ppv.append(np.where(cms[:, :, 1].sum(axis=1) > 0, r["precision"][:, 1], np.nan))
        out["confidence_intervals"] = {
            name: metrics.percentile_interval(np.concatenate(values))
            for name, values in (("sensitivity", sens), ("specificity", spec), ("ppv", ppv))}
        if 0 < num_positive < metrics.EXACT_BELOW:
            out["confidence_intervals"]["sensitivity"] = metrics.exact_interval(
                int(cm[1, 1]), num_positive)
    return out


def reliability_png(probs: Any, y_true: Any, title: str,
                    calibrated: Any | None = None) -> bytes:
    """PNG reliability diagram: accuracy per confidence bin, ECE in the legend."""
    from matplotlib.figure import Figure  # Agg rendering, no global backend switch

    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    width = 1.0 / NUM_BINS
    curves = [("model", probs, "tab:blue")]
    if calibrated is not None:
        curves.append(("temperature-scaled", calibrated, "tab:orange"))
    for offset, (name, p, colour) in enumerate(curves):
        bins = reliability_bins(p, y_true)
        centres = bins["edges"][:-1] + width / 2
        filled = bins["count"] > 0
        ece = expected_calibration_error(p, y_true)
        shift = (offset - (len(curves) - 1) / 2) * width / len(curves)
        ax.bar(centres[filled] + shift, bins["accuracy"][filled], width=width / len(curves),
               color=colour, alpha=0.7, edgecolor="black", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def model_record(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration record beside a training run's model file, if it is that file's.

    Training writes the record (with MODEL_SHA256, the digest of the calibrated file about to
    be renamed into place) before the calibrated model, so at every instant the pair reads
    consistently: a record naming another file means the model is still uncalibrated (a kill
    between the two writes, or a newer best model saved since). Records from before the digest
    was kept are trusted as they were."""
    path = Path(model_path).resolve().parent / CALIBRATION_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("temperature"), (int, float)):
        return None
    digest = record.get(MODEL_SHA256)
    if digest is not None and not (Path(model_path).is_file()
                                   and files.sha256_file(model_path) == digest):
        return None
    return record
