"""Everything a training run builds before its first step, each piece from what it needs.

resolve_data reads the manifest (cheap, no TF op: the command calls it before the strategy);
build_model makes the model and its optimizers inside the strategy's scope; restore resumes the
checkpointed state; train_input and validation_dataset are the run's two input pipelines (the
nested InputConfig, completed by the records' image spec and the run's seed); step_factory
compiles the train function for a phase (backbone frozen or not).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import labels, models
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import collection_select, pipeline
from xray_tfdata.records import manifest as manifest_lib
from xray_tfdata.training import adversary, checkpointing, distribute, finetune, steps
from xray_tfdata.training.config import TrainConfig

ModelBuilder = Callable[..., keras.Model]


@dataclasses.dataclass(frozen=True)
class ResolvedData:
    """What the records say, checked against the config: read once, before any TF op."""

    info: manifest_lib.DatasetInfo
    image_size: int
    channels: int
    resize_mode: str
    num_train: int
    steps_per_epoch: int
    intensity: str = "none"  # the records' --intensity: the export applies it to uploads
    # --collection_adversary > 0: its targets (refused in resolve_data when it has none).
    collection_plan: adversary.CollectionPlan | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """The records' class set: the head's size and order, recorded in every output."""
        return self.info.classes

    def positive_class(self, requested: str = "") -> str:
        """The operating point's class (--positive_class, checked by resolve_data)."""
        return labels.positive_class(self.classes, requested)


def resolve_data(config: TrainConfig) -> ResolvedData:
    """Reads the manifest and checks the records fit the config; cheap (no TF ops).

    Raises:
      ManifestError: records of another image size, without a train split, or whose train split
        (of the selected collections) holds fewer than two classes: nothing to tell apart.
    """
    manifest = manifest_lib.read_info(config.records_dir)
    image = manifest.image
    image_size = config.image_size or image.size
    channels = image.channels
    manifest_lib.check_compatible(manifest, image_size=image_size, channels=channels,
                                  records_dir=config.records_dir)
    manifest_lib.require_splits(manifest, ["train"], config.records_dir, purpose="training")
    splits = manifest.splits
    for split, field in (("train", "records_dir"), (config.val_split, "val_split")):
        if split not in splits or not collection_select.num_examples(
                manifest, split, config.input.collections, config.input.exclude_collections):
            raise ConfigError(
                field, config.records_dir if field == "records_dir" else split,
                f"records with a non-empty {split!r} split (found: {sorted(splits)})",
                "Rebuild the records with --val_fraction > 0, or pass --val_split=<split>.",
            )
    num_train = collection_select.num_examples(manifest, "train", config.input.collections,
                                               config.input.exclude_collections)
    if config.positive_class and config.positive_class not in manifest.classes:
        raise ConfigError("positive_class", config.positive_class,
                          f"one of the records' classes {list(manifest.classes)}",
                          "Leave it empty for the default (COVID19 when present, else the first "
                          "class other than NORMAL).")
    check_classes_present(manifest, collection_select.class_counts(
        manifest, "train", config.input.collections, config.input.exclude_collections))
    steps_per_epoch = config.steps_per_epoch or num_train // config.global_batch_size
    if steps_per_epoch < 1:
        raise ConfigError("global_batch_size", config.global_batch_size,
                          f"at most the {num_train} training examples",
                          "Lower --global_batch_size or set --steps_per_epoch.")
    collection_plan = None
    if config.collection_adversary:
        collection_plan = adversary.plan(manifest, config.collection_adversary,
                                         config.input.collections,
                                         config.input.exclude_collections)
    return ResolvedData(info=manifest, image_size=image_size, channels=channels,
                        resize_mode=image.resize_mode, num_train=num_train,
                        steps_per_epoch=steps_per_epoch, intensity=image.intensity,
                        collection_plan=collection_plan)


def check_classes_present(info: manifest_lib.DatasetInfo, counts: list[int]) -> None:
    """Refuses a train split with fewer than two classes (issue 16: a labels CSV whose labels
    did not map gave a one-class set, and training "succeeded" at val accuracy 1.0)."""
    present = [c for c, n in zip(info.classes, counts) if n > 0]
    if len(present) < 2:
        listed = ", ".join(f"{c} {n}" for c, n in zip(info.classes, counts))
        raise manifest_lib.ManifestError(
            f"The train split of {info.records_dir!r} holds {len(present)} class(es) "
            f"({listed}): a classifier needs examples of at least two. Rebuild the records "
            "with a --label_map that maps the source's labels onto the classes (the manifest's "
            "`sources` lists the skipped labels), or --classes naming only classes the data has.")


def class_weight_vector(config: TrainConfig, manifest: manifest_lib.DatasetInfo) -> np.ndarray:
    """Per-class loss weights: ones, or n / (K * n_c) from the train split's counts ("balanced").

    Ones under balanced sampling: the batches already hold every class equally, and weighting
    them again would over-correct (the minority class counted n / n_c times twice)."""
    if config.class_weights == "none" or config.input.sampling != "natural":
        return np.ones(len(manifest.classes), np.float32)
    counts = np.asarray(collection_select.class_counts(
        manifest, "train", config.input.collections, config.input.exclude_collections),
        np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 1.0)
    return weights.astype(np.float32)


def make_lr_schedule(config: TrainConfig, steps_per_epoch: int, scale: float = 1.0,
                     ) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to the (optionally batch-scaled) peak x `scale`, then cosine decay
    to 0."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    peak = config.effective_learning_rate * scale
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(total - warmup, 1),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int, precision: str,
                   lr_scale: float = 1.0) -> keras.Optimizer:
    """AdamW or SGD+momentum on the warmup+cosine schedule; loss scaling under float16."""
    schedule = make_lr_schedule(config, steps_per_epoch, lr_scale)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                           weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The model and what updates it: the head's optimizer, the backbone's own (or None); the
    collection adversary (or None) with its own optimizer."""

    model: keras.Model
    optimizer: keras.Optimizer
    backbone_optimizer: keras.Optimizer | None
    backbone_ids: frozenset[int]
    adversary: adversary.Adversary | None = None


def build_model(config: TrainConfig, strategy: tf.distribute.Strategy, data: ResolvedData,
                precision: str, model_builder: ModelBuilder) -> ModelParts:
    """The model and its optimizers, built inside the strategy's scope."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = model_builder(config.model, data.image_size, data.channels,
                              num_classes=len(data.classes), weights=config.weights,
                              dropout=config.dropout, seed=config.seed)
        optimizer = make_optimizer(config, data.steps_per_epoch, precision)
        head_vars, backbone_vars = finetune.split_variables(model)
        collection_adversary = None
        if data.collection_plan is not None:  # after the model: its weights stay the same
            collection_adversary = adversary.build(model, data.collection_plan,
                                                   config.collection_adversary,
                                                   config.global_batch_size, config.seed)
        backbone_optimizer = None
        if backbone_vars and config.backbone_learning_rate_multiplier != 1.0:
            backbone_optimizer = make_optimizer(config, data.steps_per_epoch, precision,
                                                config.backbone_learning_rate_multiplier)
            backbone_optimizer.build(backbone_vars)
        # Build the slots now, inside the scope, so they are mirrored like the weights; for
        # every variable, before any freezing, so checkpoints look the same in both phases.
        optimizer.build(head_vars if backbone_optimizer is not None
                        else model.trainable_variables)
    return ModelParts(model, optimizer, backbone_optimizer,
                      frozenset(id(v) for v in backbone_vars), collection_adversary)


@dataclasses.dataclass(frozen=True)
class Restored:
    """The checkpointed run state and where this session starts."""

    state: checkpointing.RunState
    checkpointer: checkpointing.Checkpointer
    history: checkpointing.History
    resumed_from: int
    start_epoch: int


def restore(config: TrainConfig, strategy: tf.distribute.Strategy, parts: ModelParts,
            model_dir: Path) -> Restored:
    """Restores the newest checkpoint in model_dir, if any (a resumed run)."""
    state = checkpointing.RunState(parts.model, parts.optimizer, parts.backbone_optimizer,
                                   parts.adversary)
    checkpointer = checkpointing.Checkpointer(state, model_dir, strategy, config.max_checkpoints)
    resumed_from = checkpointer.restore()
    start_epoch = min(int(state.epoch.numpy()), config.epochs)
    history = checkpointing.History(
        model_dir / checkpointing.HISTORY_NAME, distribute.is_chief(strategy), start_epoch,
        checkpointing.HISTORY_FIELDS + (adversary.METRICS if parts.adversary else ()))
    return Restored(state, checkpointer, history, resumed_from, start_epoch)


@dataclasses.dataclass(frozen=True)
class TrainInput:
    """The distributed train iterator, where augmentation runs, and the step's augmentation."""

    iterator: Any
    augment_on: str  # "host" | "device", resolved
    step_augment: Callable | None  # device augmentation inside the step, else None


def train_input(config: TrainConfig, strategy: tf.distribute.Strategy, data: ResolvedData,
                start_epoch: int) -> TrainInput:
    """The train split's pipeline, fetching batches to the devices ahead of the step."""
    from xray_tfdata.inputs import device_augment  # pylint: disable=C0415

    augment_on = device_augment.resolve_augment_on(config.augment_on)
    # The nested input settings, completed by what only the run knows: the records' image
    # spec, and the run's seed, reseeded per resumed epoch so a resumed run does not replay
    # epoch 0's order.
    input_config = dataclasses.replace(
        config.input, image_size=data.image_size, channels=data.channels, training=True,
        seed=config.seed + start_epoch, deterministic=config.deterministic,
        label_collections=config.collection_adversary > 0)
    # Device augmentation: the step augments (seeded by the global step, so resuming needs no
    # reseed); the host pipeline then only reads cached uint8, shuffles, batches, prefetches.
    step_augment = None
    if config.input.augment and augment_on == "device":
        step_augment = device_augment.make_step_augment(input_config.augment_params,
                                                        config.seed)
    input_config = device_augment.host_input_config(input_config, augment_on)
    train_ds = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(data.info, "train", input_config),
        options=device_augment.input_options(strategy))
    return TrainInput(iter(train_ds), augment_on, step_augment)


def validation_dataset(config: TrainConfig, data: ResolvedData) -> tf.data.Dataset:
    """The validation split in evaluation mode (every worker reads all of it)."""
    return pipeline.build_dataset(data.info, config.val_split, pipeline.InputConfig(
        global_batch_size=config.global_batch_size, image_size=data.image_size,
        channels=data.channels, training=False, augment=False,
        cache="none" if config.input.cache == "none" else "memory", seed=config.seed,
        collections=config.input.collections,
        exclude_collections=config.input.exclude_collections))


def step_factory(config: TrainConfig, strategy: tf.distribute.Strategy, parts: ModelParts,
                 class_weights: np.ndarray, precision: str, jit_compile: bool,
                 step_augment: Callable | None,
                 ) -> Callable[[bool], Callable[[Any, tf.Tensor], tf.Tensor]]:
    """f(frozen) -> the compiled train function for that phase (its variable list is fixed
    when traced, so the unfreeze needs a new one)."""
    loss_fn = steps.make_loss_fn(class_weights, config.label_smoothing, config.global_batch_size)

    def make_train_steps(frozen: bool):
        finetune.set_backbone_frozen(parts.model, frozen)
        return steps.make_train_function(
            strategy, parts.model, parts.optimizer, loss_fn, jit_compile=jit_compile,
            loss_scaling=precision == "mixed_float16", augment=step_augment,
            backbone_optimizer=parts.backbone_optimizer, backbone_ids=parts.backbone_ids,
            adversary=parts.adversary)

    return make_train_steps


def default_model_builder(name: str, image_size: int, channels: int,
                          **kwargs: Any) -> keras.Model:
    return models.build_model(name, image_size, channels, **kwargs)


def prepare_process(config: TrainConfig) -> None:
    """Process-wide preparation before the first run of a command (train, loco): ImageNet
    weights into Keras' cache now (offline: one clear ImageNetWeightsUnavailable instead of a
    traceback later) and, with --deterministic, deterministic TF ops (process-wide, so the
    entry point sets it, never a run: the same seed then gives the same weights bit for bit)."""
    if config.weights and config.weights.lower() == models.IMAGENET:
        models.fetch_imagenet(config.model)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
