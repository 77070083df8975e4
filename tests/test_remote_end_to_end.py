"""The whole chain on TF's in-memory ram:// file system, in one process.

ram:// lives in the process that writes it, so build -> train -> evaluate -> export -> predict
run here as library calls (not subprocesses). Every file a stage writes must land under the URL,
and nothing may appear locally under a name like "ram:" (the bug the path layer fixes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from xray_tfdata import paths
from xray_tfdata.evaluation import evaluator
from xray_tfdata.paths import RemotePath
from xray_tfdata.records import convert, synthetic
from xray_tfdata.serving import export
from xray_tfdata.settings import from_flat
from xray_tfdata.training import loop
from xray_tfdata.training.config import TrainConfig


def _names(url: RemotePath) -> list[str]:
    return [p.name for p in url.iterdir()]


def test_build_train_evaluate_export_on_ram(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray local "ram:" folder would appear here
    root = RemotePath(f"ram://end_to_end/{os.getpid()}")
    local_data = tmp_path / "sources"
    synthetic.generate_dataset(local_data, synthetic.small_counts(10, 4), min_size=40,
                               max_size=64, seed=0)
    paths.upload(local_data, root / "data")

    info = convert.build_records(convert.ConversionConfig(
        data_dir=str(root / "data"), output_dir=str(root / "records"), image_size=32,
        num_workers=1, min_shards=2, near_distance=0), progress=False)
    assert sorted(info["splits"]) == ["test", "train", "val"]
    assert "dataset_info.json" in _names(root / "records")

    model_dir = root / "model"
    summary = loop.train(from_flat(
        TrainConfig, records_dir=str(root / "records"), model_dir=str(model_dir), epochs=1,
        global_batch_size=8, warmup_epochs=0, steps_per_execution=1, export=True,
        cache="memory", seed=0))
    assert summary["status"] == "completed"
    written = _names(model_dir)
    for name in ("best.keras", "summary.json", "history.csv", "checkpoints", "logs", "export"):
        assert name in written, (name, written)
    assert json.loads((model_dir / "summary.json").read_text())["status"] == "completed"
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).startswith("ram://")
    assert not any(n.startswith(".") for n in written)  # no temporary left behind

    result = evaluator.evaluate(evaluator.EvalConfig(
        model_path=str(model_dir / "best.keras"), records_dir=str(root / "records"),
        split="test", bootstrap=20, gradcam_per_class=1))
    assert 0.0 <= result["accuracy"] <= 1.0
    reports = _names(model_dir / "eval" / "test")
    assert {"metrics.json", "report.txt", "confusion_matrix.png"} <= set(reports), reports

    serving = export.load_serving(str(model_dir / "export"))
    image = next(p for p in sorted(local_data.rglob("*")) if p.is_file())
    probs = serving.predict([image.read_bytes()])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0, atol=1e-4)

    assert not Path("ram:").exists() and not (tmp_path / "ram:").exists()
    paths.rmtree(root)
