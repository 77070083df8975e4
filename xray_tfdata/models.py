"""Model builders: the tutorial's seed CNN and Keras applications backbones with a 3-class head.

Every model takes the pipeline's images as they come off the records: uint8 (or any dtype holding
0..255 values) of shape [H, W, C] with C = 1 or 3. Its first layers repeat a grey channel to RGB
for ImageNet backbones ("to_rgb"), then cast to the global mixed-precision policy's compute dtype
and scale the pixels the way the network expects ("preprocess"). The penultimate
layer is named "embedding" (the features for the classical classifiers) and the output layer
"probabilities" is a float32 softmax even under "mixed_float16" / "mixed_bfloat16", so losses and
metrics stay in full precision. Set the global policy BEFORE calling `build_model`.

`weights` is None (random init), the path of a local file, or "imagenet" for a backbone: the
ImageNet "notop" file keras.applications itself uses, found in (or downloaded by
keras.utils.get_file into) Keras' cache, $KERAS_HOME/models (default ~/.keras/models). Offline
and not cached, `ImageNetWeightsUnavailable` names the exact file, where to get it and the folder
to copy it into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
from keras import layers

from xray_tfdata.labels import NUM_CLASSES
from xray_tfdata.layer_names import EMBEDDING_LAYER, OUTPUT_LAYER

IMAGENET = "imagenet"


class ImageNetWeightsUnavailable(ValueError):
    """The ImageNet file is neither in Keras' cache nor downloadable (offline)."""

MODEL_NAMES: tuple[str, ...] = (
    "seed_cnn",
    "resnet50",
    "densenet121",
    "efficientnetb0",
    "mobilenetv3small",
)

# Input scaling per backbone, following keras.applications' own preprocess_input conventions:
#   ResNet50: "caffe" (subtract the ImageNet BGR mean in 0..255, no scaling; see preprocess_layers
#   for why the RGB->BGR flip is omitted);
#   DenseNet121: "torch" (/255, then subtract mean and divide by std per RGB channel);
#   EfficientNetB0 and MobileNetV3Small carry their own Rescaling/Normalization layers inside the
#   application and expect raw 0..255 floats: "raw";
#   the seed CNN: "unit" (0..1).
SCALING_MODES: tuple[str, ...] = ("unit", "raw", "caffe", "torch")
_BACKBONE_SCALING = {
    "resnet50": "caffe",
    "densenet121": "torch",
    "efficientnetb0": "raw",
    "mobilenetv3small": "raw",
}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)
# keras.applications.efficientnet divides by sqrt(IMAGENET_STDDEV_RGB) after its Normalization
# layer only when weights == "imagenet" (the string); a local ImageNet file needs the same
# correction (tensorflow/tensorflow#49930).
_EFFICIENTNET_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# Smallest image side each model accepts (keras.applications' min_size is 32; the seed CNN halves
# the image four times).
MIN_IMAGE_SIZE = {"seed_cnn": 16, "resnet50": 32, "densenet121": 32, "efficientnetb0": 32,
                  "mobilenetv3small": 32}


def preprocess_layers(inputs: keras.KerasTensor, mode: str,
                      to_rgb: bool = False) -> keras.KerasTensor:
    """The model's first layers: optional grey->RGB repeat ("to_rgb"), then cast + scale
    ("preprocess", a Rescaling layer, which casts to the policy's compute dtype itself).

    Only built-in Keras layers, so a saved `.keras` model loads anywhere without importing this
    package. ResNet50's "caffe" convention also reverses RGB to BGR; the images here are grey
    repeated to three equal channels, for which that reversal is the identity, so only the BGR
    means are subtracted (in BGR order, exactly as preprocess_input does after its flip).
    """
    if mode not in SCALING_MODES:
        raise ValueError(f"mode must be one of {SCALING_MODES}. Received: mode={mode!r}")
    x = inputs
    if to_rgb and inputs.shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name="to_rgb")([inputs, inputs, inputs])
    channels = x.shape[-1]
    if mode == "unit":
        scale, offset = 1.0 / 255.0, 0.0
    elif mode == "raw":
        scale, offset = 1.0, 0.0
    elif mode == "caffe":
        scale, offset = 1.0, [-m for m in _CAFFE_MEAN_BGR]
    else:  # torch: (x / 255 - mean) / std
        scale = [1.0 / (255.0 * s) for s in _TORCH_STD_RGB]
        offset = [-m / s for m, s in zip(_TORCH_MEAN_RGB, _TORCH_STD_RGB)]
    if isinstance(offset, list) and channels != 3:
        raise ValueError(f"mode={mode!r} needs 3 channels; pass to_rgb=True for grey images.")
    return layers.Rescaling(scale, offset, name="preprocess")(x)


def _check_args(name: str, image_size: int, channels: int, dropout: float,
                num_classes: int) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}.")
    min_size = MIN_IMAGE_SIZE[name]
    if not isinstance(image_size, (int, np.integer)) or image_size < min_size:
        raise ValueError(
            f"image_size for {name} must be an integer >= {min_size}. Received: "
            f"image_size={image_size!r}. Rebuild the records with a larger --image_size."
        )
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes!r}")


def _check_weights(weights: str | None, name: str = "") -> Path | str | None:
    """The local weights path, "imagenet" (backbones only), or None for random init."""
    if weights is None or weights == "":
        return None
    if str(weights).lower() == IMAGENET:
        if name == "seed_cnn":
            raise ValueError(
                "weights='imagenet' needs a keras.applications backbone; the seed CNN has no "
                f"ImageNet weights. Received: model='seed_cnn'. Pick one of "
                f"{', '.join(MODEL_NAMES[1:])}, or leave weights unset.")
        return IMAGENET
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"weights file not found. Received: weights={str(weights)!r}. Pass an existing local "
            ".h5 / .weights.h5 file, 'imagenet', or None for random initialisation."
        )
    if not path.name.endswith(".h5"):
        raise ValueError(
            f"weights must be a Keras weights file ending in '.h5' or '.weights.h5'. Received: "
            f"weights={str(weights)!r}."
        )
    return path


def imagenet_file(name: str) -> tuple[str, str, str]:
    """(file name, URL, hash) of the ImageNet notop file keras.applications loads for `name`.

    Read from keras.applications' own modules, so the name is exactly the one its
    `weights="imagenet"` would look for in the cache.
    """
    from keras.src.applications import densenet, efficientnet, mobilenet_v3, resnet

    if name == "resnet50":
        fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return fname, resnet.BASE_WEIGHTS_PATH + fname, resnet.WEIGHTS_HASHES["resnet50"][1]
    if name == "densenet121":
        fname = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return fname, densenet.DENSENET121_WEIGHT_PATH_NO_TOP, "30ee3e1110167f948a6b9946edeeb738"
    if name == "efficientnetb0":
        fname = "efficientnetb0_notop.h5"
        return (fname, efficientnet.BASE_WEIGHTS_PATH + fname,
                efficientnet.WEIGHTS_HASHES["b0"][1])
    if name == "mobilenetv3small":
        # MobileNetV3Small(alpha=1.0, minimalistic=False, include_top=False) at any input size.
        fname = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
        return (fname, mobilenet_v3.BASE_WEIGHT_PATH + fname,
                mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"][1])
    raise ValueError(f"No ImageNet weights for model {name!r}; allowed: "
                     f"{', '.join(MODEL_NAMES[1:])}.")


def imagenet_cache_dir() -> Path:
    """Where keras.utils.get_file caches applications' weights: $KERAS_HOME/models (read by Keras
    when it is imported), else ~/.keras/models (get_file falls back to /tmp/.keras when that is
    not writable)."""
    from keras.src.backend import config as keras_config

    return Path(keras_config.keras_home()).expanduser() / "models"


def fetch_imagenet(name: str) -> Path:
    """The ImageNet notop file of `name` from Keras' cache, downloading it there if absent.

    keras.utils.get_file resolves the cache folder itself. A file already in the cache is used as
    it is (its hash unchecked, so a copy made by hand works offline); a download is verified
    against keras.applications' published hash.
    """
    fname, origin, file_hash = imagenet_file(name)
    cached = imagenet_cache_dir() / fname
    try:
        return Path(keras.utils.get_file(fname, origin, cache_subdir="models",
                                         file_hash=None if cached.is_file() else file_hash))
    except Exception as err:  # noqa: BLE001 - get_file raises a bare Exception when offline
        raise ImageNetWeightsUnavailable(
            f"ImageNet weights for {name} are not in Keras' cache and could not be downloaded "
            f"({err}). Download {origin} on a machine with internet access and copy the file "
            f"{fname} into {imagenet_cache_dir()}/ (set KERAS_HOME to use another cache "
            f"folder), or pass its path as --weights=<file>.") from None


def seed_cnn(image_size: int, channels: int = 1, *, dropout: float = 0.5,
             num_classes: int = NUM_CLASSES, filters: Sequence[int] = (32, 64, 128),
             dense_units: int = 128, stem_stride: int = 2, pooling: str = "flatten") -> keras.Model:
    """The source tutorial's CNN: Conv2D+ReLU blocks each followed by MaxPooling2D, then Dense.

    Choices (to train at 224x224, batch 64, on 2 CPU cores in usable time): the first convolution
    has stride `stem_stride` (2 by default: a 4x cheaper network and a 4x smaller Flatten), three
    conv+pool blocks with 32/64/128 filters, and a single Dense(dense_units, relu) named
    "embedding" before dropout and the float32 softmax. `pooling="avg"` replaces Flatten by global
    average pooling (fewer parameters, size independent).
    """
    if pooling not in ("flatten", "avg"):
        raise ValueError(f"pooling must be 'flatten' or 'avg'. Received: pooling={pooling!r}")
    inputs = keras.Input((image_size, image_size, channels), dtype="uint8", name="image")
    x = preprocess_layers(inputs, "unit")
    for i, f in enumerate(filters):
        stride = stem_stride if i == 0 else 1
        x = layers.Conv2D(f, 3, strides=stride, padding="same", activation="relu",
                          name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    if pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dense(dense_units, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout, seed=0, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32",
                           name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _application(name: str) -> Callable[..., keras.Model]:
    apps = keras.applications
    if name == "resnet50":
        return apps.ResNet50
    if name == "densenet121":
        return apps.DenseNet121
    if name == "efficientnetb0":
        return apps.EfficientNetB0
    return lambda **kw: apps.MobileNetV3Small(include_preprocessing=True, **kw)


def backbone_model(name: str, image_size: int, channels: int = 1, *, dropout: float = 0.5,
                   num_classes: int = NUM_CLASSES) -> keras.Model:
    """A keras.applications backbone (random init, no top) under a new classification head."""
    inputs = keras.Input((image_size, image_size, channels), dtype="uint8", name="image")
    # Grey (1-channel) X-rays: "to_rgb" repeats the channel three times, so the backbone (and its
    # ImageNet first convolution, trained on RGB) sees R = G = B, the grey image every ImageNet
    # model sees for a black-and-white photo; its 3-channel kernels are used unchanged.
    x = preprocess_layers(inputs, _BACKBONE_SCALING[name], to_rgb=True)
    backbone = _application(name)(include_top=False, weights=None,
                                  input_shape=(image_size, image_size, 3), pooling=None)
    backbone.name = "backbone"
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout, seed=0, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32",
                           name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name=name)


def _fix_efficientnet_imagenet(backbone: keras.Model) -> None:
    """Folds the ImageNet std correction into the Normalization layer's variance.

    Normalization gives (x - mean) / sqrt(var); the original EfficientNet then divides by
    sqrt(stddev) again, which equals using var * stddev.
    """
    norm = next(l for l in backbone.layers if isinstance(l, layers.Normalization))
    mean, var = [np.asarray(w) for w in norm.get_weights()[:2]]
    if not np.allclose(mean.ravel(), _TORCH_MEAN_RGB, atol=1e-3):
        return  # not ImageNet statistics: leave the user's file as it is
    weights = norm.get_weights()
    weights[1] = var * np.asarray(_EFFICIENTNET_IMAGENET_STDDEV_RGB, var.dtype).reshape(var.shape)
    norm.set_weights(weights)
    norm.finalize_state()  # Normalization caches mean/variance; Keras' loaders call this too


def load_local_weights(model: keras.Model, name: str, path: Path) -> str:
    """Loads `path` into the whole model, or else into the backbone; returns which one took it.

    Two kinds of local file are accepted: weights of a model built by `build_model` (same name and
    image shape) and, for the backbones, Keras applications' ImageNet "notop" files.
    """
    errors = []
    try:
        model.load_weights(str(path))
        return "model"
    except Exception as err:  # noqa: BLE001 - Keras raises several types on a mismatch
        errors.append(f"as full-model weights: {err}")
    if name != "seed_cnn":
        backbone = model.get_layer("backbone")
        try:
            backbone.load_weights(str(path))
            if name == "efficientnetb0":
                _fix_efficientnet_imagenet(backbone)
            return "backbone"
        except Exception as err:  # noqa: BLE001
            errors.append(f"as {name} backbone (notop) weights: {err}")
    raise ValueError(
        f"Could not load weights={str(path)!r} into model {name!r}; tried "
        + "; ".join(errors)
        + ". Pass a file saved from the same model/image_size/channels, or the Keras ImageNet "
        "notop file of that backbone."
    )


def build_model(name: str, image_size: int, channels: int = 1, *, weights: str | None = None,
                dropout: float = 0.5, num_classes: int = NUM_CLASSES,
                seed: int | None = 0) -> keras.Model:
    """Builds one of MODEL_NAMES for uint8 images [image_size, image_size, channels].

    Args:
      name: one of MODEL_NAMES.
      image_size: square input side (>= MIN_IMAGE_SIZE[name]).
      channels: 1 (grey) or 3; backbones repeat grey to RGB in their first layer.
      weights: None for random init, a local .h5 / .weights.h5 file (full-model weights, or an
        ImageNet notop file for the backbones), or "imagenet" (backbones): keras.applications'
        notop file from Keras' cache, downloaded there when absent (fetch_imagenet).
      dropout: rate before the output layer.
      num_classes: output classes: the records' class set (3 for the default build).
      seed: seeds Python, NumPy and TF (keras.utils.set_random_seed) before creating the layers,
        so a rerun or another worker starts from identical weights; None leaves the RNGs alone.

    Raises:
      ValueError: a bad name, size, channel count, dropout or weights value, naming the fix.
    """
    _check_args(name, image_size, channels, dropout, num_classes)
    path = _check_weights(weights, name)
    if path == IMAGENET:
        path = fetch_imagenet(name)  # before building: fail fast when offline
    if seed is not None:
        keras.utils.set_random_seed(seed)  # same initial weights for every rerun and worker
    if name == "seed_cnn":
        model = seed_cnn(image_size, channels, dropout=dropout, num_classes=num_classes)
    else:
        model = backbone_model(name, image_size, channels, dropout=dropout,
                               num_classes=num_classes)
    if path is not None:
        load_local_weights(model, name, path)
    return model
