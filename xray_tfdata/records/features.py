"""The one tf.Example spec shared by the converter (writer) and the pipeline (reader).

Every key and dtype lives here. The writer builds examples with `make_example`;
the reader parses with `FEATURE_SPEC` (or the lean `TRAINING_KEYS` subset, which
skips the provenance strings the training loop never looks at).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import tensorflow as tf

from xray_tfdata.records.resize import ENCODE_FORMATS

# Bump when a key, dtype or meaning changes; the pipeline refuses other versions.
FORMAT_VERSION = 1

IMAGE_FORMATS = ENCODE_FORMATS  # what resize.encode writes: its home is there

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
SOURCE_FORMAT = "image/source/format"  # JPEG, PNG, BMP or DICOM (sniffed from bytes)
SOURCE_BYTES = "image/source/bytes"
AUGMENTATION = "image/augmentation"  # "none" for originals
# Optional keys: written only when non-empty, parsed with "" as default. Records of a plain
# single-collection build therefore stay byte-identical to those written before these existed.
SOURCE_NAME = "image/source/collection"  # the collection's name (--data_dir=name=path), or ""
PATIENT_HASH = "image/patient/hash"  # keyed HMAC-SHA256 of the patient id (never the raw id)
SOURCE_METADATA = "image/source/metadata"  # JSON object of the labels CSV's other columns
# Technical DICOM tags (records/dicom.py TECHNICAL_TAGS), by tag name. Optional keys: written
# only when the source had the tag, read back as "" otherwise, so records of JPEG/PNG/BMP
# sources are byte-identical to those of FORMAT_VERSION 1 writers and old records still parse.
DICOM_TAG_KEYS: dict[str, str] = {
    "Modality": "image/source/dicom/modality",
    "ViewPosition": "image/source/dicom/view_position",
    "PhotometricInterpretation": "image/source/dicom/photometric",
    "BitsStored": "image/source/dicom/bits_stored",
    "Manufacturer": "image/source/dicom/manufacturer",
    "PixelSpacing": "image/source/dicom/pixel_spacing",  # "row\\column" mm, DICOM's notation
}

_BYTES = tf.io.FixedLenFeature([], tf.string)
_INT = tf.io.FixedLenFeature([], tf.int64)
_OPTIONAL_BYTES = tf.io.FixedLenFeature([], tf.string, default_value="")

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
    SOURCE_NAME: _OPTIONAL_BYTES,
    PATIENT_HASH: _OPTIONAL_BYTES,
    SOURCE_METADATA: _OPTIONAL_BYTES,
    **{key: _OPTIONAL_BYTES for key in DICOM_TAG_KEYS.values()},
}
# Keys a record may omit (their spec has a default); every other key is always written.
OPTIONAL_KEYS = frozenset((SOURCE_NAME, PATIENT_HASH, SOURCE_METADATA, *DICOM_TAG_KEYS.values()))

# What the training/eval input path needs; parsing fewer keys is measurably cheaper.
TRAINING_KEYS: tuple[str, ...] = (ENCODED, LABEL)
# Source metadata the shortcut probe in evaluation uses.
METADATA_KEYS: tuple[str, ...] = (
    SOURCE_WIDTH, SOURCE_HEIGHT, SOURCE_MODE, SOURCE_FORMAT, SOURCE_BYTES,
)
# Technical DICOM tags; "" for sources that are not DICOM (or lack the tag).
DICOM_METADATA_KEYS: tuple[str, ...] = tuple(DICOM_TAG_KEYS.values())

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
    source: str = ""  # collection name; "" for a single unnamed --data_dir
    patient_hash: str = ""  # hex HMAC-SHA256 of the patient id; "" when there is none
    metadata: str = ""  # JSON object (sorted keys) of extra labels-CSV columns; "" when none
    # (name, value) pairs or a mapping of DICOM_TAG_KEYS names (SourceInfo.tags); only those
    # allow-listed names can be written, which keeps anything else a source carried out.
    tags: tuple[tuple[str, str], ...] | Mapping[str, str] = ()

    def as_features(self) -> dict[str, bytes | int]:
        """Every feature to write; optional keys only when non-empty (see OPTIONAL_KEYS)."""
        tags = dict(self.tags)
        unknown = sorted(set(tags) - set(DICOM_TAG_KEYS))
        if unknown:
            raise ValueError(f"Unknown source tags {unknown}; allowed: {sorted(DICOM_TAG_KEYS)}.")
        values = {
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
            SOURCE_NAME: self.source,
            PATIENT_HASH: self.patient_hash,
            SOURCE_METADATA: self.metadata,
            **{DICOM_TAG_KEYS[name]: value for name, value in sorted(tags.items())},
        }
        return {k: v for k, v in values.items() if k not in OPTIONAL_KEYS or v}


def make_example(record: ExampleRecord) -> tf.train.Example:
    """Builds the tf.Example for one record: every key of FEATURE_SPEC but the empty optional ones."""
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
