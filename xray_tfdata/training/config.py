"""TrainConfig: every setting of a training run, validated up front.

Field names equal the `python -m xray_tfdata.train` flag names, so an error about a field is an
error about the flag of the same name. Only the global batch size is stored; the per-replica size
is derived from the strategy (distribute.per_replica_batch_size).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from xray_tfdata import errors, labels, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs.device_augment import AUGMENT_ON
from xray_tfdata.inputs.pipeline import InputConfig
from xray_tfdata.models import MODEL_NAMES
from xray_tfdata.settings import nested, setting
from xray_tfdata.training.distribute import JIT_COMPILE, PRECISIONS

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
# --learning_rate is the rate for this global batch; --scale_lr multiplies it by batch / this.
LR_REFERENCE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; each field is the `train` command's flag of the same name.

    The input pipeline's settings are nested (`input`, as Model Garden nests DataConfig in the
    task config); their flags keep their names (--global_batch_size, --cache, --sampling, ...).
    """

    records_dir: str = setting(help="Records directory (with dataset_info.json).",
                               flag_default="workspace/records")
    model_dir: str = setting(
        help="Output: run_spec.json, checkpoints/, logs/, history.csv, best.keras, export/, "
             "summary.json. An existing run here is resumed unless --overwrite; a rerun with "
             "other run-defining settings is refused (see README).",
        flag_default="workspace/model")
    input: InputConfig = nested(InputConfig)
    model: str = setting("seed_cnn", "Model architecture.", allowed=MODEL_NAMES)
    weights: str | None = setting(
        None, "'imagenet' (backbones: keras.applications' notop file from Keras' cache "
        "$KERAS_HOME/models or ~/.keras/models, downloaded there when absent), or a local weights "
        "file (.h5 / .weights.h5): a full model's weights or an ImageNet 'notop' backbone file.")
    dropout: float = setting(0.5, "Dropout rate before the output layer.")
    epochs: int = setting(10, "Training epochs.")
    steps_per_epoch: int = setting(0, "Steps per epoch; 0 = train examples // global_batch_size.")
    image_size: int | None = setting(
        None, "Model input side; must match the records. Default: the records' size.")
    learning_rate: float = setting(1e-3, "Peak learning rate (after warmup), for a global batch "
                                   f"of {LR_REFERENCE_BATCH} when --scale_lr.")
    scale_lr: bool = setting(False, "Scale --learning_rate linearly by global_batch_size / "
                             f"{LR_REFERENCE_BATCH}.")
    optimizer: str = setting("adamw", "adamw or sgd (with momentum).", allowed=OPTIMIZERS)
    weight_decay: float = setting(1e-4, "Decoupled weight decay.")
    momentum: float = setting(0.9, "SGD momentum.")
    warmup_epochs: float = setting(1.0, "Linear warmup length before the cosine decay.")
    label_smoothing: float = setting(0.0, "Label smoothing in [0, 1).")
    # Balanced by default: the Kaggle set is 1 : 2.75 : 7.4 and unweighted training collapses to
    # the majority class on small real sets (issue 9). Ignored with sampling="balanced".
    class_weights: str = setting(
        "balanced", "'balanced' (default) weighs the loss by n / (K * n_class) from the train "
        "split's counts; 'none' weighs every example alike. Off with --sampling=balanced, which "
        "already equalises the classes.", allowed=labels.CLASS_WEIGHT_MODES)
    collection_adversary: float = setting(
        0.0, "Weight of a gradient-reversal head that predicts each training image's collection "
        "within its class from the embedding (issue 19): the layers below learn to hide "
        "exposure, film and detector. 0 = off. Needs records of several collections sharing a "
        "class; never part of best.keras or the export.")
    freeze_backbone_epochs: int = setting(0, "Backbones: train only the head for this many "
                                          "epochs (BatchNorm in inference mode), then everything.")
    backbone_learning_rate_multiplier: float = setting(
        1.0, "Backbones: the backbone's learning rate = this x --learning_rate.")
    calibrate: bool = setting(True, "Fit a temperature on the val split at the end; best.keras "
                              "and the export then return calibrated probabilities "
                              "(calibration.json).")
    positive_class: str = setting(
        "", "The class whose operating point (the threshold reaching 95% sensitivity on val) "
        "calibration.json records; default COVID19 when the records have it, else the first "
        "class other than NORMAL.")
    precision: str = setting(
        "auto", "auto = mixed_bfloat16 on TPU and on GPUs with compute capability >= 8.0, "
        "mixed_float16 on 7.x, float32 on older GPUs and on CPU.", allowed=PRECISIONS)
    jit_compile: str = setting(
        "auto", "XLA-compile the train step: auto = on with GPUs/TPUs, off on CPU (slower "
        "there); true/false force it.", allowed=JIT_COMPILE)
    steps_per_execution: int = setting(1, "Training steps per tf.function call.")
    augment_on: str = setting(
        "auto", "Where augmentation runs: host (tf.data, CPU cores), device (inside the train "
        "step on each replica; the host only reads cached uint8), auto = device when a GPU or "
        "TPU is present.", allowed=AUGMENT_ON)
    deterministic: bool = setting(False, "Reproducible runs: deterministic input order and "
                                  "deterministic TF ops (slower).")
    seed: int = setting(0, "Seed for weights, data order and augmentation.")
    patience: int = setting(0, "Early stopping: epochs without a better val macro-F1; 0=off.")
    checkpoint_every: int = setting(
        0, "Also checkpoint every N steps (0 = only at the end of each epoch).")
    max_checkpoints: int = setting(3, "Checkpoints to keep.")
    profile_steps: int = setting(0, "Profile this many steps (after the first call) into logs/ "
                                 "for TensorBoard's Profile tab; 0 = off.")
    val_split: str = setting("val", "Split used for validation and best-model selection.")
    export: bool = setting(True, "Export the best model as a serving SavedModel at the end.")

    def __post_init__(self) -> None:
        errors.positive_int("epochs", self.epochs)
        # Whether it is one of the records' classes is checked against them (resolve_data).
        if self.positive_class and not labels.is_class_name(self.positive_class):
            raise ConfigError("positive_class", self.positive_class,
                              "empty (the default) or an upper-case class name such as COVID19")
        errors.positive_int("steps_per_execution", self.steps_per_execution)
        errors.positive_int("max_checkpoints", self.max_checkpoints)
        for name in ("steps_per_epoch", "patience", "checkpoint_every", "profile_steps",
                     "seed", "freeze_backbone_epochs"):
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
        if isinstance(self.collection_adversary, bool) or not (
                isinstance(self.collection_adversary, (int, float))
                and 0 <= self.collection_adversary < math.inf):
            raise ConfigError("collection_adversary", self.collection_adversary,
                              "a number >= 0 (0 = off)", "Typical: 0.1 to 1.")
        if not (isinstance(self.warmup_epochs, (int, float)) and
                0 <= self.warmup_epochs <= self.epochs):
            raise ConfigError("warmup_epochs", self.warmup_epochs,
                              f"a number in [0, epochs={self.epochs}]")
        errors.one_of("optimizer", self.optimizer, OPTIMIZERS)
        errors.one_of("class_weights", self.class_weights, labels.CLASS_WEIGHT_MODES)
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
        if not isinstance(self.input, InputConfig):
            raise ConfigError("input", self.input, "an inputs.pipeline.InputConfig")
        if not self.records_dir:
            raise ConfigError("records_dir", self.records_dir, "a records directory")
        if not self.model_dir:
            raise ConfigError("model_dir", self.model_dir, "a directory for checkpoints/logs")
        for field in ("records_dir", "model_dir"):
            paths.check(field, getattr(self, field))  # a URL's scheme must be one TF knows
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
    def global_batch_size(self) -> int:
        """The batch summed over all replicas (an input setting: --global_batch_size)."""
        return self.input.global_batch_size

    @property
    def effective_learning_rate(self) -> float:
        """The peak learning rate, scaled linearly with the global batch when scale_lr is set."""
        if self.scale_lr:
            return self.learning_rate * self.global_batch_size / LR_REFERENCE_BATCH
        return float(self.learning_rate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
