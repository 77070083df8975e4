"""`python -m xray_tfdata.train` as a user runs it: flag errors, --flagfile, kill -9 and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from tests.fixtures import xray_records as make_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return make_records(tmp_path_factory.mktemp("records"), {"train": 30, "val": 8, "test": 4},
                        image_size=32)


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "xray_tfdata.train", *args]


def test_invalid_flags_exit_with_documented_messages(records, tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text(f"--records_dir={records}\n--model_dir={tmp_path / 'm'}\n"
                        "--global_batch_size=0\n")
    base = [f"--records_dir={records}", f"--model_dir={tmp_path / 'm'}"]
    test_only = make_records(tmp_path / "external", {"test": 2}, image_size=32)
    cases = {
        # An external test-only collection: for evaluate, not for train.
        "have the split(s) ['test'] but training needs ['train']":
            [f"--records_dir={test_only}", f"--model_dir={tmp_path / 'm'}"],
        # A bad value read from --flagfile: TrainConfig's check, reported with the flag name.
        "--global_batch_size must be an integer >= 1. Received: --global_batch_size=0.":
            [f"--flagfile={flagfile}"],
        # absl's own enum check, before main() runs.
        "flag --strategy=gpu: value should be one of "
        "<auto|one_device|mirrored|multi_worker|tpu>": [*base, "--strategy=gpu"],
        # The records' manifest disagrees with the flag.
        "hold 32x32 images, but image_size=48 was requested. Pass --image_size=32":
            [*base, "--image_size=48"],
        "--weights must be unset or a local file for the seed CNN (ImageNet weights exist only "
        "for the backbones). Received: --weights='imagenet'.": [*base, "--weights=imagenet"],
        # Offline with an empty cache: the file and the folder, no traceback.
        "copy the file densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 into "
        f"{tmp_path / 'kh' / 'models'}/":
            [*base, "--weights=imagenet", "--model=densenet121"],
    }
    # Run them side by side: each pays TensorFlow's import once.
    offline = dict(_env(), KERAS_HOME=str(tmp_path / "kh"), HTTPS_PROXY="http://127.0.0.1:9",
                   https_proxy="http://127.0.0.1:9")
    procs = {msg: subprocess.Popen(_train_cmd(*args), env=offline, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for msg, args in cases.items()}
    for message, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (message, stderr[-2000:])
        assert message in stderr, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-2000:]
    assert not (tmp_path / "m").exists(), "a rejected run must not create the model_dir"


def _read_history(model_dir: Path) -> list[dict[str, str]]:
    with (model_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_killed_run_resumes_from_checkpoint(records, tmp_path):
    model_dir = tmp_path / "model"
    args = _train_cmd(
        f"--records_dir={records}", f"--model_dir={model_dir}", "--epochs=30",
        "--steps_per_epoch=10", "--global_batch_size=8", "--checkpoint_every=5",
        "--warmup_epochs=0", "--noexport", "--noaugment", "--shuffle_buffer=64")
    first = subprocess.Popen(args, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    index = model_dir / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 120
    while not index.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    killed_at = int(latest.rsplit("-", 1)[1])
    assert 5 <= killed_at < 300 and killed_at % 5 == 0
    assert not (model_dir / "summary.json").exists()

    second = subprocess.run(args, env=_env(), cwd=tmp_path, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"step {killed_at}, {killed_at // 10} epoch(s) completed" in second.stderr
    summary = json.loads((model_dir / "summary.json").read_text())
    # Resumed where the checkpoint was, not from step 0: only the remaining steps ran.
    assert summary["resumed_from_step"] == killed_at
    assert summary["steps_this_session"] == 300 - killed_at
    assert summary["steps_completed"] == 300 and summary["epochs_completed"] == 30
    rows = _read_history(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 31))
    assert [int(r["step"]) for r in rows] == list(range(10, 301, 10))
    assert "Training completed: 30 epoch(s), 300 steps" in second.stdout
    # Temperature scaling at the end, reported with the file that records it.
    calibration = json.loads((model_dir / "calibration.json").read_text())
    assert f"temperature {calibration['temperature']:.3f}" in second.stdout
    assert "best.keras and export/ return calibrated probabilities" in second.stdout


def _quick_run(records: Path, model_dir: Path, *extra: str) -> list[str]:
    return _train_cmd(f"--records_dir={records}", f"--model_dir={model_dir}", "--epochs=1",
                      "--steps_per_epoch=2", "--global_batch_size=8", "--warmup_epochs=0",
                      "--noexport", "--nocalibrate", "--noaugment", *extra)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (absl/TF start-up noise aside)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "xray_tfdata.train: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_rerun_with_other_run_settings_is_refused_until_overwrite(records, tmp_path):
    model_dir = tmp_path / "model"
    first = subprocess.run(_quick_run(records, model_dir), env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = subprocess.run(_quick_run(records, model_dir, "--sampling=balanced"), env=_env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
    line = _error_line(refused)
    assert "sampling 'natural' -> 'balanced'" in line and "--overwrite" in line, line
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["settings"]["input"]["sampling"] == "natural"  # the run as it was made
    fresh = subprocess.run(_quick_run(records, model_dir, "--sampling=balanced", "--overwrite"),
                           env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 0 and summary["settings"]["input"]["sampling"] == \
        "balanced"


# A train command with one write failing as a full or read-only disk would make it fail.
_FAILING_WRITE = """
import errno, os, sys
from pathlib import Path
import tensorflow as tf
from xray_tfdata import cli, files, train

name, number = sys.argv[1], getattr(errno, sys.argv[2])
real_write, real_save = files.write_atomic, tf.train.CheckpointManager.save

def write(path, data):
    if Path(path).name == name:
        raise OSError(number, os.strerror(number), str(path))
    return real_write(path, data)

def save(self, *args, **kwargs):  # TensorFlow's own file system reports errno as text
    if name == "checkpoint":
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2.data: " + os.strerror(number))
    return real_save(self, *args, **kwargs)

files.write_atomic, tf.train.CheckpointManager.save = write, save
sys.argv = ["train.py", *sys.argv[3:]]
cli.run(train.main)
"""


def test_full_or_read_only_disk_and_a_file_in_the_path_are_one_line(records, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    script = tmp_path / "failing_write.py"
    script.write_text(_FAILING_WRITE)
    cases = {
        # Read-only: the first write of a run (its run spec), before any training.
        "run_spec.json': Read-only file system. That file system is read-only":
            [sys.executable, str(script), "run_spec.json", "EROFS"],
        # Disk full at the end, and inside TensorFlow's checkpoint writer.
        "summary.json': No space left on device. Free space on that disk":
            [sys.executable, str(script), "summary.json", "ENOSPC"],
        "checkpoints': No space left on device. Free space on that disk":
            [sys.executable, str(script), "checkpoint", "ENOSPC"],
        "afile/model': Not a directory. A parent of that path is a file": [],
    }
    procs = {}
    for i, (message, prefix) in enumerate(cases.items()):
        model_dir = tmp_path / ("afile" if not prefix else f"m{i}") / "model"
        command = _quick_run(records, model_dir)
        command = [*prefix, *command[3:]] if prefix else command
        procs[message] = subprocess.Popen(
            command, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    for message, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        line = _error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                       stderr))
        assert message in line and "(--model_dir; a rerun of the same command resumes" in line, \
            line
