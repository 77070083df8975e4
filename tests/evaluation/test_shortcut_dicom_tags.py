"""The shortcut probe one-hots technical DICOM tags when the metadata has them, and is unchanged
when it does not."""

from __future__ import annotations

import numpy as np

from xray_tfdata.evaluation import shortcut


def _meta(labels: np.ndarray, views: list[str] | None) -> dict:
    n = labels.size
    meta = {"label": labels, "source_width": np.full(n, 512), "source_height": np.full(n, 512),
            "source_mode": np.array(["MONOCHROME2"] * n), "source_format": np.array(["DICOM"] * n),
            "source_bytes": np.full(n, 100_000)}
    if views is not None:
        meta["dicom_view_position"] = np.array(views)
        meta["dicom_modality"] = np.array([""] * n)  # present but empty: adds no feature
    return meta


def test_a_view_that_follows_the_class_is_caught_by_the_probe():
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
    view = {0: "PA", 1: "AP", 2: "LL"}
    with_tags = shortcut.run_probe(_meta(y_train, [view[c] for c in y_train]),
                                   _meta(y_test, [view[c] for c in y_test]), 0.9)
    assert "view_position=AP" in with_tags["features"]
    assert not any(f.startswith("modality=") for f in with_tags["features"])
    assert with_tags["probe_macro_f1"] == 1.0 and with_tags["warning"]
    without = shortcut.run_probe(_meta(y_train, None), _meta(y_test, None), 0.9)
    assert without["features"] == ["width", "height", "aspect", "log_bytes", "format=DICOM",
                                   "mode=MONOCHROME2"]
    assert without["probe_macro_f1"] < 0.6  # identical metadata: near chance


def test_tag_columns_from_tf_example_keys_match_features():
    from xray_tfdata.records import features

    assert {keys[1] for keys in shortcut.TAG_COLUMNS.values()} == {
        *features.DICOM_TAG_KEYS.values(), features.SOURCE_NAME}
