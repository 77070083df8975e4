"""metrics.py against hand-computed values and a naive (loop) bootstrap."""

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


def _one_hot_probs(pred: np.ndarray, num_classes: int = 3) -> np.ndarray:
    probs = np.full((pred.size, num_classes), 0.1)
    probs[np.arange(pred.size), pred] = 0.8
    return probs


def test_hand_computed_counts_and_rates():
    m = metrics.compute_metrics(Y_TRUE, _one_hot_probs(Y_PRED), n_resamples=0)
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
    m = metrics.compute_metrics(Y_TRUE, probs, Y_PRED, n_resamples=0)
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
    m = metrics.compute_metrics(y, probs, n_resamples=200, seed=0)
    assert m["per_class"]["COVID19"]["auc"] is None
    assert m["auc_classes_undefined"] == ["COVID19"]
    normal_auc = sk_metrics.roc_auc_score(y == 0, probs[:, 0])
    pneu_auc = sk_metrics.roc_auc_score(y == 2, probs[:, 2])
    assert m["macro_auc"] == pytest.approx((normal_auc + pneu_auc) / 2)
    assert m["per_class"]["COVID19"]["support"] == 0
    assert m["confidence_intervals"]["sensitivity/COVID19"] == {"low": None, "high": None}
    assert "COVID19" in metrics.format_summary(m)


def test_bootstrap_matches_naive_loop_and_is_seeded():
    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 3, n)
    probs = rng.random((n, 3))
    probs[np.arange(n), y] += 0.4
    pred = probs.argmax(1)
    b = 100  # one vectorised chunk, so the naive loop can redraw the same indices
    got = metrics.bootstrap_intervals(y, probs, pred, n_resamples=b, seed=11)
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
    again = metrics.bootstrap_intervals(y, probs, pred, n_resamples=b, seed=11)
    assert again == got
    point = metrics.compute_metrics(y, probs, n_resamples=0)["accuracy"]
    assert got["accuracy"]["low"] <= point <= got["accuracy"]["high"]


def test_perfect_predictions_have_degenerate_intervals():
    y = np.array([0, 1, 2] * 5)
    m = metrics.compute_metrics(y, _one_hot_probs(y), n_resamples=300, seed=0)
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
        metrics.compute_metrics(args["y_true"], args["probs"], n_resamples=0)
