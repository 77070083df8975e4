"""Per-collection evaluation: for each collection in the evaluated records, its size, macro-F1
over the classes it holds (bootstrap 95% CI) and per-class sensitivity.

One number over several collections hides the one that fails: the issue-19 measurements had a
model at macro-F1 0.89 on its own test split and 0.40 accuracy on another hospital's films. So
`evaluate` splits its predictions by `image/source/collection`, and leave-one-collection-out
(training/loco.py) scores each held-out collection the same way.

Macro-F1 here averages the F1 of the classes a collection HOLDS (true labels present), not of
every class the model knows: a collection of NORMAL and COVID19 films cannot score PNEUMONIA, and
averaging a structural 0 into it would cap it at 2/3. A prediction of an absent class still
counts against the held classes (a false negative of its true class). The definitions and the
percentile bootstrap are metrics.py's (rates_from_confusion, bootstrap_confusions), so the
numbers agree with the headline ones when a collection holds every class. Pure numpy, no TF.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from xray_tfdata.evaluation import metrics


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def held_class_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                       class_names: Sequence[str], *, n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """n, the classes present, their support, accuracy, macro-F1 over the present classes
    with its percentile-bootstrap CI, and each present class's sensitivity with its CI."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    probs = np.asarray(probs, np.float64)
    num_classes = len(class_names)
    if y_true.size == 0 or probs.shape != (y_true.size, num_classes):
        raise ValueError(f"Received: {y_true.size} labels and probs of shape {probs.shape}; "
                         f"pass at least one example and one row of {num_classes} class scores "
                         f"per label.")
    y_pred = probs.argmax(axis=1)
    held = np.flatnonzero(np.bincount(y_true, minlength=num_classes))
    rates = metrics.rates_from_confusion(_confusion(y_true, y_pred, num_classes))
    row: dict[str, Any] = {
        "n": int(y_true.size),
        "classes": [class_names[c] for c in held],
        "support": {class_names[c]: int(rates["support"][c]) for c in held},
        "accuracy": float(rates["accuracy"]),
        "macro_f1": float(rates["f1"][held].mean()),
        "sensitivity": {class_names[c]: float(rates["recall"][c]) for c in held},
        "macro_f1_ci": {"low": None, "high": None},
        "sensitivity_ci": {class_names[c]: {"low": None, "high": None} for c in held},
    }
    if n_resamples > 0:
        f1s, sens = [], []
        for _, cm in metrics.bootstrap_confusions(y_true, y_pred, num_classes,
                                                  n_resamples=n_resamples, seed=seed):
            boot = metrics.rates_from_confusion(cm)
            f1s.append(boot["f1"][:, held].mean(axis=1))
            # A resample without an example of the class has no sensitivity for it.
            sens.append(np.where(boot["support"] > 0, boot["recall"], np.nan)[:, held])
        row["macro_f1_ci"] = metrics.percentile_interval(np.concatenate(f1s))
        sens_all = np.concatenate(sens)
        row["sensitivity_ci"] = {class_names[c]: metrics.percentile_interval(sens_all[:, i])
                                 for i, c in enumerate(held)}
    return row


def collection_table(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                     collections: Sequence[str] | np.ndarray, class_names: Sequence[str], *,
                     n_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{collection: held_class_metrics of its examples}, collections in sorted order.
    `collections[i]` names the collection of example i."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    collections = np.asarray(collections).astype(str)
    if collections.shape != y_true.shape:
        raise ValueError(f"Received: {collections.size} collection names for {y_true.size} "
                         f"labels; pass one name per example.")
    probs = np.asarray(probs)
    return {str(name): held_class_metrics(y_true[collections == name],
                                          probs[collections == name], class_names,
                                          n_resamples=n_resamples, seed=seed)
            for name in sorted(set(collections.tolist()))}


def number(value: float | None) -> str:
    """0.812 (three decimals), or n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def with_interval(value: float | None, ci: dict[str, float | None] | None) -> str:
    """'0.812 [0.700, 0.900]', or '0.812' without an interval, 'n/a' without a value."""
    if ci and ci.get("low") is not None and value is not None:
        return f"{number(value)} [{number(ci['low'])}, {number(ci['high'])}]"
    return number(value)


def format_table(rows: dict[str, dict[str, Any]], class_names: Sequence[str],
                 label: str = "collection") -> str:
    """One line per collection: n, macro-F1 [CI], accuracy, sensitivity of each class
    ('-' where the collection has none of it)."""
    width = max([len(label)] + [len(name) for name in rows])
    cols = [max(len(name), 6) for name in class_names]
    lines = [f"{label:<{width}}  {'n':>6}  {'macro-F1 [95% CI]':<22}  {'accuracy':>8}  "
             + "  ".join(f"{name:>{w}}" for name, w in zip(class_names, cols))]
    for name, row in rows.items():
        sens = [number(row["sensitivity"][c]) if c in row["sensitivity"] else "-"
                for c in class_names]
        lines.append(f"{name:<{width}}  {row['n']:>6}  "
                     f"{with_interval(row['macro_f1'], row['macro_f1_ci']):<22}  "
                     f"{number(row['accuracy']):>8}  "
                     + "  ".join(f"{s:>{w}}" for s, w in zip(sens, cols)))
    return "\n".join(lines)


TITLE = ("Per collection (macro-F1 over the classes each collection holds; sensitivity per "
         "class, '-' = none of that class):")
