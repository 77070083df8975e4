"""Classification metrics with bootstrap confidence intervals (numpy + scikit-learn, no TF).

Every number evaluation and the classical classifiers report comes from `compute_metrics`, so a
CNN head and an SVM on its embeddings are compared on exactly the same definitions:

- the classes are the model's (`class_names`, label-id order, 2..N); labels are ids into them.
  A class is PRESENT when the evaluated split holds at least one example of it (y_true), ABSENT
  otherwise (a 3-class model on an external set without PNEUMONIA, an NIH build without COVID19).
- per class c (one-vs-rest): precision = TP/(TP+FP), recall = sensitivity = TP/(TP+FN),
  specificity = TN/(TN+FP), F1 = 2PR/(P+R); a 0/0 ratio is reported as 0 (scikit-learn's
  `zero_division=0`). An absent class has no sensitivity, F1, precision or AUC: its row says
  `absent` (None in JSON), keeps its specificity and counts how often it was `predicted` (every
  such call is an error).
- macro-F1, macro sensitivity and macro AUC: unweighted means over the PRESENT classes only
  (`f1_score(labels=present, average="macro", zero_division=0)`), so a two-class split scored by a
  three-class model is not capped at 2/3. The confusion matrix keeps every model class:
  predicting an absent class is still an error of the present class it took from. The absent
  classes are listed (`absent_classes`). Macro AUC averages the present classes where AUC is
  defined (a class that is every example has none).

Confidence intervals are percentile-bootstrap intervals over resampled examples, with the macro
averages over the classes present in the evaluated split (a fixed set: a resample that draws no
example of a present class scores it 0, as scikit-learn does with `labels=`). Resampling with
replacement is the same as giving each example a multinomial count, so all resamples are computed
at once from a [resamples, examples] weight matrix: confusion matrices by one matrix product and
AUCs by a weighted Mann-Whitney statistic over the scores sorted once.

A class with fewer than `EXACT_BELOW` (10) examples gets the exact Clopper-Pearson interval for
its sensitivity instead: a bootstrap of 2 of 2 hits is [1, 1], as if certain, while
Clopper-Pearson's 95% interval is [0.158, 1] (`exact_interval`). Such a class is named, with its
n, in the result's `warnings`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

CONFIDENCE = 0.95
# Below this many examples of a class, its sensitivity interval is exact (Clopper-Pearson): the
# percentile bootstrap of a handful of examples collapses onto the few values they can take.
EXACT_BELOW = 10
EXACT_METHOD = "clopper-pearson"
# Resamples processed per vectorised chunk: bounds memory at chunk * n_examples floats.
_CHUNK = 128


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray | None,
                  class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_classes = len(class_names)
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
                f"max={arr.max()}. Labels are ids into the classes "
                f"{', '.join(f'{i} = {n}' for i, n in enumerate(class_names))}."
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


def rates_from_confusion(cm: np.ndarray, present: np.ndarray | None = None
                         ) -> dict[str, np.ndarray]:
    """Per-class rates from confusion matrices [..., C, C] (rows = true, columns = predicted).

    Works on one matrix or a stack of bootstrap matrices; returns arrays [..., C] (and [...] for
    accuracy / macro_f1 / macro_sensitivity). The macro averages are over `present` (a boolean
    mask [C]: the classes of the evaluated split, fixed across bootstrap resamples); None = the
    classes with support in each matrix. NaN when no class is present.
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
    present = support > 0 if present is None else np.broadcast_to(
        np.asarray(present, dtype=bool), support.shape)
    count = present.sum(axis=-1)

    def macro(values: np.ndarray) -> np.ndarray:
        total = np.where(present, values, 0.0).sum(axis=-1)
        return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)

    return {
        "precision": precision,
        "recall": recall,
        "specificity": _safe_div(tn, tn + fp),
        "f1": f1,
        "support": support,
        "accuracy": _safe_div(tp.sum(axis=-1), total),
        "macro_f1": macro(f1),
        "macro_sensitivity": macro(recall),
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


def exact_interval(successes: int, n: int,
                   confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Clopper-Pearson ("exact") interval of a proportion successes / n.

    The bounds are beta quantiles: low = Beta(alpha/2; x, n-x+1) (0 when x = 0), high =
    Beta(1-alpha/2; x+1, n-x) (1 when x = n), alpha = 1 - confidence. It never covers less than
    `confidence`, however small n is (Clopper & Pearson 1934). Closed forms at the edges: x = n
    gives low = (alpha/2)^(1/n), so 2 of 2 at 95% is [0.158, 1.0]; x = 0 gives high =
    1 - (alpha/2)^(1/n). Returns {"low", "high", "method", "successes", "n"} (bounds None if n = 0).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Received: confidence={confidence}. Use a value in (0, 1), e.g. 0.95.")
    if not 0 <= successes <= n:
        raise ValueError(f"Received: successes={successes}, n={n}. Need 0 <= successes <= n.")
    from scipy import stats  # scikit-learn's own dependency; imported only when needed

    out: dict[str, Any] = {"low": None, "high": None, "method": EXACT_METHOD,
                           "successes": int(successes), "n": int(n)}
    if n == 0:
        return out
    alpha = 1.0 - confidence
    out["low"] = 0.0 if successes == 0 else float(
        stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    out["high"] = 1.0 if successes == n else float(
        stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return out


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
                        *, class_names: Sequence[str], n_resamples: int = 1000, seed: int = 0,
                        confidence: float = CONFIDENCE) -> dict[str, dict[str, Any]]:
    """95% intervals for accuracy, macro-F1, macro sensitivity, macro AUC (percentile bootstrap,
    macro over the classes present in y_true) and per-class sensitivity (bootstrap from
    EXACT_BELOW examples on, exact Clopper-Pearson below; None bounds for an absent class).

    Seeded and vectorised: resample weights come from `resample_weights` (numpy's
    default_rng(seed), fixed chunks), so the same inputs and seed always give the same intervals.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Received: confidence={confidence}. Use a value in (0, 1), e.g. 0.95.")
    y_true = np.asarray(y_true, dtype=np.int64)
    num_classes = len(class_names)
    support = np.bincount(y_true, minlength=num_classes)
    present = support > 0
    accs, f1s, recalls, aucs, sens = [], [], [], [], []
    for weights, cm in bootstrap_confusions(y_true, y_pred, num_classes,
                                            n_resamples=n_resamples, seed=seed):
        rates = rates_from_confusion(cm, present)
        accs.append(rates["accuracy"])
        f1s.append(rates["macro_f1"])
        recalls.append(rates["macro_sensitivity"])
        # Sensitivity is undefined in a resample that drew no example of the class.
        sens.append(np.where(rates["support"] > 0, rates["recall"], np.nan))
        per_class_auc = np.stack(
            [_weighted_auc(probs[:, c], y_true == c, weights) for c in np.flatnonzero(present)],
            axis=1)
        with np.errstate(all="ignore"):
            defined = np.isfinite(per_class_auc).sum(axis=1)
            macro = np.where(defined > 0, np.nansum(per_class_auc, axis=1) / np.maximum(defined, 1),
                             np.nan)
        aucs.append(macro)

    def interval(values: np.ndarray) -> dict[str, float | None]:
        return percentile_interval(values, confidence)

    out: dict[str, dict[str, Any]] = {
        "accuracy": interval(np.concatenate(accs)),
        "macro_f1": interval(np.concatenate(f1s)),
        "macro_sensitivity": interval(np.concatenate(recalls)),
        "macro_auc": interval(np.concatenate(aucs)),
    }
    sens_all = np.concatenate(sens, axis=0)
    hits = np.bincount(y_true[np.asarray(y_pred) == y_true], minlength=num_classes)
    for c, name in enumerate(class_names):
        if 0 < support[c] < EXACT_BELOW:
            out[f"sensitivity/{name}"] = exact_interval(int(hits[c]), int(support[c]), confidence)
        else:
            out[f"sensitivity/{name}"] = interval(sens_all[:, c])
    return out


def small_class_warnings(support: Sequence[int], hits: Sequence[int],
                         class_names: Sequence[str],
                         intervals: dict[str, dict[str, Any]]) -> list[str]:
    """One line per present class with fewer than EXACT_BELOW examples, naming it and its n."""
    lines = []
    for name, n, k in zip(class_names, support, hits):
        if not 0 < n < EXACT_BELOW:
            continue
        line = (f"{name} has only {n} example{'s' if n != 1 else ''} in this split (< "
                f"{EXACT_BELOW}): sensitivity {k}/{n}")
        ci = intervals.get(f"sensitivity/{name}") or {}
        if ci.get("low") is not None:
            line += (f", exact Clopper-Pearson 95% interval [{ci['low']:.3f}, {ci['high']:.3f}] "
                     f"(not a bootstrap)")
        lines.append(line + "; too few examples to say much about this class.")
    return lines


def _class_row(rates: dict[str, np.ndarray], c: int, auc: float | None,
               predicted: int) -> dict[str, Any]:
    """One per-class row; an absent class has no sensitivity, precision, F1 or AUC."""
    support = int(rates["support"][c])
    row: dict[str, Any] = {
        "precision": float(rates["precision"][c]),
        "recall": float(rates["recall"][c]),
        "sensitivity": float(rates["recall"][c]),
        "specificity": float(rates["specificity"][c]),
        "f1": float(rates["f1"][c]),
        "auc": auc,
        "support": support,
        "predicted": predicted,
        "absent": support == 0,
    }
    if support == 0:
        # Not 0: there is nothing to be sensitive to. Every `predicted` call is an error, already
        # counted against the present class it was taken from.
        row.update(precision=None, recall=None, sensitivity=None, f1=None, auc=None)
    return row


def compute_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                    y_pred: Sequence[int] | np.ndarray | None = None, *,
                    class_names: Sequence[str], n_resamples: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """All reported metrics as a JSON-ready dict (definitions: the module docstring).

    Args:
      y_true: true labels [n], ids into class_names; classes may be absent.
      probs: class scores [n, C] (probabilities; any monotone score works for AUC).
      y_pred: predicted labels [n]; argmax of probs when None.
      class_names: the model's classes in label-id order (2..N).
      n_resamples: bootstrap resamples for the 95% intervals; 0 skips them.
      seed: seeds the bootstrap.
    """
    class_names = tuple(class_names)
    y_true, probs, pred = _check_inputs(np.asarray(y_true), probs,
                                        None if y_pred is None else np.asarray(y_pred),
                                        class_names)
    label_ids = list(range(len(class_names)))
    cm = sk_metrics.confusion_matrix(y_true, pred, labels=label_ids)
    rates = rates_from_confusion(cm)
    present = [c for c in label_ids if rates["support"][c] > 0]
    aucs = auc_ovr(y_true, probs)
    defined = [a for a in aucs if a is not None]
    predicted = cm.sum(axis=0)
    per_class = {name: _class_row(rates, c, aucs[c], int(predicted[c]))
                 for c, name in enumerate(class_names)}
    result: dict[str, Any] = {
        "num_examples": int(y_true.size),
        "class_names": list(class_names),
        "present_classes": [class_names[c] for c in present],
        "absent_classes": [class_names[c] for c in label_ids if c not in present],
        "accuracy": float(rates["accuracy"]),
        "macro_f1": float(rates["macro_f1"]),
        "macro_sensitivity": float(rates["macro_sensitivity"]),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "auc_classes_undefined": [class_names[c] for c, a in enumerate(aucs) if a is None],
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        # Over the present classes, so its macro row agrees with macro_f1 above.
        "classification_report": sk_metrics.classification_report(
            y_true, pred, labels=present, target_names=[class_names[c] for c in present],
            digits=4, zero_division=0),
        "confidence_intervals": {},
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed),
                      "confidence": CONFIDENCE, "method": "percentile",
                      "exact_below": EXACT_BELOW, "exact_method": EXACT_METHOD},
    }
    if n_resamples > 0:
        result["confidence_intervals"] = bootstrap_intervals(
            y_true, probs, pred, class_names=class_names, n_resamples=n_resamples, seed=seed)
    result["warnings"] = small_class_warnings(
        [int(v) for v in rates["support"]], [int(v) for v in np.diagonal(cm)], class_names,
        result["confidence_intervals"])
    return result


def _fmt(value: float | None) -> str:
    return "  n/a " if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def headline(metrics: dict[str, Any], name: str) -> str:
    """One value with its interval, e.g. '0.9120 [0.8950, 0.9280]'; a class's sensitivity
    'absent' when the split has none of it, its exact interval marked 'exact, n=2'."""
    if "/" in name:
        row = metrics["per_class"][name.split("/", 1)[1]]
        if row.get("absent"):
            return "absent"
        value = row["sensitivity"]
    else:
        value = metrics[name]
    ci = metrics.get("confidence_intervals", {}).get(name)
    if not ci or ci.get("low") is None:
        return _fmt(value)
    text = f"{_fmt(value)} [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
    if ci.get("method") == EXACT_METHOD:
        text += f" exact, n={ci['n']}"
    return text


def classes_note(metrics: dict[str, Any]) -> str:
    """'macro averages over NORMAL, PNEUMONIA (absent from this split: COVID19)'."""
    note = f"macro averages over the classes present: {', '.join(metrics['present_classes'])}"
    if metrics["absent_classes"]:
        note += (f" (absent from this split, not averaged: {', '.join(metrics['absent_classes'])};"
                 f" predicting them still counts as an error)")
    return note


def format_summary(metrics: dict[str, Any]) -> str:
    """Human-readable block: headline metrics with 95% CIs, per-class table, sklearn report."""
    lines = [f"examples: {metrics['num_examples']}", classes_note(metrics)]
    ci_note = " (95% bootstrap CI)" if metrics.get("confidence_intervals") else ""
    for key in ("accuracy", "macro_f1", "macro_sensitivity", "macro_auc"):
        lines.append(f"{key:<17}: {headline(metrics, key)}{ci_note}")
    lines.append("")
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>9} {'specific.':>9} {'f1':>9} "
                 f"{'auc':>9} {'support':>8}   sensitivity 95% CI")
    for name, row in metrics["per_class"].items():
        if row.get("absent"):
            lines.append(
                f"{name:<10} {'absent':>9} {'absent':>9} {_fmt(row['specificity']):>9} "
                f"{'absent':>9} {'absent':>9} {0:>8}   absent (predicted {row['predicted']} "
                f"time{'s' if row['predicted'] != 1 else ''}, every one an error)")
            continue
        lines.append(
            f"{name:<10} {_fmt(row['precision']):>9} {_fmt(row['recall']):>9} "
            f"{_fmt(row['specificity']):>9} {_fmt(row['f1']):>9} {_fmt(row['auc']):>9} "
            f"{row['support']:>8}   {headline(metrics, 'sensitivity/' + name)}")
    undefined = [n for n in metrics.get("auc_classes_undefined", [])
                 if not metrics["per_class"][n].get("absent")]
    if undefined:
        lines.append(f"AUC undefined (every example of the split is this class): "
                     f"{', '.join(undefined)}")
    if any(0 < row["support"] < EXACT_BELOW for row in metrics["per_class"].values()):
        lines.append(f"Sensitivity intervals of classes with fewer than {EXACT_BELOW} examples "
                     f"are exact (Clopper-Pearson), not bootstrap.")
    lines += [f"WARNING: {w}" for w in metrics.get("warnings", [])]
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    names = metrics["class_names"]
    lines.append(" " * 11 + "".join(f"{n:>11}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<11}" + "".join(f"{v:>11}" for v in row))
    lines.append("")
    lines.append(f"scikit-learn report (present classes only):\n"
                 f"{metrics['classification_report']}")
    return "\n".join(lines)
