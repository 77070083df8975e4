"""The one tf.Example spec shared by the converter (writer) and the pipeline (reader).

Every key and dtype lives here. The writer builds examples with `make_example`;
the reader parses with `FEATURE_SPEC` (or the lean `TRAINING_KEYS` subset, which
skips the provenance strings the training loop never looks at).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import tensorflow as tf

# Bump when a key, dtype or meaning changes; the pipeline refuses other versions.
FORMAT_VERSION = 1

IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png", "raw")

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
CLASS_TEXT = "image/class/text"
SOURCE_PATH = "image/source/path"  # relative to the converter's data_dir
SOURCE_SHA256 = "image/source/sha256"
SOURCE_WIDTH = "image/source/width"
SOURCE_HEIGHT = "image/source/height"
SOURCE_MODE = "image/source/mode"  # e.g. L, RGB, RGBA, P, I;16
SOURCE_FORMAT = "image/source/format"  # JPEG, PNG or BMP (sniffed from bytes)
SOURCE_BYTES = "image/source/bytes"
AUGMENTATION = "image/augmentation"  # "none" for originals

_BYTES = tf.io.FixedLenFeature([], tf.string)
_INT = tf.io.FixedLenFeature([], tf.int64)

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature] = {
    ENCODED: _BYTES,
    FORMAT: _BYTES,
    HEIGHT: _INT,
    WIDTH: _INT,
    CHANNELS: _INT,
    LABEL: _INT,
    CLASS_TEXT: _BYTES,
    SOURCE_PATH: _BYTES,
    SOURCE_SHA256: _BYTES,
    SOURCE_WIDTH: _INT,
    SOURCE_HEIGHT: _INT,
    SOURCE_MODE: _BYTES,
    SOURCE_FORMAT: _BYTES,
    SOURCE_BYTES: _INT,
    AUGMENTATION: _BYTES,
}

# What the training/eval input path needs; parsing fewer keys is measurably cheaper.
TRAINING_KEYS: tuple[str, ...] = (ENCODED, LABEL)
# Source metadata the shortcut probe in evaluation uses.
METADATA_KEYS: tuple[str, ...] = (
    SOURCE_WIDTH, SOURCE_HEIGHT, SOURCE_MODE, SOURCE_FORMAT, SOURCE_BYTES,
)

INT_KEYS = frozenset(k for k, v in FEATURE_SPEC.items() if v.dtype == tf.int64)


@dataclasses.dataclass(frozen=True)
class ExampleRecord:
    """One converted image with its provenance: everything a tf.Example holds."""

    encoded: bytes
    image_format: str  # one of IMAGE_FORMATS
    height: int
    width: int
    channels: int
    label: int
    class_text: str
    source_path: str
    source_sha256: str
    source_width: int
    source_height: int
    source_mode: str
    source_format: str
    source_bytes: int
    augmentation: str = "none"

    def as_features(self) -> dict[str, bytes | int]:
        return {
            ENCODED: self.encoded,
            FORMAT: self.image_format,
            HEIGHT: self.height,
            WIDTH: self.width,
            CHANNELS: self.channels,
            LABEL: self.label,
            CLASS_TEXT: self.class_text,
            SOURCE_PATH: self.source_path,
            SOURCE_SHA256: self.source_sha256,
            SOURCE_WIDTH: self.source_width,
            SOURCE_HEIGHT: self.source_height,
            SOURCE_MODE: self.source_mode,
            SOURCE_FORMAT: self.source_format,
            SOURCE_BYTES: self.source_bytes,
            AUGMENTATION: self.augmentation,
        }


def make_example(record: ExampleRecord) -> tf.train.Example:
    """Builds the tf.Example for one record, using exactly the keys of FEATURE_SPEC."""
    feature = {}
    for key, value in record.as_features().items():
        if key in INT_KEYS:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize(record: ExampleRecord) -> bytes:
    # deterministic=True: protobuf map order otherwise varies between processes, and shards must
    # be byte-identical across reruns and worker counts.
    return make_example(record).SerializeToString(deterministic=True)


def parse_spec(keys: tuple[str, ...] | None = None) -> Mapping[str, tf.io.FixedLenFeature]:
    """The parse spec for a subset of keys (all keys when None)."""
    if keys is None:
        return dict(FEATURE_SPEC)
    unknown = [k for k in keys if k not in FEATURE_SPEC]
    if unknown:
        raise ValueError(f"Unknown feature keys {unknown}; known: {sorted(FEATURE_SPEC)}.")
    return {k: FEATURE_SPEC[k] for k in keys}
