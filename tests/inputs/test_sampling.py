"""inputs/sampling.py through the pipeline: class mix of balanced batches, determinism, sharding,
caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.inputs import pipeline

SIZE = 16
COUNTS = (30, 3, 9)  # NORMAL : COVID19 : PNEUMONIA = 10 : 1 : 3


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """Train records with COUNTS per class; pixel value encodes the example id (label*100 + k)."""
    records = []
    for label, n in enumerate(COUNTS):
        for k in range(n):
            image = np.full((SIZE, SIZE, 1), label * 60 + k, np.uint8)
            records.append(fixtures.example(image, label=label, source_path=f"{label}/{k}.png"))
    order = np.random.default_rng(0).permutation(len(records))
    return fixtures.write_records(tmp_path_factory.mktemp("records"),
                                  {"train": [records[i] for i in order]}, image_size=SIZE,
                                  num_shards=4)


def _config(**kw) -> pipeline.InputConfig:
    args = dict(global_batch_size=12, image_size=SIZE, training=True, augment=False,
                shuffle_buffer=64, deterministic=True, seed=3, sampling="balanced",
                cache="memory")
    args.update(kw)
    return pipeline.InputConfig(**args)


def _labels(ds, batches: int) -> tuple[np.ndarray, np.ndarray]:
    ys, ids = [], []
    for images, y in ds.take(batches):
        ys.append(y.numpy())
        ids.append(images.numpy()[:, 0, 0, 0])
    return np.concatenate(ys), np.concatenate(ids)


def test_balanced_batches_hold_every_class_equally(imbalanced):
    y, ids = _labels(pipeline.build_dataset(imbalanced, "train", _config()), 100)
    share = np.bincount(y, minlength=3) / y.size
    # 1200 draws at 1/3 each: a 4-sigma band is +-0.054.
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.054)
    # The natural stream keeps the 10 : 1 : 3 mix: what balancing changes.
    natural, _ = _labels(pipeline.build_dataset(imbalanced, "train",
                                                _config(sampling="natural")), 100)
    assert np.bincount(natural, minlength=3)[1] / natural.size < 0.12
    # Every COVID19 image is drawn (they repeat), never an image of another class as COVID19.
    assert set(ids[y == 1].tolist()) == {60, 61, 62}
    assert set((ids[y == 0]).tolist()) <= set(range(30))


def test_balanced_sampling_is_deterministic_with_the_seed_and_cache_mode(imbalanced, tmp_path):
    first = _labels(pipeline.build_dataset(imbalanced, "train", _config()), 20)
    again = _labels(pipeline.build_dataset(imbalanced, "train", _config()), 20)
    np.testing.assert_array_equal(first[1], again[1])
    # Every cache mode is balanced and deterministic. (Their orders differ from each other, as
    # in natural sampling: a cache freezes the first pass's file order.)
    for cache in ("none", str(tmp_path / "cache")):
        runs = [_labels(pipeline.build_dataset(imbalanced, "train", _config(cache=cache)), 50)
                for _ in range(2)]
        np.testing.assert_array_equal(runs[0][1], runs[1][1])
        np.testing.assert_allclose(np.bincount(runs[0][0], minlength=3) / runs[0][0].size,
                                   [1 / 3] * 3, atol=0.08)
    other = _labels(pipeline.build_dataset(imbalanced, "train", _config(seed=4)), 20)
    assert not np.array_equal(first[1], other[1])


def test_balanced_under_input_context_sharding(imbalanced):
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        ds = pipeline.build_dataset(imbalanced, "train", _config(), context)
        y, ids = _labels(ds, 100)
        assert y.size == 100 * 6  # per-replica batches of 12 / 2
        np.testing.assert_allclose(np.bincount(y, minlength=3) / y.size, [1 / 3] * 3, atol=0.08)
        seen.append(set(ids.tolist()))
    # Files are split between the pipelines: no image is read by both.
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == sum(COUNTS)


def test_a_class_missing_from_a_shard_does_not_stall(tmp_path):
    records = [fixtures.example(np.full((SIZE, SIZE, 1), k, np.uint8), label=k % 2)
               for k in range(10)]  # no PNEUMONIA at all
    root = fixtures.write_records(tmp_path / "r", {"train": records}, image_size=SIZE,
                                  num_shards=2)
    y, _ = _labels(pipeline.build_dataset(root, "train", _config(global_batch_size=4)), 50)
    np.testing.assert_allclose(np.bincount(y, minlength=3) / y.size, [0.5, 0.5, 0.0], atol=0.1)


def test_unknown_sampling_mode_is_rejected():
    with pytest.raises(ValueError, match="sampling must be one of natural, balanced"):
        _config(sampling="oversample")


# --- balanced_collections: classes uniform, collections uniform within a class ------------------
# NORMAL in a, b, c; COVID19 in a, b; PNEUMONIA in a, c, with very unequal counts.
MIX = {"a": (20, 2, 6), "b": (4, 10, 0), "c": (6, 0, 3)}


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """Pixel [0, 0] = collection index, pixel [0, 1] = label, pixel [0, 2] = example index."""
    records = []
    for index, (name, counts) in enumerate(MIX.items()):
        for label, n in enumerate(counts):
            for k in range(n):
                image = np.zeros((SIZE, SIZE, 1), np.uint8)
                image[0, :3, 0] = (index, label, k)
                records.append(fixtures.example(image, label=label, source=name,
                                                source_path=f"{name}/{label}/{k}.png"))
    order = np.random.default_rng(1).permutation(len(records))
    return fixtures.write_records(tmp_path_factory.mktemp("collections"),
                                  {"train": [records[i] for i in order]}, image_size=SIZE,
                                  num_shards=3)


def _mix(ds, batches: int) -> np.ndarray:
    """Draws per (label, collection index) over `batches` batches."""
    counts = np.zeros((3, 3), np.int64)
    for images, y in ds.take(batches):
        pixels = images.numpy()[:, 0, :3, 0]
        assert (pixels[:, 1] == y.numpy()).all()  # the image is of the label it came with
        np.add.at(counts, (pixels[:, 1], pixels[:, 0]), 1)
    return counts


def test_balanced_collections_mix_over_many_batches(collections):
    config = _config(sampling="balanced_collections", global_batch_size=30)
    counts = _mix(pipeline.build_dataset(collections, "train", config), 120)
    share = counts / counts.sum()
    # 3600 seeded draws; expected: NORMAL a/b/c 1/9 each, COVID19 a/b and PNEUMONIA a/c 1/6 each.
    expected = np.array([[1 / 9, 1 / 9, 1 / 9], [1 / 6, 1 / 6, 0], [1 / 6, 0, 1 / 6]])
    # 4 sigma of a 1/6 share over 3600 draws is 0.025.
    np.testing.assert_allclose(share, expected, atol=0.025)
    assert counts[1, 2] == 0 and counts[2, 1] == 0  # no pair that does not exist
    # Plain class balance keeps each class's own collection mix (a's 20 NORMAL dominate).
    plain = _mix(pipeline.build_dataset(collections, "train", _config(global_batch_size=30)), 120)
    assert plain[0, 0] / plain[0].sum() > 0.55
    # Same seed, same draws.
    again = _mix(pipeline.build_dataset(collections, "train", config), 120)
    np.testing.assert_array_equal(counts, again)


def test_balanced_collections_with_a_collection_filter(collections):
    config = _config(sampling="balanced_collections", global_batch_size=30,
                     exclude_collections=("b",))
    counts = _mix(pipeline.build_dataset(collections, "train", config), 60)
    assert counts[:, 1].sum() == 0  # b is never drawn
    # COVID19 is left in a only; NORMAL in a and c; PNEUMONIA in a and c.
    share = counts / counts.sum()
    expected = np.array([[1 / 6, 0, 1 / 6], [1 / 3, 0, 0], [1 / 6, 0, 1 / 6]])
    np.testing.assert_allclose(share, expected, atol=0.04)


# --- label_collections: the collection adversary's targets ride along with every sampler -------
@pytest.mark.parametrize("sampling", ["natural", "balanced", "balanced_collections"])
@pytest.mark.parametrize("exclude", [(), ("b",)])
def test_label_collections_yield_ids_of_the_sorted_selected_names(collections, sampling,
                                                                  exclude):
    """Ids index collection_select.collection_ids (sorted, selected): with b excluded, c is 1."""
    ids_of = {"a": 0, "b": 1, "c": 2} if not exclude else {"a": 0, "c": 1}
    index_to_name = dict(enumerate(MIX))  # pixel [0, 0] holds the index into MIX
    config = _config(sampling=sampling, global_batch_size=10, label_collections=True,
                     exclude_collections=exclude, output_dtype="float32")
    seen = set()
    for images, y, ids in pipeline.build_dataset(collections, "train", config).take(12):
        assert ids.dtype == tf.int32 and images.dtype == tf.float32
        pixels = images.numpy()[:, 0, :2, 0].astype(int)
        np.testing.assert_array_equal(pixels[:, 1], y.numpy())
        want = [ids_of[index_to_name[i]] for i in pixels[:, 0]]
        np.testing.assert_array_equal(ids.numpy(), want)
        seen.update(want)
    assert seen == set(ids_of.values())


def test_label_collections_in_evaluation_and_with_host_augmentation(collections):
    evaluation = _config(training=False, label_collections=True, sampling="natural")
    elements = list(pipeline.build_dataset(collections, "train", evaluation))
    ids = np.concatenate([e[2].numpy() for e in elements])
    index = np.concatenate([e[0].numpy()[:, 0, 0, 0] for e in elements])
    np.testing.assert_array_equal(ids, index)  # a, b, c -> 0, 1, 2 = their index in MIX
    assert len(ids) == sum(map(sum, MIX.values()))
    augmented = _config(augment=True, label_collections=True, sampling="natural")
    images, y, ids = next(iter(pipeline.build_dataset(collections, "train", augmented)))
    assert images.shape == (12, SIZE, SIZE, 1) and y.shape == ids.shape == (12,)
