"""The README's main command, end to end on a small synthetic set (a smoke run of every stage)."""

from __future__ import annotations

import json
import re
import subprocess
import sys


def test_quickstart_runs_every_stage_and_reports_where_outputs_went(tmp_path):
    work = tmp_path / "qs"
    result = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.quickstart", f"--workdir={work}",
         "--per_class_train=24", "--per_class_test=8", "--epochs=2", "--image_size=32"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("build records", "train seed CNN", "evaluate on test",
                 "classical classifiers on CNN embeddings", "predict with the SavedModel export"):
        assert re.search(rf"^\[\d/6\] {step}: \$ python -m xray_tfdata\.", result.stdout, re.M)
    model = work / "model"
    for path in (work / "records" / "dataset_info.json", model / "best.keras",
                 model / "export" / "saved_model.pb", model / "history.csv",
                 model / "eval" / "test" / "confusion_matrix.png",
                 model / "classical" / "metrics.json"):
        assert path.is_file(), path
    metrics = json.loads((model / "eval" / "test" / "metrics.json").read_text())
    assert metrics["num_examples"] == 3 * 8
    assert "3 predicted, 0 failed." in result.stdout
    assert str(model / "best.keras") in result.stdout


def test_quickstart_refuses_bad_flags_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.quickstart", f"--workdir={tmp_path}",
         "--per_class_train=5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "--per_class_train=5" in result.stderr and "at least 20" in result.stderr
    assert not any(tmp_path.iterdir())
