"""Helpers shared by the test packages (import as `from tests import fixtures`).

conftest.py holds only pytest fixtures and the session's device setup; plain helpers live here so
test modules can import them by name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repo next to a copy of shared/, as the developers' checkout is: repo/../shared.
SHARED_DIR = REPO_ROOT.parent / "shared"
REAL_SAMPLE_DIR = SHARED_DIR / "real_cxr_sample"
REAL_PAEDIATRIC_DIR = SHARED_DIR / "real_cxr_paediatric"

TINY_SIZE = 16
BRIGHTNESS = (50, 130, 210)  # NORMAL, COVID19, PNEUMONIA: a class signal a tiny model learns


def load_tool(name: str) -> ModuleType:
    """Imports `tools/<name>.py` by path: tools/ is not a package (its flags are defined only
    under __main__, so importing two tools in one process does not clash)."""
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_records(records_dir: Path, splits: dict[str, list], *, image_size: int,
                  channels: int = 1, image_format: str = "raw", num_shards: int = 2,
                  compression: str = "", **manifest_overrides) -> Path:
    """Writes tiny records through the real shard writer and manifest code.

    `splits` maps a split name to its `features.ExampleRecord`s; example i goes to shard
    i % num_shards. Returns `records_dir`, holding shards and a dataset_info.json in the schema
    the converter writes (counts per class computed from the records).
    """
    from xray_tfdata import labels
    from xray_tfdata.records import features, manifest, shard_writer

    records_dir.mkdir(parents=True, exist_ok=True)
    info_splits = {}
    for split, records in splits.items():
        serialized = [features.serialize(r) for r in records]
        shards = [
            shard_writer.write_shard(
                records_dir / shard_writer.shard_name(split, i, num_shards),
                serialized[i::num_shards], compression)
            for i in range(num_shards)
        ]
        per_class = {name: sum(r.label == k for r in records)
                     for k, name in enumerate(labels.CLASS_NAMES)}
        info_splits[split] = {"num_examples": len(records), "shards": shards,
                              "per_class": per_class}
        names = sorted({r.source for r in records})
        if names not in ([], [""]):  # as the converter: only for named collections
            info_splits[split]["per_source"] = {
                name: {cls: sum(r.label == k and r.source == name for r in records)
                       for k, cls in enumerate(labels.CLASS_NAMES)} for name in names}
    info = {
        "format_version": features.FORMAT_VERSION, "label_map": dict(labels.LABEL_MAP),
        "image": {"size": image_size, "channels": channels, "format": image_format,
                  "resize_mode": "stretch"},
        "compression": compression, "splits": info_splits, "args": {}, "rejected": [],
        "duplicates": {},
    }
    info.update(manifest_overrides)
    manifest.write_manifest(records_dir, info)
    return records_dir


def example(image, *, label: int, image_format: str = "raw", encoded: bytes | None = None,
            source_path: str = "x.png", **source):
    """An ExampleRecord for `image` (H x W x C or H x W uint8) with plausible source metadata."""
    from xray_tfdata import labels
    from xray_tfdata.records import features

    image = np.asarray(image)
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    fields = dict(source_sha256="0" * 64, source_width=width, source_height=height,
                  source_mode="L", source_format="PNG", source_bytes=image.size)
    fields.update(source)
    return features.ExampleRecord(
        encoded=image.tobytes() if encoded is None else encoded, image_format=image_format,
        height=height, width=width, channels=channels, label=label,
        class_text=labels.CLASS_NAMES[label], source_path=source_path, **fields)


def xray_records(records_dir: Path, per_class: dict[str, int], image_size: int = 64,
                 num_shards: int = 2, seed: int = 0) -> Path:
    """Writes a small records dir: `per_class[split]` images of each class, raw uint8 pixels."""
    from xray_tfdata import labels
    from xray_tfdata.records import synthetic

    rng = np.random.default_rng(seed)
    splits = {
        split: [example(synthetic.render_xray(label, (image_size, image_size), rng),
                                 label=label, source_path=f"{split}/{k}.png")
                for k, label in enumerate(label for _ in range(n)
                                          for label in range(labels.NUM_CLASSES))]
        for split, n in per_class.items()
    }
    return write_records(records_dir, splits, image_size=image_size,
                                  num_shards=num_shards)


def _brightness_image(label: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 18.0, (TINY_SIZE, TINY_SIZE, 1))
    return np.clip(BRIGHTNESS[label] + noise, 0, 255).astype(np.uint8)


def source_metadata(label: int, rng: np.random.Generator, shortcut_sources: bool) -> dict:
    """Source metadata; with shortcut_sources COVID19 comes from 'adult' (large RGB PNG) sources."""
    if shortcut_sources:
        adult = label == 1
        return dict(
            source_width=int(rng.integers(1800, 2200) if adult else rng.integers(900, 1300)),
            source_height=int(rng.integers(1600, 2000) if adult else rng.integers(700, 1000)),
            source_mode="RGB" if adult else "L", source_format="PNG" if adult else "JPEG",
            source_bytes=int(rng.integers(2_000_000, 4_000_000) if adult
                             else rng.integers(100_000, 300_000)))
    return dict(source_width=int(rng.integers(800, 2000)),
                source_height=int(rng.integers(800, 2000)),
                source_mode=str(rng.choice(["L", "RGB"])),
                source_format=str(rng.choice(["JPEG", "PNG"])),
                source_bytes=int(rng.integers(100_000, 3_000_000)))


def brightness_records(records_dir: Path, per_class: dict[str, int], *, shortcut_sources: bool = False,
                  seed: int = 0) -> Path:
    """Tiny PNG records (2 shards per split) and a manifest in the dataset_info.json schema."""
    import tensorflow as tf

    from xray_tfdata import labels

    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in per_class.items():
        items = [(label, i) for label in range(labels.NUM_CLASSES) for i in range(n)]
        records = []
        for k in rng.permutation(len(items)):
            label, i = items[k]
            image = _brightness_image(label, rng)
            records.append(example(
                image, label=label, image_format="png",
                encoded=tf.io.encode_png(image).numpy(), source_path=f"{split}/{label}/{i}.png",
                source_sha256=f"{split}{label}{i}", **source_metadata(label, rng, shortcut_sources)))
        splits[split] = records
    return write_records(records_dir, splits, image_size=TINY_SIZE, image_format="png")


def tiny_model_file(path: Path) -> Path:
    """uint8 input -> mean brightness -> 'embedding' (Dense 4) -> 'probabilities' (Dense 3).

    Weights are set by hand instead of trained (training costs seconds on a shared CPU): the head
    scores class k by -(m - c_k)^2 with m the mean brightness and c_k the class's mean, whose
    m^2 term is the same for every class, so it is linear in the embedding [1, m, ...].
    """
    import keras

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 1), dtype="uint8", name="image")
    h = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    embedding = keras.layers.Dense(4, activation="relu", name="embedding")
    h = embedding(h)
    head = keras.layers.Dense(3, activation="softmax", name="probabilities")
    outputs = head(h)
    model = keras.Model(inputs, outputs, name="tiny")
    # Units: 1, m, relu(m - 0.35), relu(0.65 - m).
    embedding.set_weights([np.array([[0.0, 1.0, 1.0, -1.0]], np.float32),
                           np.array([1.0, 0.0, -0.35, 0.65], np.float32)])
    centres = np.array(BRIGHTNESS, np.float32) / 255.0
    scale = 50.0
    kernel = np.zeros((4, 3), np.float32)
    kernel[0] = -scale * centres**2
    kernel[1] = 2 * scale * centres
    head.set_weights([kernel, np.zeros(3, np.float32)])
    model.save(path)
    return path


def tiny_export(export_dir: Path) -> Path:
    """`tiny_model_file`'s model exported through the real `export.export_serving` (16 px grey,
    stretch): a SavedModel whose answer follows the image's mean brightness (BRIGHTNESS)."""
    import keras

    from xray_tfdata.serving import export

    export_dir = Path(export_dir)
    keras_file = tiny_model_file(export_dir.parent / f"{export_dir.name}.keras")
    model = keras.models.load_model(keras_file, compile=False)
    export.export_serving(model, export_dir, TINY_SIZE, 1)
    return export_dir


def encode(image, image_format: str, quality: int = 95) -> bytes:
    """`image` (H x W x C uint8) as the bytes a record holds for `image_format` (jpeg/png/raw)."""
    import tensorflow as tf

    if image_format == "jpeg":
        return tf.io.encode_jpeg(image, quality=quality).numpy()
    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    return np.asarray(image).tobytes()


def crash_after(n: int, real, calls: list, message: str = "simulated crash"):
    """A stand-in for records.decode_pass.process_source that records each task's key in `calls`
    and raises KeyboardInterrupt (as a kill would stop the run) after `n` sources."""
    def wrapped(task, settings):
        calls.append(task.key)
        if len(calls) > n:
            raise KeyboardInterrupt(message)
        return real(task, settings)

    return wrapped
