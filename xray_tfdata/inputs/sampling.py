"""Class-balanced sampling for training: every class drawn with equal probability.

The Kaggle COVID-19 X-ray set is 1 : 2.75 : 7.4 (COVID19 : NORMAL : PNEUMONIA); drawn naturally,
a batch of 32 holds about 3 COVID19 images. `balanced(ds, ...)` splits the (decoded, cached)
stream into one stream per class (`filter` on the label), shuffles and repeats each, and draws
from them with `tf.data.Dataset.sample_from_datasets` at equal weights, so each example is of
class c with probability 1/K whatever the class counts; minority images repeat more often within
an epoch, majority images less. The epoch length is unchanged (steps_per_epoch from the train
count), only its class mix changes.

- Cache: the per-class filters sit after the cache, so every stream reads the one decoded cache
  (the first epoch fills it; no image is decoded twice once it is full).
- Sharding: it runs per input pipeline, on the files (or elements) that InputContext gave it;
  each pipeline balances its own share. A class absent from a pipeline's share yields an empty
  stream, which `repeat` ends at once and `sample_from_datasets` (stop_on_empty_dataset=False)
  skips, so the other classes share its weight instead of the loop stalling.
- Determinism: each stream's shuffle and the stream choice are seeded from `seed` and the
  pipeline id, so the same seed gives the same class sequence and the same images.

`balanced_collections` goes one level down (issue 19): every class is drawn with probability 1/K,
and within a class every collection that holds it equally, from one stream per (class,
collection) pair, so a class one collection supplies almost alone no longer teaches the model
that collection's exposure, film and detector. Pair (c, s) is drawn with probability
1 / (K x the number of collections holding c); the pairs come from the manifest's per-collection
counts (inputs/collection_select.streams), and elements carry their collection until here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

SAMPLING_MODES: tuple[str, ...] = ("natural", "balanced", "balanced_collections")
# Seeds of different pipelines / classes must differ; any large stride avoids collisions.
_SEED_STRIDE = 7919


def balanced(ds: tf.data.Dataset, num_classes: int, *, seed: int, shuffle_buffer: int,
             pipeline_id: int = 0) -> tf.data.Dataset:
    """Infinite stream of (image, label) elements with the classes drawn uniformly.

    `ds` yields unbatched (image, label, ...) tuples, label a scalar integer in
    [0, num_classes); what follows the label (a collection) is kept.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}.")
    base = seed + _SEED_STRIDE * (num_classes + 1) * pipeline_id
    streams = []
    for c in range(num_classes):
        stream = ds.filter(
            lambda image, label, *rest, c=c: tf.equal(tf.cast(label, tf.int64), c))
        # Per-class buffers: the minority class needs only a small one to be well mixed.
        stream = stream.shuffle(shuffle_buffer, seed=base + c + 1,
                                reshuffle_each_iteration=True)
        streams.append(stream.repeat())
    return tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / num_classes] * num_classes, seed=base,
        stop_on_empty_dataset=False)


def balanced_collections(ds: tf.data.Dataset, streams: Mapping[int, Sequence[str]], *, seed: int,
                         shuffle_buffer: int, pipeline_id: int = 0,
                         keep_collection: bool = False) -> tf.data.Dataset:
    """Infinite stream of (image, label): classes uniform, collections uniform within a class.

    `ds` yields unbatched (image, label, collection) triples; `streams` maps each class id to
    the collections that hold it (collection_select.streams). An empty pair in this pipeline's
    share is skipped, as in `balanced`. `keep_collection`: yield the triples instead.
    """
    if not streams or any(not names for names in streams.values()):
        raise ValueError(f"streams must map class ids to collection names. Received: {streams}.")
    pairs = [(c, name) for c in sorted(streams) for name in streams[c]]
    weights = [1.0 / (len(streams) * len(streams[c])) for c, _ in pairs]
    base = seed + _SEED_STRIDE * (len(pairs) + 1) * pipeline_id
    datasets = []
    for index, (c, name) in enumerate(pairs):
        def keep(image, label, source, c=c, name=name):
            del image
            return tf.logical_and(tf.equal(tf.cast(label, tf.int64), c), tf.equal(source, name))

        stream = ds.filter(keep)
        if not keep_collection:
            stream = stream.map(lambda image, label, source: (image, label))
        stream = stream.shuffle(shuffle_buffer, seed=base + index + 1,
                                reshuffle_each_iteration=True)
        datasets.append(stream.repeat())
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights, seed=base,
                                                stop_on_empty_dataset=False)
