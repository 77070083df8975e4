"""Classification metrics with bootstrap confidence intervals (numpy + scikit-learn, no TF).

Every number evaluation and the classical classifiers report comes from `compute_metrics`, so a
CNN head and an SVM on its embeddings are compared on exactly the same definitions:

- per class c (one-vs-rest): precision = TP/(TP+FP), recall = sensitivity = TP/(TP+FN),
  specificity = TN/(TN+FP), F1 = 2PR/(P+R); a 0/0 ratio is reported as 0 (scikit-learn's
  `zero_division=0`), except AUC, which is undefined (None) for a class absent from y_true.
- macro-F1: the unweighted mean of the per-class F1 over ALL classes (absent ones count as 0,
  as in `f1_score(labels=range(C), average="macro", zero_division=0)`).
- macro AUC: the mean one-vs-rest ROC AUC over the classes where it is defined.

Confidence intervals are percentile-bootstrap intervals over resampled examples. Resampling with
replacement is the same as giving each example a multinomial count, so all resamples are computed
at once from a [resamples, examples] weight matrix: confusion matrices by one matrix product and
AUCs by a weighted Mann-Whitney statistic over the scores sorted once.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from xray_tfdata import labels

CONFIDENCE = 0.95
# Resamples processed per vectorised chunk: bounds memory at chunk * n_examples floats.
_CHUNK = 128


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray | None,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (y_true.shape[0], num_classes):
        raise ValueError(
            f"probs must have shape [num_examples, num_classes] = [{y_true.shape[0]}, "
            f"{num_classes}]. Received: probs.shape={probs.shape}. Pass one row of class "
            f"scores per label."
        )
    if y_true.size == 0:
        raise ValueError("Received: 0 examples. Metrics need at least one labelled example.")
    checks = [("y_true", y_true)] + ([] if y_pred is None else [("y_pred", np.asarray(y_pred))])
    for name, arr in checks:
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(
                f"{name} holds labels outside [0, {num_classes - 1}]. Received: min={arr.min()}, "
                f"max={arr.max()}. Labels are ids of the class_names (0..{num_classes - 1})."
            )
    pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred).astype(np.int64)
    if pred.shape != y_true.shape:
        raise ValueError(f"y_pred has shape {pred.shape}, y_true {y_true.shape}; they must match.")
    return y_true, probs, pred


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def rates_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates from confusion matrices [..., C, C] (rows = true, columns = predicted).

    Works on one matrix or a stack of bootstrap matrices; returns arrays [..., C] (and [...] for
    accuracy / macro_f1).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)  # true count per class
    predicted = cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))
    fp = predicted - tp
    fn = support - tp
    tn = total[..., None] - tp - fp - fn
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _safe_div(tn, tn + fp),
        "f1": f1,
        "support": support,
        "accuracy": _safe_div(tp.sum(axis=-1), total),
        "macro_f1": f1.mean(axis=-1),
    }


def auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC per class; None when a class (or its complement) is absent."""
    y_true = np.asarray(y_true)
    out: list[float | None] = []
    for c in range(probs.shape[1]):
        positive = y_true == c
        if positive.all() or not positive.any():
            out.append(None)  # AUC needs both positives and negatives
        else:
            out.append(float(sk_metrics.roc_auc_score(positive, probs[:, c])))
    return out


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one class for each row of example weights [B, n] (ties count one half).

    AUC = P(score_pos > score_neg) + 0.5 P(equal), with each example counted `weight` times.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    pos = positive[order].astype(np.float64)
    w = weights[:, order]
    w_neg = w * (1.0 - pos)
    # Exclusive prefix sums of negative weight: cum[:, j] = negative weight before position j.
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    # Tie groups of equal scores: [start, end) for every sorted position.
    starts = np.searchsorted(s, s, side="left")
    ends = np.searchsorted(s, s, side="right")
    below = cum[:, starts]
    equal = cum[:, ends] - below
    w_pos = w * pos
    numerator = (w_pos * (below + 0.5 * equal)).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    auc = np.full(w.shape[0], np.nan)
    ok = denominator > 0
    auc[ok] = numerator[ok] / denominator[ok]
    return auc


def resample_weights(n: int, n_resamples: int, seed: int = 0):
    """Yields bootstrap example weights in chunks: arrays [b, n] of multinomial counts.

    Resampling n examples with replacement is the same as giving each a count; numpy's
    default_rng(seed) draws them in fixed chunks, so the same n, n_resamples and seed always give
    the same resamples (bootstrap_intervals and calibration's operating point share this).
    """
    if n_resamples < 1:
        raise ValueError(f"Received: n_resamples={n_resamples}. Use >= 1 (1000 is typical).")
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(_CHUNK, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        offsets = (np.arange(b) * n)[:, None]
        weights = np.bincount((idx + offsets).ravel(), minlength=b * n).reshape(b, n)
        yield weights.astype(np.float64)
        done += b


def percentile_interval(values: np.ndarray,
                        confidence: float = CONFIDENCE) -> dict[str, float | None]:
    """{"low", "high"}: the percentile interval of the finite bootstrap values (None if none)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Received: confidence={confidence}. Use a value in (0, 1), e.g. 0.95.")
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"low": None, "high": None}
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high)}


def bootstrap_confusions(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, *,
                         n_resamples: int = 1000, seed: int = 0):
    """Yields (weights [b, n], confusion matrices [b, C, C]) for each chunk of resamples."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = y_true.shape[0]
    # One-hot of (true, predicted) pairs: weights @ pair_onehot = flattened confusion matrices.
    pair_onehot = np.zeros((n, num_classes * num_classes))
    pair_onehot[np.arange(n), y_true * num_classes + y_pred] = 1.0
    for weights in resample_weights(n, n_resamples, seed):
        cm = (weights @ pair_onehot).reshape(-1, num_classes, num_classes)
        yield weights, cm


def bootstrap_intervals(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray,
                        *, n_resamples: int = 1000, seed: int = 0,
                        confidence: float = CONFIDENCE,
                        class_names: Sequence[str] | None = None
                        ) -> dict[str, dict[str, float | None]]:
    """Percentile-bootstrap intervals for accuracy, macro-F1, macro AUC and per-class sensitivity.

    Seeded and vectorised: resample weights come from `resample_weights` (numpy's
    default_rng(seed), fixed chunks), so the same inputs and seed always give the same intervals.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Received: confidence={confidence}. Use a value in (0, 1), e.g. 0.95.")
    num_classes = probs.shape[1]
    accs, f1s, aucs, sens = [], [], [], []
    for weights, cm in bootstrap_confusions(y_true, y_pred, num_classes,
                                            n_resamples=n_resamples, seed=seed):
        rates = rates_from_confusion(cm)
        accs.append(rates["accuracy"])
        f1s.append(rates["macro_f1"])
        # Sensitivity is undefined in a resample that drew no example of the class.
        s = np.where(rates["support"] > 0, rates["recall"], np.nan)
        sens.append(s)
        per_class_auc = np.stack(
            [_weighted_auc(probs[:, c], y_true == c, weights) for c in range(num_classes)], axis=1
        )
        with np.errstate(all="ignore"):
            defined = np.isfinite(per_class_auc).sum(axis=1)
            macro = np.where(defined > 0, np.nansum(per_class_auc, axis=1) / np.maximum(defined, 1),
                             np.nan)
        aucs.append(macro)

    def interval(values: np.ndarray) -> dict[str, float | None]:
        return percentile_interval(values, confidence)

    out = {
        "accuracy": interval(np.concatenate(accs)),
        "macro_f1": interval(np.concatenate(f1s)),
        "macro_auc": interval(np.concatenate(aucs)),
    }
    sens_all = np.concatenate(sens, axis=0)
    names = labels.DEFAULT_CLASSES[:num_classes] if class_names is None else class_names
    for c, name in enumerate(names):
        out[f"sensitivity/{name}"] = interval(sens_all[:, c])
    return out


def compute_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                    y_pred: Sequence[int] | np.ndarray | None = None, *,
                    n_resamples: int = 1000, seed: int = 0,
                    class_names: Sequence[str] = labels.CLASS_NAMES) -> dict[str, Any]:
    """All reported metrics as a JSON-ready dict.

    Args:
      y_true: true labels [n].
      probs: class scores [n, C] (probabilities; any monotone score works for AUC).
      y_pred: predicted labels [n]; argmax of probs when None.
      n_resamples: bootstrap resamples for the 95% intervals; 0 skips them.
      seed: seeds the bootstrap.
      class_names: names in label order.
    """
    num_classes = len(class_names)
    y_true, probs, pred = _check_inputs(np.asarray(y_true), probs,
                                        None if y_pred is None else np.asarray(y_pred),
                                        num_classes)
    label_ids = list(range(num_classes))
    cm = sk_metrics.confusion_matrix(y_true, pred, labels=label_ids)
    rates = rates_from_confusion(cm)
    aucs = auc_ovr(y_true, probs)
    defined = [a for a in aucs if a is not None]
    per_class = {}
    for c, name in enumerate(class_names):
        per_class[name] = {
            "precision": float(rates["precision"][c]),
            "recall": float(rates["recall"][c]),
            "sensitivity": float(rates["recall"][c]),
            "specificity": float(rates["specificity"][c]),
            "f1": float(rates["f1"][c]),
            "auc": aucs[c],
            "support": int(rates["support"][c]),
        }
    result: dict[str, Any] = {
        "num_examples": int(y_true.size),
        "class_names": list(class_names),
        "accuracy": float(rates["accuracy"]),
        "macro_f1": float(rates["macro_f1"]),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "auc_classes_undefined": [class_names[c] for c, a in enumerate(aucs) if a is None],
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "classification_report": sk_metrics.classification_report(
            y_true, pred, labels=label_ids, target_names=list(class_names), digits=4,
            zero_division=0),
        "confidence_intervals": {},
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed),
                      "confidence": CONFIDENCE, "method": "percentile"},
    }
    if n_resamples > 0:
        result["confidence_intervals"] = bootstrap_intervals(
            y_true, probs, pred, n_resamples=n_resamples, seed=seed, class_names=class_names)
    return result


def _fmt(value: float | None) -> str:
    return "  n/a " if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def headline(metrics: dict[str, Any], name: str) -> str:
    """One value with its interval, e.g. '0.9120 [0.8950, 0.9280]'."""
    value = metrics[name] if "/" not in name else \
        metrics["per_class"][name.split("/", 1)[1]]["sensitivity"]
    ci = metrics.get("confidence_intervals", {}).get(name)
    if not ci or ci.get("low") is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"


def format_summary(metrics: dict[str, Any]) -> str:
    """Human-readable block: headline metrics with 95% CIs, per-class table, sklearn report."""
    lines = [f"examples: {metrics['num_examples']}"]
    ci_note = " (95% bootstrap CI)" if metrics.get("confidence_intervals") else ""
    for key in ("accuracy", "macro_f1", "macro_auc"):
        lines.append(f"{key:<10}: {headline(metrics, key)}{ci_note}")
    lines.append("")
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>9} {'specific.':>9} {'f1':>9} "
                 f"{'auc':>9} {'support':>8}   sensitivity 95% CI")
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<10} {_fmt(row['precision']):>9} {_fmt(row['recall']):>9} "
            f"{_fmt(row['specificity']):>9} {_fmt(row['f1']):>9} {_fmt(row['auc']):>9} "
            f"{row['support']:>8}   {headline(metrics, 'sensitivity/' + name)}")
    if metrics.get("auc_classes_undefined"):
        lines.append(f"AUC undefined (class absent from the labels): "
                     f"{', '.join(metrics['auc_classes_undefined'])}")
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    names = metrics["class_names"]
    lines.append(" " * 11 + "".join(f"{n:>11}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<11}" + "".join(f"{v:>11}" for v in row))
    lines.append("")
    lines.append(metrics["classification_report"])
    return "\n".join(lines)
