"""Test-session setup shared by every test file.

Two logical CPU devices are configured before TensorFlow initialises its runtime, so any test can
build MirroredStrategy(["/cpu:0", "/cpu:1"]) on this GPU-less machine; single-device code keeps
running on /cpu:0 unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

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

from tests import fixtures  # noqa: E402

REAL_SAMPLE_DIR = fixtures.REAL_SAMPLE_DIR
# CI clones the repo beside a copy of shared/: there a missing sample is a failure, not a skip.
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(what: str, where: Path) -> None:
    message = f"{what} not found at {where}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: CI runs beside a copy of shared/)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The read-only real chest X-ray sample (never copied into the repo)."""
    if not (REAL_SAMPLE_DIR / "labels.csv").is_file():
        _missing("real X-ray sample", REAL_SAMPLE_DIR)
    return REAL_SAMPLE_DIR


@pytest.fixture(scope="session")
def real_paediatric_dir() -> Path:
    """300 NORMAL + 300 PNEUMONIA real paediatric X-rays (read-only, never copied into the repo)."""
    if not (fixtures.REAL_PAEDIATRIC_DIR / "NORMAL").is_dir():
        _missing("real paediatric X-rays", fixtures.REAL_PAEDIATRIC_DIR)
    return fixtures.REAL_PAEDIATRIC_DIR
