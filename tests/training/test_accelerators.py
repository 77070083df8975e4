"""XLA and precision by device: the decisions, with the device facts faked (no GPU here)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import device_augment
from xray_tfdata.settings import from_flat
from xray_tfdata.training import distribute
from xray_tfdata.training.config import TrainConfig


@pytest.fixture
def gpus(monkeypatch):
    """Call with a list of compute capabilities to fake the GPUs TensorFlow would report."""
    def fake(capabilities):
        monkeypatch.setattr(distribute, "_gpu_capabilities", lambda: list(capabilities))
    return fake


@pytest.mark.parametrize("capabilities, expected", [
    ([], "float32"),  # CPU only
    ([(6, 1)], "float32"),  # Pascal: no tensor cores
    ([(7, 0)], "mixed_float16"),  # Volta
    ([(7, 5), (7, 5)], "mixed_float16"),  # Turing
    ([(8, 0)], "mixed_bfloat16"),  # Ampere A100
    ([(8, 6)], "mixed_bfloat16"),
    ([(9, 0)], "mixed_bfloat16"),  # Hopper
    ([(8, 0), (7, 0)], "mixed_float16"),  # mixed GPUs: the oldest decides
])
def test_precision_auto_follows_compute_capability(gpus, capabilities, expected):
    gpus(capabilities)
    assert distribute.resolve_precision("auto") == expected


def test_explicit_precision_wins(gpus):
    gpus([(8, 0)])
    assert distribute.resolve_precision("float32") == "float32"
    assert distribute.resolve_precision("mixed_float16") == "mixed_float16"


def test_tpu_gets_bfloat16_and_xla(monkeypatch):
    monkeypatch.setattr(distribute, "_accelerator_types", lambda strategy: {"TPU"})
    assert distribute.resolve_precision("auto") == "mixed_bfloat16"
    assert distribute.resolve_jit_compile("auto") is True


@pytest.mark.parametrize("value, capabilities, expected", [
    ("auto", [], False),  # CPU: XLA measured slower here
    ("auto", [(7, 0)], True),
    ("auto", [(9, 0), (9, 0)], True),
    ("true", [], True),  # explicit wins
    ("false", [(8, 0)], False),
    (True, [], True),
    (False, [(8, 0)], False),
])
def test_jit_compile_auto_is_on_for_accelerators_only(gpus, value, capabilities, expected):
    gpus(capabilities)
    assert distribute.resolve_jit_compile(value) is expected


def test_jit_compile_setting_is_checked():
    assert from_flat(TrainConfig, records_dir="r", model_dir="m").jit_compile == "auto"
    assert from_flat(TrainConfig, records_dir="r", model_dir="m",
                     jit_compile=True).jit_compile == "true"
    with pytest.raises(ConfigError, match="jit_compile must be one of auto, true, false"):
        from_flat(TrainConfig, records_dir="r", model_dir="m", jit_compile="maybe")
    with pytest.raises(ConfigError, match="jit_compile"):
        distribute.resolve_jit_compile("yes")


def test_update_is_compiled_only_without_cross_replica_reduction():
    assert distribute.compiles_update(tf.distribute.get_strategy())
    assert distribute.compiles_update(tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert not distribute.compiles_update(distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))


@pytest.mark.parametrize("name, devices, expected", [
    ("auto", ["CPU"], "host"), ("auto", ["CPU", "GPU"], "device"), ("auto", ["TPU"], "device"),
    ("host", ["GPU"], "host"), ("device", ["CPU"], "device"),
])
def test_augment_on_auto_is_device_with_an_accelerator(name, devices, expected):
    assert device_augment.resolve_augment_on(name, devices) == expected


def test_augment_on_and_data_service_settings_are_checked():
    assert device_augment.resolve_augment_on("auto") == "host"  # this machine: CPU only
    with pytest.raises(ConfigError, match="augment_on must be one of auto, host, device"):
        from_flat(TrainConfig, records_dir="r", model_dir="m", augment_on="gpu")
    with pytest.raises(ConfigError, match="data_service"):
        from_flat(TrainConfig, records_dir="r", model_dir="m", data_service="localhost:5050")
    config = from_flat(TrainConfig, records_dir="r", model_dir="m",
                       data_service="grpc://localhost:5050")
    assert config.input.data_service == "grpc://localhost:5050"
