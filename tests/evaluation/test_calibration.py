"""calibration.py: ECE by hand, temperature scaling, the operating point (its positive class and
the warning on few val positives), the diagram."""

from __future__ import annotations

import numpy as np
import pytest

from xray_tfdata.evaluation import calibration

CLASSES = ("NORMAL", "COVID19", "PNEUMONIA")
COVID = 1


def _hand_example():
    # top-label confidences 0.90 (right), 0.88 (wrong), 0.62 (right), 0.38 (wrong).
    probs = np.array([[0.90, 0.05, 0.05], [0.88, 0.06, 0.06], [0.19, 0.62, 0.19],
                      [0.38, 0.31, 0.31]])
    return probs, np.array([0, 1, 1, 2])


def test_ece_matches_a_hand_computed_example():
    probs, y = _hand_example()
    # 15 bins of width 1/15: 0.90 and 0.88 share bin (13/15, 14/15]: accuracy 1/2, confidence
    # 0.89 -> gap 0.39 on 2 of 4 examples; 0.62 alone (gap 0.38), 0.38 alone (gap 0.38).
    expected = 2 / 4 * 0.39 + 1 / 4 * 0.38 + 1 / 4 * 0.38
    assert calibration.expected_calibration_error(probs, y) == pytest.approx(expected)
    bins = calibration.reliability_bins(probs, y)
    assert bins["count"].tolist() == [0] * 5 + [1, 0, 0, 0, 1, 0, 0, 0, 2, 0]


def test_ece_is_zero_when_confidence_equals_accuracy_and_edges_fall_in_the_lower_bin():
    # Confidence 0.5 everywhere, half right: perfectly calibrated.
    probs = np.tile([0.5, 0.25, 0.25], (4, 1))
    assert calibration.expected_calibration_error(probs, [0, 0, 1, 2]) == pytest.approx(0.0)
    ones = np.tile([1.0, 0.0, 0.0], (3, 1))
    assert calibration.reliability_bins(ones, [0, 0, 0])["count"][-1] == 3


def _overconfident(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0.0, 1.0, (n, 3))
    logits[np.arange(n), y] += 1.0
    logits *= 4.0  # sharpened well beyond what the signal supports
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), y


def test_temperature_scaling_lowers_nll_on_val_and_keeps_predictions():
    val_probs, val_y = _overconfident(400, seed=1)
    temperature = calibration.fit_temperature(val_probs, val_y)
    assert temperature > 2.0  # it undoes most of the 4x sharpening
    scaled = calibration.apply_temperature(val_probs, temperature)
    assert calibration.nll(scaled, val_y) < calibration.nll(val_probs, val_y) - 0.1
    np.testing.assert_array_equal(scaled.argmax(1), val_probs.argmax(1))
    # It generalises to held-out data from the same model: ECE drops there too.
    test_probs, test_y = _overconfident(400, seed=2)
    summary = calibration.calibration_summary(test_probs, test_y, temperature)
    assert summary["ece_calibrated"] < summary["ece"]
    assert summary["nll_calibrated"] < summary["nll"]


def test_temperature_is_one_for_a_calibrated_model_within_tolerance():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], 3000)
    y = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the probabilities
    assert calibration.fit_temperature(probs, y) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("target", [0.95, 0.8, 1.0])
def test_covid_threshold_meets_the_sensitivity_on_val_and_is_the_highest(target):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[y == 1, 1] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = calibration.operating_threshold(probs, y, COVID, CLASSES, target)
    t = chosen["threshold"]
    assert chosen["num_positive"] == int((y == 1).sum()) and chosen["warning"] is None
    result = calibration.threshold_metrics(probs, y, t, positive=COVID, n_resamples=0)
    assert result["sensitivity"] >= target
    # Any higher threshold misses the target: the chosen one is the most specific.
    above = calibration.threshold_metrics(probs, y, np.nextafter(t, 1.0), positive=COVID,
                                          n_resamples=0)
    assert above["sensitivity"] < target
    assert above["specificity"] >= result["specificity"]


def test_covid_threshold_without_covid_examples_is_none():
    none = calibration.operating_threshold(np.tile([0.5, 0.2, 0.3], (3, 1)), [0, 2, 0], COVID,
                                           CLASSES)
    assert none["threshold"] is None and none["num_positive"] == 0 and none["warning"] is None
    with pytest.raises(ValueError, match="target_sensitivity"):
        calibration.operating_threshold(np.tile([0.5, 0.2, 0.3], (3, 1)), [0, 1, 0], COVID,
                                        CLASSES, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 2\]\. Received: positive=3"):
        calibration.operating_threshold(np.tile([0.5, 0.2, 0.3], (3, 1)), [0, 1, 0], 3,
                                        CLASSES)


def test_threshold_metrics_by_hand_with_intervals():
    probs = np.array([[0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.5, 0.45, 0.05], [0.8, 0.1, 0.1],
                      [0.2, 0.2, 0.6]])
    y = np.array([1, 1, 0, 0, 2])
    r = calibration.threshold_metrics(probs, y, 0.42, positive=COVID, n_resamples=300, seed=0)
    # called: 0.8, 0.45 (a NORMAL); missed 0.4. TP 1, FN 1, FP 1, TN 2.
    assert (r["sensitivity"], r["specificity"], r["ppv"]) == pytest.approx((0.5, 2 / 3, 0.5))
    for name in ("sensitivity", "specificity", "ppv"):
        ci = r["confidence_intervals"][name]
        assert 0.0 <= ci["low"] <= r[name] <= ci["high"] <= 1.0
    # 2 positives: the sensitivity's interval is exact, Clopper-Pearson 1/2 = [1 - 0.975^(1/2),
    # 0.975^(1/2)] = [0.012579, 0.987421].
    sens = r["confidence_intervals"]["sensitivity"]
    assert sens["method"] == "clopper-pearson" and sens["n"] == 2
    assert (sens["low"], sens["high"]) == pytest.approx((1 - 0.975 ** 0.5, 0.975 ** 0.5))
    again = calibration.threshold_metrics(probs, y, 0.42, positive=COVID, n_resamples=300,
                                          seed=0)
    assert again["confidence_intervals"] == r["confidence_intervals"]


def test_reliability_png_is_a_png():
    probs, y = _overconfident(50, seed=5)
    png = calibration.reliability_png(probs, y, "t", calibrated=calibration.apply_temperature(
        probs, 3.0))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_apply_temperature_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature=0"):
        calibration.apply_temperature(np.ones((1, 3)) / 3, 0)


def test_operating_point_for_another_positive_class_and_a_two_class_model():
    """The positive class is an argument: PNEUMONIA here, and a 2-class (NORMAL, PNEUMONIA)
    model's class 1; the threshold is on that class's column."""
    probs = np.array([[0.7, 0.1, 0.2], [0.2, 0.1, 0.7], [0.1, 0.3, 0.6], [0.5, 0.1, 0.4]])
    y = np.array([0, 2, 2, 2])
    chosen = calibration.operating_threshold(probs, y, 2, CLASSES, 1.0)
    assert chosen["positive_class"] == "PNEUMONIA" and chosen["threshold"] == 0.4
    r = calibration.threshold_metrics(probs, y, chosen["threshold"], positive=2, n_resamples=0)
    assert r["sensitivity"] == 1.0 and r["specificity"] == 1.0
    two = np.column_stack([probs[:, 0] + probs[:, 1], probs[:, 2]])
    binary = calibration.operating_threshold(two, (y == 2).astype(int), 1,
                                             ("NORMAL", "PNEUMONIA"), 1.0)
    assert binary["threshold"] == 0.4 and binary["positive_class"] == "PNEUMONIA"


@pytest.mark.parametrize("n_pos, warned", [(1, True), (19, True), (20, False), (45, False)])
def test_operating_point_says_how_many_positives_and_warns_under_20(n_pos, warned):
    rng = np.random.default_rng(n_pos)
    y = np.array([1] * n_pos + [0] * 30)
    probs = rng.dirichlet([1, 1, 1], y.size)
    chosen = calibration.operating_threshold(probs, y, COVID, CLASSES)
    assert chosen["num_positive"] == n_pos and chosen["threshold"] is not None
    if warned:
        assert chosen["warning"].startswith(f"The COVID19 operating point was chosen on only "
                                            f"{n_pos} val positive")
        assert "fewer than 20" in chosen["warning"]
    else:
        assert chosen["warning"] is None
