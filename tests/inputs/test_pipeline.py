"""Records -> batches: the input pipeline on tiny hand-written shards (no converter needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import collection_select, pipeline
from xray_tfdata.records import manifest
from xray_tfdata.training import distribute

SIZE = 16
STEP = 6  # pixel value = example id * STEP: survives JPEG on flat images, fits in uint8 for 40 ids


def write_records(root: Path, *, image_format: str = "png", n: int = 40, shards: int = 4,
                  channels: int = 1, split: str = "train", compression: str = "",
                  **overrides) -> Path:
    """n flat images whose pixel value encodes the example id; label = id % 3; ids round-robin
    over shards. Returns the records dir."""
    records = []
    for i in range(n):
        image = np.full((SIZE, SIZE, channels), i * STEP, np.uint8)
        records.append(fixtures.example(
            image, label=i % 3, image_format=image_format,
            encoded=fixtures.encode(image, image_format),
            source_path=f"{split}/x/{i}.png", source_sha256=f"{i:064x}", source_width=500 + i,
            source_height=400, source_bytes=1000 + i))
    return fixtures.write_records(root, {split: records}, image_size=SIZE, channels=channels,
                                  image_format=image_format, num_shards=shards,
                                  compression=compression, **overrides)


def ids_of(images) -> list[int]:
    images = np.asarray(images, dtype=np.float32)
    return [int(round(float(x.mean()) / STEP)) for x in images]


def eval_config(**kw) -> pipeline.InputConfig:
    return pipeline.InputConfig(**{"global_batch_size": 8, "image_size": SIZE, "training": False,
                                   "cache": "none", **kw})


def collect(ds, limit: int | None = None) -> tuple[list[int], list[int]]:
    ids, labs = [], []
    for step, (images, labels_) in enumerate(ds):
        if limit is not None and step >= limit:
            break
        ids += ids_of(images)
        labs += labels_.numpy().tolist()
    return ids, labs


@pytest.mark.parametrize("image_format", ["jpeg", "png", "raw"])
def test_eval_round_trip_every_example_once(tmp_path, image_format):
    # GZIP on one format: the pipeline takes the compression from the manifest.
    records = write_records(tmp_path / "r", image_format=image_format, n=37, channels=3,
                            compression="GZIP" if image_format == "png" else "")
    ds = pipeline.build_dataset(records, "train", eval_config(channels=3))
    shapes, ids, labs = [], [], []
    for images, labels_ in ds:
        assert images.dtype == tf.uint8 and labels_.dtype == tf.int32
        shapes.append(tuple(images.shape))
        ids += ids_of(images)
        labs += labels_.numpy().tolist()
    assert shapes[:4] == [(8, SIZE, SIZE, 3)] * 4 and shapes[-1] == (5, SIZE, SIZE, 3)
    assert sorted(ids) == list(range(37))
    assert labs == [i % 3 for i in ids]


def test_training_batches_static_full_infinite_and_output_dtype(tmp_path):
    records = write_records(tmp_path / "r", n=20, shards=2)
    config = pipeline.InputConfig(global_batch_size=6, image_size=SIZE, output_dtype="float16",
                                  augment=False, deterministic=True)
    ds = pipeline.build_dataset(records, "train", config)
    assert ds.element_spec[0].shape.as_list() == [6, SIZE, SIZE, 1]
    assert ds.element_spec[0].dtype == tf.float16
    ids, _ = collect(ds, limit=10)  # 60 examples from a 20-example split: it repeats
    assert len(ids) == 60
    # Shuffle before repeat: each full epoch (20 examples) is a permutation.
    assert ids[:20] != list(range(20))  # shuffled
    for epoch in range(3):
        assert sorted(ids[20 * epoch:20 * (epoch + 1)]) == list(range(20))
    assert pipeline.steps_per_epoch(records, "train", 6) == 3


def test_deterministic_same_seed_same_order_and_pixels(tmp_path):
    records = write_records(tmp_path / "r", n=24)
    config = pipeline.InputConfig(global_batch_size=4, image_size=SIZE, deterministic=True,
                                  seed=3, shuffle_buffer=64)

    def first_batches(cfg):
        return [b[0].numpy() for b in pipeline.build_dataset(records, "train", cfg).take(6)]

    run1, run2 = first_batches(config), first_batches(config)
    for a, b in zip(run1, run2):
        np.testing.assert_array_equal(a, b)
    other = first_batches(pipeline.InputConfig(global_batch_size=4, image_size=SIZE,
                                               deterministic=True, seed=4, shuffle_buffer=64))
    assert any(not np.array_equal(a, b) for a, b in zip(run1, other))


def test_augmentation_changes_pixels_keeps_shape_and_dtype(tmp_path):
    records = write_records(tmp_path / "r", n=16, shards=2)
    # Flat images only show photometric jitter, which is what must differ here.
    common = dict(global_batch_size=8, image_size=SIZE, deterministic=True, seed=1)
    plain = next(iter(pipeline.build_dataset(
        records, "train", pipeline.InputConfig(augment=False, **common))))[0]
    augmented = next(iter(pipeline.build_dataset(
        records, "train", pipeline.InputConfig(augment=True, **common))))[0]
    assert augmented.shape == plain.shape and augmented.dtype == tf.uint8
    assert not np.array_equal(plain.numpy(), augmented.numpy())


def test_cache_in_memory_and_on_disk(tmp_path):
    records = write_records(tmp_path / "r", n=12, shards=3)
    prefix = tmp_path / "cache" / "train_cache"
    for cache in ("memory", str(prefix)):
        config = pipeline.InputConfig(global_batch_size=4, image_size=SIZE, cache=cache,
                                      augment=False, deterministic=True)
        ids, _ = collect(pipeline.build_dataset(records, "train", config), limit=6)
        assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    written = sorted(p.name for p in prefix.parent.iterdir())
    assert any(name.startswith("train_cache.train.") and name.endswith(".index")
               for name in written), written
    # The on-disk cache now serves the images: a second pipeline reads them back from it.
    ids, _ = collect(pipeline.build_dataset(
        records, "train", eval_config(cache=str(prefix), global_batch_size=12)))
    assert sorted(ids) == list(range(12))


@pytest.mark.parametrize("shards", [4, 1])  # file-level, then element-level sharding
def test_sharding_two_pipelines_covers_split_without_overlap(tmp_path, shards):
    records = write_records(tmp_path / "r", n=30, shards=shards)
    parts = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        ds = pipeline.build_dataset(records, "train", eval_config(global_batch_size=8), ctx)
        ids, _ = collect(ds)
        assert max(len(b[1]) for b in ds) == 4  # per-replica batch = 8 / 2
        parts.append(set(ids))
    assert parts[0].isdisjoint(parts[1])
    assert parts[0] | parts[1] == set(range(30))


@pytest.mark.parametrize("change, expected", [
    ({"format_version": 99}, "format_version=99"),
    # Any class set is readable (issue 20); ids must still be 0..K-1, the records' labels.
    ({"label_map": {"NORMAL": 0, "PNEUMONIA": 2}}, "label_map="),
])
def test_manifest_mismatch_refused(tmp_path, change, expected):
    records = write_records(tmp_path / "r", n=4, shards=1, **change)
    with pytest.raises(manifest.ManifestError, match=expected):
        pipeline.build_dataset(records, "train", eval_config())


def test_size_and_channel_mismatch_refused_naming_both(tmp_path):
    records = write_records(tmp_path / "r", n=4, shards=1)
    with pytest.raises(manifest.ManifestError, match=r"16x16 images.*image_size=32"):
        pipeline.build_dataset(records, "train", eval_config(image_size=32))
    with pytest.raises(manifest.ManifestError, match=r"1-channel.*channels=3"):
        pipeline.dataset_fn(records, "train", eval_config(channels=3))
    with pytest.raises(manifest.ManifestError, match=r"'nope'.*\['train'\]"):
        pipeline.build_dataset(records, "nope", eval_config())


def _corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shard_names_the_shard_or_is_skipped_and_counted(tmp_path):
    records = write_records(tmp_path / "r", n=40, shards=4, image_format="raw")
    bad = records / "train-00002-of-00004.tfrecord"
    _corrupt_middle(bad)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Corrupt or truncated TFRecord shard .*train-00002-of-00004.*"
                             r"Rerun the build_records command.*from Python, read with "
                             r"InputConfig\(skip_corrupt=True\)"):
        collect(pipeline.build_dataset(records, "train", eval_config()))
    before = pipeline.skipped_records().get(str(bad), 0)
    ids, _ = collect(pipeline.build_dataset(records, "train", eval_config(skip_corrupt=True)))
    skipped = pipeline.skipped_records()[str(bad)] - before
    assert 0 < skipped < 10 and len(ids) == 40 - skipped
    assert len(set(ids)) == len(ids)
    assert set(range(40)) - set(ids) <= set(range(2, 40, 4))  # only the bad shard lost records


def test_read_metadata_aligns_with_deterministic_eval_order(tmp_path):
    records = write_records(tmp_path / "r", n=21, shards=3)
    meta = pipeline.read_metadata(records, "train")
    ids, labs = collect(pipeline.build_dataset(records, "train", eval_config(deterministic=True)))
    assert meta["label"].dtype == np.int32 and meta["label"].tolist() == labs
    assert meta["source_width"].tolist() == [500 + i for i in ids]
    assert meta["source_path"].tolist() == [f"train/x/{i}.png" for i in ids]
    assert set(meta["source_mode"]) == {"L"} and meta["source_bytes"].dtype == np.int64


def test_mirrored_strategy_two_replicas_per_replica_batches(tmp_path):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/conftest.py failed to set up 2 logical CPU devices"
    records = write_records(tmp_path / "r", n=24, shards=4)
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    config = pipeline.InputConfig(global_batch_size=8, image_size=SIZE, deterministic=True)
    dist = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(records, "train", config))
    iterator = iter(dist)
    for _ in range(3):
        images, labels_ = next(iterator)
        local_images = strategy.experimental_local_results(images)
        local_labels = strategy.experimental_local_results(labels_)
        assert [tuple(x.shape) for x in local_images] == [(4, SIZE, SIZE, 1)] * 2
        assert all(x.dtype == tf.int32 and x.shape == (4,) for x in local_labels)
    # Evaluation: one pass, every example exactly once across the two replicas.
    seen = []
    eval_dist = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(records, "train", eval_config(global_batch_size=8)))
    for images, _ in eval_dist:
        for local in strategy.experimental_local_results(images):
            seen += ids_of(local)
    assert sorted(seen) == list(range(24))


@pytest.mark.parametrize("field, value, match", [
    ("global_batch_size", 0, "global_batch_size=0"),
    ("channels", 2, "channels=2"),
    ("cache", "", "cache=''"),
    ("output_dtype", "int8", "output_dtype='int8'"),
    ("seed", -1, "seed=-1"),
])
def test_config_validation_names_field_and_value(field, value, match):
    kwargs = {"global_batch_size": 8, "image_size": SIZE, field: value}
    with pytest.raises(ValueError, match=match):
        pipeline.InputConfig(**kwargs)


def test_steps_per_epoch_rejects_batch_larger_than_split(tmp_path):
    records = write_records(tmp_path / "r", n=10, shards=2)
    assert pipeline.steps_per_epoch(records, "train", 3) == 3
    with pytest.raises(ValueError, match=r"in \[1, 10\].*global_batch_size=11"):
        pipeline.steps_per_epoch(records, "train", 11)


def test_missing_shard_file_is_named(tmp_path):
    records = write_records(tmp_path / "r", n=8, shards=2)
    os.remove(records / "train-00001-of-00002.tfrecord")
    with pytest.raises(manifest.ManifestError, match="train-00001-of-00002"):
        pipeline.build_dataset(records, "train", eval_config())


# --- --collections / --exclude_collections ------------------------------------------------------
# Collection -> examples per class (NORMAL, COVID19, PNEUMONIA) of the train split.
_COLLECTIONS = {"kaggle": (7, 3, 5), "nih": (4, 0, 6), "local": (2, 5, 0)}


@pytest.fixture(scope="module")
def by_collection(tmp_path_factory):
    """Pixel [0, 0] = collection index, so what the pipeline yields can be traced back."""
    records = []
    for index, (name, counts) in enumerate(_COLLECTIONS.items()):
        for label, n in enumerate(counts):
            for k in range(n):
                image = np.full((8, 8, 1), k, np.uint8)
                image[0, 0, 0] = index
                records.append(fixtures.example(image, label=label, source=name,
                                                source_path=f"{name}/{label}/{k}.png"))
    order = np.random.default_rng(2).permutation(len(records))
    return fixtures.write_records(tmp_path_factory.mktemp("by_collection"),
                                  {"train": [records[i] for i in order]}, image_size=8,
                                  num_shards=3)


def _eval_pass(records_dir, **kw):
    config = pipeline.InputConfig(global_batch_size=5, image_size=8, training=False,
                                  augment=False, deterministic=True, **kw)
    images, labels_ = [], []
    for x, y in pipeline.build_dataset(records_dir, "train", config):
        images.append(x.numpy()[:, 0, 0, 0])
        labels_.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels_)


@pytest.mark.parametrize("cache", ["memory", "file"])
def test_collection_filters_give_exact_counts(by_collection, tmp_path, cache):
    """Filtered after the cache: the yielded examples are exactly the selected collections', and
    the manifest-derived counts (steps per epoch, class weights) equal what is read."""
    info = manifest.read_info(by_collection)
    names = list(_COLLECTIONS)
    cache_value = str(tmp_path / "c") if cache == "file" else "memory"
    for include, exclude in [(("kaggle", "local"), ()), ((), ("kaggle",)), (("nih",), ()),
                             ((), ())]:
        kept = [n for n in names if (not include or n in include) and n not in exclude]
        collection, y = _eval_pass(by_collection, collections=include,
                                   exclude_collections=exclude, cache=cache_value)
        assert sorted({names[i] for i in collection}) == sorted(kept)
        want = np.sum([_COLLECTIONS[n] for n in kept], axis=0).tolist()
        assert np.bincount(y, minlength=3).tolist() == want
        assert collection_select.class_counts(info, "train", include, exclude) == want
        assert collection_select.num_examples(info, "train", include, exclude) == sum(want)
        meta = pipeline.read_metadata(by_collection, "train", include or tuple(
            n for n in names if n not in exclude))
        np.testing.assert_array_equal(meta["label"], y)  # lines up with the predictions
        np.testing.assert_array_equal(meta["source"], [names[i] for i in collection])


def test_collection_filter_refuses_unknown_names(by_collection, tmp_path):
    with pytest.raises(ConfigError, match=r"collections.*'kaggle', 'local', 'nih'"):
        _eval_pass(by_collection, collections=("chexpert",))
    with pytest.raises(ConfigError, match="exclude_collections"):
        _eval_pass(by_collection, exclude_collections=("kaggle", "nih", "local"))
    # Records of one unnamed folder have no collections to choose from.
    plain = fixtures.write_records(tmp_path / "plain", {"train": [fixtures.example(
        np.zeros((8, 8, 1), np.uint8), label=0)]}, image_size=8, num_shards=1)
    with pytest.raises(ConfigError, match=r"collections of these records: \[''\]"):
        _eval_pass(plain, collections=("kaggle",))
    assert pipeline.InputConfig(global_batch_size=1, image_size=8,
                                collections="a, b,,a").collections == ("a", "b")
