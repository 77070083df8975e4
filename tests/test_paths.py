"""The path layer: local paths stay pathlib, URLs go through tf.io.gfile (ram:// here)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import tensorflow as tf

from xray_tfdata import files, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.paths import RemotePath

_counter = itertools.count()


@pytest.fixture
def ram() -> RemotePath:
    """A fresh ram:// directory (the in-memory file system lives as long as the process)."""
    root = RemotePath(f"ram://test_paths/{next(_counter)}")
    yield root
    paths.rmtree(root, ignore_errors=True)


def test_location_dispatch():
    assert paths.location("a/b") == Path("a/b")
    assert paths.location("file:///tmp/x") == Path("/tmp/x")
    remote = paths.location("gs://bucket/model/")
    assert isinstance(remote, RemotePath) and str(remote) == "gs://bucket/model"
    assert str(remote / "best.keras") == "gs://bucket/model/best.keras"
    assert remote.name == "model" and str(remote.parent) == "gs://bucket"
    assert (remote / "best.keras").suffix == ".keras"
    assert str((remote / "a.json").with_name("b.json")) == "gs://bucket/model/b.json"
    assert paths.is_url("gs://b/x") and not paths.is_url("file:///x") and not paths.is_url("x")


def test_remote_path_is_not_an_os_path():
    # The bug this layer fixes: a URL handed to open()/os.* became a local folder named "gs:".
    with pytest.raises(TypeError):
        open(RemotePath("ram://x/y"), "rb")  # noqa: SIM115


def test_local_write_atomic_unchanged(tmp_path):
    target = files.write_atomic(tmp_path / "sub" / "a.txt", "hello")
    assert isinstance(target, Path) and target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_ram_roundtrip_and_listing(ram):
    files.write_json(ram / "d" / "x.json", {"b": 1, "a": float("nan")}, nan_to_null=True)
    files.write_atomic(ram / "d" / "y.bin", b"\x00\x01")
    (ram / "d" / "sub").mkdir(parents=True, exist_ok=True)
    files.write_atomic(ram / "d" / "sub" / "z.txt", "z")
    assert json.loads((ram / "d" / "x.json").read_text()) == {"a": None, "b": 1}
    assert [p.name for p in (ram / "d").iterdir()] == ["sub", "x.json", "y.bin"]
    assert (ram / "d" / "sub").is_dir() and not (ram / "d" / "sub").is_file()
    assert (ram / "d" / "y.bin").is_file() and (ram / "d" / "y.bin").stat().st_size == 2
    assert [str(p.relative_to(ram / "d")) for p in (ram / "d").rglob("*.txt")] == ["sub/z.txt"]
    assert files.sha256_file(ram / "d" / "y.bin") == hashlib.sha256(b"\x00\x01").hexdigest()
    paths.rmtree(ram / "d")
    assert not (ram / "d").exists()


def test_ram_write_atomic_leaves_nothing_on_failure(ram, monkeypatch):
    files.write_atomic(ram / "state.json", "old")

    def broken_rename(*args, **kwargs):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(tf.io.gfile, "rename", broken_rename)
    with pytest.raises(OSError, match="simulated"):
        files.write_atomic(ram / "state.json", "new")
    assert (ram / "state.json").read_text() == "old"  # never a partial or new file
    assert [p.name for p in ram.iterdir()] == ["state.json"]  # no temporary left behind


def test_ram_atomic_path_and_dir(ram):
    with files.atomic_path(ram / "m" / "model.keras") as local:
        assert isinstance(local, Path)
        local.write_bytes(b"weights")
    assert (ram / "m" / "model.keras").read_bytes() == b"weights"
    with pytest.raises(RuntimeError):
        with files.atomic_path(ram / "m" / "other.keras") as local:
            local.write_bytes(b"half")
            raise RuntimeError("failed mid-save")
    assert [p.name for p in (ram / "m").iterdir()] == ["model.keras"]
    for version in (b"1", b"2"):  # the second replaces the first as a whole
        with files.atomic_dir(ram / "export") as tmp:
            (tmp / "variables").mkdir()
            (tmp / "variables" / "v").write_bytes(version)
            if version == b"1":
                (tmp / "only_in_first").write_bytes(b"x")
    assert [p.name for p in (ram / "export").iterdir()] == ["variables"]
    assert (ram / "export" / "variables" / "v").read_bytes() == b"2"
    assert sorted(p.name for p in ram.iterdir()) == ["export", "m"]


def test_local_copy(ram, tmp_path):
    files.write_atomic(ram / "labels.csv", "path,label\n")
    with paths.local_copy(ram / "labels.csv") as local:
        assert local.read_text() == "path,label\n"
    assert not local.exists()
    with paths.local_copy(tmp_path) as same:
        assert same == tmp_path


def test_unknown_scheme_is_one_line_naming_known_schemes():
    with pytest.raises(ConfigError) as info:
        paths.check("model_dir", "foo://bucket/model")
    message = str(info.value)
    assert "\n" not in message and "'foo://bucket/model'" in message
    assert "ram://" in message and "gs://" in message
    with pytest.raises(paths.UnknownSchemeError, match=r"unknown URL scheme foo:// .*ram://"):
        RemotePath("foo://bucket/x").exists()
    with pytest.raises(ConfigError, match="tensorflow-io"):
        paths.check("records_dir", "s3://bucket/records")
    paths.check("model_dir", "ram://fine")  # known: no error
    paths.check("model_dir", "workspace/model")


def test_missing_remote_file_raises_like_pathlib(ram):
    with pytest.raises(FileNotFoundError, match="ram://"):
        (ram / "nope.json").read_text()
    with pytest.raises(FileNotFoundError):
        (ram / "nope.json").stat()
    (ram / "nope.json").unlink(missing_ok=True)
    assert paths.location("ram://x/y").resolve() == RemotePath("ram://x/y")


def test_command_names_the_flag_and_known_schemes(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "xray_tfdata.build_records", f"--data_dir={tmp_path}",
         "--output_dir=foo://bucket/records"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "xray_tfdata.build_records: error: --output_dir must be a local path or a URL whose "
        "scheme TensorFlow knows (")
    assert "ram://" in errors[0] and errors[0].endswith(
        "Received: --output_dir='foo://bucket/records'.")
    assert "Traceback" not in result.stderr and not (tmp_path / "foo:").exists()
