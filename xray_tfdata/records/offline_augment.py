"""Offline augmentation: the seed tutorial's recipe for the rare class, done right.

Every op is a pure `uint8 -> uint8` function of an `HxW` or `HxWxC` image, computed in float and
clipped back to 0..255 (saturating: the tutorial's uint8 sums wrapped around, so a bright pixel
plus an edge became dark). Imports numpy and OpenCV only: ops run in the converter's workers.

Op names (the `--augment` grammar, also stored in each record's `image/augmentation`):
  gamma<G>    255 * (x / 255) ** G, G in (0, 10]      e.g. gamma0.4 (brightens), gamma1.5 (darkens)
  mean<K>     K x K mean (box) filter, K odd in [3, 15]  e.g. mean3
  unsharp<K>  x + 1.0 * (x - mean_K(x)), K odd in [3, 15] e.g. unsharp3
  canny<A>    x + 1.0 * Canny(x, 50, 225) (edges are 0/255, so edge pixels saturate to white),
              A = Sobel aperture in {3, 5, 7}           e.g. canny3
Spec: "CLASS:op,op;CLASS:op", e.g. "COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3".
Borders: OpenCV's default BORDER_REFLECT_101 (the row/column next to the edge is mirrored).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import cv2
import numpy as np

from xray_tfdata import labels

GRAMMAR = (
    "ops: gamma<G> (G in (0, 10], e.g. gamma0.4), mean<K>, unsharp<K> (K odd in [3, 15], "
    "e.g. mean3), canny<A> (A in {3, 5, 7}, e.g. canny3); spec: 'CLASS:op,op;CLASS:op' with "
    "CLASS one of the build's --classes (case-insensitive), e.g. "
    "'COVID19:gamma0.4,gamma0.55,mean3,unsharp3,canny3'"
)
_OP_RE = re.compile(r"^(gamma|mean|unsharp|canny)(\d+(?:\.\d+)?|\.\d+)$")


def _check_uint8(image: np.ndarray, op: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"{op} expects an HxW or HxWxC uint8 image. Received: "
            f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}."
        )


def _check_kernel(k: int, op: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 3 or k > 15 or k % 2 == 0:
        raise ValueError(f"{op} kernel size must be an odd int in [3, 15]. Received: k={k!r}.")


def _saturate(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Power-law transform `c * x**g` with c = 255**(1 - g): keeps 0 -> 0 and 255 -> 255.

    The tutorial's c=10 on raw 0..255 values (with g<1) mapped 255 to ~90: images a tenth as
    bright in the curve's scale. Normalising to [0, 1] first keeps the curve and the full range.
    """
    _check_uint8(image, "gamma")
    if not 0 < float(g) <= 10:
        raise ValueError(f"gamma exponent must be in (0, 10]. Received: g={g!r}.")
    lut = _saturate(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** float(g))
    return lut[image]


def mean_filter(image: np.ndarray, k: int = 3) -> np.ndarray:
    """K x K box mean, rounded to nearest (K*K is odd, so there are no .5 ties)."""
    _check_uint8(image, "mean_filter")
    _check_kernel(k, "mean_filter")
    return _saturate(_box_mean(image, k))


def _box_mean(image: np.ndarray, k: int) -> np.ndarray:
    # Float blur: unsharp must subtract the exact mean, not a mean already rounded to uint8.
    out = cv2.blur(image.astype(np.float32), (k, k), borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(image.shape)  # cv2 drops a trailing channel axis of 1


def unsharp(image: np.ndarray, k: int = 3, amount: float = 1.0) -> np.ndarray:
    """Unsharp masking `x + amount * (x - mean_k(x))`, saturating at 0 and 255."""
    _check_uint8(image, "unsharp")
    _check_kernel(k, "unsharp")
    if not 0 <= float(amount) <= 10:
        raise ValueError(f"unsharp amount must be in [0, 10]. Received: amount={amount!r}.")
    x = image.astype(np.float32)
    return _saturate(x + np.float32(amount) * (x - _box_mean(image, k)))


def canny_sharpen(
    image: np.ndarray, amount: float = 1.0, low: int = 50, high: int = 225, aperture: int = 3
) -> np.ndarray:
    """Edge sharpening `x + amount * Canny(x, low, high)` (edges 0/255), saturating at 255.

    A colour image gets one edge map (OpenCV takes the strongest channel gradient), added to
    every channel.
    """
    _check_uint8(image, "canny_sharpen")
    if not 0 <= low <= high:
        raise ValueError(
            f"canny thresholds need 0 <= low <= high. Received: low={low}, high={high}."
        )
    if aperture not in (3, 5, 7):
        raise ValueError(f"canny aperture must be 3, 5 or 7. Received: aperture={aperture!r}.")
    src = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    edges = cv2.Canny(np.ascontiguousarray(src), float(low), float(high), apertureSize=aperture)
    if image.ndim == 3:
        edges = edges[..., np.newaxis]
    return _saturate(image.astype(np.float32) + np.float32(amount) * edges.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class AugmentOp:
    """One named variant (e.g. "gamma0.4"). Holds only its name, so it pickles to workers."""

    name: str

    def __post_init__(self) -> None:
        _parse_name(self.name)  # validate early, with the grammar in the message

    @property
    def kind(self) -> str:
        return _parse_name(self.name)[0]

    @property
    def param(self) -> float:
        return _parse_name(self.name)[1]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        kind, value = _parse_name(self.name)
        if kind == "gamma":
            return gamma(image, value)
        if kind == "mean":
            return mean_filter(image, int(value))
        if kind == "unsharp":
            return unsharp(image, int(value))
        return canny_sharpen(image, aperture=int(value))


def _parse_name(name: str) -> tuple[str, float]:
    match = _OP_RE.match(name) if isinstance(name, str) else None
    if not match:
        raise ValueError(f"Unknown augmentation op {name!r}; {GRAMMAR}.")
    kind, value = match.group(1), float(match.group(2))
    if kind == "gamma":
        if not 0 < value <= 10:
            raise ValueError(f"Augmentation op {name!r}: gamma must be in (0, 10]; {GRAMMAR}.")
    elif kind == "canny":
        if value not in (3, 5, 7):
            raise ValueError(
                f"Augmentation op {name!r}: canny aperture must be 3, 5 or 7; {GRAMMAR}."
            )
    elif value != int(value) or not 3 <= value <= 15 or int(value) % 2 == 0:
        raise ValueError(
            f"Augmentation op {name!r}: {kind} kernel must be an odd int in [3, 15]; {GRAMMAR}."
        )
    return kind, value


def parse_op(name: str) -> AugmentOp:
    """Parses one op token (case-insensitive, surrounding spaces ignored) into an AugmentOp."""
    if not isinstance(name, str):
        raise ValueError(f"Augmentation op must be a string. Received: {name!r}; {GRAMMAR}.")
    return AugmentOp(name.strip().lower())


def parse_augment_spec(spec: str, classes: Sequence[str] = labels.DEFAULT_CLASSES
                       ) -> dict[str, tuple[AugmentOp, ...]]:
    """Parses "CLASS:op,op;CLASS:op" into {canonical class name: ops}; "" gives {}.

    CLASS must be one of `classes` (the build's class set).

    Raises:
      ValueError: naming the bad part of the spec and the grammar.
    """
    if spec is None or not spec.strip():
        return {}
    result: dict[str, tuple[AugmentOp, ...]] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue  # tolerate a trailing ';'
        if ":" not in part:
            raise ValueError(f"Augment spec part {part.strip()!r} has no 'CLASS:'; {GRAMMAR}.")
        class_part, ops_part = part.split(":", 1)
        try:
            class_name = classes[labels.label_of(class_part.strip(), classes)]
        except ValueError as err:
            raise ValueError(f"Augment spec part {part.strip()!r}: {err} {GRAMMAR}.") from err
        if class_name in result:
            raise ValueError(
                f"Augment spec names class {class_name} twice; merge its ops. {GRAMMAR}."
            )
        tokens = [t for t in ops_part.split(",") if t.strip()]
        if not tokens:
            raise ValueError(f"Augment spec part {part.strip()!r} lists no ops; {GRAMMAR}.")
        ops = tuple(parse_op(t) for t in tokens)
        seen: dict[tuple[str, float], str] = {}
        for op in ops:
            key = _parse_name(op.name)
            if key in seen:
                raise ValueError(
                    f"Augment spec for {class_name} repeats op {op.name!r} "
                    f"(same as {seen[key]!r}); "
                    "each op makes one variant, so list it once."
                )
            seen[key] = op.name
        result[class_name] = ops
    return result
