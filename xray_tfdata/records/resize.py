"""The converter's output images: gray -> 1 or 3 channels, resize to size x size, encode.

Runs in the converter's worker processes, so it imports only numpy and OpenCV (never TensorFlow).
serving/export.py mirrors `resize` in TensorFlow ops (area when shrinking, bilinear when only
enlarging, half-pixel centres, the same "pad" geometry) and its tests hold the two within one
gray level of each other.
"""

from __future__ import annotations

import cv2
import numpy as np

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")
# ITU-R BT.601 luma weights of R, G, B: colour to gray wherever we do it ourselves (16-bit
# colour, DICOM RGB, the export's colour uploads), as libjpeg and OpenCV do for 8-bit.
LUMA_BT601: tuple[float, float, float] = (0.299, 0.587, 0.114)
ENCODE_FORMATS: tuple[str, ...] = ("jpeg", "png", "raw")


def to_channels(gray: np.ndarray, channels: int) -> np.ndarray:
    """`HxW` (or `HxWx1`) uint8 gray -> `HxWxC` with C = 1, or 3 identical channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}.")
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[..., 0]
    if gray.ndim != 2:
        raise ValueError(f"to_channels expects an HxW gray image. Received: shape={gray.shape}.")
    if channels == 1:
        return gray[..., np.newaxis]
    return np.repeat(gray[..., np.newaxis], 3, axis=2)


def resize(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Resizes to `size x size`; keeps a channel axis if the input has one.

    "stretch" scales each side independently (the seed's behaviour); "pad" keeps the aspect ratio
    and centres the image on black. Shrinking uses INTER_AREA (moire-free decimation); pure
    enlargement (tiny sources) uses INTER_LINEAR, since area averaging is undefined there.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}. Received: mode={mode!r}.")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}.")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"resize expects an HxW or HxWxC image. Received: shape={image.shape}.")
    height, width = image.shape[:2]
    if mode == "stretch":
        return _resize_to(image, size, size)
    scale = size / max(height, width)
    new_h = min(size, max(1, int(round(height * scale))))
    new_w = min(size, max(1, int(round(width * scale))))
    inner = _resize_to(image, new_h, new_w)
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = inner
    return out


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.copy()
    shrinking = height < src_h or width < src_w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of 1
        out = out[..., np.newaxis]
    return out


def encode(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """Encodes an `HxWxC` uint8 image (C = 1 or 3, RGB order) as jpeg, png or raw bytes.

    "raw" is the C-order pixel bytes (tf.io.decode_raw + reshape to [H, W, C] reads it back).
    """
    if image_format not in ENCODE_FORMATS:
        raise ValueError(
            f"image_format must be one of {ENCODE_FORMATS}. "
            f"Received: image_format={image_format!r}."
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            "encode expects an HxWxC uint8 image with C in (1, 3). "
            f"Received: shape={image.shape}, dtype={image.dtype}."
        )
    if image_format == "raw":
        return np.ascontiguousarray(image).tobytes()
    # OpenCV encoders expect BGR; flip so an RGB input is stored as RGB.
    bgr = image if image.shape[2] == 1 else image[..., ::-1]
    bgr = np.ascontiguousarray(bgr)
    if image_format == "jpeg":
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(
                f"jpeg_quality must be in [1, 100]. Received: jpeg_quality={jpeg_quality}."
            )
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {image.shape} image as {image_format}.")
    return buf.tobytes()
