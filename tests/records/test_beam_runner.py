"""--runner=beam writes the local runner's records byte for byte (in-process and 2-process Beam)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from xray_tfdata import files, records
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import conversion_config, convert, manifest, synthetic

pytest.importorskip("apache_beam", reason="the [beam] extra (CI installs it through [test])")

COUNTS = {"train": {"NORMAL": 4, "COVID19": 3, "PNEUMONIA": 4},
          "test": {"NORMAL": 1, "COVID19": 1, "PNEUMONIA": 1}}


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory) -> str:
    """Two named collections; b's train holds a copy of one of a's test images (dedupe drops it)."""
    root = tmp_path_factory.mktemp("collections")
    for seed, name in enumerate(("a", "b")):
        synthetic.generate_dataset(root / name, COUNTS, min_size=40, max_size=70,
                                   formats=("jpeg", "png"), modes=("L", "RGB"), seed=seed + 5)
    source = sorted((root / "a" / "test" / "NORMAL").iterdir())[0]
    shutil.copy(source, root / "b" / "train" / "NORMAL" / f"copy{source.suffix}")
    return f"a={root / 'a'},b={root / 'b'}"


def _config(data_dir: str, out: Path, **kwargs) -> convert.ConversionConfig:
    return convert.ConversionConfig(
        data_dir=data_dir, output_dir=str(out), image_size=16, min_shards=2, num_workers=1,
        image_format="png", augment="COVID19:gamma0.5,mean3", dedupe="drop", near_distance=0,
        **kwargs)


def _files(out: Path) -> dict[str, str]:
    return {p.name: files.sha256_file(p) for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def local(two_collections, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("local")
    return out, convert.build_records(_config(two_collections, out), progress=False)


def test_in_process_beam_matches_the_local_runner_byte_for_byte(two_collections, local, tmp_path):
    local_out, info = local
    assert info["duplicates"]["dropped"], "the planted copy must be dropped"
    assert any(s["variants_per_class"]["COVID19"] for s in info["splits"].values())
    assert sorted(info["sources"]) == ["a", "b"]
    out = tmp_path / "beam"
    result = convert.build_records(_config(two_collections, out, runner="beam"), progress=False)
    assert _files(out) == _files(local_out)  # every shard and the manifest; no .build/ left
    assert result == manifest.read_manifest(local_out)
    assert "runner" not in result["args"]


def test_two_process_beam_matches_the_local_runner_byte_for_byte(two_collections, local, tmp_path):
    out = tmp_path / "beam2"
    options = "--direct_running_mode=multi_processing,--direct_num_workers=2"
    convert.build_records(_config(two_collections, out, runner="beam",
                                  beam_pipeline_options=options), progress=False)
    assert _files(out) == _files(local[0])


def test_missing_beam_is_one_line_naming_the_extra_and_writes_nothing(two_collections, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` raises
    # Forget the imported runner module, so convert imports it again without Beam.
    monkeypatch.delitem(sys.modules, "xray_tfdata.records.beam_runner", raising=False)
    monkeypatch.delattr(records, "beam_runner", raising=False)
    out = tmp_path / "never"
    with pytest.raises(convert.ConversionError) as err:
        convert.build_records(_config(two_collections, out, runner="beam"), progress=False)
    message = str(err.value)
    assert "\n" not in message and "pip install -e '.[beam]'" in message
    assert not out.exists()


def test_an_output_url_beam_cannot_write_is_one_line_and_writes_nothing(two_collections):
    """ram:// (TensorFlow's in-memory file system) stands in for gs:// without apache-beam[gcp]:
    Beam's own file systems do not know it, so the build is refused before touching it."""
    import tensorflow as tf

    out = "ram://beam_refused/records"
    with pytest.raises(convert.ConversionError) as err:
        convert.build_records(_config(two_collections, out, runner="beam"), progress=False)
    message = str(err.value)
    assert "\n" not in message and "no file system for ram://" in message
    assert "apache-beam[gcp]" in message and "--runner=local" in message
    assert not tf.io.gfile.exists(out)


def test_a_failed_job_is_rerun_whole_to_the_same_bytes(two_collections, local, tmp_path,
                                                     monkeypatch):
    from xray_tfdata.records import shard_writer

    write, calls = shard_writer.write_shard, []

    def fail_on_second_shard(path, records, compression=""):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("injected: the worker died")
        return write(path, records, compression)

    out = tmp_path / "rerun"
    monkeypatch.setattr(shard_writer, "write_shard", fail_on_second_shard)
    with pytest.raises(Exception, match="injected"):
        convert.build_records(_config(two_collections, out, runner="beam"), progress=False)
    assert not (out / manifest.MANIFEST_NAME).exists()
    monkeypatch.setattr(shard_writer, "write_shard", write)
    convert.build_records(_config(two_collections, out, runner="beam"), progress=False)
    assert _files(out) == _files(local[0])


@pytest.mark.parametrize("kwargs, field", [
    ({"beam_pipeline_options": "--runner=DataflowRunner"}, "beam_pipeline_options"),
    ({"runner": "beam", "beam_pipeline_options": "runner=DataflowRunner"},
     "beam_pipeline_options"),
    ({"runner": "spark"}, "runner"),
])
def test_runner_settings_are_validated(kwargs, field, tmp_path):
    with pytest.raises(ConfigError) as err:
        _config("data", tmp_path, **kwargs)
    assert err.value.field == field


def test_beam_options_split_on_commas_before_dashes_only():
    assert conversion_config.beam_args("--runner=DataflowRunner, --project=p,"
                                       "--experiments=a,b,--region=eu") == [
        "--runner=DataflowRunner", "--project=p", "--experiments=a,b", "--region=eu"]
    assert conversion_config.beam_args("") == []
