"""The collection adversary (`train --collection_adversary=WEIGHT`, issue 19).

A small head on the model's embedding (the layer before the classifier, layer_names.EMBEDDING_LAYER)
predicts which collection each training image came from, behind a gradient-reversal op: identity
forward, -WEIGHT x the gradient backward (Ganin & Lempitsky, 2015). The head learns to name the
collection; the layers under the embedding receive the opposite of its gradient and so learn to
hide it: exposure, film and detector stop being features the classifier can read.

Within each class: the head scores the collections per class ([classes, collections] logits) and
only the true class's row is read, softmaxed over the collections that hold that class in the
train split. Asked unconditioned, "which collection?" is half answered by the class wherever the
collections' class mixes differ (the Kaggle set: COVID19 only from adults), so hiding the
collection would also hide the class; conditioned, the class answers nothing. A class held by one
collection only has nothing to guess: its examples are masked out of the loss and the accuracy.

A plain reversal fails in three ways, each measured on the toy problem of the tests (a corner
patch marks the collection): a ReLU head is killed, a slow head is fooled, an unbounded push
flips the collection instead of removing it. Hence a leaky-ReLU head, its own faster optimizer
(HEAD_LEARNING_RATE) and "confuse, never fool" (Adversary.forward).

Mixed precision: the embedding is cast to float32 before the reversal and the head runs in
float32; its loss joins the classifier's before loss scaling, so the model's gradients (the
reversed ones included) come from one scaled sum; the head's own gradients need no scaling.

Not part of the model: the head is its own keras.Model, checkpointed with the run (a resume
continues it), never saved in best.keras nor exported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import collection_select
from xray_tfdata.layer_names import EMBEDDING_LAYER
from xray_tfdata.records.manifest import DatasetInfo

# Its metrics, as history.csv columns, epoch-line and TensorBoard names.
METRICS: tuple[str, ...] = ("adversary_loss", "adversary_accuracy")
# What one train call sums over its steps and replicas (epoch_metrics turns them into METRICS).
SUMS: tuple[str, ...] = ("adversary_nll", "adversary_correct", "adversary_count")
HIDDEN_UNITS = 64
# The head's own Adam learning rate: the head must stay near its best answer for the current
# embedding, or the model's reversed gradient teaches the embedding the collection again, flipped,
# instead of removing it (measured on the shortcut toy: a head at the model's rate of 1e-3
# left the probe at 0.85-1.0; at 0.03 the probe fell to 0.41-0.59).
HEAD_LEARNING_RATE = 0.03
_MASKED_LOGIT = -1e9  # a collection that does not hold the true class: never the answer


@dataclasses.dataclass(frozen=True)
class CollectionPlan:
    """The adversary's targets, from the manifest: collection ids, and which collections hold
    each class in the train split (`holds[class id, collection id]`)."""

    names: tuple[str, ...]  # collection ids: collection_select.collection_ids
    class_names: tuple[str, ...]  # label order
    holds: np.ndarray  # bool [classes, collections]

    @property
    def active(self) -> np.ndarray:
        """bool [classes]: held by two or more collections (the others are masked out)."""
        return self.holds.sum(axis=1) >= 2

    def describe(self) -> dict[str, Any]:
        """For summary.json: the collections, who holds what, which classes are masked."""
        return {"collections": list(self.names),
                "classes": {cls: [n for n, h in zip(self.names, row) if h]
                            for cls, row in zip(self.class_names, self.holds)},
                "masked_classes": [cls for cls, a in zip(self.class_names, self.active)
                                   if not a]}


def plan(manifest: DatasetInfo, weight: float, include: tuple[str, ...] = (),
         exclude: tuple[str, ...] = ()) -> CollectionPlan:
    """The plan for the train split's selected collections.

    Raises:
      ConfigError (field collection_adversary): no class is held by two collections, so the
        adversary would have nothing to learn (records of one collection, or collections that
        share no class): refused rather than silently turned off.
    """
    class_names = manifest.classes
    names = collection_select.collection_ids(manifest, include, exclude)
    streams = collection_select.streams(manifest, "train", include, exclude)
    holds = np.array([[name in streams.get(c, ()) for name in names]
                      for c in range(len(class_names))], dtype=bool).reshape(
                          len(class_names), len(names))
    result = CollectionPlan(names, class_names, holds)
    if not result.active.any():
        counts = ", ".join(f"{cls} {int(n)}" for cls, n in zip(class_names, holds.sum(axis=1)))
        raise ConfigError(
            "collection_adversary", weight,
            "0 for these records: no class of the train split is held by two or more "
            f"collections (collections per class: {counts}; collections: {list(names)})",
            "Build the records from several collections that share a class "
            "(build_records --data_dir=name=path,...), or leave --collection_adversary at 0.")
    return result


def gradient_reversal(x: tf.Tensor, weight: float) -> tf.Tensor:
    """Identity forward; backward, the incoming gradient times -weight."""

    @tf.custom_gradient
    def reverse(t):
        def grad(dy):
            return tf.cast(-weight, dy.dtype) * dy

        return tf.identity(t), grad

    return reverse(x)


def build_head(embedding_dim: int, num_classes: int, num_collections: int,
               seed: int = 0) -> keras.Model:
    """embedding [B, D] float32 -> logits [B, classes, collections], float32 under any policy.

    Leaky ReLU, not ReLU: the reversed gradient drives a ReLU head's hidden units dead (the
    model scales its embedding until none fires), and a dead head answers every image alike
    while the embedding keeps the collection.
    """
    init = keras.initializers.GlorotUniform
    inputs = keras.Input((embedding_dim,), dtype="float32", name="embedding")
    x = keras.layers.Dense(HIDDEN_UNITS, activation="leaky_relu", dtype="float32",
                           kernel_initializer=init(seed), name="adversary_hidden")(inputs)
    x = keras.layers.Dense(num_classes * num_collections, dtype="float32",
                           kernel_initializer=init(seed + 1), name="adversary_logits")(x)
    outputs = keras.layers.Reshape((num_classes, num_collections), dtype="float32")(x)
    return keras.Model(inputs, outputs, name="collection_adversary")


def _within_class(logits: tf.Tensor, labels: tf.Tensor, holds: tf.Tensor) -> tf.Tensor:
    """[B, collections]: the true class's row, the collections not holding it masked out."""
    rows = tf.gather(tf.cast(logits, tf.float32), labels, batch_dims=1)
    return tf.where(tf.gather(holds, labels), rows, _MASKED_LOGIT)


def conditional_loss(logits: tf.Tensor, labels: tf.Tensor, collections: tf.Tensor,
                     holds: tf.Tensor, global_batch_size: int) -> dict[str, tf.Tensor]:
    """The head's loss within the true class, and its sums for the logged metrics.

    Returns "loss" (cross-entropy over the collections holding the true class, summed over the
    unmasked examples and divided by the GLOBAL batch, as the classifier's loss is) and the
    SUMS: the unmasked examples' cross-entropy, correct answers and count.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    collections = tf.cast(tf.reshape(collections, [-1]), tf.int32)
    holds = tf.cast(holds, tf.bool)
    rows = _within_class(logits, labels, holds)
    active = tf.reduce_sum(tf.cast(holds, tf.int32), axis=1) >= 2
    mask = tf.cast(tf.gather(active, labels), tf.float32)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=collections, logits=rows) * mask
    correct = tf.cast(tf.equal(tf.argmax(rows, axis=1, output_type=tf.int32), collections),
                      tf.float32) * mask
    return {"loss": tf.nn.compute_average_loss(nll, global_batch_size=global_batch_size),
            "adversary_nll": tf.reduce_sum(nll), "adversary_correct": tf.reduce_sum(correct),
            "adversary_count": tf.reduce_sum(mask)}


def fooled(logits: tf.Tensor, labels: tf.Tensor, collections: tf.Tensor,
           holds: tf.Tensor) -> tf.Tensor:
    """bool [B]: the head does worse than chance on the example (cross-entropy above the log of
    the number of collections holding its class)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    holds = tf.cast(holds, tf.bool)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.reshape(collections, [-1]), tf.int32),
        logits=_within_class(logits, labels, holds))
    held = tf.reduce_sum(tf.cast(tf.gather(holds, labels), tf.float32), axis=1)
    return nll > tf.math.log(tf.maximum(held, 1.0))


def epoch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The epoch's METRICS from the SUMS of its train calls (mean over unmasked examples)."""
    count = sums.get("adversary_count", 0.0)
    if not count:
        return {name: float("nan") for name in METRICS}
    return {"adversary_loss": sums["adversary_nll"] / count,
            "adversary_accuracy": sums["adversary_correct"] / count}


@dataclasses.dataclass(frozen=True)
class Adversary:
    """The model's (embedding, probabilities), the head, its optimizer, the reversal's weight."""

    features: keras.Model  # images -> [embedding, probabilities]: the model's own layers
    head: keras.Model
    optimizer: keras.Optimizer  # the head's own (HEAD_LEARNING_RATE); the model's updates the rest
    weight: float
    holds: np.ndarray
    global_batch_size: int

    def forward(self, images: tf.Tensor, labels: tf.Tensor, collections: tf.Tensor, *,
                training: bool = True) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(the classifier's probabilities, conditional_loss of the head on this batch).

        Confuse, never fool: the reversed gradient reaches the embedding only from examples the
        head still places at chance or better. Pushing an example the head already gets wrong
        further would raise the head's loss without bound by teaching the embedding the
        collection the other way round (measured: the embedding's scale grew 100-fold and a
        probe still read the collection); stopped at chance, the push can only remove it.
        """
        embedding, probabilities = self.features(images, training=training)
        embedding = tf.cast(embedding, tf.float32)
        plain = tf.stop_gradient(embedding)
        push = tf.logical_not(fooled(tf.stop_gradient(self.head(plain)), labels, collections,
                                     self.holds))
        head_input = tf.where(push[:, None], gradient_reversal(embedding, self.weight), plain)
        logits = self.head(head_input, training=training)
        return probabilities, conditional_loss(logits, labels, collections, self.holds,
                                               self.global_batch_size)


def build(model: keras.Model, collection_plan: CollectionPlan, weight: float,
          global_batch_size: int, seed: int = 0) -> Adversary:
    """The adversary on `model`'s embedding, its optimizer built (call inside the strategy's
    scope, so the head's variables and slots are mirrored like the model's)."""
    try:
        embedding = model.get_layer(EMBEDDING_LAYER).output
    except ValueError as err:
        raise ValueError(f"The collection adversary needs a model with a layer named "
                         f"{EMBEDDING_LAYER!r} (every models.build_model model has one); "
                         f"{model.name!r} has none.") from err
    features = keras.Model(model.inputs, [embedding, model.outputs[0]],
                           name=f"{model.name}_features")
    head = build_head(int(embedding.shape[-1]), len(collection_plan.class_names),
                      len(collection_plan.names), seed)
    optimizer = keras.optimizers.Adam(HEAD_LEARNING_RATE)
    optimizer.build(head.trainable_variables)
    return Adversary(features, head, optimizer, float(weight), collection_plan.holds,
                     global_batch_size)
