"""Records directory -> tf.data.Dataset of (images [B,H,W,C] uint8, labels [B] int32), and
with `label_collections` the collection ids [B] int32 as a third element.

The straight-line pipeline (`build_dataset`), one transformation per line:

    shard files by InputContext -> shuffle files -> parallel interleave of TFRecordDatasets
    -> (element shard when files < pipelines) -> batched parse + decode -> cache (decoded uint8)
    -> shuffle -> repeat -> batch (drop_remainder in training) -> augment whole batches
    -> cast to output dtype -> prefetch

With `data_service` (a tf.data service dispatcher, inputs/service.py) everything up to and
including augmentation runs on the service's workers, without the file sharding and the cache;
the trainer receives whole batches (evaluation: re-batched, so the tail is as local) and only
casts and prefetches. With augmentation on the device (inputs/device_augment.py) the pipeline
runs with augment=False and the train step augments.

Images stay uint8 on the host (4x smaller than float32 everywhere: cache, shuffle buffer,
host-to-device copy); the model's first layer casts and scales them on the accelerator.

Each shard is read with its record count checked against the manifest, so a corrupt or truncated
shard fails with an error naming the file (TFRecordDataset's own "corrupted record at N" does not),
or, with `skip_corrupt=True`, the unreadable rest of the shard is skipped, logged and counted
(`skipped_records()`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from xray_tfdata import errors
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import collection_select, decode, online_augment, sampling, service
from xray_tfdata.paths import location
from xray_tfdata.records import features, manifest
from xray_tfdata.settings import setting

OUTPUT_DTYPES = ("uint8", "float16", "bfloat16", "float32")
# Fixed (not machine-dependent) so a deterministic pipeline yields the same order everywhere.
INTERLEAVE_CYCLE = 8


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Settings of one input pipeline; only the GLOBAL batch size is stored.

    Nested in training.config.TrainConfig; the fields with help are the `train` command's flags
    (settings.setting). image_size, channels, seed and deterministic are set per run from the
    records and the training settings (training/setup.py).
    """

    global_batch_size: int = setting(
        32, "Batch size summed over all replicas; must divide by the replica count.")
    image_size: int = 224
    channels: int = 1
    training: bool = True  # shuffle + repeat forever + drop_remainder + augment
    cache: str = setting("memory", "Decoded-image cache: none, memory, or a file path prefix.")
    shuffle_buffer: int = setting(2048, "Shuffle buffer (examples).")
    augment: bool = setting(True, "Online augmentation of training batches.")
    allow_flips: bool = False
    seed: int = 0
    deterministic: bool = False
    skip_corrupt: bool = False
    ram_budget_mb: int = 2048
    output_dtype: str = "uint8"  # or the model's compute dtype; values stay 0..255
    augment_params: online_augment.AugmentParams = online_augment.AugmentParams()
    jit_augment: bool = True  # XLA-compiled augmentation (~4x faster on CPU); False: TF kernel
    sampling: str = setting(
        "natural", "'balanced': every class drawn equally into training batches (per-class "
        "tf.data streams); 'balanced_collections': so too, and within a class every collection "
        "holding it equally (per-(class, collection) streams); 'natural': the records' own mix.",
        allowed=sampling.SAMPLING_MODES)
    # Read only these collections / all but these (collection_select.py); after the cache.
    collections: tuple[str, ...] = setting(
        (), "Train and validate on these collections only (names of build_records' "
        "--data_dir=name=path,...); empty = all. Filtered in the input pipeline, no rebuild.")
    exclude_collections: tuple[str, ...] = setting(
        (), "Train and validate on every collection but these (leave-one-collection-out: then "
        "evaluate --collections=<it>).")
    # Yield (images, labels, collection ids) triples: ids index collection_select.collection_ids
    # (the collection adversary's targets, training/adversary.py). Set by the run, no flag.
    label_collections: bool = False
    # Ablation switches for benchmarks/input_pipeline.py; keep True in real use.
    parallel_interleave: bool = True
    vectorized_parse: bool = True
    prefetch: bool = True
    # grpc://HOST:PORT of a tf.data service dispatcher: read/parse/decode/augment run on its
    # workers (inputs/service.py); "" = all in this process.
    data_service: str = setting(
        "", "grpc://HOST:PORT of a tf.data service dispatcher (python -m "
        "xray_tfdata.data_service): read, decode and host augmentation of the training input run "
        "on its workers. Validation stays local.")
    job_prefix: str = setting(
        "", "Service job name prefix; every trainer process of one multi-worker run must pass "
        "the same value (e.g. the launcher's job id). Default: a random one (right for a single "
        "trainer process).", flag="data_service_job")

    def __post_init__(self) -> None:
        for name in ("global_batch_size", "image_size", "shuffle_buffer", "ram_budget_mb"):
            errors.positive_int(name, getattr(self, name))
        if self.channels not in (1, 3):
            raise ConfigError("channels", self.channels, "1 or 3",
                              "Use the channels the records were built with.")
        if not isinstance(self.cache, str) or not self.cache.strip():
            raise ConfigError("cache", self.cache, "'none', 'memory' or a file path prefix")
        errors.non_negative_int("seed", self.seed)
        errors.one_of("output_dtype", self.output_dtype, OUTPUT_DTYPES)
        if not isinstance(self.augment_params, online_augment.AugmentParams):
            raise ConfigError("augment_params", self.augment_params,
                              "an online_augment.AugmentParams")
        errors.one_of("sampling", self.sampling, sampling.SAMPLING_MODES)
        for name in ("collections", "exclude_collections"):  # "a,b" or a list from a flag
            object.__setattr__(self, name, collection_select.parse_names(getattr(self, name)))
        if self.data_service:
            service.check_address("data_service", self.data_service, scheme=True)
            if self.skip_corrupt:
                raise ConfigError("skip_corrupt", self.skip_corrupt, "False with data_service",
                                  "Service workers cannot run the Python callback that logs "
                                  "skipped records; rebuild the records, or read them locally.")


# ---------------------------------------------------------------- corrupt-record accounting
_skip_lock = threading.Lock()
_skipped: dict[str, int] = {}


def skipped_records() -> dict[str, int]:
    """Records skipped per shard path (skip_corrupt=True) in this process so far."""
    with _skip_lock:
        return dict(_skipped)


def _report_skipped(path: tf.Tensor, read: tf.Tensor, expected: tf.Tensor) -> bool:
    shard = path.numpy().decode("utf-8")
    missing = int(expected) - int(read)
    with _skip_lock:
        _skipped[shard] = _skipped.get(shard, 0) + max(missing, 0)
        total = sum(_skipped.values())
    logging.warning(
        "Skipped %d unreadable record(s) of shard %s (read %d of %d; a CRC failure makes the rest "
        "of a shard unreadable). %d skipped in total. Rebuild the records to recover them.",
        missing, shard, int(read), int(expected), total)
    return True


def _read_shard(path: tf.Tensor, expected: tf.Tensor, compression: str,
                skip_corrupt: bool) -> tf.data.Dataset:
    """Batches of serialized records of one shard, the count read checked against the manifest.

    TFRecordDataset moves to the next file after a DataLossError, so `ignore_errors` drops the
    unreadable tail of THIS shard only; an empty sentinel batch appended after it carries the
    number of records read. Working on batches of PARSE_BATCH_SIZE keeps the bookkeeping (and the
    vectorised parse that follows) per batch, not per record.
    """
    records = tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
    tagged = records.batch(decode.PARSE_BATCH_SIZE).map(lambda r: (r, False))
    tagged = tagged.concatenate(
        tf.data.Dataset.from_tensors((tf.constant([], tf.string), True)))
    counted = tagged.scan(
        tf.constant(0, tf.int64),
        lambda n, item: (n + tf.size(item[0], out_type=tf.int64), (item[0], item[1], n)))

    def keep(batch, is_end, count):
        del batch
        short = tf.logical_and(is_end, tf.not_equal(count, expected))
        if skip_corrupt:
            logged = tf.cond(
                short,
                lambda: tf.py_function(_report_skipped, [path, count, expected], tf.bool),
                lambda: tf.constant(True))
            with tf.control_dependencies([logged]):
                return tf.logical_not(is_end)
        message = tf.strings.format(
            "Corrupt or truncated TFRecord shard {}: read {} of the {} records the manifest lists. "
            "Rerun the build_records command that wrote them (it rebuilds when a shard's sha256 "
            "no longer matches), or, from Python, read with InputConfig(skip_corrupt=True) to "
            "skip the unreadable rest of the shard.", [path, count, expected])
        with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(short), [message])]):
            return tf.logical_not(is_end)

    return counted.filter(keep).map(lambda batch, is_end, count: batch)


# ---------------------------------------------------------------- reading
def records_info(records: str | os.PathLike | manifest.DatasetInfo) -> manifest.DatasetInfo:
    """The records' DatasetInfo: given (a command read it once), or read from the directory."""
    if isinstance(records, manifest.DatasetInfo):
        return records
    return manifest.read_info(records)


def _shard_table(info: manifest.DatasetInfo, split: str) -> tuple[list[str], list[int]]:
    records_dir = info.records_dir
    paths = info.split_files(split)
    counts = [shard.num_examples for shard in info.splits[split].shards]
    missing = [p for p in paths if not location(p).is_file()]  # records_dir may be a URL
    if missing:
        raise manifest.ManifestError(
            f"{len(missing)} shard file(s) of split {split!r} listed in the manifest are missing, "
            f"e.g. {missing[0]!r}. Rebuild the records in {str(records_dir)!r}.")
    return paths, counts


def _read_records(paths: list[str], counts: list[int], compression: str, *,
                  num_pipelines: int, pipeline_id: int, shuffle_files: bool, seed: int,
                  deterministic: bool, parallel: bool, skip_corrupt: bool) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(counts, tf.int64)))
    element_shard = num_pipelines > 1 and len(paths) < num_pipelines
    if num_pipelines > 1 and not element_shard:
        files = files.shard(num_pipelines, pipeline_id)
    elif element_shard:
        logging.warning(
            "Only %d shard file(s) for %d input pipelines: sharding by element, so every pipeline "
            "reads every file and keeps 1/%d of the records. Build more shards (>= %d) to shard by "
            "file.", len(paths), num_pipelines, num_pipelines, num_pipelines)
    if shuffle_files:
        # Same seed on every pipeline: element sharding needs the same file order everywhere.
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        lambda path, expected: _read_shard(path, expected, compression, skip_corrupt),
        cycle_length=min(len(paths), INTERLEAVE_CYCLE),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE if parallel else None,
        # Element sharding only partitions correctly if every pipeline sees the same order.
        # (deterministic only means something to a parallel interleave; TF warns otherwise.)
        deterministic=(True if element_shard else deterministic) if parallel else None,
    )
    if element_shard:
        records = records.unbatch().shard(num_pipelines, pipeline_id)
        records = records.batch(decode.PARSE_BATCH_SIZE)
    return records


def _options(config: InputConfig, sharded_by_us: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = config.deterministic
    options.autotune.enabled = True
    options.autotune.ram_budget = config.ram_budget_mb * 2**20
    # TF performance guide / tensorflow/models: one thread per op, parallelism across elements.
    options.threading.max_intra_op_parallelism = 1
    if sharded_by_us:
        # Already split by InputContext: a second (auto) shard would drop data.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _cache_path(prefix: str, info: manifest.DatasetInfo, split: str, config: InputConfig,
                num_pipelines: int, pipeline_id: int) -> str:
    """A cache file name unique to these records, this split and this pipeline: a stale or
    shared cache would silently serve the wrong images."""
    shards = [dataclasses.asdict(shard) for shard in info.splits[split].shards]
    parts = [shards, info.image.as_dict(), config.image_size, config.channels]
    if _by_collection(config):
        parts.append("collection")  # the cached elements also hold their collection
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    parent = os.path.dirname(prefix)
    if parent:
        tf.io.gfile.makedirs(parent)  # gfile: also works for gs:// cache prefixes
    return f"{prefix}.{split}.{digest}.p{pipeline_id}of{num_pipelines}"


def build_dataset(records: str | os.PathLike | manifest.DatasetInfo, split: str,
                  config: InputConfig,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The input pipeline for one split (see the module docstring for the order of stages).

    `records`: the records dir, or its DatasetInfo when the caller has read it already.
    Training: infinite; run `steps_per_epoch(...)` steps per epoch; batches are full. Evaluation:
    one pass over this pipeline's part of the split, remainder kept.

    Raises:
      manifest.ManifestError: no manifest, unknown split, missing shards, or records whose format
        version, image size, channels or label map differ from what `config` asks for.
    """
    info = records_info(records)
    records_dir = info.records_dir
    manifest.check_compatible(info, image_size=config.image_size, channels=config.channels,
                              records_dir=records_dir)
    paths, counts = _shard_table(info, split)
    if sum(counts) == 0:
        raise manifest.ManifestError(
            f"Split {split!r} in {str(records_dir)!r} has no examples; rebuild the records.")
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    batch_size = (input_context.get_per_replica_batch_size(config.global_batch_size)
                  if input_context else config.global_batch_size)
    image_format = info.image.format
    by_collection = _by_collection(config)
    if by_collection:
        # Fails here, naming the records' collections, if a name is unknown or none is left.
        kept = collection_select.select(info, split, config.collections,
                                        config.exclude_collections)

    remote = bool(config.data_service)
    # On the service the dispatcher splits the file list among workers and consumers; sharding
    # it here as well would drop data.
    ds = _read_records(paths, counts, info.compression,
                       num_pipelines=1 if remote else num_pipelines,
                       pipeline_id=0 if remote else pipeline_id,
                       shuffle_files=config.training, seed=config.seed,
                       deterministic=config.deterministic,
                       parallel=config.parallel_interleave, skip_corrupt=config.skip_corrupt)
    ds = decode.decode_records(ds, image_format, config.image_size, config.channels,
                               vectorized_parse=config.vectorized_parse,
                               with_collection=by_collection)
    # Cache decoded uint8 images BEFORE random augmentation, so augmentation differs each epoch.
    # (Not on the service: each worker sees a different set of files every epoch.)
    if not remote and config.cache == "memory":
        ds = ds.cache()
    elif not remote and config.cache != "none":
        ds = ds.cache(_cache_path(config.cache, info, split, config, num_pipelines, pipeline_id))
    # After the cache: what is cached does not depend on the selection (a file cache is
    # reused by every leave-one-collection-out run).
    if config.collections or config.exclude_collections:
        ds = ds.filter(lambda image, label, source: tf.reduce_any(tf.equal(source, kept)))
    # The collection stays on the elements through the sampler only if the run labels it.
    keep = config.label_collections
    if config.training and config.sampling == "balanced_collections":
        streams = collection_select.streams(info, split, config.collections,
                                            config.exclude_collections)
        ds = sampling.balanced_collections(ds, streams, seed=config.seed,
                                           shuffle_buffer=config.shuffle_buffer,
                                           pipeline_id=pipeline_id, keep_collection=keep)
    elif config.training and config.sampling == "balanced":
        ds = sampling.balanced(ds if keep else _drop_collection(ds, by_collection),
                               len(info.classes), seed=config.seed,
                               shuffle_buffer=config.shuffle_buffer, pipeline_id=pipeline_id)
    elif config.training:
        # Shuffle before repeat: every epoch is a full permutation, no example twice per epoch.
        ds = ds if keep else _drop_collection(ds, by_collection)
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    elif not keep:
        ds = _drop_collection(ds, by_collection)
    if keep:
        ds = ds.map(_collection_id_fn(collection_select.collection_ids(
            info, config.collections, config.exclude_collections)),
            num_parallel_calls=tf.data.AUTOTUNE)
    # Static batch shapes in training (tf.distribute, XLA); keep the tail in evaluation.
    ds = ds.batch(batch_size, drop_remainder=config.training)
    augment = _augment_fn(config, pipeline_id)
    if augment is not None:
        ds = ds.enumerate().map(lambda step, batch: (augment(step, batch[0]), *batch[1:]),
                                num_parallel_calls=tf.data.AUTOTUNE)
    if remote:
        ds = _on_service(ds, config, split, batch_size)
    dtype = tf.as_dtype(config.output_dtype)
    if dtype != tf.uint8:
        ds = ds.map(lambda images, *rest: (tf.cast(images, dtype), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if config.prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(config, sharded_by_us=input_context is not None))


def _drop_collection(ds: tf.data.Dataset, by_collection: bool) -> tf.data.Dataset:
    return ds.map(lambda image, label, source: (image, label)) if by_collection else ds


def _collection_id_fn(names: tuple[str, ...]) -> Callable:
    """(image, label, collection name) -> (image, label, int32 id = index of the name)."""
    table = tf.constant(names, tf.string)

    def to_id(image, label, source):
        return image, label, tf.cast(tf.argmax(tf.cast(tf.equal(source, table), tf.int32)),
                                     tf.int32)

    return to_id


def _by_collection(config: InputConfig) -> bool:
    """Whether elements carry their collection past the cache (a filter, the sampler or the
    collection labels)."""
    return bool(config.collections or config.exclude_collections) or config.label_collections \
        or (config.training and config.sampling == "balanced_collections")


def _on_service(ds: tf.data.Dataset, config: InputConfig, split: str,
                batch_size: int) -> tf.data.Dataset:
    """Everything so far (read, decode, batching, augmentation) runs on the service's workers.

    Workers send whole (augmented) batches, cheaper over gRPC than single images. Training
    batches arrive full (drop_remainder on the worker) and pass straight through; in evaluation
    the trainer unbatches and batches again, so an eval pass has one tail, as locally, rather
    than one per worker. Workers share the augmentation seed stream, so their k-th batches draw
    the same transforms for different images; the service's dynamic file assignment makes the
    order irreproducible anyway.
    """
    ds = service.distribute(ds, config.data_service,
                            service.job_name(config.job_prefix, split, config.training))
    return ds if config.training else ds.unbatch().batch(batch_size)


def _augment_fn(config: InputConfig, stream: int):
    """The batch augmentation of a training pipeline, or None (eval, or augment=False)."""
    if not (config.training and config.augment):
        return None
    # allow_flips is the public switch; augment_params.flip=True also turns flips on.
    params = dataclasses.replace(
        config.augment_params, flip=config.allow_flips or config.augment_params.flip)
    return online_augment.make_augment(params, config.seed, stream,
                                       jit_compile=config.jit_augment)


def dataset_fn(records: str | os.PathLike | manifest.DatasetInfo, split: str,
               config: InputConfig) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """For `strategy.distribute_datasets_from_function`: one pipeline per worker, per-replica
    batches, files split across workers."""
    # Fail now, in the caller, rather than inside the strategy's dataset construction.
    info = records_info(records)
    manifest.check_compatible(info, image_size=config.image_size, channels=config.channels,
                              records_dir=info.records_dir)

    def fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return build_dataset(info, split, config, input_context)

    return fn


def steps_per_epoch(records: str | os.PathLike | manifest.DatasetInfo, split: str,
                    global_batch_size: int) -> int:
    """Full global batches per epoch (the training pipeline drops the remainder)."""
    info = records_info(records)
    total = info.require_split(split).num_examples  # names the known splits if unknown
    if global_batch_size < 1 or total // global_batch_size == 0:
        raise ValueError(
            f"global_batch_size must be in [1, {total}] (split {split!r} has {total} examples). "
            f"Received: global_batch_size={global_batch_size}.")
    return total // global_batch_size


METADATA_FIELDS = {
    "label": features.LABEL,
    "source_path": features.SOURCE_PATH,
    "source_sha256": features.SOURCE_SHA256,
    "source_width": features.SOURCE_WIDTH,
    "source_height": features.SOURCE_HEIGHT,
    "source_mode": features.SOURCE_MODE,
    "source_format": features.SOURCE_FORMAT,
    "source_bytes": features.SOURCE_BYTES,
    "augmentation": features.AUGMENTATION,
    # Optional keys ("" when a record lacks them): the collection and the DICOM tags, which the
    # shortcut probe one-hots.
    "source": features.SOURCE_NAME,
    **{f"dicom_{key.rsplit('/', 1)[1]}": key for key in features.DICOM_TAG_KEYS.values()},
}


def read_metadata(records: str | os.PathLike | manifest.DatasetInfo, split: str,
                  collections: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Label and source metadata of every record of a split, without decoding any image.

    Order = the order of `build_dataset(records_dir, split, InputConfig(training=False,
    deterministic=True, collections=collections, ...))` without an input context, so arrays
    line up with its predictions.
    Keys: see METADATA_FIELDS; ints are int64 (label int32), strings are numpy str arrays.
    """
    info = records_info(records)
    manifest.check_compatible(info, records_dir=info.records_dir)
    paths, counts = _shard_table(info, split)
    records = _read_records(paths, counts, info.compression, num_pipelines=1,
                            pipeline_id=0, shuffle_files=False, seed=0, deterministic=True,
                            parallel=True, skip_corrupt=False)
    keys = tuple(METADATA_FIELDS.values())
    parsed = records.map(lambda batch: decode.parse_batch(batch, keys))
    columns: dict[str, list[np.ndarray]] = {name: [] for name in METADATA_FIELDS}
    for batch in parsed.as_numpy_iterator():
        for name, key in METADATA_FIELDS.items():
            columns[name].append(batch[key])
    out: dict[str, np.ndarray] = {}
    for name, key in METADATA_FIELDS.items():
        values = np.concatenate(columns[name]) if columns[name] else np.array([])
        if key in features.INT_KEYS:
            out[name] = values.astype(np.int32 if name == "label" else np.int64)
        else:
            out[name] = np.array([v.decode("utf-8") for v in values], dtype=str)
    if collections:
        keep = np.isin(out["source"], collection_select.select(info, split, collections))
        out = {name: values[keep] for name, values in out.items()}
    return out
