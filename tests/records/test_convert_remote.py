"""The converter and the input pipeline on a URL (TF's in-memory ram:// file system).

The same sources give the same shard bytes whether read from and written to a local folder or a
URL, with one worker or a pool (the parent reads URL sources: workers never see ram://).
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import pytest

from tests import fixtures
from xray_tfdata import files, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs import pipeline
from xray_tfdata.paths import RemotePath
from xray_tfdata.records import conversion_state, convert, decode_pass, manifest, sources, synthetic

SIZE = 16
COUNTS = {"train": {"NORMAL": 5, "COVID19": 4, "PNEUMONIA": 5},
          "test": {"NORMAL": 2, "COVID19": 2, "PNEUMONIA": 2}}
_ids = itertools.count()


def _config(data, out, **kwargs) -> convert.ConversionConfig:
    base = dict(image_size=SIZE, min_shards=2, num_workers=1, image_format="png",
                augment="COVID19:gamma0.5", near_distance=0)
    return convert.ConversionConfig(data_dir=str(data), output_dir=str(out), **{**base, **kwargs})


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    synthetic.generate_dataset(out, COUNTS, min_size=40, max_size=80, formats=("jpeg", "png"),
                               modes=("L", "RGB"), seed=5)
    return out


@pytest.fixture(scope="module")
def ram_data(local_data) -> RemotePath:
    url = RemotePath(f"ram://convert_remote/data{next(_ids)}")
    paths.upload(local_data, url)
    return url


@pytest.fixture(scope="module")
def local_reference(local_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("reference")
    return out, convert.build_records(_config(local_data, out), progress=False)


def _ram_out() -> RemotePath:
    return RemotePath(f"ram://convert_remote/out{next(_ids)}")


def _shard_entries(result: dict) -> dict:
    return {split: info["shards"] for split, info in result["splits"].items()}


@pytest.mark.parametrize("workers", [1, 2])
def test_ram_build_is_byte_identical_to_local(ram_data, local_reference, workers):
    out = _ram_out()
    result = convert.build_records(_config(ram_data, out, num_workers=workers), progress=False)
    _, local = local_reference
    assert _shard_entries(result) == _shard_entries(local)  # names, counts, sizes, sha256s
    for info in result["splits"].values():
        for shard in info["shards"]:
            assert files.sha256_file(out / shard["file"]) == shard["sha256"]
    assert manifest.read_manifest(out) == result
    names = [p.name for p in out.iterdir()]
    assert conversion_state.WORK_DIR not in names and not any(n.startswith(".") for n in names)
    assert not conversion_state.local_work_dir(out).exists()  # the local scratch spill is gone
    # A rerun finds the complete records and changes nothing.
    assert convert.build_records(_config(ram_data, out, num_workers=workers),
                                 progress=False) == result


def test_ram_build_resumes_after_a_crash(ram_data, local_reference, monkeypatch):
    out, calls = _ram_out(), []
    monkeypatch.setattr(decode_pass, "process_source",
                        fixtures.crash_after(7, decode_pass.process_source, calls))
    with pytest.raises(KeyboardInterrupt):
        convert.build_records(_config(ram_data, out), progress=False)
    assert (out / conversion_state.WORK_DIR / conversion_state.STATE_NAME).is_file()
    assert conversion_state.spill_path(out).is_file()  # local scratch, kept for the rerun
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(decode_pass, "process_source",
                        fixtures.crash_after(10**6, decode_pass.process_source, calls))
    result = convert.build_records(_config(ram_data, out), progress=False)
    assert len(calls) == sum(sum(c.values()) for c in COUNTS.values()) - 7  # only the rest
    assert _shard_entries(result) == _shard_entries(local_reference[1])


def test_labels_csv_on_ram(local_data, tmp_path):
    data = RemotePath(f"ram://convert_remote/csvdata{next(_ids)}")
    paths.upload(local_data / "train", data)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "label"])
    for f in sources.scan(local_data / "train"):
        writer.writerow([Path(f.path).relative_to(local_data / "train").as_posix(),
                         f.class_name])
    writer.writerow(["NORMAL/missing.png", "NORMAL"])
    files.write_atomic(data / "labels.csv", rows.getvalue())
    out = _ram_out()
    result = convert.build_records(_config(data, out, labels_csv=str(data / "labels.csv"),
                                           max_reject_fraction=0.2, augment=""), progress=False)
    assert sum(i["num_examples"] for i in result["splits"].values()) == sum(
        COUNTS["train"].values())
    assert [r["path"] for r in result["rejected"]] == ["NORMAL/missing.png"]


def test_pipeline_reads_records_from_ram(ram_data, local_reference):
    out = _ram_out()
    convert.build_records(_config(ram_data, out), progress=False)
    config = pipeline.InputConfig(global_batch_size=2, image_size=SIZE, training=False,
                                  deterministic=True)
    remote = [b[1].numpy().tolist()
              for b in pipeline.build_dataset(str(out), "test", config)]
    local = [b[1].numpy().tolist()
             for b in pipeline.build_dataset(str(local_reference[0]), "test", config)]
    assert remote == local and sum(len(b) for b in remote) == 6
    assert pipeline.steps_per_epoch(str(out), "train", 2) == pipeline.steps_per_epoch(
        str(local_reference[0]), "train", 2)


def test_unknown_scheme_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"output_dir must be a local path or a URL.*ram://"):
        _config("data", "foo://bucket/records")
    with pytest.raises(ConfigError, match=r"data_dir must be .*Received: data_dir='nope://x'"):
        _config("nope://x", "out")
