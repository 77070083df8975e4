"""Issue 16, training: a rerun into a model dir never silently changes the run it resumes
(run_spec.json), and a kill between the calibrated best.keras and calibration.json never
calibrates twice."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import fixtures
from xray_tfdata import files
from xray_tfdata.evaluation import calibration, inference
from xray_tfdata.settings import from_flat
from xray_tfdata.training import finetune, loop, run_spec
from xray_tfdata.training.config import TrainConfig


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return fixtures.xray_records(tmp_path_factory.mktemp("records"),
                                 {"train": 12, "val": 6, "test": 4}, image_size=32)


def _config(records: Path, model_dir: Path, **overrides) -> TrainConfig:
    settings = dict(records_dir=str(records), model_dir=str(model_dir), epochs=2,
                    steps_per_epoch=2, global_batch_size=8, warmup_epochs=0, dropout=0.0,
                    augment=False, export=False, calibrate=False, deterministic=True)
    settings.update(overrides)
    return from_flat(TrainConfig, **settings)


# ------------------------------------------------------------------ run spec
def test_rerun_with_other_sampling_or_weights_is_refused_naming_each(records, tmp_path):
    loop.train(_config(records, tmp_path))
    spec_before = (tmp_path / run_spec.RUN_SPEC_FILE).read_bytes()
    with pytest.raises(run_spec.RunSpecMismatch) as err:
        loop.train(_config(records, tmp_path, sampling="balanced", class_weights="none"))
    message = str(err.value)
    assert "class_weights 'balanced' -> 'none'; sampling 'natural' -> 'balanced'" in message
    assert "--overwrite" in message and "--model_dir" in message and "\n" not in message
    # Refused before anything was written: the run and its record are as they were.
    assert (tmp_path / run_spec.RUN_SPEC_FILE).read_bytes() == spec_before
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["input"][
        "sampling"] == "natural"


def test_rerun_on_records_of_another_size_is_refused_not_a_tf_error(records, tmp_path):
    loop.train(_config(records, tmp_path, epochs=1))
    other = fixtures.xray_records(tmp_path / "records48", {"train": 12, "val": 6}, image_size=48)
    with pytest.raises(run_spec.RunSpecMismatch,
                       match=r"image_size 32 -> 48; records .*\(32x32x1, 36 train, identity "
                             r"[0-9a-f]{16}\) -> .*records48' \(48x48x1, 36 train"):
        loop.train(_config(other, tmp_path, epochs=1))


def test_session_settings_may_change_and_epochs_only_grow(records, tmp_path):
    loop.train(_config(records, tmp_path, epochs=2))
    grown = loop.train(_config(records, tmp_path, epochs=3, patience=4, steps_per_execution=2))
    assert grown["resumed_from_step"] == 4 and grown["steps_completed"] == 6
    assert grown["changed_on_resume"] == ["epochs 2 -> 3", "patience 0 -> 4",
                                          "steps_per_execution 1 -> 2"]
    assert json.loads((tmp_path / run_spec.RUN_SPEC_FILE).read_text())["settings"]["epochs"] == 3
    with pytest.raises(run_spec.RunSpecMismatch, match=r"epochs 3 -> 2 \(may only grow\)"):
        loop.train(_config(records, tmp_path, epochs=2))


def test_same_records_moved_resume_and_new_dir_without_checkpoint_starts_over(records,
                                                                                tmp_path):
    import shutil

    loop.train(_config(records, tmp_path / "m", epochs=1))
    moved = Path(shutil.copytree(records, tmp_path / "moved"))
    summary = loop.train(_config(moved, tmp_path / "m", epochs=2))
    assert summary["resumed_from_step"] == 2
    assert any(c.startswith("records_dir ") and c.endswith("(the same records)")
               for c in summary["changed_on_resume"])
    # A spec without a checkpoint (killed before the first one): a new run, no refusal.
    shutil.rmtree(tmp_path / "m" / "checkpoints")
    fresh = loop.train(_config(records, tmp_path / "m", epochs=1, seed=3))
    assert fresh["resumed_from_step"] == 0
    spec = json.loads((tmp_path / "m" / run_spec.RUN_SPEC_FILE).read_text())
    assert spec["settings"]["seed"] == 3


def test_every_train_flag_is_either_a_session_setting_or_run_defining():
    flat = run_spec.settings.to_flat(TrainConfig(records_dir="r", model_dir="m"))
    assert run_spec.SESSION_SETTINGS <= set(flat)
    defining = set(flat) - run_spec.SESSION_SETTINGS
    assert {"model", "learning_rate", "optimizer", "sampling", "class_weights", "seed",
            "global_batch_size", "image_size", "augment", "val_split"} <= defining


# ------------------------------------------------------------------ calibration pair
@pytest.fixture(scope="module")
def confident_records(tmp_path_factory) -> Path:
    """Brightness-coded images (fixtures.BRIGHTNESS) whose val split has one label in six
    wrong: the hand-set tiny model is then confidently wrong there, and its temperature is
    clearly above 1 (on already calibrated outputs it would be about 1)."""
    rng = np.random.default_rng(0)

    def split(n: int, wrong_every: int = 0) -> list:
        return [fixtures.example(fixtures._brightness_image(label, rng),
                                 label=(label + 1) % 3 if wrong_every and i % wrong_every == 0
                                 else label, source_path=f"{label}/{i}.png")
                for i in range(n) for label in range(3)]

    return fixtures.write_records(tmp_path_factory.mktemp("confident"),
                                  {"train": split(8), "val": split(6, wrong_every=6),
                                   "test": split(2)}, image_size=fixtures.TINY_SIZE)


def _tiny_builder(directory: Path):
    def build(name, image_size, channels, **kwargs):
        path = fixtures.tiny_model_file(directory / "init.keras")
        return keras.models.load_model(path, compile=False)
    return build


def _test_outputs(records: Path, model_dir: Path) -> np.ndarray:
    model = keras.models.load_model(model_dir / "best.keras", compile=False)
    _, (probs, *_) = inference.run_model(model, inference.eval_dataset(
        str(records), "test", fixtures.TINY_SIZE, 1, 8))
    return probs


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", ["calibration.json", "best.keras"])
def test_kill_between_calibrated_model_and_record_never_calibrates_twice(
        confident_records, tmp_path, monkeypatch, kill_at):
    """The finish writes calibration.json and the calibrated best.keras; a kill after the first
    of the two (either order) must leave a state the rerun calibrates exactly once."""
    real_write, real_replace = files.write_atomic, files.os.replace
    first = []  # the temperature the killed session fitted
    real_calibrate = finetune.calibrate

    def calibrate_spy(*args):
        record = real_calibrate(*args)
        first.append(record["temperature"])
        return record

    def write_then_die(path, data):
        if Path(path).name == kill_at:
            raise Killed(path)
        return real_write(path, data)

    def replace_then_die(src, dst):
        # best.keras is also saved at each better epoch: die only at the finish's rename.
        if Path(dst).name == kill_at and (Path(dst).parent / "calibration.json").exists():
            raise Killed(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(finetune, "calibrate", calibrate_spy)
    monkeypatch.setattr(files, "write_atomic", write_then_die)
    monkeypatch.setattr(files.os, "replace", replace_then_die)
    records, builder = confident_records, _tiny_builder(tmp_path)
    # A learning rate of ~0 keeps the hand-set weights: the temperature is the val split's.
    config = _config(records, tmp_path / "model", epochs=2, calibrate=True, learning_rate=1e-9)
    with pytest.raises(Killed):
        loop.train(config, model_builder=builder)
    monkeypatch.undo()
    model_dir = tmp_path / "model"
    uncalibrated = _test_outputs(records, model_dir)  # the kill left the epoch's best.keras
    # Resumes the finished run: only the finish runs again.
    rerun = loop.train(config, model_builder=builder)
    assert rerun["steps_this_session"] == 0
    temperature = rerun["calibration"]["temperature"]
    assert first[0] > 1.5, "the test needs a temperature that moves the outputs"
    # Fitted again on the same uncalibrated weights, not on already calibrated ones (T ~ 1).
    assert temperature == pytest.approx(first[0], rel=1e-4)
    np.testing.assert_allclose(_test_outputs(records, model_dir),
                               calibration.apply_temperature(uncalibrated, temperature),
                               atol=1e-5)
    assert calibration.model_record(model_dir / "best.keras")["temperature"] == temperature


def test_a_record_naming_another_model_file_is_not_this_models(tmp_path):
    model = fixtures.tiny_model_file(tmp_path / "best.keras")
    record = {"temperature": 2.0, calibration.MODEL_SHA256: files.sha256_file(model)}
    files.write_json(tmp_path / calibration.CALIBRATION_FILE, record)
    assert calibration.model_record(model)["temperature"] == 2.0
    files.write_json(tmp_path / calibration.CALIBRATION_FILE,
                     {**record, calibration.MODEL_SHA256: "0" * 64})
    assert calibration.model_record(model) is None
    files.write_json(tmp_path / calibration.CALIBRATION_FILE, {"temperature": 2.0})
    assert calibration.model_record(model)["temperature"] == 2.0  # older runs: trusted


def test_a_spec_recorded_before_a_setting_existed_matches_it_at_its_default():
    current = {"settings": {"epochs": 3, "collection_adversary": 0.0, "collections": []},
               "records": {"identity": "x", "dir": "/r"}}
    older = {"settings": {"epochs": 3}, "records": {"identity": "x", "dir": "/r"}}
    assert run_spec.differences(older, current) == ([], [])
    current["settings"]["collection_adversary"] = 0.5
    assert run_spec.differences(older, current) == (["collection_adversary None -> 0.5"], [])
