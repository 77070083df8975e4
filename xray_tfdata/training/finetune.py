"""Fine-tuning a pretrained backbone, and the temperature fitted at the end of training.

Phases: for the first `freeze_backbone_epochs` epochs only the head trains (the nested
"backbone" model is `trainable = False`, which in Keras also runs its BatchNormalization layers in
inference mode, so the ImageNet statistics are not overwritten by a few noisy batches); then
everything trains. The phase is a function of the epoch alone, so a run resumed from a
checkpoint picks the right one: the checkpoint holds every variable (trainable or not) and the
optimizer slots of every variable, built before the first phase.

Learning rates: with `backbone_learning_rate_multiplier` != 1 the backbone's variables get their
own optimizer on the same schedule scaled by the multiplier (Adam-type updates are invariant to a
gradient scale, so scaling gradients would not do it). Both optimizers are checkpointed.

Calibration: `calibrate` fits one temperature T on the val split (evaluation/calibration.py) and
divides the "probabilities" layer's kernel and bias by T, which is exactly softmax(logits / T): the
saved model and the export then return calibrated probabilities with no extra layer to register.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from xray_tfdata.evaluation import calibration, inference
from xray_tfdata.layer_names import OUTPUT_LAYER

BACKBONE_LAYER = "backbone"


def backbone(model: keras.Model) -> keras.Model | None:
    """The nested keras.applications model, or None (the seed CNN)."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        return None


def frozen_at(epoch: int, freeze_backbone_epochs: int) -> bool:
    """True while epoch (0-based) is in the head-only phase."""
    return epoch < freeze_backbone_epochs


def set_backbone_frozen(model: keras.Model, frozen: bool) -> None:
    inner = backbone(model)
    if inner is not None:
        inner.trainable = not frozen


def split_variables(model: keras.Model) -> tuple[list, list]:
    """(head variables, backbone variables) among the model's trainable variables, all phases
    unfrozen (call before freezing so optimizers build slots for everything)."""
    inner = backbone(model)
    backbone_ids = {id(v) for v in inner.trainable_variables} if inner is not None else set()
    head = [v for v in model.trainable_variables if id(v) not in backbone_ids]
    rest = [v for v in model.trainable_variables if id(v) in backbone_ids]
    return head, rest


def calibrate(model: keras.Model, predict: Callable, val_ds: tf.data.Dataset,
              class_names: Sequence[str], positive: int) -> dict[str, Any]:
    """Fits T on val, folds 1/T into the output layer, returns the record for calibration.json,
    with the val operating point (95% sensitivity) of class id `positive` and the number of val
    positives it was chosen on."""
    y_val, (probs, *_) = inference.run_model(None, val_ds, predict=predict)
    temperature = calibration.fit_temperature(probs, y_val)
    calibrated = calibration.apply_temperature(probs, temperature)
    layer = model.get_layer(OUTPUT_LAYER)
    # softmax((W h + b) / T) = softmax((W / T) h + b / T): exact, and saved with the model.
    layer.kernel.assign(layer.kernel / temperature)
    layer.bias.assign(layer.bias / temperature)
    return {
        "temperature": float(temperature), "applied_in_model": True,
        "method": "temperature scaling (one scalar, minimum NLL on val); best.keras and the "
                  "export return softmax(logits / temperature)",
        "num_val": int(y_val.size),
        "val_nll": calibration.nll(probs, y_val), "val_nll_calibrated":
            calibration.nll(calibrated, y_val),
        "val_ece": calibration.expected_calibration_error(probs, y_val),
        "val_ece_calibrated": calibration.expected_calibration_error(calibrated, y_val),
        "classes": list(class_names),  # the model's, in label order (issue 20)
        "val_operating_point": calibration.operating_threshold(calibrated, y_val, positive,
                                                               class_names, 0.95),
    }

