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

AUGMENT_ON: tuple[str, ...] = ("auto", "host", "device")


def resolve_augment_on(name: str, device_types: Sequence[str] | None = None) -> str:
    """`host` or `device` for `name`; `auto` = device when a GPU or TPU is among
    `device_types` (default: TensorFlow's visible logical devices)."""
    from xray_tfdata.errors import ConfigError  # pylint: disable=import-outside-toplevel

    if name not in AUGMENT_ON:
        raise ConfigError("augment_on", name, "one of " + ", ".join(AUGMENT_ON))
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
