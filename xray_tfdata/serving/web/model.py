"""The one model a server process serves: loaded once, shared by every request thread.

`load(model_path)` accepts the SavedModel export (`<model_dir>/export`, served as is) or a Keras
file (`best.keras`), which is exported through the real `export.export_serving` to a temporary
directory, loaded, and the directory removed: one preprocessing code path for both.

Thread safety: requests call `ServingModel.predict` concurrently without a lock. The serving
signature is a ConcreteFunction traced when the export was saved; calling it runs TensorFlow's
eager runtime (TFE_Execute, designed to be called from several threads on one context), reads
the variables and never assigns them, and never retraces. tests/serving/test_web.py checks that
16 threads predicting different images concurrently get exactly the serial answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from xray_tfdata import files, paths
from xray_tfdata.serving import export

MODEL_NAME = "xray"  # the name in TF Serving's URLs: /v1/models/xray:predict
UNCALIBRATED = "uncalibrated softmax"  # predict's wording for an export without calibration


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A ServingModel plus what /v1/models/xray reports about it."""

    serving: export.ServingModel
    source: str  # the --model_path it came from
    kind: str  # "saved_model" or "keras"
    sha256: str  # of the .keras file, or of the export directory (see tree_sha256)
    explainer: Any = None  # gradcam_overlays.Explainer for a .keras with a convolution block, else None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.serving.class_names

    @property
    def probabilities(self) -> str:
        """What the numbers are: training's temperature scaling says so in the export's
        metadata ("calibrated: softmax(logits / T), ..."); otherwise the plain softmax."""
        return self.serving.metadata.get("probabilities", UNCALIBRATED)

    def describe(self) -> dict[str, Any]:
        meta = self.serving.metadata
        return {
            "name": MODEL_NAME,
            "model_name": meta.get("model_name", ""),
            "classes": list(self.class_names),
            "input": {"image_size": meta.get("image_size"), "channels": meta.get("channels"),
                      "resize_mode": meta.get("resize_mode"), "encoding": "image file bytes"},
            "format": self.kind,
            "sha256": self.sha256,
            "probabilities": self.probabilities,
            "explain": bool(self.explainer),  # POST /v1/models/xray:explain (Grad-CAM)
            # TF Serving's model status shape, so its clients' health checks work unchanged.
            "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}],
        }


def _tensor_info(spec: Any) -> dict[str, Any]:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415 - TF's own dtype names

    dims = [{"size": str(-1 if d is None else d)} for d in spec.shape.as_list()]
    dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)  # "DT_STRING", "DT_FLOAT"
    return {"dtype": dtype, "tensor_shape": {"dim": dims},
            "name": spec.name or ""}


def signature_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """TF Serving's GET /v1/models/<name>/metadata answer, from the loaded signature itself."""
    signature = loaded.serving.signature
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    return {
        "model_spec": {"name": MODEL_NAME, "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {export.SIGNATURE: {
            "inputs": {key: _tensor_info(spec) for key, spec in inputs.items()},
            "outputs": {key: _tensor_info(t) for key, t in outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }}}},
    }


def tree_sha256(directory: str | os.PathLike) -> str:
    """sha256 over every file's relative path and sha256, in sorted order: one fingerprint for a
    SavedModel directory that changes when any file (graph, variables, metadata) changes."""
    root = paths.location(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{files.sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _sibling_metadata(keras_path: Path) -> dict[str, Any]:
    """The metadata of the export training wrote next to a .keras file ({} if none)."""
    sibling = keras_path.parent / "export" / export.METADATA_FILE
    return json.loads(sibling.read_text()) if sibling.is_file() else {}


def _load_keras(path: Path, resize_mode: str) -> tuple[export.ServingModel, Any]:
    from xray_tfdata import model_classes  # noqa: PLC0415
    from xray_tfdata.evaluation import inference  # noqa: PLC0415 - the one .keras loader

    model = inference.load_model(path)
    image_size, channels = inference.input_spec(model)
    # Training exports the same weights beside best.keras: its resize mode and intensity (the
    # records') and
    # its note on calibration (temperature scaling is folded into both) hold for this file too.
    sibling = _sibling_metadata(path)
    extra = {"exported_from": str(path)}
    if "probabilities" in sibling:
        extra["probabilities"] = sibling["probabilities"]
    tmp = Path(tempfile.mkdtemp(prefix="xray_tfdata_serve-"))
    try:
        export_dir = export.export_serving(
            model, tmp / "export", image_size, channels,
            resize_mode or sibling.get("resize_mode", "stretch"), extra_metadata=extra,
            intensity=sibling.get("intensity", "none"),
            class_names=model_classes.classes_of(model, path))
        # tf.saved_model.load restores the variables into memory: the files are not needed after.
        serving = export.load_serving(export_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from xray_tfdata.serving.web import gradcam_overlays  # noqa: PLC0415

    return serving, gradcam_overlays.for_keras(model, serving.metadata)


def load(model_path: str | os.PathLike, resize_mode: str = "") -> LoadedModel:
    """Loads an export directory or a .keras file.

    Raises:
      ValueError / FileNotFoundError: the path is neither (the message says what to pass).
    """
    path = paths.location(model_path)  # a URL (gs://...) is read through gfile
    if path.is_dir():
        serving = export.load_serving(path)  # its ValueError names a dir without saved_model.pb
        return LoadedModel(serving, str(path), "saved_model", tree_sha256(path))
    if path.suffix == ".keras":
        serving, explainer = _load_keras(path, resize_mode)
        return LoadedModel(serving, str(path), "keras", files.sha256_file(path), explainer)
    raise FileNotFoundError(
        f"--model_path={str(path)!r} is neither a SavedModel export directory nor a .keras "
        "file; pass <model_dir>/export or <model_dir>/best.keras written by train.")


_lock = threading.Lock()
_current: LoadedModel | None = None


def install(loaded: LoadedModel | None) -> None:
    """Makes `loaded` the model every request uses (None: /healthz answers 503 again)."""
    global _current
    with _lock:
        _current = loaded


def current() -> LoadedModel | None:
    return _current
