"""The compiled pieces of the training loop: the loss and the distributed train step (the train
benchmark times the same step)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata.training import adversary as adversary_lib
from xray_tfdata.training import distribute

def make_loss_fn(class_weights: np.ndarray, label_smoothing: float,
                 global_batch_size: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Per-replica loss: weighted, label-smoothed cross-entropy averaged over the GLOBAL batch.

    Dividing by the global (not per-replica) batch makes the replicas' summed gradients equal the
    single-device gradient of the same global batch.
    """
    weights = tf.constant(class_weights, tf.float32)
    num_classes = len(class_weights)  # one weight per class: the head's size

    def loss_fn(labels_: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        labels_ = tf.cast(tf.reshape(labels_, [-1]), tf.int32)
        one_hot = tf.one_hot(labels_, num_classes, dtype=tf.float32)
        per_example = keras.losses.categorical_crossentropy(
            one_hot, tf.cast(probabilities, tf.float32), label_smoothing=label_smoothing)
        per_example = per_example * tf.gather(weights, labels_)
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)

    return loss_fn


def make_replica_step(model: keras.Model, optimizer: keras.Optimizer, loss_fn: Callable, *,
                      jit_compile: bool, loss_scaling: bool, augment: Callable | None = None,
                      compile_update: bool = False,
                      backbone_optimizer: keras.Optimizer | None = None,
                      backbone_ids: frozenset[int] = frozenset(),
                      adversary: adversary_lib.Adversary | None = None,
                      ) -> Callable[..., tf.Tensor | dict[str, tf.Tensor]]:
    """One replica's step on one batch: (device augmentation,) forward, loss (+ the model's
    regularization losses), backward, update; returns the replica's loss. Training and the train
    benchmark both run it, so the benchmark times exactly the step training runs.

    With the collection `adversary` (training/adversary.py) the step takes (images, labels,
    collection ids); the head's loss joins the classifier's before loss scaling (the model's
    gradients, the reversed ones included, come from the one scaled sum), the head's own
    float32 gradients update it through its own optimizer, and the step returns {"loss": the
    classifier's loss, **adversary.SUMS}.

    `augment(images, replica_id, step)` (device_augment.make_step_augment) augments the batch on
    this replica after it arrived, seeded by (seed, replica id, the optimizer's step count), so
    replicas draw different transforms and a rerun draws the same ones.

    XLA (jit_compile) covers augmentation, forward and backward pass; the optimizer update joins
    them only with `compile_update` (distribute.compiles_update: one replica, no cross-replica
    reduction). Under Mirrored/MultiWorker/TPU strategies apply_gradients all-reduces through
    merge_call, which XLA cannot compile, so there the update stays outside.

    The variables are the model's trainable ones when this is called (a frozen backbone's are
    left out); with `backbone_optimizer`, those in `backbone_ids` are updated by it instead
    (their own learning rate, training/finetune.py).
    """
    variables = model.trainable_variables
    head_variables = adversary.head.trainable_variables if adversary is not None else []
    in_backbone = [backbone_optimizer is not None and id(v) in backbone_ids for v in variables]
    own = [i for i, b in enumerate(in_backbone) if not b]
    other = [i for i, b in enumerate(in_backbone) if b]

    def forward_backward(images: tf.Tensor, labels_: tf.Tensor, *collections: tf.Tensor):
        if augment is not None:
            context = tf.distribute.get_replica_context()
            replica = context.replica_id_in_sync_group if context is not None else 0
            # The update count before this step's update: batch k of a fresh run gets step k.
            images = augment(images, replica, tf.convert_to_tensor(optimizer.iterations))
        with tf.GradientTape(persistent=adversary is not None) as tape:
            if adversary is None:
                probabilities = model(images, training=True)
            else:
                probabilities, terms = adversary.forward(images, labels_, *collections)
            loss = loss_fn(labels_, probabilities)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            total = loss if adversary is None else loss + terms["loss"]
            # Under float16 the loss is scaled up so small gradients survive; the
            # LossScaleOptimizer divides the gradients by the same scale before applying them.
            scaled = optimizer.scale_loss(total) if loss_scaling else total
        grads = tape.gradient(scaled, variables)
        if adversary is None:
            return loss, grads
        grads += tape.gradient(terms["loss"], head_variables)
        return {"loss": loss, **{name: terms[name] for name in adversary_lib.SUMS}}, grads

    def apply(grads) -> None:
        optimizer.apply_gradients([(grads[i], variables[i]) for i in own])
        if other:
            backbone_optimizer.apply_gradients([(grads[i], variables[i]) for i in other])
        if head_variables:
            adversary.optimizer.apply_gradients(zip(grads[len(variables):], head_variables))

    def whole_step(*batch: tf.Tensor) -> tf.Tensor | dict[str, tf.Tensor]:
        loss, grads = forward_backward(*batch)
        apply(grads)
        return loss

    if jit_compile and compile_update:
        return tf.function(whole_step, jit_compile=True)
    compute = tf.function(forward_backward, jit_compile=jit_compile)

    def replica_step(*batch: tf.Tensor) -> tf.Tensor | dict[str, tf.Tensor]:
        loss, grads = compute(*batch)
        apply(grads)
        return loss

    return replica_step


def make_train_function(strategy: tf.distribute.Strategy, model: keras.Model,
                        optimizer: keras.Optimizer, loss_fn: Callable, *, jit_compile: bool,
                        loss_scaling: bool, augment: Callable | None = None,
                        backbone_optimizer: keras.Optimizer | None = None,
                        backbone_ids: frozenset[int] = frozenset(),
                        adversary: adversary_lib.Adversary | None = None,
                        ) -> Callable[[Any, tf.Tensor], dict[str, tf.Tensor]]:
    """Returns f(distributed_iterator, num_steps) -> {"loss": mean global training loss of
    those steps} (`num_steps` steps per call: --steps_per_execution), with the `adversary`
    also its SUMS over the steps and replicas. `augment`, `backbone_*`, `adversary`: see
    make_replica_step.

    Outside XLA in any case: this loop over steps (it pulls from the distributed iterator, a
    host-side op) and the cross-replica loss reduction."""
    replica_step = make_replica_step(model, optimizer, loss_fn, jit_compile=jit_compile,
                                     loss_scaling=loss_scaling, augment=augment,
                                     compile_update=distribute.compiles_update(strategy),
                                     backbone_optimizer=backbone_optimizer,
                                     backbone_ids=backbone_ids, adversary=adversary)
    names = ("loss",) + (adversary_lib.SUMS if adversary is not None else ())

    @tf.function
    def train_steps(iterator: Any, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        totals = {name: tf.constant(0.0, tf.float32) for name in names}
        for _ in tf.range(num_steps):
            per_replica = strategy.run(replica_step, args=tuple(next(iterator)))
            if adversary is None:
                per_replica = {"loss": per_replica}
            # Each replica's loss is already divided by the global batch: SUM = global mean.
            totals = {name: totals[name] + tf.cast(strategy.reduce(
                tf.distribute.ReduceOp.SUM, per_replica[name], axis=None), tf.float32)
                for name in names}
        return {**totals, "loss": totals["loss"] / tf.cast(num_steps, tf.float32)}

    return train_steps
