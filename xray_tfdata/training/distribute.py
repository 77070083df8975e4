"""Choosing the tf.distribute strategy and the mixed-precision policy for a run.

One training loop serves every strategy (see training.py); this module only decides which strategy
and which precision, and answers "am I the chief?" for multi-worker jobs, where only the chief
writes checkpoints, logs and exports.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from xray_tfdata import errors
from xray_tfdata.errors import ConfigError
from xray_tfdata.settings import setting

STRATEGIES: tuple[str, ...] = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

JIT_COMPILE: tuple[str, ...] = ("auto", "true", "false")

# float16 tensor cores arrived with Volta (7.0); older GPUs gain nothing from mixed_float16.
_MIN_FLOAT16_CAPABILITY = (7, 0)
# bfloat16 tensor cores arrived with Ampere (8.0).
_MIN_BFLOAT16_CAPABILITY = (8, 0)


def _check_tf_config() -> dict:
    """Parses TF_CONFIG for a multi-worker job; errors say what is missing and how to set it."""
    raw = os.environ.get("TF_CONFIG", "")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise ConfigError("TF_CONFIG", None, "set for --strategy=multi_worker: a JSON description "
                          "of the cluster and this task", f"For example: {example}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError("TF_CONFIG", raw, f"valid JSON ({err})",
                          f"For example: {example}") from err
    cluster = config.get("cluster", {}) if isinstance(config, dict) else {}
    task = config.get("task", {}) if isinstance(config, dict) else {}
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ConfigError("TF_CONFIG", raw, "a cluster with a 'worker' (or 'chief') list",
                          f"For example: {example}")
    if "type" not in task or "index" not in task:
        raise ConfigError("TF_CONFIG", raw, "a task with 'type' and 'index' for this process",
                          f"For example: {example}")
    return config


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """Where a run trains: the `train` command's strategy flags (make_strategy's arguments)."""

    strategy: str = setting("auto", "auto = MirroredStrategy over all GPUs, else the default "
                            "strategy; multi_worker reads TF_CONFIG.", allowed=STRATEGIES)
    devices: tuple[str, ...] | None = setting(
        None, "Devices for --strategy=mirrored (default: all GPUs, else CPU).")
    tpu_address: str = setting("", "TPU name or grpc:// address for --strategy=tpu.")


def make_strategy(
    name: str = "auto", *, devices: list[str] | None = None, tpu_address: str = ""
) -> tf.distribute.Strategy:
    """Builds the strategy named by `name`.

    - auto: MirroredStrategy over all visible GPUs, else the default (single device) strategy.
    - one_device: OneDeviceStrategy on the first GPU, else the CPU.
    - mirrored: MirroredStrategy over `devices` (default: all GPUs, else the CPU).
    - multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG; must be created before any other
      TensorFlow op runs in the process.
    - tpu: TPUStrategy on the TPU at `tpu_address` ("" = the local / Cloud TPU VM).
    """
    errors.one_of("strategy", name, STRATEGIES)
    if name == "multi_worker":
        _check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as err:
            raise ConfigError("tpu_address", tpu_address, "a TPU this process can reach "
                              f"(connecting failed: {err})",
                              "Run on a TPU VM or choose --strategy=auto.") from err
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if name == "auto":
            strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
        elif name == "one_device":
            strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
        else:
            strategy = mirrored_strategy(devices)
    logging.info(
        "Strategy %s (%s): %d replica(s) in sync.",
        name, strategy_name(strategy), strategy.num_replicas_in_sync,
    )
    return strategy


def mirrored_strategy(devices: list[str] | None = None) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy whose gradient reduction also works for a second strategy in one process.

    On GPUs TF's default (NCCL) all-reduce is kept. Replicas on CPU devices (logical CPUs in tests
    and benchmarks) share host memory, so ReductionToOneDevice costs nothing there, and it avoids
    CollectiveReduceV2: its instance keys restart with every new strategy, so a second
    MirroredStrategy training another model in the same process aborts with "Shape mismatch in
    the collective instance 100" (tensorflow/tensorflow#62790; reproduced here on TF 2.21).
    """
    names = devices or [d.name for d in tf.config.list_logical_devices("GPU")] or None
    on_cpu = names is None or all("cpu" in name.lower() for name in names)
    if on_cpu:
        return tf.distribute.MirroredStrategy(
            names, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return tf.distribute.MirroredStrategy(names)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public tf.distribute name (MultiWorkerMirroredStrategy's class is named otherwise)."""
    for cls, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                      (tf.distribute.TPUStrategy, "TPUStrategy"),
                      (tf.distribute.MirroredStrategy, "MirroredStrategy"),
                      (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy")):
        if isinstance(strategy, cls):
            return name
    return "default"


def task_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task_type, task_id) of this process; (None, 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes checkpoints, logs and exports.

    The chief is task `chief`, or `worker` 0 when the cluster has no chief; any process outside a
    multi-worker cluster is its own chief.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch; the global size must split evenly so every replica runs equal work."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        lower = max(replicas, global_batch_size - global_batch_size % replicas)
        raise ConfigError("global_batch_size", global_batch_size,
                          f"a multiple of the {replicas} replicas in sync",
                          f"For example {lower} or {lower + replicas}.")
    return global_batch_size // replicas


def _gpu_capabilities() -> list[tuple[int, int]]:
    """(major, minor) CUDA compute capability of every visible GPU; [] without GPUs."""
    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability", (0, 0))))
    return caps


def _accelerator_types(strategy: tf.distribute.Strategy | None) -> set[str]:
    """{"TPU"} under TPUStrategy, {"GPU"} with visible GPUs, else empty (CPU only)."""
    if strategy is not None and isinstance(strategy, tf.distribute.TPUStrategy):
        return {"TPU"}
    return {"GPU"} if _gpu_capabilities() else set()


def resolve_precision(name: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Resolves `auto` to a Keras mixed-precision policy name for the hardware at hand.

    auto: mixed_bfloat16 on TPU and on GPUs of compute capability >= 8.0 (Ampere, Hopper: the
    same tensor-core rate as float16, float32's range, so no loss scaling); mixed_float16 on 7.x
    (Volta, Turing: float16 tensor cores only); float32 on older GPUs and on CPU. With several
    GPUs the oldest decides. Explicit names are returned unchanged.
    """
    errors.one_of("precision", name, PRECISIONS)
    if name != "auto":
        if name == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
            logging.warning(
                "precision=mixed_float16 on CPU runs, but is slower than float32; "
                "use --precision=auto or float32 on CPU."
            )
        return name
    if "TPU" in _accelerator_types(strategy):
        return "mixed_bfloat16"
    caps = _gpu_capabilities()
    if caps and min(caps) >= _MIN_BFLOAT16_CAPABILITY:
        return "mixed_bfloat16"
    if caps and min(caps) >= _MIN_FLOAT16_CAPABILITY:
        return "mixed_float16"
    return "float32"


def resolve_jit_compile(value: str | bool, strategy: tf.distribute.Strategy | None = None
                        ) -> bool:
    """`auto` -> XLA on GPUs and TPUs (fused kernels usually win there), off on CPU (measured
    here: the seed CNN trains at 36 images/s with XLA vs 57 without). true/false win."""
    if isinstance(value, bool):
        return value
    errors.one_of("jit_compile", value, JIT_COMPILE)
    if value != "auto":
        return value == "true"
    return bool(_accelerator_types(strategy))


def compiles_update(strategy: tf.distribute.Strategy) -> bool:
    """Can the optimizer update go inside the XLA-compiled step under `strategy`?

    Only without cross-replica reduction: under Mirrored/MultiWorker/TPU strategies
    `apply_gradients` all-reduces through `merge_call`, which XLA cannot compile, so there the
    update stays outside and XLA covers the forward and backward pass.
    """
    return strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy,
                   tf.distribute.TPUStrategy))


def describe_devices() -> dict[str, list[str]]:
    """Visible logical devices by type, for the run summary."""
    out: dict[str, list[str]] = {}
    for device in tf.config.list_logical_devices():
        out.setdefault(device.device_type, []).append(device.name)
    return out
