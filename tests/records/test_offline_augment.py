"""offline_augment: each op against values computed by hand on tiny arrays, saturation included.

Border pixels use OpenCV's BORDER_REFLECT_101: for a 3x3 window at corner (0, 0) of
[[a, b, c], [d, e, f], [g, h, i]] the window is [[e, d, e], [b, a, b], [e, d, e]].
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from xray_tfdata.records import offline_augment as oa

# Centre 90 on a background of 50.
#   mean at centre  = (8*50 + 90) / 9            = 54.44 -> 54
#   mean at corner  = (a + 2b + 2d + 4e) / 9 = (50 + 100 + 100 + 360) / 9 = 67.78 -> 68
#   mean at edge    = (2*(50+90+50) + 150) / 9   = 58.89 -> 59
BUMP = np.array([[50, 50, 50], [50, 90, 50], [50, 50, 50]], np.uint8)


def test_gamma_hand_values_keep_full_range():
    x = np.array([[0, 64, 100, 255]], np.uint8)
    # 255 * (x/255) ** 0.5: 64 -> 127.75 -> 128, 100 -> 159.69 -> 160
    np.testing.assert_array_equal(oa.gamma(x, 0.5), [[0, 128, 160, 255]])
    # 255 * (x/255) ** 2: 64 -> 16.06 -> 16, 100 -> 39.22 -> 39
    np.testing.assert_array_equal(oa.gamma(x, 2.0), [[0, 16, 39, 255]])
    # The tutorial's 10 * x**0.4 maps 255 to 91; the curve rescaled keeps white at 255.
    assert oa.gamma(np.array([[255]], np.uint8), 0.4)[0, 0] == 255


def test_gamma_is_monotone_and_keeps_shape_dtype():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    out = oa.gamma(ramp, 0.4)
    assert out.shape == ramp.shape and out.dtype == np.uint8
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)
    assert np.all(out.ravel()[1:] >= ramp.ravel()[1:])  # g < 1 brightens


def test_mean_filter_hand_values():
    np.testing.assert_array_equal(
        oa.mean_filter(BUMP, 3), [[68, 59, 68], [59, 54, 59], [68, 59, 68]]
    )
    spike = np.zeros((3, 3), np.uint8)
    spike[1, 1] = 90  # centre 90/9 = 10, corner 4*90/9 = 40, edge 2*90/9 = 20
    np.testing.assert_array_equal(
        oa.mean_filter(spike, 3), [[40, 20, 40], [20, 10, 20], [40, 20, 40]]
    )


def test_mean_filter_channels_independent():
    image = np.stack([BUMP, 255 - BUMP, BUMP], axis=2)
    out = oa.mean_filter(image)
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[..., 0], oa.mean_filter(BUMP))
    np.testing.assert_array_equal(out[..., 1], oa.mean_filter(255 - BUMP))
    assert oa.mean_filter(BUMP[..., None]).shape == (3, 3, 1)


def test_unsharp_hand_values():
    # 2x - mean(x), with the exact (unrounded) mean:
    #   centre 180 - 54.44 = 125.56 -> 126; corner 100 - 67.78 = 32.22 -> 32; edge 100 - 58.89 -> 41
    np.testing.assert_array_equal(
        oa.unsharp(BUMP, 3, 1.0), [[32, 41, 32], [41, 126, 41], [32, 41, 32]]
    )
    # amount 0.5 at the centre: 90 + 0.5 * 35.56 = 107.78 -> 108
    assert oa.unsharp(BUMP, 3, 0.5)[1, 1] == 108


def test_unsharp_saturates_instead_of_wrapping():
    spike = np.zeros((3, 3), np.uint8)
    spike[1, 1] = 200  # centre 400 - 22.2 = 377.8 -> 255; neighbours 0 - 44.4/88.9 -> 0
    out = oa.unsharp(spike)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 255, 0], [0, 0, 0]])
    # What the tutorial's uint8 arithmetic would have produced: the bright spot wraps to dark.
    wrapped = (spike + (spike - oa.mean_filter(spike))).astype(np.uint8)
    assert wrapped[1, 1] < 200 and wrapped[0, 0] > 0


def _step() -> np.ndarray:
    image = np.full((8, 8), 10, np.uint8)
    image[:, 4:] = 200
    return image


def test_canny_sharpen_hand_values_with_saturation():
    # Sobel |gx| = 4 * 190 = 760 on columns 3 and 4 (> 225, strong edge). Non-maximum suppression
    # keeps a pixel whose magnitude is > its left and >= its right neighbour: column 3 only.
    out = oa.canny_sharpen(_step())
    expected = _step()
    expected[:, 3] = 255  # 10 + 255 saturates at 255 (uint8 would wrap to 9)
    np.testing.assert_array_equal(out, expected)
    partial = oa.canny_sharpen(_step(), amount=0.1)
    expected[:, 3] = 36  # 10 + 25.5 = 35.5 -> 36
    np.testing.assert_array_equal(partial, expected)


def test_canny_sharpen_flat_and_weak_edges_unchanged():
    flat = np.full((6, 6), 123, np.uint8)
    np.testing.assert_array_equal(oa.canny_sharpen(flat), flat)
    weak = np.full((8, 8), 100, np.uint8)
    weak[:, 4:] = 105  # |gx| = 20 < low threshold 50: no edge
    np.testing.assert_array_equal(oa.canny_sharpen(weak), weak)


def test_canny_sharpen_channel_layouts():
    step = _step()
    one = oa.canny_sharpen(step[..., None])
    three = oa.canny_sharpen(np.repeat(step[..., None], 3, axis=2))
    assert one.shape == (8, 8, 1) and three.shape == (8, 8, 3)
    np.testing.assert_array_equal(one[..., 0], oa.canny_sharpen(step))
    np.testing.assert_array_equal(three[..., 2], oa.canny_sharpen(step))


def test_ops_reject_non_uint8_and_bad_params():
    with pytest.raises(ValueError, match="uint8"):
        oa.gamma(np.zeros((2, 2), np.float32), 0.5)
    with pytest.raises(ValueError, match="g=0"):
        oa.gamma(BUMP, 0)
    with pytest.raises(ValueError, match="k=4"):
        oa.mean_filter(BUMP, 4)
    with pytest.raises(ValueError, match="low=300"):
        oa.canny_sharpen(BUMP, low=300, high=200)


def test_parse_op_names_and_calls():
    op = oa.parse_op(" GAMMA0.4 ")
    assert op.name == "gamma0.4" and op.kind == "gamma" and op.param == 0.4
    np.testing.assert_array_equal(op(BUMP), oa.gamma(BUMP, 0.4))
    np.testing.assert_array_equal(oa.parse_op("mean3")(BUMP), oa.mean_filter(BUMP, 3))
    np.testing.assert_array_equal(oa.parse_op("unsharp3")(BUMP), oa.unsharp(BUMP, 3))
    np.testing.assert_array_equal(oa.parse_op("canny3")(_step()), oa.canny_sharpen(_step()))
    assert pickle.loads(pickle.dumps(op)) == op  # sent to worker processes


@pytest.mark.parametrize("bad", ["blur3", "gamma", "gamma0", "gamma11", "mean4", "mean1",
                                 "unsharp2.5", "canny4", "", "none"])
def test_parse_op_rejects_with_grammar(bad):
    with pytest.raises(ValueError) as err:
        oa.parse_op(bad)
    message = str(err.value)
    assert repr(bad.strip().lower()) in message and "gamma<G>" in message


def test_parse_augment_spec():
    spec = oa.parse_augment_spec(
        "covid19:gamma0.4,gamma0.55,mean3,unsharp3,canny3; Pneumonia:mean3;"
    )
    assert list(spec) == ["COVID19", "PNEUMONIA"]
    names = [op.name for op in spec["COVID19"]]
    assert names == ["gamma0.4", "gamma0.55", "mean3", "unsharp3", "canny3"]
    assert [op.name for op in spec["PNEUMONIA"]] == ["mean3"]
    assert oa.parse_augment_spec("") == {} and oa.parse_augment_spec("  ") == {}


@pytest.mark.parametrize("bad,fragment", [
    ("gamma0.4", "no 'CLASS:'"),
    ("COVID:gamma0.4", "Unknown class 'COVID'"),
    ("COVID19:", "lists no ops"),
    ("COVID19:mean3;covid19:gamma0.4", "twice"),
    ("COVID19:gamma0.4,gamma0.40", "repeats op"),
    ("COVID19:mean3,sharpen", "'sharpen'"),
])
def test_parse_augment_spec_errors(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        oa.parse_augment_spec(bad)
