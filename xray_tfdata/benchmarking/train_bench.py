"""Training throughput fed by the real pipeline vs synthetic in-memory batches.

The synthetic feed is TF Model Garden's `--use_synthetic_data` idea: one batch of the same shape
and dtype as the real pipeline's, repeated from memory, distributed the same way. Its throughput
is the ceiling when input costs nothing; `1 - real/synthetic` is the input-bound fraction.

The step is the training loop's own computation (steps.make_loss_fn + the same
GradientTape / LossScaleOptimizer / apply_gradients sequence as training_steps), but the batch is
fetched eagerly with `next(iterator)` outside the compiled step, so the time spent waiting for the
next batch can be measured per step.

Both feeds run in ONE process through the SAME compiled step and model, their repeats
interleaved (real, synthetic, synthetic, real, ...): a drift in machine load then hits both
alike, so the real/synthetic ratio stays trustworthy on a shared machine. The process's peak
memory is the real pipeline's (cache included) plus the model's.
"""

from __future__ import annotations

import math
import time
from typing import Any

from xray_tfdata.benchmarking import harness
from xray_tfdata.benchmarking.isolate import Task

_HERE = "xray_tfdata.benchmarking.train_bench"
SPLIT = "train"
PRECISION_NAMES = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")
STRATEGY_NAMES = ("mirrored", "one_device")


FEEDS = ("real", "synthetic")


AUGMENT_ON = ("host", "device")
_SEPARATOR = ", augment on "


def variant_name(precision: str, replicas: int, augment_on: str = "host") -> str:
    return f"{precision} x{replicas}{_SEPARATOR}{augment_on}"


def parse_variant(name: str) -> tuple[str, int, str]:
    """(precision, replicas, augment_on) of a variant_name."""
    head, augment_on = name.split(_SEPARATOR)
    precision, replicas = head.split(" ")
    return precision, int(replicas[1:]), augment_on


def plan(*, records_dir: str, model: str, image_size: int, channels: int, batch_size: int,
         precisions: tuple[str, ...], strategy: str, replicas: tuple[int, ...],
         warmup_steps: int, steps: int, repeats: int, seed: int,
         augment_on: tuple[str, ...] = ("host",)) -> list[Task]:
    """Every precision at the first replica count in every augmentation mode, then every further
    replica count in the first precision and mode; each task measures the real and the
    synthetic feed."""
    combos = [(p, replicas[0], where) for where in augment_on for p in precisions]
    combos += [(precisions[0], r, augment_on[0]) for r in replicas[1:]]
    return [Task(variant_name(precision, n, where), f"{_HERE}:measure_training",
                 {"records_dir": records_dir, "model": model, "image_size": image_size,
                  "channels": channels, "per_replica_batch": batch_size, "precision": precision,
                  "strategy": strategy, "replicas": n, "warmup_steps": warmup_steps,
                  "steps": steps, "repeats": repeats, "seed": seed, "augment_on": where},
                 logical_cpus=n)
            for precision, n, where in combos]


def resolve_precision(name: str) -> str:
    """'mixed' = float16 on GPUs, bfloat16 elsewhere (CPUs with AVX512-BF16/AMX, TPUs)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if name == "mixed":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    return name


def make_strategy(name: str, replicas: int):
    """MirroredStrategy over the first `replicas` GPUs, else over logical CPU devices."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if replicas > len(devices):
        raise ValueError(
            f"replicas={replicas} but only {len(devices)} {'GPU' if gpus else 'CPU'} device(s) "
            f"are visible ({devices}). Run isolated (the default) so logical CPU devices can be "
            "created, or lower --replicas.")
    if name == "one_device":
        if replicas != 1:
            raise ValueError(f"strategy=one_device runs 1 replica. Received: replicas={replicas}. "
                             "Use --strategy=mirrored for several replicas.")
        return tf.distribute.OneDeviceStrategy(devices[0])
    from xray_tfdata.training import distribute

    return distribute.mirrored_strategy(devices[:replicas])


def synthetic_dataset_fn(element_spec, seed: int):
    """A dataset_fn yielding ONE random batch matching `element_spec`, repeated forever."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    images_spec, labels_spec = element_spec

    def fn(_input_context=None):
        gen = tf.random.Generator.from_seed(seed)
        images = tf.cast(gen.uniform(images_spec.shape, 0, 256, tf.int32), images_spec.dtype)
        labels = tf.cast(gen.uniform(labels_spec.shape, 0, 3, tf.int32), labels_spec.dtype)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    return fn


def build_feeds(records_dir: str, image_size: int, channels: int, global_batch: int,
                seed: int, strategy, augment_on: str = "host") -> dict[str, Any]:
    """The real input dataset_fn and its synthetic twin (same per-replica element_spec); with
    augment_on="device" the real pipeline is the host part of device mode (no augmentation)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from xray_tfdata.inputs import device_augment, pipeline  # pylint: disable=C0415

    config = device_augment.host_input_config(pipeline.InputConfig(
        global_batch_size=global_batch, image_size=image_size, channels=channels, training=True,
        cache="memory", augment=True, seed=seed), augment_on)
    real_fn = pipeline.dataset_fn(records_dir, SPLIT, config)
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0,
        num_replicas_in_sync=strategy.num_replicas_in_sync)
    spec = real_fn(context).element_spec
    return {"config": config, "real": real_fn, "synthetic": synthetic_dataset_fn(spec, seed),
            "element_spec": spec}


def make_step(strategy, model, optimizer, global_batch: int, loss_scaling: bool,
              augment=None):
    """One distributed training step on an already-fetched (PerReplica) batch; `augment`:
    device augmentation inside the step (device_augment.make_step_augment)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from xray_tfdata import labels  # pylint: disable=import-outside-toplevel
    from xray_tfdata.training import steps

    loss_fn = steps.make_loss_fn(np.ones(labels.NUM_CLASSES, np.float32), 0.0, global_batch)
    # The very step training runs (regularization losses included); XLA off, as on CPU.
    replica_step = steps.make_replica_step(model, optimizer, loss_fn, jit_compile=False,
                                           loss_scaling=loss_scaling, augment=augment)

    @tf.function
    def step(images, labels_):
        per_replica = strategy.run(replica_step, args=(images, labels_))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def _timed_steps(step, iterator, steps: int, global_batch: int) -> tuple[float, float, float]:
    """Runs `steps` steps; returns (images/s, ms per step, ms waited for input per step)."""
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(iterator)
        waited += time.perf_counter() - t0
        loss = step(*batch)
    float(loss)  # the last step has finished
    elapsed = time.perf_counter() - start
    return steps * global_batch / elapsed, 1000.0 * elapsed / steps, 1000.0 * waited / steps


def measure_training(records_dir: str, model: str, image_size: int, channels: int,
                     per_replica_batch: int, precision: str, strategy: str, replicas: int,
                     warmup_steps: int, steps: int, repeats: int, seed: int,
                     augment_on: str = "host") -> dict[str, Any]:
    """Images/s, step time and input wait per step, real vs synthetic feed, one configuration.

    augment_on="device": the real feed is the un-augmented cached pipeline and BOTH feeds go
    through a step that augments on the device, so synthetic stays the ceiling of that step."""
    import keras  # pylint: disable=import-outside-toplevel

    from xray_tfdata import models  # pylint: disable=import-outside-toplevel
    from xray_tfdata.inputs import pipeline

    policy = resolve_precision(precision)
    previous = keras.mixed_precision.global_policy()
    # The policy must be set before the model is built, or it is not applied.
    keras.mixed_precision.set_global_policy(policy)
    try:
        dist = make_strategy(strategy, replicas)
        n = dist.num_replicas_in_sync
        global_batch = per_replica_batch * n
        feeds = build_feeds(records_dir, image_size, channels, global_batch, seed, dist,
                            augment_on)
        with dist.scope():
            net = models.build_model(model, image_size, channels, seed=seed)
            optimizer = keras.optimizers.Adam(1e-3)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(net.trainable_variables)
        augment = None
        if augment_on == "device":
            from xray_tfdata.inputs import device_augment  # pylint: disable=C0415

            augment = device_augment.make_step_augment(feeds["config"].augment_params, seed)
        step = make_step(dist, net, optimizer, global_batch, policy == "mixed_float16", augment)
        iterators = {feed: iter(dist.distribute_datasets_from_function(feeds[feed]))
                     for feed in FEEDS}

        # Fill the real pipeline's cache first (an epoch plus the shuffle buffer's read-ahead):
        # the steady state a long training run sees. Pulled without training: decoding the
        # images costs seconds, training on them minutes.
        per_epoch = pipeline.steps_per_epoch(records_dir, SPLIT, global_batch)
        fill_steps = per_epoch + math.ceil(feeds["config"].shuffle_buffer / global_batch) + 1
        for _ in range(fill_steps):
            next(iterators["real"])
        for feed in FEEDS:
            for _ in range(max(warmup_steps, 1)):  # at least one: tracing is not training
                float(step(*next(iterators[feed])))

        measured = {feed: {"rate": [], "step": [], "wait": []} for feed in FEEDS}
        for r in range(repeats):
            for feed in (FEEDS if r % 2 == 0 else FEEDS[::-1]):  # ABBA against load drift
                rate, step_ms, wait_ms = _timed_steps(step, iterators[feed], steps, global_batch)
                measured[feed]["rate"].append(rate)
                measured[feed]["step"].append(step_ms)
                measured[feed]["wait"].append(wait_ms)
        spec = feeds["element_spec"]
        out: dict[str, Any] = {}
        for feed in FEEDS:
            out[f"{feed}_images_per_sec"] = harness.summarize(measured[feed]["rate"])
            out[f"{feed}_step_time_ms"] = harness.summarize(measured[feed]["step"])
            out[f"{feed}_input_wait_ms_per_step"] = harness.summarize(measured[feed]["wait"])
        return {
            **out,
            "final_loss": float(step(*next(iterators["real"]))),
            "precision_resolved": policy, "replicas_resolved": n, "global_batch": global_batch,
            "augment_on": augment_on,
            "per_replica_batch": per_replica_batch, "cache_fill_steps": fill_steps,
            "devices": list(dist.extended.worker_devices),
            "element_spec": {"images": [list(spec[0].shape), spec[0].dtype.name],
                             "labels": [list(spec[1].shape), spec[1].dtype.name]},
        }
    finally:
        keras.mixed_precision.set_global_policy(previous)


TABLE_COLUMNS = (("variant", "variant"), ("real", "real img/s"), ("synthetic", "synthetic img/s"),
                 ("vs_synthetic", "real / synthetic"), ("spread_pct", "real spread %"),
                 ("real_step_ms", "real step ms"), ("synthetic_step_ms", "synth. step ms"),
                 ("wait_ms", "input wait ms/step"), ("peak_rss_mb", "peak RSS MB"),
                 ("scaling_eff", "scaling eff."))
REAL_VS_SYNTHETIC_TARGET = 0.95


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows, real/synthetic ratios, input-bound fractions, scaling efficiency, the target."""
    by_key = {parse_variant(name): result for name, result in results.items()}
    rows, ratios = [], {}
    for (precision, n, where), result in by_key.items():
        real = result["real_images_per_sec"]["median"]
        synth = result["synthetic_images_per_sec"]["median"]
        base = by_key.get((precision, 1, where), {}).get("real_images_per_sec", {}).get("median")
        eff = real / (n * base) if base and n > 1 else (1.0 if n == 1 else None)
        tag = f"{precision}_x{n}_augment_{where}"
        rows.append({
            "variant": variant_name(precision, n, where), "real": real, "synthetic": synth,
            "vs_synthetic": real / synth,
            "spread_pct": result["real_images_per_sec"]["spread_pct"],
            "real_step_ms": result["real_step_time_ms"]["median"],
            "synthetic_step_ms": result["synthetic_step_time_ms"]["median"],
            "wait_ms": result["real_input_wait_ms_per_step"]["median"],
            "peak_rss_mb": result.get("peak_rss_mb"), "scaling_eff": eff,
        })
        ratios[f"real_vs_synthetic_{tag}"] = real / synth
        ratios[f"input_bound_fraction_{tag}"] = 1.0 - real / synth
        if n > 1 and base:
            ratios[f"scaling_efficiency_{tag}"] = eff
            synth_base = by_key[(precision, 1, where)]["synthetic_images_per_sec"]["median"]
            ratios[f"scaling_efficiency_synthetic_{tag}"] = synth / (n * synth_base)
        host = by_key.get((precision, n, "host"))
        if where == "device" and host:
            ratios[f"real_device_vs_host_augment_{precision}_x{n}"] = \
                real / host["real_images_per_sec"]["median"]
    targets = []
    first = next(iter(by_key), None)
    if first is not None:
        targets.append(harness.target(
            f"real >= {REAL_VS_SYNTHETIC_TARGET} x synthetic ({first[0]}, {first[1]} replica, "
            f"augment on {first[2]})",
            ratios.get(f"real_vs_synthetic_{first[0]}_x{first[1]}_augment_{first[2]}"),
            REAL_VS_SYNTHETIC_TARGET))
    return {"rows": rows, "columns": TABLE_COLUMNS, "ratios": ratios, "targets": targets}
