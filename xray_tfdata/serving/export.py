"""SavedModel export whose serving signature takes encoded image files and returns probabilities.

`export_serving` writes a TensorFlow SavedModel with one signature, "serving_default":
  input  "image_bytes":   tf.string [None], raw PNG/JPEG/BMP file contents, any size or mode
  output "probabilities": tf.float32 [None, K], in the order of the metadata's class_names (the
                          records' classes; the default build's are NORMAL, COVID19, PNEUMONIA)
The decoding mirrors the converter (xray_tfdata.records.image_io): 8-bit grey (RGB weighted like
cv2.COLOR_BGR2GRAY, alpha dropped, 16-bit PNG rescaled by its actual min..max), EXIF orientation
applied as cv2.imread applies it (JPEG APP1 / PNG eXIf, parsed here in TensorFlow ops with the
rules and limits of records/image_format.py: a photo stored landscape with orientation 6 is
served portrait, exactly as the converter wrote it into the records), then a resize
(area when shrinking, bilinear when only enlarging) to image_size x image_size ("stretch") or an
aspect-preserving one centred on black ("pad"), rounded back to uint8 and repeated to the model's
channel count. Records built with --intensity=equalize|clahe are normalised the same way before the
resize (serving/intensity.py: OpenCV's algorithms in TF ops). Serving needs TensorFlow only: no Keras, no xray_tfdata. The metadata (class names,
image size, channels, resize mode, intensity) goes to <export_dir>/xray_tfdata.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from xray_tfdata import files, paths
from xray_tfdata.labels import DEFAULT_CLASSES
from xray_tfdata.records import image_format
from xray_tfdata.records.intensity import INTENSITY_MODES
from xray_tfdata.records.resize import LUMA_BT601, RESIZE_MODES
from xray_tfdata.serving import intensity as intensity_ops

METADATA_FILE = "xray_tfdata.json"
SIGNATURE = "serving_default"
INPUT_KEY = "image_bytes"
OUTPUT_KEY = "probabilities"

# ITU-R BT.601 luma, the weights of cv2.COLOR_BGR2GRAY and tf.image.rgb_to_grayscale.
# The converter's magic bytes and EXIF limits (records/image_format.py): constants baked into the
# exported graph, so the SavedModel itself still needs TensorFlow only.
_PNG_SIGNATURE = image_format.PNG_MAGIC
_JPEG_MAGIC = image_format.JPEG_MAGIC
_EXIF_SCAN_BYTES = image_format.EXIF_SCAN_BYTES
_EXIF_MAX_ENTRIES = image_format.EXIF_MAX_ENTRIES
_EXIF_ORIENTATION_TAG = image_format.EXIF_ORIENTATION_TAG


def _to_gray_float(image: tf.Tensor) -> tf.Tensor:
    """[H, W, C] float32 with C in 1..4 -> [H, W, 1]: alpha dropped, RGB weighted to luma."""
    channels = tf.shape(image)[-1]
    color = tf.cond(channels >= 3, lambda: image[..., :3], lambda: image[..., :1])

    def luma() -> tf.Tensor:
        weights = tf.constant(LUMA_BT601, tf.float32)
        return tf.reduce_sum(color * weights, axis=-1, keepdims=True)

    return tf.cond(tf.shape(color)[-1] == 3, luma, lambda: color[..., :1])


def _is_16bit_png(data: tf.Tensor) -> tf.Tensor:
    # PNG: 8-byte signature, IHDR length+type (8 bytes), width, height (8 bytes), bit depth at 24.
    is_png = tf.equal(tf.strings.substr(data, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)
    depth = tf.strings.substr(data, 24, 1)
    return tf.logical_and(is_png, tf.equal(depth, b"\x10"))


class _Header:
    """The first _EXIF_SCAN_BYTES of a file as int64 values, read with bounds-safe gathers."""

    def __init__(self, data: tf.Tensor):
        raw = tf.io.decode_raw(tf.strings.substr(data, 0, _EXIF_SCAN_BYTES), tf.uint8)
        # Zero padding: a header walk that runs past the end reads zeros, never out of bounds.
        self.size = tf.cast(tf.size(raw), tf.int64)
        self.bytes = tf.pad(tf.cast(raw, tf.int64), [[0, 16]])
        self.last = tf.cast(tf.size(self.bytes) - 1, tf.int64)

    def at(self, index: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.bytes, tf.clip_by_value(index, 0, self.last))

    def big16(self, i: tf.Tensor) -> tf.Tensor:
        return self.at(i) * 256 + self.at(i + 1)

    def big32(self, i: tf.Tensor) -> tf.Tensor:
        return self.big16(i) * 65536 + self.big16(i + 2)

    def matches(self, i: tf.Tensor, text: bytes) -> tf.Tensor:
        want = tf.constant(list(text), tf.int64)
        return tf.reduce_all(tf.equal(self.at(i + tf.range(len(text), dtype=tf.int64)), want))


def _jpeg_exif_start(head: _Header) -> tf.Tensor:
    """Offset of the TIFF block of the APP1 "Exif" segment before the first scan, or -1."""

    def body(pos, found, done):
        marker = head.at(pos + 1)
        fill = tf.equal(marker, 0xFF)
        standalone = tf.logical_or(tf.equal(marker, 0x01),
                                   tf.logical_and(marker >= 0xD0, marker <= 0xD7))
        exif = tf.logical_and(tf.equal(marker, 0xE1), head.matches(pos + 4, b"Exif\x00\x00"))
        stop = tf.reduce_any(tf.stack([tf.not_equal(head.at(pos), 0xFF), tf.equal(marker, 0xDA),
                                       pos + 4 > head.size, exif]))
        step = tf.where(fill, tf.constant(1, tf.int64),
                        tf.where(standalone, tf.constant(2, tf.int64), 2 + head.big16(pos + 2)))
        return pos + step, tf.where(exif, pos + 10, found), stop

    _, found, _ = tf.while_loop(lambda pos, found, done: tf.logical_not(done), body,
                                (tf.constant(2, tf.int64), tf.constant(-1, tf.int64),
                                 tf.constant(False)), maximum_iterations=1024)
    return found


def _png_exif_start(head: _Header) -> tf.Tensor:
    """Offset of the eXIf chunk's data (it must precede IDAT), or -1."""

    def body(pos, found, done):
        exif = head.matches(pos + 4, b"eXIf")
        stop = tf.reduce_any(tf.stack([exif, head.matches(pos + 4, b"IDAT"),
                                       head.matches(pos + 4, b"IEND"), pos + 8 > head.size]))
        return pos + 12 + head.big32(pos), tf.where(exif, pos + 8, found), stop

    _, found, _ = tf.while_loop(lambda pos, found, done: tf.logical_not(done), body,
                                (tf.constant(8, tf.int64), tf.constant(-1, tf.int64),
                                 tf.constant(False)), maximum_iterations=1024)
    return found


def _tiff_orientation(head: _Header, start: tf.Tensor) -> tf.Tensor:
    """The orientation SHORT of IFD0 of the TIFF block at `start` (1 when absent or invalid)."""
    little = head.matches(start, b"II")
    valid = tf.logical_and(start >= 0, tf.logical_or(little, head.matches(start, b"MM")))

    def u16(i):
        return tf.where(little, head.at(i) + 256 * head.at(i + 1), head.big16(i))

    def u32(i):
        return tf.where(little, u16(i) + 65536 * u16(i + 2), head.big32(i))

    ifd = start + u32(start + 4)
    count = tf.minimum(u16(ifd), _EXIF_MAX_ENTRIES)
    entries = ifd + 2 + 12 * tf.range(_EXIF_MAX_ENTRIES, dtype=tf.int64)
    hit = tf.logical_and(tf.logical_and(tf.range(_EXIF_MAX_ENTRIES, dtype=tf.int64) < count,
                                        tf.equal(u16(entries), _EXIF_ORIENTATION_TAG)),
                         tf.equal(u16(entries + 2), 3))  # type SHORT
    value = tf.gather(u16(entries + 8), tf.argmax(tf.cast(hit, tf.int32)))
    ok = tf.reduce_all(tf.stack([valid, tf.reduce_any(hit), value >= 1, value <= 8]))
    return tf.where(ok, value, tf.constant(1, tf.int64))


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """EXIF orientation (int64 1..8) of JPEG/PNG bytes, as records.image_format reads it."""
    head = _Header(data)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(data, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)
    start = tf.case([(is_jpeg, lambda: _jpeg_exif_start(head)),
                     (is_png, lambda: _png_exif_start(head))],
                    default=lambda: tf.constant(-1, tf.int64), exclusive=False)
    return _tiff_orientation(head, start)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """[H, W, C] stored with EXIF `orientation` -> upright, as image_io.apply_orientation."""
    branches = [
        lambda: image,
        lambda: image[:, ::-1],
        lambda: image[::-1, ::-1],
        lambda: image[::-1],
        lambda: tf.transpose(image, [1, 0, 2]),
        lambda: tf.image.rot90(image, k=3),  # rot90 turns counter-clockwise: 3 = clockwise
        lambda: tf.image.rot90(image, k=3)[::-1],
        lambda: tf.image.rot90(image, k=1),
    ]
    index = tf.cast(tf.clip_by_value(orientation, 1, 8) - 1, tf.int32)
    return tf.switch_case(index, branches)


def decode_gray(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> [H, W, 1] uint8 grey, like the converter."""

    def decode_16bit() -> tf.Tensor:
        image = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32)
        gray = _to_gray_float(image)
        # Stretch the image's actual range to 0..255: 16-bit X-rays rarely use the full range.
        low, high = tf.reduce_min(gray), tf.reduce_max(gray)
        scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 0.0)
        return (gray - low) * scale

    def decode_jpeg() -> tf.Tensor:
        # decode_image would use libjpeg's INTEGER_FAST DCT; OpenCV (the converter) uses the
        # accurate one, which keeps served pixels within a grey level of the training records.
        image = tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")
        return _to_gray_float(tf.cast(image, tf.float32))

    def decode_other() -> tf.Tensor:
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        return _to_gray_float(tf.cast(image, tf.float32))

    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    gray = tf.case([(_is_16bit_png(data), decode_16bit), (is_jpeg, decode_jpeg)],
                   default=decode_other, exclusive=False)
    gray = tf.cast(tf.clip_by_value(tf.round(gray), 0.0, 255.0), tf.uint8)
    gray = apply_orientation(gray, exif_orientation(data))
    return tf.ensure_shape(gray, [None, None, 1])


def _resize_to(image: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
    """Area averaging when any side shrinks, bilinear for pure enlargement: image_io.resize's rule
    (area averaging is undefined when enlarging). Both use half-pixel centres, as OpenCV does."""
    shrinking = tf.reduce_any(size_hw < tf.shape(image)[:2])
    return tf.cond(shrinking,
                   lambda: tf.image.resize(image, size_hw, method="area"),
                   lambda: tf.image.resize(image, size_hw, method="bilinear"))


def resize_gray(gray: tf.Tensor, size: int, resize_mode: str) -> tf.Tensor:
    """[H, W, 1] uint8 -> [size, size, 1] uint8, stretched or padded centred on black."""
    image = tf.cast(gray, tf.float32)
    if resize_mode == "stretch":
        out = _resize_to(image, tf.constant([size, size]))
    else:
        height = tf.cast(tf.shape(image)[0], tf.float32)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        scale = size / tf.maximum(height, width)
        new_h = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, size)
        new_w = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, size)
        out = _resize_to(image, tf.stack([new_h, new_w]))
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out = tf.pad(out, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]])
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(out, [size, size, 1])


def make_preprocess_fn(image_size: int, channels: int, resize_mode: str = "stretch",
                       intensity: str = "none") -> Callable[[tf.Tensor], tf.Tensor]:
    """Returns fn(image_bytes [N] string) -> images [N, image_size, image_size, channels] uint8."""
    _check(image_size, channels, resize_mode, intensity)

    def one(data: tf.Tensor) -> tf.Tensor:
        # As the converter: normalise the full-size gray image, then resize.
        gray = intensity_ops.normalise(decode_gray(data), intensity)
        image = resize_gray(gray, image_size, resize_mode)
        return tf.tile(image, [1, 1, channels]) if channels == 3 else image

    def preprocess(image_bytes: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(one, image_bytes,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, channels],
                                                           tf.uint8))

    return preprocess


def _check(image_size: int, channels: int, resize_mode: str, intensity: str = "none") -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"image_size must be a positive integer. Received: image_size={image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(
            f"resize_mode must be one of {RESIZE_MODES}, the converter's --resize_mode. "
            f"Received: resize_mode={resize_mode!r}"
        )
    if intensity not in INTENSITY_MODES:
        raise ValueError(
            f"intensity must be one of {INTENSITY_MODES}, the converter's --intensity (the "
            f"manifest's image.intensity). Received: intensity={intensity!r}")


class _Server(tf.Module):
    """Holds the Keras model (so its variables are saved) and the serving function."""

    def __init__(self, model: keras.Model, image_size: int, channels: int, resize_mode: str,
                 intensity: str):
        super().__init__(name="xray_tfdata_server")
        self.model = model
        self._preprocess = make_preprocess_fn(image_size, channels, resize_mode, intensity)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = self._preprocess(image_bytes)
        probabilities = self.model(images, training=False)
        return {OUTPUT_KEY: tf.cast(probabilities, tf.float32)}


def export_serving(model: keras.Model, export_dir: str | os.PathLike, image_size: int,
                   channels: int, resize_mode: str = "stretch",
                   extra_metadata: dict[str, Any] | None = None, intensity: str = "none",
                   class_names: Sequence[str] = DEFAULT_CLASSES) -> str:
    """Writes a SavedModel serving encoded image bytes; returns the export directory.

    The export is written to a temporary sibling and renamed into place, so a crash never leaves a
    half-written export behind; an existing export_dir is replaced.

    Raises:
      ValueError: bad image_size / channels / resize_mode / intensity, or a model input shape
        that does not match [image_size, image_size, channels].
    """
    _check(image_size, channels, resize_mode, intensity)
    width = int(model.outputs[0].shape[-1])
    if width != len(class_names):
        raise ValueError(f"The model has {width} outputs but class_names={list(class_names)} "
                         f"names {len(class_names)}; pass the classes the model was trained on.")
    expected = (image_size, image_size, channels)
    got = tuple(model.inputs[0].shape[1:])
    if got != expected:
        raise ValueError(
            f"The model takes images of shape {got} but the export was asked for {expected}; pass "
            "the image_size and channels the model was built with (see the records' manifest)."
        )
    export_dir = paths.location(export_dir)  # a URL: written locally, then uploaded (files.py)
    with files.atomic_dir(export_dir) as tmp_dir:
        server = _Server(model, image_size, channels, resize_mode, intensity)
        tf.saved_model.save(server, str(tmp_dir), signatures={SIGNATURE: server.serve})
        metadata = {
            "class_names": list(class_names),
            "image_size": image_size,
            "channels": channels,
            "resize_mode": resize_mode,
            "intensity": intensity,
            "model_name": model.name,
            "signature": SIGNATURE,
            "input": INPUT_KEY,
            "output": OUTPUT_KEY,
            **(extra_metadata or {}),
        }
        files.write_json(tmp_dir / METADATA_FILE, metadata, sort_keys=False)
    return str(export_dir)


class ServingModel:
    """A loaded export: `predict(list_of_bytes) -> np.ndarray [N, K]` plus its metadata."""

    def __init__(self, export_dir: str | os.PathLike):
        self.export_dir = str(export_dir)
        self.metadata = read_metadata(export_dir)
        self._loaded = tf.saved_model.load(self.export_dir)
        self.signature = self._loaded.signatures[SIGNATURE]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("class_names", DEFAULT_CLASSES))

    def predict(self, image_bytes: list[bytes]):
        """Encoded images -> float32 probabilities [N, num_classes] (numpy)."""
        result = self.signature(**{INPUT_KEY: tf.constant(image_bytes, tf.string)})
        return result[OUTPUT_KEY].numpy()


def read_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads <export_dir>/xray_tfdata.json (the export's class names, image size, ...)."""
    path = paths.join(export_dir, METADATA_FILE)
    if not paths.join(export_dir, "saved_model.pb").is_file():
        raise ValueError(
            f"{str(export_dir)!r} is not a SavedModel directory (no saved_model.pb); pass the "
            "export directory written by training, e.g. workspace/model/export."
        )
    if not path.is_file():
        return {"class_names": list(DEFAULT_CLASSES)}
    return json.loads(path.read_text())


def load_serving(export_dir: str | os.PathLike) -> ServingModel:
    """Loads an export written by `export_serving`."""
    return ServingModel(export_dir)
