"""Leave-one-collection-out (training/loco.py, `python -m xray_tfdata.loco`) on three tiny
synthetic collections: a holds NORMAL + PNEUMONIA, b all three classes, c only COVID19 (so the
default folds are a and b), 32 px, one epoch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import fixtures
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import manifest, synthetic
from xray_tfdata.settings import from_flat
from xray_tfdata.training import loco, loop, run_spec
from xray_tfdata.training.config import TrainConfig

SIZE = 32
HOLDS = {"a": (0, 2), "b": (0, 1, 2), "c": (1,)}
PER_SPLIT = {"train": 4, "val": 1, "test": 1}  # images per class and collection


def _split(split: str, n: int, rng: np.random.Generator) -> list:
    records = [fixtures.example(synthetic.render_xray(label, (SIZE, SIZE), rng), label=label,
                                source=name, source_path=f"{name}/{split}/{label}/{k}.png")
               for name, classes in HOLDS.items() for k in range(n) for label in classes]
    if split == "train":  # offline variants of a's images: trained on, never scored as a's
        records += [fixtures.example(synthetic.render_xray(2, (SIZE, SIZE), rng), label=2,
                                     source="a", source_path=f"a/train/2/{k}.png",
                                     augmentation="gamma0.4") for k in range(2)]
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    return fixtures.write_records(tmp_path_factory.mktemp("records"),
                                  {s: _split(s, n, rng) for s, n in PER_SPLIT.items()},
                                  image_size=SIZE)


def _base(records: Path, **overrides) -> TrainConfig:
    settings = dict(records_dir=str(records), model_dir="unused", epochs=1, global_batch_size=8,
                    warmup_epochs=0, export=False, calibrate=False, seed=3)
    return from_flat(TrainConfig, **{**settings, **overrides})


def _loco(work: Path, **overrides) -> loco.LocoConfig:
    return loco.LocoConfig(**{"work_dir": str(work), "bootstrap": 20, "gradcam_per_class": 2,
                              **overrides})


@pytest.fixture(scope="module")
def finished(records, tmp_path_factory):
    work = tmp_path_factory.mktemp("loco")
    lines: list[str] = []
    summary = loco.run(_loco(work), _base(records), say=lines.append)
    return work, summary, lines


def test_holdouts_are_two_class_collections_or_the_named_ones(records):
    info = manifest.read_info(records)
    assert loco.holdouts(info) == ["a", "b"]
    assert loco.holdouts(info, ["c"]) == ["c"]
    with pytest.raises(ConfigError, match=r"holdout must be collections of these records: "
                                          r"\['a', 'b', 'c'\]. Received: holdout='a,zz'"):
        loco.holdouts(info, ["a", "zz"])
    label_map = {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2}
    one = manifest.info_from_dict({"label_map": label_map, "splits": {
        "train": {"per_source": {"a": {"NORMAL": 3, "COVID19": 2}}}}})
    with pytest.raises(ConfigError, match="records_dir must be records of several collections"):
        loco.holdouts(one)
    single_class = manifest.info_from_dict({"label_map": label_map, "splits": {
        "train": {"per_source": {"a": {"NORMAL": 3}, "b": {"COVID19": 2}}}}})
    with pytest.raises(ConfigError, match=r"none of \['a', 'b'\] holds two classes.*--holdout="):
        loco.holdouts(single_class)


def test_plan_excludes_the_fold_from_training_and_names_what_it_scores(records, tmp_path):
    folds = loco.plan(_base(records), str(tmp_path), ["a", "c"])
    a, c = folds
    assert a.config.input.exclude_collections == ("a",) and a.config.input.collections == ()
    assert a.config.model_dir == str(tmp_path / "a") and a.config.epochs == 1
    assert (a.held_out_splits, a.trained_on, a.internal) == (("test", "val", "train"),
                                                             ("b", "c"), ("b", "c"))
    assert a.data.num_train == 4 * 3 + 4  # b's and c's train images
    assert c.internal == ("a", "b")
    # Holding out b and c leaves a without COVID19 val images: still trainable. A fold whose
    # other collections have no val split at all cannot train: refused before any training.
    info = manifest.read_manifest(records)
    del info["splits"]["val"]["per_source"]["b"], info["splits"]["val"]["per_source"]["c"]
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest.write_manifest(broken, info)
    with pytest.raises(loco.LocoError, match=r"Fold 'a' cannot train on the other collections "
                                             r"\(--exclude_collections=a\): .*'val'"):
        loco.plan(_base(broken), str(tmp_path), ["a"])


def test_loco_end_to_end_scores_each_held_out_collection_and_the_internal_test(finished):
    work, summary, lines = finished
    assert [f["holdout"] for f in summary["folds"]] == ["a", "b"]
    a, b = (f["held_out"] for f in summary["folds"])
    # Every split's originals of the held-out collection; a's 2 offline variants left out.
    assert (a["n"], a["classes"], a["support"]) == (12, ["NORMAL", "PNEUMONIA"],
                                                    {"NORMAL": 6, "PNEUMONIA": 6})
    assert (b["n"], b["classes"]) == (18, ["NORMAL", "COVID19", "PNEUMONIA"])
    assert set(a["sensitivity"]) == {"NORMAL", "PNEUMONIA"}
    assert a["macro_f1_ci"]["low"] is not None
    # The internal test: the test split of the collections the fold trained on, per collection.
    internal_a, internal_b = (f["internal"] for f in summary["folds"])
    assert (internal_a["n"], internal_a["collections"]) == (4, ["b", "c"])
    assert {k: v["n"] for k, v in internal_a["by_collection"].items()} == {"b": 3, "c": 1}
    assert (internal_b["n"], internal_b["collections"]) == (3, ["a", "c"])
    for row in (a, internal_a):
        probe = row["probe"]
        assert probe["skipped"] is False and probe["probe_macro_f1"] is not None
        # ratio = probe / CNN, None (not inf) only when the 1-epoch CNN scores 0
        assert (probe["ratio"] is None) == (probe["cnn_macro_f1"] == 0)
        assert 0.0 <= row["border_attention"]["overall"] <= 1.0
    assert a["border_attention"]["num_images"] == 4  # 2 per class a holds
    assert summary["folds"][0]["training"]["trained_on"] == ["b", "c"]
    assert summary["mean"]["held_out"]["macro_f1"] == pytest.approx(
        (a["macro_f1"] + b["macro_f1"]) / 2)
    assert summary["mean"]["held_out"]["sensitivity"]["COVID19"] == b["sensitivity"]["COVID19"]
    # Files: one run per fold, its results, and loco.json with the table.
    fold_summary = json.loads((work / "a" / "summary.json").read_text())
    assert fold_summary["resolved"]["num_train_examples"] == 16
    assert json.loads((work / "a" / loco.FOLD_FILE).read_text())["held_out"]["n"] == 12
    saved = json.loads((work / loco.RESULTS_FILE).read_text())
    assert saved["table"] == summary["table"] and len(saved["folds"]) == 2
    table = summary["table"].splitlines()
    assert table[0].split()[:3] == ["held", "out", "n"]
    assert [line.split()[:2] for line in table[1:3]] == [["a", "12"], ["b", "18"]]
    assert table[3].startswith("mean")
    assert len(lines) == 2 and lines[0].startswith("loco fold 1/2: held out a (12 images): "
                                                   "macro-F1 ")
    assert lines[1].endswith("trained 1 epoch(s) in " + lines[1].rsplit(" in ", 1)[1])


def test_a_rerun_reuses_finished_folds_rescored_only_when_scoring_changes(finished, records,
                                                                          monkeypatch):
    work, summary, _ = finished

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    lines: list[str] = []
    again = loco.run(_loco(work), _base(records), say=lines.append)
    assert [line.rsplit("; ", 1)[1] for line in lines] == ["finished earlier."] * 2
    assert again["folds"] == summary["folds"]
    lines.clear()
    rescored = loco.run(_loco(work, bootstrap=0, holdout=("a",)), _base(records),
                        say=lines.append)
    assert lines[0].endswith("; scored again (scoring settings changed).")
    assert rescored["folds"][0]["held_out"]["macro_f1_ci"] == {"low": None, "high": None}
    assert rescored["folds"][0]["training"] == summary["folds"][0]["training"]
    # Other run-defining settings: refused, naming the setting, not silently reused.
    with pytest.raises(run_spec.RunSpecMismatch, match=r"learning_rate 0.001 -> 0.01.*"
                                                       r"pass a new --work_dir"):
        loco.run(_loco(work, holdout=("a",)), _base(records, learning_rate=0.01))


def test_a_killed_fold_resumes_through_trains_own_resume(records, tmp_path):
    (fold,) = loco.plan(_base(records), str(tmp_path), ["a"])
    loop.train(fold.config, data=fold.data)  # epoch 1 checkpointed, then "killed":
    (tmp_path / "a" / "summary.json").unlink()  # the finish never ran
    lines: list[str] = []
    loco.run(_loco(tmp_path, holdout=("a",), shortcut_checks=False, bootstrap=0),
             _base(records, epochs=2), say=lines.append)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["resumed_from_step"], summary["epochs_completed"]) == (2, 2)
    assert "trained 2 epoch(s)" in lines[0]


def test_the_command_refuses_an_unknown_holdout_in_one_line(records, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.loco", f"--records_dir={records}",
         f"--work_dir={tmp_path / 'work'}", "--holdout=a,zz"],
        capture_output=True, text=True, cwd=fixtures.REPO_ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "xray_tfdata.loco: error: --holdout must be collections of these records: ['a', 'b', "
        "'c']. Received: --holdout='a,zz'. Collections are the names of build_records' "
        "--data_dir=name=path,...", "See --helpfull for every flag."]
    assert not (tmp_path / "work").exists()
