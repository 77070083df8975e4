"""tools/download_dataset.py without the network: credentials, safe extraction, layout checks, and
the download flow against a fake kaggle API."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from tests import fixtures
from tests.fixtures import load_tool

REPO_ROOT = fixtures.REPO_ROOT
TOOL = REPO_ROOT / "tools" / "download_dataset.py"
CLASSES = ("COVID19", "NORMAL", "PNEUMONIA")


@pytest.fixture(scope="module")
def dl():
    return load_tool("download_dataset")


def _kaggle_tree(root: Path, classes=CLASSES, splits=("train", "test"), files: int = 1) -> Path:
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(files):
                (folder / f"{name}({i}).jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _kaggle_members(prefix: str = "Data/") -> dict[str, bytes]:
    return {f"{prefix}{split}/{name}/{name}({i}).jpg": b"\xff\xd8x"
            for split in ("train", "test") for name in CLASSES for i in range(2)}


# ---------------------------------------------------------------------------------------------
# Credentials.


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("setup, env, expected", [
    (lambda h: None, {"KAGGLE_API_TOKEN": "KGAT_abc"}, "KAGGLE_API_TOKEN environment variable"),
    (lambda h: _write(h / "tok", "KGAT_abc"), {"KAGGLE_API_TOKEN": "{home}/tok"}, "token file"),
    (lambda h: _write(h / ".kaggle" / "access_token", "KGAT_abc\n"), {}, "~/.kaggle/access_token"),
    (lambda h: None, {"KAGGLE_USERNAME": "ann", "KAGGLE_KEY": "k"}, "KAGGLE_USERNAME + KAGGLE_KEY"),
    (lambda h: _write(h / ".kaggle" / "kaggle.json", '{"username": "ann", "key": "k"}'), {}, "kaggle.json"),
    (lambda h: _write(h / ".kaggle" / "kaggle.json", '{"username": "ann"}'), {"KAGGLE_KEY": "k"},
     "kaggle.json"),
    (lambda h: _write(h / "cfg" / "kaggle.json", '{"username": "a", "key": "k"}'),
     {"KAGGLE_CONFIG_DIR": "{home}/cfg"}, "cfg/kaggle.json"),
    (lambda h: _write(h / ".config" / "kaggle" / "kaggle.json", '{"username": "a", "key": "k"}'), {},
     ".config/kaggle/kaggle.json"),  # XDG location, used when ~/.kaggle does not exist
    (lambda h: _write(h / ".kaggle" / "credentials.json", '{"refresh_token": "r"}'), {}, "auth login"),
])
def test_finds_each_credential_source(dl, tmp_path, setup, env, expected):
    setup(tmp_path)
    environ = {"HOME": str(tmp_path), **{k: v.format(home=tmp_path) for k, v in env.items()}}
    assert expected in dl.find_credentials(environ)


@pytest.mark.parametrize("setup, env, problem", [
    (lambda h: None, {}, None),
    (lambda h: _write(h / ".kaggle" / "access_token", "  \n"), {}, None),
    (lambda h: _write(h / "empty", ""), {"KAGGLE_API_TOKEN": "{home}/empty"}, "empty or unreadable"),
    (lambda h: _write(h / ".kaggle" / "kaggle.json", "{not json"), {}, "not valid JSON"),
    (lambda h: _write(h / ".kaggle" / "kaggle.json", '{"username": "ann"}'), {},
     'lacks "username" and "key"'),
    (lambda h: None, {"KAGGLE_USERNAME": "ann"}, None),  # a username alone is not a credential
])
def test_missing_credentials_explain_how_to_set_one(dl, tmp_path, setup, env, problem):
    setup(tmp_path)
    environ = {"HOME": str(tmp_path), **{k: v.format(home=tmp_path) for k, v in env.items()}}
    with pytest.raises(dl.CredentialError) as err:
        dl.find_credentials(environ)
    message = str(err.value)
    for hint in ("https://www.kaggle.com/settings/api", "export KAGGLE_API_TOKEN=",
                 "~/.kaggle/access_token", "chmod 600", "make_synthetic_dataset.py"):
        assert hint in message
    if problem:
        assert problem in message


def test_token_detection_agrees_with_kagglesdk(dl, tmp_path, monkeypatch):
    """The kaggle package's own token lookup (kagglesdk, importable without authenticating)."""
    from kagglesdk import kaggle_env
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(dl.CredentialError):
        dl.find_credentials()
    assert kaggle_env.get_access_token_from_env()[0] is None
    _write(tmp_path / ".kaggle" / "access_token", "KGAT_xyz")
    assert dl.find_credentials() == "~/.kaggle/access_token"
    assert kaggle_env.get_access_token_from_env() == ("KGAT_xyz", "access_token")


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    return {**env, "HOME": str(home)}


def test_cli_without_credentials_exits_2_with_help_and_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, str(TOOL), f"--output_dir={tmp_path / 'raw'}"],
                         capture_output=True, text=True, timeout=60, env=_clean_env(tmp_path))
    assert run.returncode == 2
    assert "No Kaggle credentials found" in run.stderr and "export KAGGLE_API_TOKEN=" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_cli_reuses_a_valid_extraction_without_credentials(tmp_path):
    _kaggle_tree(tmp_path / "raw" / "Data", files=2)
    run = subprocess.run([sys.executable, str(TOOL), f"--output_dir={tmp_path / 'raw'}"],
                         capture_output=True, text=True, timeout=60, env=_clean_env(tmp_path))
    assert run.returncode == 0, run.stderr
    assert f"--data_dir={tmp_path / 'raw' / 'Data'}" in run.stdout
    assert "train: 6 files COVID19 2, NORMAL 2, PNEUMONIA 2" in run.stdout


# ---------------------------------------------------------------------------------------------
# Safe extraction.


def test_safe_extract_writes_members_and_replaces_old_content(dl, tmp_path):
    archive = _zip(tmp_path / "a.zip", {"Data/": b"", **_kaggle_members()})
    target = tmp_path / "raw"
    _write(target / "Data" / "stale.txt", "old")
    (target / ".extracting" / "junk").mkdir(parents=True)  # leftover of a killed run
    entries = dl.safe_extract(archive, target)
    assert entries == [target / "Data"]
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == sorted(_kaggle_members())
    assert not (target / ".extracting").exists()


@pytest.mark.parametrize("name", [
    "../evil.txt", "Data/../../evil.txt", "..\\evil.txt", "/tmp/xray_tfdata_abs_evil.txt", "C:/evil.txt",
])
def test_safe_extract_rejects_escaping_members_before_writing(dl, tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {**_kaggle_members(), name: b"pwned"})
    target = tmp_path / "raw"
    with pytest.raises(dl.UnsafeArchiveError, match="refusing"):
        dl.safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/xray_tfdata_abs_evil.txt").exists()
    assert list(target.iterdir()) == []  # checked before anything was written


def test_safe_extract_rejects_symlinks(dl, tmp_path):
    link = zipfile.ZipInfo("Data/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc")
    with pytest.raises(dl.UnsafeArchiveError, match="symbolic link"):
        dl.safe_extract(tmp_path / "link.zip", tmp_path / "raw")


def test_safe_extract_checks_free_space_first(dl, tmp_path, monkeypatch):
    archive = _zip(tmp_path / "a.zip", _kaggle_members())
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=10))
    with pytest.raises(OSError, match="needs .* GB; .* has 0.00 GB free"):
        dl.safe_extract(archive, tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


def test_safe_extract_rejects_a_non_zip(dl, tmp_path):
    (tmp_path / "partial.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(zipfile.BadZipFile):
        dl.safe_extract(tmp_path / "partial.zip", tmp_path / "raw")


# ---------------------------------------------------------------------------------------------
# Layout.


def test_find_data_dir_case_insensitive_at_any_depth(dl, tmp_path):
    _kaggle_tree(tmp_path / "dl" / "Data", classes=("covid19", "Normal", "PNEUMONIA"))
    (tmp_path / "dl" / "__MACOSX").mkdir()
    assert dl.find_data_dir(tmp_path / "dl") == tmp_path / "dl" / "Data"
    assert dl.find_data_dir(tmp_path / "dl" / "Data") == tmp_path / "dl" / "Data"
    assert dl.count_images(tmp_path / "dl" / "Data") == {
        s: {"COVID19": 1, "NORMAL": 1, "PNEUMONIA": 1} for s in ("test", "train")}


@pytest.mark.parametrize("build, message", [
    (lambda r: _kaggle_tree(r / "Data", classes=("COVID19", "NORMAL")), "lacks ['PNEUMONIA']"),
    (lambda r: _kaggle_tree(r / "Data", splits=("train",)), "no test/ folder"),
    (lambda r: (_kaggle_tree(r / "Data", files=0)), "has no files in"),
    (lambda r: (_kaggle_tree(r / "Data"), (r / "Data" / "extra").mkdir()), "Unexpected folder(s) ['extra']"),
    (lambda r: _write(r / "readme.txt", "hi"), "holds: ['readme.txt']"),
])
def test_layout_errors_say_what_is_wrong(dl, tmp_path, build, message):
    build(tmp_path)
    with pytest.raises(dl.LayoutError) as err:
        dl.find_data_dir(tmp_path)
    assert message in str(err.value) and "--data_dir" in str(err.value)


def test_layout_error_for_a_missing_directory(dl, tmp_path):
    with pytest.raises(dl.LayoutError, match="not a directory"):
        dl.find_data_dir(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Download flow with the kaggle package replaced by a fake.


class FakeApi:
    def __init__(self, members=None, error=None, auth_exit=False):
        self.members = _kaggle_members() if members is None else members
        self.error, self.auth_exit, self.calls = error, auth_exit, []

    def authenticate(self):
        if self.auth_exit:
            sys.exit(1)  # what kaggle does without credentials

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        self.calls.append({"dataset": dataset, "path": path, "force": force, "unzip": unzip})
        if self.error:
            raise self.error
        _zip(Path(path) / (dataset.split("/")[1] + ".zip"), self.members)


@pytest.fixture
def fake_kaggle(monkeypatch, tmp_path):
    """Installs a fake `kaggle` module and a token; returns a function that sets its API."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_fake")

    def install(api: FakeApi) -> FakeApi:
        monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=api))
        return api
    return install


def test_download_extracts_checks_layout_and_reuses_it(dl, tmp_path, fake_kaggle):
    api = fake_kaggle(FakeApi())
    out = tmp_path / "raw"
    assert dl.download_dataset(out) == out / "Data"
    assert api.calls == [{"dataset": dl.DATASET, "path": str(out), "force": False, "unzip": False}]
    assert not (out / "chest-xray-covid19-pneumonia.zip").exists()  # removed after extraction
    assert dl.count_images(out / "Data")["train"] == {"COVID19": 2, "NORMAL": 2, "PNEUMONIA": 2}

    assert dl.download_dataset(out) == out / "Data" and len(api.calls) == 1  # valid: no download
    assert dl.download_dataset(out, force=True, keep_zip=True) == out / "Data"
    assert len(api.calls) == 2 and api.calls[1]["force"]
    assert (out / "chest-xray-covid19-pneumonia.zip").is_file()


def test_download_without_credentials_never_touches_kaggle(dl, tmp_path, fake_kaggle, monkeypatch):
    api = fake_kaggle(FakeApi())
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    with pytest.raises(dl.CredentialError):
        dl.download_dataset(tmp_path / "raw", environ={"HOME": str(tmp_path / "home")})
    assert api.calls == []


def test_download_turns_kaggle_exits_and_errors_into_clear_errors(dl, tmp_path, fake_kaggle, monkeypatch):
    fake_kaggle(FakeApi(auth_exit=True))
    with pytest.raises(dl.CredentialError, match="could not authenticate"):
        dl.download_dataset(tmp_path / "raw")
    fake_kaggle(FakeApi(error=RuntimeError("403 Client Error: Forbidden")))
    with pytest.raises(dl.DownloadError, match="403.*accept") as err:
        dl.download_dataset(tmp_path / "raw")
    assert dl.DATASET_URL in str(err.value)
    # kaggle 1.x exits inside `import kaggle` when it finds no credentials.
    _write(tmp_path / "fakepkgs" / "kaggle.py", "raise SystemExit(1)\n")
    monkeypatch.delitem(sys.modules, "kaggle")
    monkeypatch.syspath_prepend(str(tmp_path / "fakepkgs"))
    with pytest.raises(dl.CredentialError, match="rejected"):
        dl.download_dataset(tmp_path / "raw")
    sys.modules.pop("kaggle", None)


def test_download_refuses_a_malicious_or_misshapen_archive(dl, tmp_path, fake_kaggle):
    fake_kaggle(FakeApi(members={**_kaggle_members(), "../../escaped.txt": b"x"}))
    with pytest.raises(dl.UnsafeArchiveError):
        dl.download_dataset(tmp_path / "a" / "raw")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "a" / "escaped.txt").exists()
    fake_kaggle(FakeApi(members={"Data/train/NORMAL/x.jpg": b"x"}))
    with pytest.raises(dl.LayoutError, match="no test/ folder"):
        dl.download_dataset(tmp_path / "b" / "raw")
