"""Where online augmentation runs: on the host in the tf.data pipeline, or on the accelerator.

`--augment_on=host` augments batches in the input pipeline (inputs/pipeline.py) on the host's
CPU cores. `device` ships the cached uint8 batches unaugmented and runs the same seeded
augmentation (inputs/online_augment.py) inside the train step, on each replica, after the batch
has arrived: the host then only reads, shuffles, batches and prefetches, which is what a GPU or
TPU host must keep up with (benchmarks/README.md: host CPU per image). `auto` picks device when
a GPU or TPU is visible, host otherwise (on a CPU-only machine the "device" is the host anyway).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from xray_tfdata import errors

AUGMENT_ON: tuple[str, ...] = ("auto", "host", "device")


def resolve_augment_on(name: str, device_types: Sequence[str] | None = None) -> str:
    """`host` or `device` for `name`; `auto` = device when a GPU or TPU is among
    `device_types` (default: TensorFlow's visible logical devices)."""
    errors.one_of("augment_on", name, AUGMENT_ON)
    if name != "auto":
        return name
    if device_types is None:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        device_types = [d.device_type for d in tf.config.list_logical_devices()]
    return "device" if {"GPU", "TPU"} & {t.upper() for t in device_types} else "host"


def host_input_config(config, augment_on: str):
    """The InputConfig the host pipeline runs for `augment_on` (`host` or `device`): with
    device augmentation the host pipeline does not augment (the train step does)."""
    if augment_on not in ("host", "device"):
        raise ValueError(f"augment_on must be resolved to 'host' or 'device' first. Received: "
                         f"augment_on={augment_on!r}.")
    return dataclasses.replace(config, augment=config.augment and augment_on == "host")


def make_step_augment(params, seed: int, jit_compile: bool = True):
    """`augment(images, replica_id, step)` for the train step (steps.make_replica_step).

    Seeds mirror the host pipeline's (online_augment.make_augment with stream = replica id and
    the batch index = the global step), so on one replica batch k gets exactly the transforms
    host mode would give it, and replica r draws what input pipeline r would: the same
    distribution of transforms, replicas differing from one another.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from xray_tfdata.inputs import online_augment  # pylint: disable=import-outside-toplevel

    errors.non_negative_int("seed", seed)
    base = tf.constant(seed * online_augment.STREAM_STRIDE, tf.int64)

    def augment(images, replica_id, step):
        stream = base + tf.cast(replica_id, tf.int64)
        return online_augment.augment_batch(
            images, tf.stack([stream, tf.cast(step, tf.int64)]), params, jit_compile=jit_compile)

    return augment


def input_options(strategy):
    """How batches reach the replicas: fetched to each device ahead of the step.

    experimental_fetch_to_device copies every per-replica batch onto its device from a
    background prefetch (2 batches per replica here), so the step never waits for a
    host-to-device copy. TPUStrategy only accepts its own default (it prefetches to the TPU
    itself), so it gets None.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if isinstance(strategy, tf.distribute.TPUStrategy):
        return None
    return tf.distribute.InputOptions(experimental_fetch_to_device=True,
                                      experimental_per_replica_buffer_size=2)
