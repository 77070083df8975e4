"""Intensity normalisation of the converter's 8-bit gray image (`build_records --intensity`).

Collections differ in exposure, film and detector far more than in disease, and a CNN reads that
difference (issue 19: equalising each image lifted a held-out collection's accuracy from 0.63 to
0.76). The transform runs on the full-resolution 8-bit gray image, before the resize (and so
before offline augmentation), in the converter's workers (numpy / OpenCV only, no TensorFlow):

- "none": the image as decoded (the default; such builds are byte-identical to earlier ones).
- "equalize": global histogram equalisation, cv2.equalizeHist.
- "clahe": contrast-limited adaptive equalisation, cv2.createCLAHE with CLAHE_TILE_GRID tiles and
  CLAHE_CLIP_LIMIT. The clip limit is in OpenCV's unit, a multiple of a tile's mean bin count
  (tile pixels / 256): 2.0 lets no grey level take more than twice its uniform share, which
  lifts local contrast without amplifying the film grain of flat regions (OpenCV's own default,
  40, hardly clips at all). 8 x 8 tiles put about one tile across a rib interspace at 224 px.

serving/intensity.py repeats both in TensorFlow ops for the serving signature, from these same
constants; tests/serving/test_export_predict.py holds the two within one grey level.
"""

from __future__ import annotations

import cv2
import numpy as np

INTENSITY_MODES: tuple[str, ...] = ("none", "equalize", "clahe")
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (8, 8)  # (tiles across, tiles down): OpenCV's tileGridSize order


def normalise(gray: np.ndarray, mode: str) -> np.ndarray:
    """`HxW` uint8 gray -> the same shape, normalised per `mode` (one of INTENSITY_MODES)."""
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}. Received: {mode!r}.")
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError("normalise expects an HxW uint8 image. "
                         f"Received: shape={gray.shape}, dtype={gray.dtype}.")
    if mode == "none":
        return gray
    gray = np.ascontiguousarray(gray)
    if mode == "equalize":
        return cv2.equalizeHist(gray)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILE_GRID)
    return clahe.apply(gray)
