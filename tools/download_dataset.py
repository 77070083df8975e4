"""Downloads the Kaggle chest X-ray set, extracts it safely and prints the --data_dir to use.

  python tools/download_dataset.py                       # -> workspace/raw/Data
  python -m xray_tfdata.build_records --data_dir=workspace/raw/Data --output_dir=workspace/records

Dataset: https://www.kaggle.com/datasets/prashant268/chest-xray-covid19-pneumonia (6,432 images in
Data/{train,test}/{COVID19,NORMAL,PNEUMONIA}/). kaggle shows the download's progress bar.

Credentials (first found wins, the same order the kaggle package uses): KAGGLE_API_TOKEN (a token
or a path to a file holding one), ~/.kaggle/access_token, KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json
(in $KAGGLE_CONFIG_DIR or ~/.kaggle), or an OAuth login (`kaggle auth login`). Without any, the tool
prints how to get one and exits with code 2, before importing kaggle (whose import exits the
process when it finds no credentials).

Safe extraction: every archive member is checked before anything is written; absolute paths, `..`
components, drive letters and symlinks are refused, as is an archive larger than the free disk.
Members go to a hidden staging folder and are moved into place only once all are extracted, so a
killed run never leaves a half-extracted dataset that looks complete. An existing valid extraction
is reused (no download) unless --force.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from absl import app, flags

from xray_tfdata import labels
from xray_tfdata.records import sources

DATASET = "prashant268/chest-xray-covid19-pneumonia"
DATASET_URL = f"https://www.kaggle.com/datasets/{DATASET}"
REQUIRED_SPLITS = sources.REQUIRED_SPLITS
EXIT_NO_CREDENTIALS = 2
_STAGING = ".extracting"


class CredentialError(RuntimeError):
    """No usable Kaggle credential; the message says how to set one."""


class DownloadError(RuntimeError):
    """The Kaggle API call failed (network, permissions, dataset terms)."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target directory, or is a link."""


class LayoutError(ValueError):
    """The extracted files are not in the Kaggle layout the converter reads."""


# ---------------------------------------------------------------------------------------------
# Credentials.


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or os.path.expanduser("~"))


def _kaggle_config_dir(environ: Mapping[str, str]) -> Path:
    """Where kaggle looks for kaggle.json: KAGGLE_CONFIG_DIR, ~/.kaggle, else XDG config."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return Path(environ["KAGGLE_CONFIG_DIR"])
    legacy = _home(environ) / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(environ.get("XDG_CONFIG_HOME") or _home(environ) / ".config") / "kaggle"


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


def find_credentials(environ: Mapping[str, str] | None = None) -> str:
    """Names the credential the kaggle package will use (e.g. "~/.kaggle/access_token").

    Raises:
      CredentialError: none found; the message lists what was checked and how to set one.
    """
    env = os.environ if environ is None else environ
    home = _home(env)
    problems: list[str] = []
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        if not Path(token).exists():
            return "KAGGLE_API_TOKEN environment variable"
        if _nonempty_file(Path(token)):
            return f"token file {token} (from KAGGLE_API_TOKEN)"
        problems.append(f"KAGGLE_API_TOKEN points to {token}, which is empty or unreadable")
    for name in ("access_token", "access_token.txt"):
        if _nonempty_file(home / ".kaggle" / name):
            return f"~/.kaggle/{name}"
    if env.get("KAGGLE_USERNAME", "").strip() and env.get("KAGGLE_KEY", "").strip():
        return "KAGGLE_USERNAME + KAGGLE_KEY environment variables"
    config = _kaggle_config_dir(env) / "kaggle.json"
    if config.is_file():
        try:
            values = json.loads(config.read_text())
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            problems.append(f"{config} is not valid JSON ({err})")
        else:
            # kaggle fills missing fields from KAGGLE_* variables.
            merged = {**values, **{k[7:].lower(): v for k, v in env.items() if k.startswith("KAGGLE_")}}
            if merged.get("username") and merged.get("key"):
                return str(config)
            problems.append(f'{config} lacks "username" and "key"')
    if _nonempty_file(home / ".kaggle" / "credentials.json"):
        return "~/.kaggle/credentials.json (kaggle auth login)"
    raise CredentialError(credential_help(problems))


def credential_help(problems: list[str] | tuple[str, ...] = ()) -> str:
    """The message for a missing credential: what was checked, what was wrong, how to fix it."""
    found = "".join(f"\n  - {p}" for p in problems)
    return (
        "No Kaggle credentials found (checked KAGGLE_API_TOKEN, ~/.kaggle/access_token, "
        "KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle)."
        + (f"\nProblems:{found}" if found else "")
        + "\nTo set one:\n"
        "  1. Sign in at https://www.kaggle.com, open https://www.kaggle.com/settings/api and click\n"
        '     "Generate New Token".\n'
        "  2. Either   export KAGGLE_API_TOKEN=<the token>\n"
        "     or       mkdir -p ~/.kaggle && printf '%s' '<the token>' > ~/.kaggle/access_token "
        "&& chmod 600 ~/.kaggle/access_token\n"
        "     (legacy API key: save kaggle.json as ~/.kaggle/kaggle.json with chmod 600, or\n"
        "      export KAGGLE_USERNAME=<user> KAGGLE_KEY=<key>)\n"
        f"  3. Rerun this command. If Kaggle answers 403, accept the dataset's terms at {DATASET_URL}.\n"
        "No credentials? `python tools/make_synthetic_dataset.py` writes a synthetic dataset in the same "
        "layout."
    )


# ---------------------------------------------------------------------------------------------
# Safe extraction.


def _member_target(info: zipfile.ZipInfo, root: Path) -> Path:
    """The path a member extracts to under `root`.

    Raises:
      UnsafeArchiveError: absolute path, drive letter, `..`, a link, or a path escaping root.
    """
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"Archive member {name!r} is a symbolic link; refusing to extract links.")
    posix = name.replace("\\", "/")  # archives made on Windows may use backslashes
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise UnsafeArchiveError(f"Archive member {name!r} has an absolute path; refusing to extract it.")
    if not parts and not info.is_dir():
        raise UnsafeArchiveError(f"Archive member {name!r} has an empty path; refusing to extract it.")
    if ".." in parts:
        raise UnsafeArchiveError(f"Archive member {name!r} contains '..' and would land outside "
                                 f"{str(root)!r}; refusing to extract it.")
    target = root.joinpath(*parts) if parts else root
    resolved_root = root.resolve()
    if target.resolve() != resolved_root and resolved_root not in target.resolve().parents:
        raise UnsafeArchiveError(f"Archive member {name!r} resolves outside {str(root)!r}.")
    return target


def safe_extract(archive: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extracts a zip into target_dir after checking every member; returns the top-level entries.

    Raises:
      UnsafeArchiveError: a member is unsafe (nothing is written then).
      OSError: not enough free disk space for the uncompressed content.
      zipfile.BadZipFile: not a zip (e.g. an interrupted download).
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    staging = target / _STAGING
    if staging.exists():
        shutil.rmtree(staging)  # leftovers of a killed run
    with zipfile.ZipFile(archive) as zf:
        members = [(info, _member_target(info, staging)) for info in zf.infolist()]
        needed = sum(info.file_size for info, _ in members)
        free = shutil.disk_usage(target).free
        if needed > free:
            raise OSError(f"Extracting {archive} needs {needed / 1e9:.2f} GB; {target} has "
                          f"{free / 1e9:.2f} GB free. Free space or pass another --output_dir.")
        staging.mkdir()
        for count, (info, path) in enumerate(members, 1):
            if info.is_dir() or info.filename.endswith("\\"):
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if count % 1000 == 0:
                print(f"extracted {count}/{len(members)} files", file=sys.stderr, flush=True)
    entries = []
    for entry in sorted(staging.iterdir()):
        final = target / entry.name
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(entry, final)
        entries.append(final)
    staging.rmdir()
    return entries


# ---------------------------------------------------------------------------------------------
# Layout check.


def find_data_dir(root: str | os.PathLike, max_depth: int = 3) -> Path:
    """Finds the folder under root (root included) that holds train/ and test/ with the 3 classes.

    Folder names are case-insensitive; the shallowest match wins (sorted by name within a depth).

    Raises:
      LayoutError: none found; the message says what each candidate lacks and what root holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{str(root)!r} is not a directory.")
    level, candidates = [root], {}
    for _ in range(max_depth + 1):
        following = []
        for folder in level:
            names = {n.lower() for n in sources.subdirs(folder)}
            if names & set(REQUIRED_SPLITS):
                problems = sources.kaggle_layout_problems(folder)  # the converter's check
                if not problems:
                    return folder
                candidates[folder] = problems
            following.extend(sources.subdirs(folder).values())
        level = following
    details = "".join(f"\n  {folder}: " + "; ".join(p) for folder, p in candidates.items())
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    raise LayoutError(
        f"No folder under {str(root)!r} (depth <= {max_depth}) holds train/ and test/, each with "
        f"{', '.join(labels.CLASS_NAMES)} class folders (case-insensitive)."
        + (f"\nCandidates:{details}" if details else "")
        + f"\n{root} holds: {top[:20]}{' ...' if len(top) > 20 else ''}"
        + "\nFix: pass the folder that holds train/ and test/ as --data_dir, or rerun with --force "
        "to download and extract again."
    )


def count_images(data_dir: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Files per split and class (canonical class names) in a valid data_dir."""
    counts: dict[str, dict[str, int]] = {}
    for split_name, split_dir in sources.subdirs(Path(data_dir)).items():
        counts[split_name.lower()] = {
            name.upper(): sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            for name, path in sources.subdirs(split_dir).items()
        }
    return counts


# ---------------------------------------------------------------------------------------------
# Download.


def _kaggle_api():
    """The authenticated kaggle API object. Imported here only: `import kaggle` authenticates at
    import time and (kaggle 1.x) exits the process when it finds no credentials."""
    try:
        import kaggle  # noqa: PLC0415
    except SystemExit as err:
        raise CredentialError(credential_help(["the kaggle package rejected the credentials"])) from err
    api = kaggle.api
    try:
        api.authenticate()
    except SystemExit as err:
        raise CredentialError(credential_help(["kaggle could not authenticate with them"])) from err
    except Exception as err:  # network / HTTP errors while checking a token
        raise DownloadError(f"Kaggle authentication failed: {type(err).__name__}: {err}. Check the "
                            "network (proxy: HTTPS_PROXY) and that the token is current.") from err
    return api


def download_dataset(output_dir: str | os.PathLike = "workspace/raw", dataset: str = DATASET, *,
                     force: bool = False, keep_zip: bool = False,
                     environ: Mapping[str, str] | None = None) -> Path:
    """Downloads and safely extracts `dataset` into output_dir; returns the data_dir inside it.

    An existing valid extraction is returned without downloading unless force is set.

    Raises:
      CredentialError, DownloadError, UnsafeArchiveError, LayoutError (messages say how to fix).
    """
    out = Path(output_dir)
    if not force and out.is_dir():
        try:
            return find_data_dir(out)
        except LayoutError:
            pass  # nothing usable yet: download
    source = find_credentials(environ)
    print(f"Kaggle credentials: {source}", file=sys.stderr)
    api = _kaggle_api()
    out.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(dataset, path=str(out), force=force, quiet=False, unzip=False)
    except Exception as err:  # kagglesdk raises requests.HTTPError and friends
        raise DownloadError(f"Downloading {dataset} failed: {type(err).__name__}: {err}. On 403 accept "
                            f"the dataset's terms at {DATASET_URL}; on 401 renew the token.") from err
    archive = out / f"{dataset.split('/')[-1]}.zip"
    if not archive.is_file():
        raise DownloadError(f"The Kaggle API reported success but {archive} does not exist.")
    try:
        safe_extract(archive, out)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is not a valid zip (interrupted download?). Rerun with "
                            "--force to download it again.") from err
    data_dir = find_data_dir(out)
    if not keep_zip:
        archive.unlink()
    return data_dir


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's flags; called only when run as a script, so tests can import the
    module next to other entry points that define --output_dir too."""
    flags.DEFINE_string("output_dir", "workspace/raw", "Where to download and extract; the data_dir is "
                        "found inside (workspace/raw/Data for the Kaggle archive).")
    flags.DEFINE_string("dataset", DATASET, "Kaggle dataset owner/name.")
    flags.DEFINE_bool("force", False, "Download and extract again even if a valid extraction exists.")
    flags.DEFINE_bool("keep_zip", False, "Keep the downloaded zip after extraction (deleted by default).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.dataset.count("/") != 1:
        raise app.UsageError(f"--dataset={FLAGS.dataset!r} must be owner/name, e.g. {DATASET}.")
    try:
        data_dir = download_dataset(FLAGS.output_dir, FLAGS.dataset, force=FLAGS.force,
                                    keep_zip=FLAGS.keep_zip)
    except CredentialError as err:
        print(err, file=sys.stderr)
        sys.exit(EXIT_NO_CREDENTIALS)
    except (DownloadError, UnsafeArchiveError, LayoutError, OSError) as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    counts = count_images(data_dir)
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} files " +
              ", ".join(f"{name} {n}" for name, n in sorted(per_class.items())))
    print(f"--data_dir={data_dir}")
    print(f"Next: python -m xray_tfdata.build_records --data_dir={data_dir} --output_dir=workspace/records")


if __name__ == "__main__":
    define_flags()
    app.run(main)
