"""TrainConfig: every setting of a training run, validated up front.

Field names equal the `python -m xray_tfdata.train` flag names, so an error about a field is an
error about the flag of the same name. Only the global batch size is stored; the per-replica size
is derived from the strategy (distribute.per_replica_batch_size).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from xray_tfdata import errors
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import collection_select, service
from xray_tfdata.inputs.device_augment import AUGMENT_ON
from xray_tfdata.models import MODEL_NAMES
from xray_tfdata.training.distribute import JIT_COMPILE, PRECISIONS

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")
# inputs/sampling.SAMPLING_MODES, repeated here so flag checks do not import TensorFlow.
SAMPLING_MODES: tuple[str, ...] = ("natural", "balanced", "balanced_collections")
# --learning_rate is the rate for this global batch; --scale_lr multiplies it by batch / this.
LR_REFERENCE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the `train` command's --help says what each does)."""

    records_dir: str
    model_dir: str
    model: str = "seed_cnn"
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = train examples // global_batch_size
    global_batch_size: int = 32
    image_size: int | None = None  # None = the records' size (from the manifest)
    learning_rate: float = 1e-3
    scale_lr: bool = False
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    # Balanced by default: the Kaggle set is 1 : 2.75 : 7.4 and unweighted training collapses to
    # the majority class on small real sets (issue 9). Ignored with sampling="balanced".
    class_weights: str = "balanced"
    sampling: str = "natural"  # "balanced" / "balanced_collections" (inputs/sampling.py)
    # Train (and validate) on these collections only / on all but these (issue 19): filtered in
    # the input pipeline, counts from the manifest (inputs/collection_select.py).
    collections: tuple[str, ...] = ()
    exclude_collections: tuple[str, ...] = ()
    freeze_backbone_epochs: int = 0  # backbones: train the head only for this many epochs
    backbone_learning_rate_multiplier: float = 1.0  # backbone rate = this x the head's
    calibrate: bool = True  # temperature scaling on val at the end (best.keras, export)
    precision: str = "auto"
    jit_compile: str = "auto"  # auto = on for GPU/TPU, off on CPU; "true" / "false" win
    steps_per_execution: int = 1
    cache: str = "memory"
    shuffle_buffer: int = 2048
    augment: bool = True
    augment_on: str = "auto"  # host | device | auto (device when a GPU or TPU is present)
    data_service: str = ""  # grpc://HOST:PORT of a tf.data service dispatcher; "" = local input
    data_service_job: str = ""  # job name prefix the trainer processes of one run share
    deterministic: bool = False
    seed: int = 0
    patience: int = 0  # epochs without a better val macro-F1 before stopping; 0 = never
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    max_checkpoints: int = 3
    profile_steps: int = 0
    weights: str | None = None
    dropout: float = 0.5
    val_split: str = "val"
    export: bool = True

    def __post_init__(self) -> None:
        errors.positive_int("epochs", self.epochs)
        errors.positive_int("global_batch_size", self.global_batch_size)
        errors.positive_int("steps_per_execution", self.steps_per_execution)
        errors.positive_int("max_checkpoints", self.max_checkpoints)
        for name in ("steps_per_epoch", "patience", "checkpoint_every", "profile_steps",
                     "shuffle_buffer", "seed", "freeze_backbone_epochs"):
            errors.non_negative_int(name, getattr(self, name))
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or self.image_size < 8
        ):
            raise ConfigError("image_size", self.image_size, "an integer >= 8, or None to use "
                              "the records' size")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 10
                and math.isfinite(self.learning_rate)):
            raise ConfigError("learning_rate", self.learning_rate, "a number in (0, 10]",
                              "Typical: 1e-3 for adamw, 0.05 for sgd.")
        if isinstance(self.jit_compile, bool):  # library callers may pass a bool
            object.__setattr__(self, "jit_compile", "true" if self.jit_compile else "false")
        errors.one_of("jit_compile", self.jit_compile, JIT_COMPILE)
        errors.in_range("weight_decay", self.weight_decay, 0.0, 1.0, closed_high=False)
        errors.in_range("momentum", self.momentum, 0.0, 1.0, closed_high=False)
        errors.in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, closed_high=False)
        errors.in_range("dropout", self.dropout, 0.0, 1.0, closed_high=False)
        if not (isinstance(self.warmup_epochs, (int, float)) and
                0 <= self.warmup_epochs <= self.epochs):
            raise ConfigError("warmup_epochs", self.warmup_epochs,
                              f"a number in [0, epochs={self.epochs}]")
        errors.one_of("optimizer", self.optimizer, OPTIMIZERS)
        errors.one_of("class_weights", self.class_weights, CLASS_WEIGHTS)
        errors.one_of("sampling", self.sampling, SAMPLING_MODES)
        for name in ("collections", "exclude_collections"):  # "a,b" or a list from a flag
            object.__setattr__(self, name, collection_select.parse_names(getattr(self, name)))
        errors.in_range("backbone_learning_rate_multiplier",
                        self.backbone_learning_rate_multiplier, 0.0, 10.0,
                        allowed="a number in [0, 10] (0 keeps the backbone fixed)")
        if self.model == "seed_cnn" and (self.freeze_backbone_epochs
                                         or self.backbone_learning_rate_multiplier != 1.0):
            field = ("freeze_backbone_epochs" if self.freeze_backbone_epochs
                     else "backbone_learning_rate_multiplier")
            raise ConfigError(field, getattr(self, field), "unset for the seed CNN (it has no "
                              "backbone)", "Pass --model=densenet121 (or another backbone).")
        if self.freeze_backbone_epochs > self.epochs:
            raise ConfigError("freeze_backbone_epochs", self.freeze_backbone_epochs,
                              f"at most epochs={self.epochs}")
        errors.one_of("precision", self.precision, PRECISIONS)
        errors.one_of("augment_on", self.augment_on, AUGMENT_ON)
        if self.data_service:
            service.check_address("data_service", self.data_service, scheme=True)
        if not self.cache:
            raise ConfigError("cache", self.cache, "'none', 'memory' or a file path prefix")
        if not self.records_dir:
            raise ConfigError("records_dir", self.records_dir, "a records directory")
        if not self.model_dir:
            raise ConfigError("model_dir", self.model_dir, "a directory for checkpoints/logs")
        errors.one_of("model", self.model, MODEL_NAMES)
        if self.weights and str(self.weights).lower() == "imagenet":
            if self.model == "seed_cnn":
                raise ConfigError("weights", self.weights, "unset or a local file for the seed "
                                  "CNN (ImageNet weights exist only for the backbones)",
                                  "Pass --model=densenet121 (or another backbone).")
        elif self.weights and not (Path(self.weights).is_file()
                                   and self.weights.endswith((".h5", ".keras"))):
            raise ConfigError(
                "weights", self.weights,
                "unset (random init), 'imagenet' (a backbone's keras.applications weights, from "
                "Keras' cache or downloaded into it), or the path of an existing local .h5 / "
                ".weights.h5 file",
            )

    @property
    def effective_learning_rate(self) -> float:
        """The peak learning rate, scaled linearly with the global batch when scale_lr is set."""
        if self.scale_lr:
            return self.learning_rate * self.global_batch_size / LR_REFERENCE_BATCH
        return float(self.learning_rate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
