"""Per-collection metrics: exact counts, macro-F1 over the classes a collection holds, CIs."""

from __future__ import annotations

import numpy as np
import pytest

from xray_tfdata.evaluation import by_collection, metrics

NAMES = ("NORMAL", "COVID19", "PNEUMONIA")


def _probs(pred: list[int]) -> np.ndarray:
    return np.eye(3)[pred] * 0.8 + 0.2 / 3


def test_counts_f1_over_held_classes_and_sensitivities_are_exact():
    # a: NORMAL, NORMAL, COVID19, COVID19 predicted N, C, C, C. b: NORMAL, PNEUMONIA x2
    # predicted N, P, C (a COVID19 call in a collection without COVID19).
    y = [0, 0, 1, 1, 0, 2, 2]
    pred = [0, 1, 1, 1, 0, 2, 1]
    source = ["a"] * 4 + ["b"] * 3
    table = by_collection.collection_table(y, _probs(pred), source, NAMES, n_resamples=0)
    assert list(table) == ["a", "b"]
    a, b = table["a"], table["b"]
    assert (a["n"], a["classes"], a["support"]) == (4, ["NORMAL", "COVID19"],
                                                    {"NORMAL": 2, "COVID19": 2})
    # NORMAL: P 1, R 1/2 -> F1 2/3; COVID19: P 2/3, R 1 -> F1 4/5.
    assert a["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert a["sensitivity"] == {"NORMAL": 0.5, "COVID19": 1.0}
    assert a["accuracy"] == 0.75
    assert (b["n"], b["classes"]) == (3, ["NORMAL", "PNEUMONIA"])
    # NORMAL F1 1; PNEUMONIA P 1, R 1/2 -> 2/3; the absent COVID19 is not averaged in (its 0
    # would cap b at 2/3), as compute_metrics averages over the classes present.
    assert b["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.compute_metrics([0, 2, 2], _probs([0, 2, 1]), class_names=NAMES,
                                   n_resamples=0)["macro_f1"] == pytest.approx(b["macro_f1"])
    assert b["sensitivity"] == {"NORMAL": 1.0, "PNEUMONIA": 0.5}
    assert b["macro_f1_ci"] == {"low": None, "high": None}
    lines = by_collection.format_table(table, NAMES).splitlines()
    assert lines[0].split() == ["collection", "n", "macro-F1", "[95%", "CI]", "accuracy",
                                "NORMAL", "COVID19", "PNEUMONIA"]
    assert lines[1].split() == ["a", "4", "0.733", "0.750", "0.500", "1.000", "-"]
    assert lines[2].split() == ["b", "3", "0.833", "0.667", "1.000", "-", "0.500"]


def test_intervals_are_the_headline_bootstrap_when_every_class_is_held():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y] * 0.4
    row = by_collection.held_class_metrics(y, probs, NAMES, n_resamples=300, seed=5)
    full = metrics.compute_metrics(y, probs, class_names=NAMES, n_resamples=300, seed=5)
    assert row["macro_f1"] == pytest.approx(full["macro_f1"])
    assert row["macro_f1_ci"] == pytest.approx(full["confidence_intervals"]["macro_f1"])
    for name in NAMES:
        assert row["sensitivity_ci"][name] == pytest.approx(
            full["confidence_intervals"][f"sensitivity/{name}"])
    assert row["macro_f1_ci"]["low"] < row["macro_f1"] < row["macro_f1_ci"]["high"]
    assert by_collection.held_class_metrics(y, probs, NAMES, n_resamples=300, seed=5) == row


def test_mismatched_inputs_name_what_to_pass():
    with pytest.raises(ValueError, match="one name per example"):
        by_collection.collection_table([0, 1], _probs([0, 1]), ["a"], NAMES)
    with pytest.raises(ValueError, match="at least one example"):
        by_collection.held_class_metrics([], np.zeros((0, 3)), NAMES)
