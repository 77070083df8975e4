"""MultiWorkerMirroredStrategy with two local processes (TF_CONFIG on 127.0.0.1 ports).

Both workers run the same `python -m xray_tfdata.train --strategy=multi_worker` command; the loop
is the one every strategy uses. They must finish, agree on every epoch's loss and validation
metrics and end with bit-identical weights, and only the chief may leave files behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.fixtures import xray_records as make_records

pytestmark = pytest.mark.slow

_EPOCH_LINE = re.compile(r"Epoch (\d+)/\d+ step (\d+): loss ([\d.]+), val acc ([\d.]+), "
                         r"val macro-F1 ([\d.]+), val AUC ([\d.na]+)")
_FINGERPRINT = re.compile(r"Final weights fingerprint: ([0-9a-f]+) \(step (\d+)\)")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_and_agree(tmp_path):
    records = make_records(tmp_path / "records", {"train": 16, "val": 6}, image_size=32)
    model_dir = tmp_path / "model"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    args = [sys.executable, "-m", "xray_tfdata.train", "--strategy=multi_worker",
            f"--records_dir={records}", f"--model_dir={model_dir}", "--epochs=2",
            "--steps_per_epoch=4", "--global_batch_size=8", "--steps_per_execution=2",
            "--warmup_epochs=0", "--checkpoint_every=2", "--noaugment", "--shuffle_buffer=64",
            "--noexport",  # the chief's export is tested elsewhere; here the collectives are
            "--verbosity=0"]  # INFO logs: the epoch lines and fingerprint compared below
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=200))
    finally:
        for proc in procs:  # a failed worker leaves its peer waiting on a collective forever
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]

    epochs = [_EPOCH_LINE.findall(stderr) for _, stderr in outputs]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1], epochs
    assert [int(e[1]) for e in epochs[0]] == [4, 8]
    prints = [_FINGERPRINT.findall(stderr) for _, stderr in outputs]
    assert prints[0] == prints[1] and prints[0][0][1] == "8", prints

    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["resolved"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert summary["resolved"]["replicas"] == 2
    assert summary["resolved"]["per_replica_batch_size"] == 4
    assert summary["weights_fingerprint"] == prints[0][0][0]
    assert "Training completed" in outputs[0][0] and outputs[1][0] == ""  # only the chief reports
    assert (model_dir / "best.keras").is_file() and (model_dir / "history.csv").is_file()
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")) == \
        ["ckpt-4.index", "ckpt-6.index", "ckpt-8.index"]
    assert not list(model_dir.glob(".workertemp*")), "non-chief temp files must be cleaned up"
