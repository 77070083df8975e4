"""The shortcut probe on records built from several named collections (--data_dir=a=..,b=..)."""

from __future__ import annotations

import numpy as np
import pytest

from xray_tfdata.evaluation import shortcut


def _meta(sources: list[str], labels: list[int]) -> dict[str, np.ndarray]:
    n = len(labels)
    return {"label": np.array(labels, np.int32), "source": np.array(sources),
            "source_width": np.full(n, 1000), "source_height": np.full(n, 1000),
            "source_mode": np.array(["L"] * n), "source_format": np.array(["PNG"] * n),
            "source_bytes": np.full(n, 100_000)}


def test_the_collection_alone_predicts_the_class_when_classes_come_from_different_ones():
    # Kaggle-like: COVID19 (1) from the adult collection, NORMAL/PNEUMONIA (0/2) from children.
    train = _meta(["adult"] * 10 + ["child"] * 20, [1] * 10 + [0] * 12 + [2] * 8)
    test = _meta(["adult"] * 4 + ["child"] * 8, [1] * 4 + [0] * 4 + [2] * 4)
    # adult -> COVID19 (all right), child -> NORMAL (4 of 8 right): F1 1, 2/3, 0.
    assert shortcut.source_alone_macro_f1(train, test) == pytest.approx((1 + 2 / 3 + 0) / 3)
    result = shortcut.run_probe(train, test, cnn_macro_f1=0.9, seed=0)
    assert "source=adult" in result["features"] and "source=child" in result["features"]
    assert result["source_alone_macro_f1"] == pytest.approx(5 / 9)
    assert "The collection alone" in result["message"]


def test_one_unnamed_collection_adds_no_source_feature_or_score():
    train = _meta([""] * 30, [0, 1, 2] * 10)
    test = _meta([""] * 9, [0, 1, 2] * 3)
    assert shortcut.source_alone_macro_f1(train, test) is None
    result = shortcut.run_probe(train, test, cnn_macro_f1=0.9, seed=0)
    assert not any(name.startswith("source=") for name in result["features"])
    assert "source_alone_macro_f1" not in result
