"""`python -m xray_tfdata.build_records`: flag validation, exit codes, and kill -9 then rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from absl.testing import flagsaver

from tests import fixtures
from xray_tfdata import build_records, cli, files, labels
from xray_tfdata.records import conversion_state, convert, features, manifest, synthetic

REPO = fixtures.REPO_ROOT


def _main(*argv: str) -> None:
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["build_records", *argv])
        return build_records.main(["build_records"])


@pytest.mark.parametrize("argv, message", [
    (["--channels=2"], "--channels must be one of 1, 3. Received: --channels=2."),
    (["--image_size=2"], r"--image_size must be an integer in \[8, 4096\] .*Received: --image_size=2"),
    (["--val_fraction=1.5"], r"--val_fraction must be a number in \[0.0, 1.0\). Received: "
                             r"--val_fraction=1.5"),
    (["--augment=COVID19:blur3"], "--augment must be a valid augmentation spec. Received: "
                                  "--augment='COVID19:blur3'"),
    (["--num_workers=-2"], "--num_workers must be an integer >= 0"),
    (["--label_map=Effusion=TB"], r"--label_map must be a comma-separated list. Received: "
                                  r"--label_map='Effusion=TB'. Here: each entry must be"),
    (["--csv_columns=image=x"], "--csv_columns must be a comma-separated list"),
    (["--test_fraction=0.95"], r"--test_fraction must be below 1 - val_fraction = 0.9"),
    (["--holdout_source=nih"], r"--holdout_source must be one of the collections named in "
                               r"data_dir \(\[''\]\)"),
    (["--beam_pipeline_options=--runner=DataflowRunner"],
     "--beam_pipeline_options must be empty unless --runner=beam"),
    (["--runner=beam", "--beam_pipeline_options=runner=DataflowRunner"],
     "--beam_pipeline_options must be Beam options separated by commas, each starting with --"),
])
def test_bad_flag_values_are_usage_errors_naming_value_and_range(argv, message, tmp_path):
    with pytest.raises(app.UsageError, match=message):
        _main(f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", *argv)
    assert not (tmp_path / "out").exists()  # validated before any work


def test_several_collections_need_names(tmp_path):
    with pytest.raises(app.UsageError, match=r"--data_dir must be a path, or name=path entries.*"
                                             r"needs a name"):
        _main(f"--data_dir=a={tmp_path},{tmp_path}", f"--output_dir={tmp_path / 'out'}")


def test_a_labels_csv_build_from_the_command_line(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = i % 3
        cv2.imwrite(str(tmp_path / f"{i}.png"), synthetic.render_xray(label, (32, 32), rng))
        rows.append(f"{i}.png,{['No Finding', 'COVID-19', 'Pneumonia'][label]},pt{i // 2}")
    (tmp_path / "labels.csv").write_text("Image,Finding,Patient\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert _main(f"--data_dir=nih={tmp_path}", f"--labels_csv=nih={tmp_path / 'labels.csv'}",
                 "--csv_columns=path=Image,label=Finding,patient_id=Patient",
                 "--label_map=No Finding=NORMAL,COVID-19=COVID19,Pneumonia=PNEUMONIA",
                 f"--output_dir={out}", "--image_size=16", "--num_workers=1",
                 "--test_fraction=0.34", "--val_fraction=0.0") is None
    info = manifest.read_manifest(out)
    assert sum(i["num_examples"] for i in info["splits"].values()) == 12
    # Patients (majority class, tie -> the class listed first): 4 NORMAL, 2 COVID19; test takes
    # round(4 * 0.34) = 1 and round(2 * 0.34) = 1 whole patients: 2 patients, 4 images.
    test = info["splits"]["test"]
    assert (test["patients"], test["num_examples"], sum(test["per_source"]["nih"].values())) == (2, 4, 4)
    assert info["splits"]["train"]["patients"] == 4


def test_enum_flags_are_checked_by_the_parser():
    with flagsaver.flagsaver(), pytest.raises(flags.IllegalFlagValueError, match="webp"):
        flags.FLAGS(["build_records", "--image_format=webp"])


def test_layout_error_fails_the_command_with_the_message(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "scans").mkdir()
    # cli.run prints it as one "error:" line and exits 1 (tests/commands/test_cli.py).
    with pytest.raises(cli.CommandFailed, match=r"Unexpected folder\(s\) \['scans'\]"):
        _main(f"--data_dir={tmp_path}", f"--output_dir={tmp_path.parent / 'o'}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    counts = {"train": {"NORMAL": 25, "COVID19": 20, "PNEUMONIA": 25},
              "test": {"NORMAL": 4, "COVID19": 4, "PNEUMONIA": 4}}
    synthetic.generate_dataset(out, counts, min_size=400, max_size=700, formats=("jpeg", "png"),
                               seed=5)
    return out


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xray_tfdata.build_records", f"--data_dir={data}",
            f"--output_dir={out}", "--image_size=32", "--min_shards=3", "--num_workers=2",
            "--augment=COVID19:gamma0.4,unsharp3", *extra]


def test_kill_9_mid_run_then_rerun_gives_identical_shards_and_manifest(data_dir, tmp_path):
    config = dict(data_dir=str(data_dir), image_size=32, min_shards=3,
                  augment="COVID19:gamma0.4,unsharp3")
    reference = tmp_path / "reference"
    convert.build_records(convert.ConversionConfig(output_dir=str(reference), num_workers=1,
                                                   **config), progress=False)
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    # The reference above ran in this process; the killed run is a fresh interpreter, so this
    # also proves records are byte-identical across processes (protobuf map order, hashing).
    proc = subprocess.Popen(_cli(data_dir, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    spill = out / conversion_state.WORK_DIR / "pass1.spill"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if spill.is_file() and spill.stat().st_size > 0:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the converter and its pool workers, like kill -9
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not manifest.manifest_path(out).exists()  # killed mid-run, not after
    # Its lock file stays, but the OS dropped the lock with the process: no stale lock blocks.
    assert (out / conversion_state.WORK_DIR / conversion_state.LOCK_NAME).is_file()

    # Rerunning the same command completes the job: identical to an uninterrupted run. (In
    # process, to save a TensorFlow start-up; test_convert checks that CLI-equal args resume.)
    assert (out / conversion_state.WORK_DIR / "state.json").is_file()
    convert.build_records(convert.ConversionConfig(output_dir=str(out), num_workers=2, **config),
                          progress=False)
    shas = lambda d: {p.name: files.sha256_file(p) for p in d.iterdir()}  # noqa: E731
    assert shas(out) == shas(reference)


def test_two_builds_into_one_dir_the_second_is_refused_and_the_first_is_right(tmp_path):
    # Flat gray sources, each its own value: a record with another source's pixels shows.
    data, value, expected = tmp_path / "data", 5, {}
    for split, n in (("train", 8), ("test", 2)):
        for name in ("NORMAL", "COVID19", "PNEUMONIA"):
            (data / split / name).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(data / split / name / f"{i}.png"),
                            np.full((30, 30), value, np.uint8))
                expected[f"{split}/{name}/{i}.png"], value = (value, name), value + 8
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "xray_tfdata.build_records", f"--data_dir={data}",
            f"--output_dir={out}", "--image_size=8", "--image_format=png", "--num_workers=1",
            "--min_shards=2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / conversion_state.WORK_DIR / conversion_state.STATE_NAME
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline and not state.is_file():
        time.sleep(0.002)
    # Paused mid-build (it has claimed the dir), so the second run surely overlaps it.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first build finished before it could be paused"
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 1 and len(errors) == 1, second.stderr[-2000:]
    assert errors[0].startswith(f"xray_tfdata.build_records: error: output_dir='{out}' is being "
                                f"built by another build_records (pid {first.pid} on ")
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-2000:]

    info = manifest.read_manifest(out)
    found = {}
    for split in info["splits"]:
        for raw in tf.data.TFRecordDataset(manifest.split_files(out, info, split)):
            ex = tf.io.parse_single_example(raw, features.FEATURE_SPEC)
            pixels = np.unique(tf.io.decode_png(ex["image/encoded"]).numpy()).tolist()
            path = ex["image/source/path"].numpy().decode()
            found[path] = (pixels, ex["image/class/text"].numpy().decode())
            assert ex["image/source/sha256"].numpy().decode() == files.sha256_file(data / path)
    assert found == {path: ([v], name) for path, (v, name) in expected.items()}


def test_an_unwritable_output_dir_is_one_line(tmp_path):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "NORMAL" / "a.png"), np.zeros((20, 20), np.uint8))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(cli.CommandFailed) as failed:
        _main(f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'afile' / 'out'}",
              "--num_workers=1", "--test_fraction=0.0", "--val_fraction=0.0")
    err = str(failed.value)
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"Cannot write to output_dir='{tmp_path / 'afile' / 'out'}'")
    assert "a part of its path is a file, not a directory" in err


def _class_folders(root: Path, per_class: dict[str, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for class_name, n in per_class.items():
        (root / class_name).mkdir(parents=True)
        for i in range(n):
            image = synthetic.render_xray(labels.LABEL_MAP[class_name], (36, 32), rng)
            cv2.imwrite(str(root / class_name / f"{i}.png"), image)
    return root


def test_several_collections_print_their_table_and_the_confound_warning(tmp_path, capsys):
    kids = _class_folders(tmp_path / "kids", {"NORMAL": 5, "PNEUMONIA": 5}, seed=1)
    covid_a = _class_folders(tmp_path / "covid_a", {"COVID19": 5}, seed=2)
    covid_b = _class_folders(tmp_path / "covid_b", {"COVID19": 4}, seed=3)
    _main(f"--data_dir=kids={kids},covid_a={covid_a},covid_b={covid_b}",
          f"--output_dir={tmp_path / 'out'}", "--image_size=16", "--num_workers=1",
          "--near_distance=0")
    err = capsys.readouterr().err.splitlines()
    start = err.index("Records per collection and class (every split):")
    assert err[start + 1:start + 7] == [
        "collection   NORMAL  COVID19  PNEUMONIA    total",
        "covid_a           0        5          0        5",
        "covid_b           0        4          0        4",
        "kids              5        0          5       10",
        "total             5        9          5       19",
        "WARNING: COVID19: all 9 images from covid_a, covid_b, which hold no NORMAL or PNEUMONIA: "
        "a model can learn the collection (evaluate's shortcut probe and python -m "
        "xray_tfdata.loco measure it)."]
    # One collection: quiet, only the result line.
    _main(f"--data_dir={kids}", f"--output_dir={tmp_path / 'one'}", "--image_size=16",
          "--num_workers=1", "--near_distance=0")
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("Records in ") and not any("WARNING" in line or line.startswith(
        "Records per collection") for line in lines), lines
