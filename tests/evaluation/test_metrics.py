"""metrics.py against hand-computed values and a naive (loop) bootstrap; absent and tiny classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from xray_tfdata.evaluation import metrics

# 10 examples, hand-built: confusion matrix rows = true, columns = predicted
#   NORMAL    [2, 1, 0]
#   COVID19   [0, 1, 1]
#   PNEUMONIA [1, 0, 4]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 2])
CLASSES = ("NORMAL", "COVID19", "PNEUMONIA")


def _one_hot_probs(pred: np.ndarray, num_classes: int = 3) -> np.ndarray:
    probs = np.full((pred.size, num_classes), 0.1)
    probs[np.arange(pred.size), pred] = 0.8
    return probs


def test_hand_computed_counts_and_rates():
    m = metrics.compute_metrics(Y_TRUE, _one_hot_probs(Y_PRED), class_names=CLASSES,
                                n_resamples=0)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    normal, covid, pneu = (m["per_class"][n] for n in ("NORMAL", "COVID19", "PNEUMONIA"))
    # NORMAL: TP=2 FP=1 FN=1 TN=6
    assert normal["precision"] == pytest.approx(2 / 3)
    assert normal["recall"] == normal["sensitivity"] == pytest.approx(2 / 3)
    assert normal["specificity"] == pytest.approx(6 / 7)
    assert normal["f1"] == pytest.approx(2 / 3)
    # COVID19: TP=1 FP=1 FN=1 TN=7
    assert covid["precision"] == pytest.approx(0.5)
    assert covid["specificity"] == pytest.approx(7 / 8)
    # PNEUMONIA: TP=4 FP=1 FN=1 TN=4
    assert pneu["f1"] == pytest.approx(0.8)
    assert pneu["specificity"] == pytest.approx(4 / 5)
    assert [normal["support"], covid["support"], pneu["support"]] == [3, 2, 5]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    assert m["macro_f1"] == pytest.approx(sk_metrics.f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert "PNEUMONIA" in m["classification_report"]
    assert m["confidence_intervals"] == {}


def test_y_pred_overrides_argmax():
    probs = _one_hot_probs(Y_TRUE)  # argmax would be perfect
    m = metrics.compute_metrics(Y_TRUE, probs, Y_PRED, class_names=CLASSES, n_resamples=0)
    assert m["accuracy"] == pytest.approx(0.7)


def test_auc_hand_computed_with_ties():
    y = np.array([0, 1, 0, 1])
    probs = np.zeros((4, 3))
    # COVID19 scores: positives {0.3, 0.8}, negatives {0.1, 0.35}: 3 of 4 pairs ordered.
    probs[:, 1] = [0.1, 0.3, 0.35, 0.8]
    assert metrics.auc_ovr(y, probs)[1] == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4.
    probs[:, 1] = [0.1, 0.35, 0.35, 0.8]
    assert metrics.auc_ovr(y, probs)[1] == pytest.approx(0.875)
    # PNEUMONIA is absent from y: undefined, not an error.
    assert metrics.auc_ovr(y, probs)[2] is None


def test_absent_class_is_reported_not_crashing():
    y = np.array([0, 0, 2, 2, 2])  # no COVID19
    probs = np.array([[.7, .2, .1], [.4, .1, .5], [.1, .1, .8], [.2, .3, .5], [.3, .3, .4]])
    m = metrics.compute_metrics(y, probs, class_names=CLASSES, n_resamples=200, seed=0)
    assert m["per_class"]["COVID19"]["auc"] is None
    assert m["auc_classes_undefined"] == ["COVID19"]
    normal_auc = sk_metrics.roc_auc_score(y == 0, probs[:, 0])
    pneu_auc = sk_metrics.roc_auc_score(y == 2, probs[:, 2])
    assert m["macro_auc"] == pytest.approx((normal_auc + pneu_auc) / 2)
    assert m["per_class"]["COVID19"]["support"] == 0
    assert m["confidence_intervals"]["sensitivity/COVID19"] == {"low": None, "high": None}
    assert "COVID19" in metrics.format_summary(m)
    assert m["absent_classes"] == ["COVID19"] and m["present_classes"] == ["NORMAL", "PNEUMONIA"]


def test_bootstrap_matches_naive_loop_and_is_seeded():
    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 3, n)
    probs = rng.random((n, 3))
    probs[np.arange(n), y] += 0.4
    pred = probs.argmax(1)
    b = 100  # one vectorised chunk, so the naive loop can redraw the same indices
    got = metrics.bootstrap_intervals(y, probs, pred, class_names=CLASSES, n_resamples=b,
                                      seed=11)
    idx = np.random.default_rng(11).integers(0, n, size=(b, n))
    acc, f1, auc, sens0 = [], [], [], []
    for row in idx:
        yt, pp, yp = y[row], probs[row], pred[row]
        acc.append(np.mean(yt == yp))
        f1.append(sk_metrics.f1_score(yt, yp, labels=[0, 1, 2], average="macro",
                                      zero_division=0))
        auc.append(np.mean([sk_metrics.roc_auc_score(yt == c, pp[:, c]) for c in range(3)]))
        sens0.append(np.mean(yp[yt == 0] == 0))
    for key, values in (("accuracy", acc), ("macro_f1", f1), ("macro_auc", auc),
                        ("sensitivity/NORMAL", sens0)):
        low, high = np.quantile(values, [0.025, 0.975])
        assert got[key]["low"] == pytest.approx(low), key
        assert got[key]["high"] == pytest.approx(high), key
    again = metrics.bootstrap_intervals(y, probs, pred, class_names=CLASSES, n_resamples=b,
                                      seed=11)
    assert again == got
    point = metrics.compute_metrics(y, probs, class_names=CLASSES, n_resamples=0)["accuracy"]
    assert got["accuracy"]["low"] <= point <= got["accuracy"]["high"]


def test_perfect_predictions_have_degenerate_intervals():
    y = np.array([0, 1, 2] * 5)
    m = metrics.compute_metrics(y, _one_hot_probs(y), class_names=CLASSES, n_resamples=300,
                                seed=0)
    assert m["accuracy"] == 1.0 and m["macro_auc"] == 1.0
    assert m["confidence_intervals"]["macro_f1"] == {"low": 1.0, "high": 1.0}


@pytest.mark.parametrize("bad, match", [
    (dict(probs=np.zeros((3, 2))), "probs must have shape"),
    (dict(y_true=np.array([0, 1, 3])), "outside"),
])
def test_bad_inputs_name_the_problem(bad, match):
    args = dict(y_true=np.array([0, 1, 2]), probs=np.eye(3))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        metrics.compute_metrics(args["y_true"], args["probs"], class_names=CLASSES,
                                n_resamples=0)


# --------------------------------------------------------------------- absent classes

def test_absent_class_macro_over_present_and_absent_rows():
    """No COVID19 in the split; the model still predicts it once (a NORMAL): that call is an
    error of NORMAL, and COVID19's row says absent instead of 0."""
    y = np.array([0, 0, 0, 0, 2, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 2, 2, 2, 0])
    m = metrics.compute_metrics(y, _one_hot_probs(pred), class_names=CLASSES, n_resamples=0)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 0, 0], [1, 0, 3]]
    assert m["absent_classes"] == ["COVID19"]
    # NORMAL: TP 3, FN 1 (the COVID19 call), FP 1 -> P = R = F1 = 3/4; PNEUMONIA: P 1, R 3/4.
    f1_normal, f1_pneu = 0.75, 2 * 1.0 * 0.75 / 1.75
    assert m["macro_f1"] == pytest.approx((f1_normal + f1_pneu) / 2)
    assert m["macro_f1"] == pytest.approx(sk_metrics.f1_score(y, pred, labels=[0, 2],
                                                              average="macro"))
    assert m["macro_sensitivity"] == pytest.approx((0.75 + 0.75) / 2)
    covid = m["per_class"]["COVID19"]
    assert covid["absent"] is True and covid["predicted"] == 1
    assert covid["sensitivity"] is None and covid["f1"] is None and covid["precision"] is None
    assert covid["specificity"] == pytest.approx(7 / 8)  # defined: 7 of 8 not called COVID19
    assert m["per_class"]["NORMAL"]["absent"] is False
    text = metrics.format_summary(m)
    covid_line = next(line for line in text.splitlines() if line.startswith("COVID19 "))
    assert "absent" in covid_line and "0.0000" not in covid_line
    assert "absent from this split, not averaged: COVID19" in text
    assert metrics.headline(m, "sensitivity/COVID19") == "absent"


def test_perfect_two_class_predictions_are_not_capped_by_an_absent_class():
    """The issue's NIH case: a three-way head on NORMAL/PNEUMONIA data used to get 2/3."""
    y = np.array([0, 2] * 6)
    m = metrics.compute_metrics(y, _one_hot_probs(y), class_names=CLASSES, n_resamples=100)
    assert m["macro_f1"] == 1.0 and m["macro_sensitivity"] == 1.0 and m["macro_auc"] == 1.0
    assert m["confidence_intervals"]["macro_f1"] == {"low": 1.0, "high": 1.0}


def test_three_class_model_on_two_class_external_set_bootstrap_over_present():
    """Labels are ids in the model's three classes; PNEUMONIA never occurs. The bootstrap's
    macro averages are over NORMAL and COVID19, checked against a naive loop with sklearn."""
    rng = np.random.default_rng(5)
    n = 40
    y = rng.integers(0, 2, n)  # NORMAL / COVID19 only
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), y] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(1)
    m = metrics.compute_metrics(y, probs, class_names=CLASSES, n_resamples=100, seed=2)
    assert m["absent_classes"] == ["PNEUMONIA"] and len(m["confusion_matrix"]) == 3
    assert m["macro_f1"] == pytest.approx(sk_metrics.f1_score(y, pred, labels=[0, 1],
                                                              average="macro", zero_division=0))
    assert m["macro_auc"] == pytest.approx(np.mean(
        [sk_metrics.roc_auc_score(y == c, probs[:, c]) for c in (0, 1)]))
    idx = np.random.default_rng(2).integers(0, n, size=(100, n))
    f1 = [sk_metrics.f1_score(y[r], pred[r], labels=[0, 1], average="macro", zero_division=0)
          for r in idx]
    sens = [sk_metrics.recall_score(y[r], pred[r], labels=[0, 1], average="macro",
                                    zero_division=0) for r in idx]
    for key, values in (("macro_f1", f1), ("macro_sensitivity", sens)):
        low, high = np.quantile(values, [0.025, 0.975])
        assert m["confidence_intervals"][key]["low"] == pytest.approx(low), key
        assert m["confidence_intervals"][key]["high"] == pytest.approx(high), key
    assert "PNEUMONIA" not in m["classification_report"]


def test_two_and_four_class_sets_need_no_three():
    y = np.array([0, 1, 1, 0, 1])
    two = metrics.compute_metrics(y, _one_hot_probs(y, 2), class_names=("NORMAL", "PNEUMONIA"),
                                  n_resamples=50)
    assert two["macro_f1"] == 1.0 and list(two["per_class"]) == ["NORMAL", "PNEUMONIA"]
    names = ("NORMAL", "COVID19", "PNEUMONIA", "LUNG_OPACITY")
    y4 = np.array([0, 1, 2, 3, 3, 0])
    four = metrics.compute_metrics(y4, _one_hot_probs(y4, 4), class_names=names, n_resamples=0)
    assert four["confusion_matrix"][3] == [0, 0, 0, 2] and four["absent_classes"] == []
    with pytest.raises(ValueError, match="3 = LUNG_OPACITY"):
        metrics.compute_metrics(np.array([0, 4]), _one_hot_probs(np.array([0, 1]), 4),
                                class_names=names, n_resamples=0)


# --------------------------------------------------------------------- tiny classes

# Clopper-Pearson 95% bounds in closed form (alpha = 0.05): x = n -> low = (alpha/2)^(1/n);
# x = 0 -> high = 1 - (alpha/2)^(1/n); x = 1 -> low = 1 - (1 - alpha/2)^(1/n); x = n - 1 ->
# high = (1 - alpha/2)^(1/n). So 2/2 -> [0.025^0.5, 1] = [0.158114, 1]; 0/2 -> [0, 0.841886];
# 1/3 -> low 1 - 0.975^(1/3) = 0.008404; 4/5 -> high 0.975^(1/5) = 0.994949. (The edge
# quantiles of Beta(x, 1) and Beta(1, n) are powers, Clopper & Pearson 1934; scipy's
# binomtest(x, n).proportion_ci(method="exact") gives the same numbers.)
@pytest.mark.parametrize("x, n, low, high", [
    (2, 2, 0.158114, 1.0), (0, 2, 0.0, 0.841886), (1, 3, 0.008404, None), (4, 5, None, 0.994949),
    (9, 9, 0.025 ** (1 / 9), 1.0),
])
def test_exact_interval_against_hand_computed_values(x, n, low, high):
    ci = metrics.exact_interval(x, n)
    assert ci["method"] == "clopper-pearson" and (ci["successes"], ci["n"]) == (x, n)
    if low is not None:
        assert ci["low"] == pytest.approx(low, abs=1e-6)
    if high is not None:
        assert ci["high"] == pytest.approx(high, abs=1e-6)
    assert 0.0 <= ci["low"] <= x / n <= ci["high"] <= 1.0
    with pytest.raises(ValueError, match="successes=3, n=2"):
        metrics.exact_interval(3, 2)


def test_tiny_class_gets_an_exact_interval_and_a_warning_not_a_degenerate_bootstrap():
    """The issue's case: 2 COVID19 test images, both found, used to read 1.000 [1.000, 1.000]."""
    y = np.array([0] * 12 + [1] * 2 + [2] * 9)
    m = metrics.compute_metrics(y, _one_hot_probs(y), class_names=CLASSES, n_resamples=200)
    covid = m["confidence_intervals"]["sensitivity/COVID19"]
    assert (covid["low"], covid["high"]) == (pytest.approx(0.158114, abs=1e-6), 1.0)
    assert covid["method"] == "clopper-pearson" and covid["n"] == 2
    pneu = m["confidence_intervals"]["sensitivity/PNEUMONIA"]  # 9 < 10: exact too
    assert pneu["low"] == pytest.approx(0.025 ** (1 / 9))
    # 12 NORMAL examples: the bootstrap, as before.
    assert "method" not in m["confidence_intervals"]["sensitivity/NORMAL"]
    assert len(m["warnings"]) == 2
    assert m["warnings"][0].startswith("COVID19 has only 2 examples") and "2/2" in m["warnings"][0]
    assert "PNEUMONIA has only 9 examples" in m["warnings"][1]
    assert metrics.headline(m, "sensitivity/COVID19") == "1.0000 [0.1581, 1.0000] exact, n=2"
    text = metrics.format_summary(m)
    assert "WARNING: COVID19 has only 2 examples" in text and "Clopper-Pearson" in text
    # No intervals asked for: the warning still names the class and n.
    quiet = metrics.compute_metrics(y, _one_hot_probs(y), class_names=CLASSES, n_resamples=0)
    assert quiet["warnings"][0].startswith("COVID19 has only 2 examples in this split")
    big = np.array([0, 1, 2] * 10)
    assert metrics.compute_metrics(big, _one_hot_probs(big), class_names=CLASSES,
                                   n_resamples=0)["warnings"] == []


def test_rates_macro_over_present_mask():
    cm = np.array([[2, 1, 0], [0, 0, 0], [0, 0, 3]])
    default = metrics.rates_from_confusion(cm)
    f1_normal, f1_pneu = 2 * (1.0 * 2 / 3) / (1.0 + 2 / 3), 1.0
    assert default["macro_f1"] == pytest.approx((f1_normal + f1_pneu) / 2)
    forced = metrics.rates_from_confusion(cm, np.array([True, True, True]))
    assert forced["macro_f1"] == pytest.approx((f1_normal + 0 + f1_pneu) / 3)
