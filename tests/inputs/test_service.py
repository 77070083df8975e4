"""tf.data service: address checks, and a dispatcher + 2 workers on 127.0.0.1 (in-process servers,
and the data_service command as subprocesses for the worker-failure and SIGTERM tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import pipeline, service

SIZE = 16
NUM_EXAMPLES = 53  # not a multiple of the batch: the eval tail must survive the service


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _id_image(i: int) -> np.ndarray:
    """An image whose first two pixels spell its index, so every example can be counted."""
    image = np.full((SIZE, SIZE, 1), 7, np.uint8)
    image[0, 0, 0], image[0, 1, 0] = i // 256, i % 256
    return image


def _ids(images: np.ndarray) -> list[int]:
    return [int(a) * 256 + int(b) for a, b in zip(images[:, 0, 0, 0], images[:, 0, 1, 0])]


ENV = {**os.environ, "PYTHONPATH": str(fixtures.REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """The data_service command, its output to `log` (a pipe nobody reads would fill and block
    the server)."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "xray_tfdata.data_service", *args],
                                env=ENV, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "listening" in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"server did not start in time: {log.read_text()[-2000:]}")


def _start_cluster(logs: Path, workers: int, *dispatcher_flags: str
                   ) -> tuple[int, list[subprocess.Popen]]:
    """A dispatcher and `workers` workers on 127.0.0.1; returns (dispatcher port, processes)."""
    port = _free_port()
    procs = [_start(["--role=dispatcher", f"--port={port}", *dispatcher_flags],
                    logs / "dispatcher.log")]
    try:
        procs += [_start(["--role=worker", "--port=0",
                          f"--dispatcher_address=127.0.0.1:{port}"], logs / f"worker{i}.log")
                  for i in range(workers)]
        for i, proc in enumerate(procs):
            _wait_ready(proc, logs / ("dispatcher.log" if i == 0 else f"worker{i - 1}.log"))
    except BaseException:
        _kill(procs)
        raise
    return port, procs


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    examples = [fixtures.example(_id_image(i), label=i % 3, source_path=f"{i}.png")
                for i in range(NUM_EXAMPLES)]
    return fixtures.write_records(tmp_path_factory.mktemp("svc") / "records",
                                  {"train": examples, "val": examples[:20]},
                                  image_size=SIZE, num_shards=6)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A dispatcher and two workers: the data_service command as subprocesses on 127.0.0.1.

    Subprocesses rather than in-process servers: stopping an in-process worker blocks until its
    jobs' tasks end (up to a minute here), while a killed process is gone at once. (The clean
    SIGTERM path has its own test below.)
    """
    port, procs = _start_cluster(tmp_path_factory.mktemp("cluster"), 2,
                                 "--worker_timeout_ms=5000")
    yield f"grpc://127.0.0.1:{port}"
    _kill(procs)


def test_addresses_are_checked():
    assert service.check_address("s", "grpc://127.0.0.1:5050", scheme=True) == \
        "grpc://127.0.0.1:5050"
    assert service.check_address("s", "grpc://host-1.example:1", scheme=False) == "host-1.example:1"
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "http://x:1", ""):
        with pytest.raises(ConfigError, match="grpc://10.0.0.5:5050"):
            service.check_address("data_service", bad, scheme=True)
    with pytest.raises(ValueError, match="data_service"):
        pipeline.InputConfig(global_batch_size=4, image_size=SIZE, data_service="localhost:1")
    with pytest.raises(ValueError, match="skip_corrupt"):
        pipeline.InputConfig(global_batch_size=4, image_size=SIZE, skip_corrupt=True,
                             data_service="grpc://localhost:1")


def test_server_config_checks_roles():
    config = service.ServerConfig(role="worker", port=5051, dispatcher_address="grpc://d:5050")
    assert config.dispatcher_address == "d:5050"
    with pytest.raises(ConfigError, match="dispatcher_address"):
        service.ServerConfig(role="worker", port=5051)
    with pytest.raises(ConfigError, match="work_dir"):
        service.ServerConfig(role="worker", port=5051, dispatcher_address="d:1", work_dir="/x")
    with pytest.raises(ConfigError, match="worker_address"):
        service.ServerConfig(role="dispatcher", port=5050, worker_address="w:1")
    with pytest.raises(ConfigError, match=r"port must be an integer port in \[1, 65535\]"):
        service.ServerConfig(role="dispatcher", port=0)
    assert service.ServerConfig(role="worker", port=0, dispatcher_address="d:1").port == 0
    with pytest.raises(ConfigError, match="0 = any free port"):
        service.ServerConfig(role="worker", port=70000, dispatcher_address="d:1")
    assert service.job_name("run7", "val", False) != service.job_name("run7", "val", True)
    assert service.job_name("run7", "val", False) == service.job_name("run7", "val", False)
    assert service.job_name("", "val", False) != service.job_name("", "val", False)


@pytest.mark.slow
def test_eval_pass_yields_every_example_exactly_once(records, cluster):
    config = pipeline.InputConfig(global_batch_size=8, image_size=SIZE, training=False,
                                  data_service=cluster, job_prefix="once")
    local = [tuple(b[0].shape) for b in pipeline.build_dataset(
        records, "train", pipeline.InputConfig(global_batch_size=8, image_size=SIZE,
                                               training=False))]
    dataset = pipeline.build_dataset(records, "train", config)
    for _ in range(2):  # iterating the same dataset again is a new, complete pass
        batches = list(dataset.as_numpy_iterator())
        ids = sorted(i for images, _ in batches for i in _ids(images))
        assert ids == list(range(NUM_EXAMPLES))
        labels = np.concatenate([lab for _, lab in batches])
        assert sorted(labels.tolist()) == sorted(i % 3 for i in range(NUM_EXAMPLES))
        # Re-batched on the trainer: same batch shapes as the local pipeline (6 x 8, tail 5).
        assert sorted(b[0].shape for b in batches) == sorted(local)


@pytest.mark.slow
def test_training_through_the_service_matches_local_batches(records, cluster):
    settings = dict(global_batch_size=8, image_size=SIZE, training=True, augment=True, seed=3,
                    shuffle_buffer=64, output_dtype="float32")
    local = next(iter(pipeline.build_dataset(records, "train", pipeline.InputConfig(**settings))))
    ds = pipeline.build_dataset(records, "train", pipeline.InputConfig(
        **settings, data_service=cluster, job_prefix="train-shapes"))
    assert ds.element_spec == (tf.TensorSpec([8, SIZE, SIZE, 1], tf.float32),
                               tf.TensorSpec([8], tf.int32))
    seen = set()
    for images, labels in ds.take(3 * NUM_EXAMPLES // 8):  # three epochs: training repeats
        assert images.shape == local[0].shape and images.dtype == local[0].dtype
        assert labels.shape == local[1].shape
        seen.update(_ids(images.numpy().round().astype(np.uint8)))
    del ds
    # Augmentation ran on the workers: pixels moved (a warp shifts the constant 7 background
    # only at the id pixels; brightness jitter shifts all of them).
    assert not np.all(images.numpy() == 7.0)


@pytest.mark.slow
def test_command_survives_a_killed_worker_and_stops_on_sigterm(records, tmp_path):
    journal = tmp_path / "dispatcher"
    port, procs = _start_cluster(tmp_path, 2, f"--work_dir={journal}",
                                 "--worker_timeout_ms=2000")
    dispatcher, workers = procs[0], procs[1:]
    try:
        config = pipeline.InputConfig(global_batch_size=4, image_size=SIZE, training=True,
                                      augment=False, data_service=f"grpc://127.0.0.1:{port}",
                                      job_prefix="kill")
        iterator = iter(pipeline.build_dataset(records, "train", config))
        for _ in range(5):
            next(iterator)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=30)
        # Bounded: the survivor keeps serving (or the iterator fails clearly), never a hang.
        start = time.monotonic()
        outcome = "continued"
        try:
            for _ in range(100):  # 400 examples, ~8 epochs: more than any buffer holds
                images, _ = next(iterator)
                assert images.shape == (4, SIZE, SIZE, 1)
        except tf.errors.OpError as err:
            outcome = f"error: {err.message[:200]}"
        assert time.monotonic() - start < 120, outcome
        print(f"after killing a worker: {outcome} ({time.monotonic() - start:.1f} s)")
        del iterator  # its service client would otherwise keep polling the dead worker
        assert any(journal.iterdir()), "the dispatcher's work_dir journal is empty"
        # SIGTERM: both remaining servers stop cleanly and promptly.
        for proc in (workers[1], dispatcher):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        _kill(procs)


@pytest.mark.slow
def test_train_reads_its_input_through_the_service(records, cluster, tmp_path):
    from xray_tfdata.settings import from_flat
    from xray_tfdata.training import loop
    from xray_tfdata.training.config import TrainConfig

    config = from_flat(TrainConfig, records_dir=str(records), model_dir=str(tmp_path), epochs=1,
                         steps_per_epoch=2, global_batch_size=8, warmup_epochs=0,
                         steps_per_execution=2, export=False, data_service=cluster,
                         data_service_job="train-run", augment_on="host")
    summary = loop.train(config)
    assert summary["resolved"]["data_service"] == cluster
    assert summary["steps_completed"] == 2 and np.isfinite(summary["final_metrics"]["loss"])
