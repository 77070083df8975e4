"""Test-session setup shared by every test file.

Two logical CPU devices are configured before TensorFlow initialises its runtime, so any test can
build MirroredStrategy(["/cpu:0", "/cpu:1"]) on this GPU-less machine; single-device code keeps
running on /cpu:0 unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
# get_logical_device_configuration does not start the runtime (list_logical_devices would).
if _cpus and tf.config.get_logical_device_configuration(_cpus[0]) is None:
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        pass  # runtime already initialised by an earlier import; single-device tests still run

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repo next to a copy of shared/, as the developers' checkout is: repo/../shared.
REAL_SAMPLE_DIR = REPO_ROOT.parent / "shared" / "real_cxr_sample"


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The read-only real chest X-ray sample (never copied into the repo)."""
    if not (REAL_SAMPLE_DIR / "labels.csv").is_file():
        pytest.skip(f"real X-ray sample not found at {REAL_SAMPLE_DIR}")
    return REAL_SAMPLE_DIR


def load_tool(name: str) -> ModuleType:
    """Imports `tools/<name>.py` by path: tools/ is not a package (its flags are defined only
    under __main__, so importing two tools in one process does not clash)."""
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
