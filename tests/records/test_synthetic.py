"""Synthetic Kaggle-layout X-rays: layout, determinism, file variety, a learnable class signal, and
the tools/make_synthetic_dataset.py script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests import fixtures
from tests.fixtures import load_tool
from xray_tfdata import labels
from xray_tfdata.records import synthetic

REPO_ROOT = fixtures.REPO_ROOT
TOOL = REPO_ROOT / "tools" / "make_synthetic_dataset.py"


@pytest.fixture(scope="module")
def tool():
    return load_tool("make_synthetic_dataset")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kaggle_layout_names_and_return_value(tmp_path):
    counts = {"train": {"covid19": 2, "NORMAL": 3, "Pneumonia": 1}, "test": {"COVID19": 1, "NORMAL": 0}}
    info = synthetic.generate_dataset(tmp_path, counts, min_size=40, max_size=64, seed=3)

    assert info["num_images"] == 7
    assert info["counts"] == {"train": {"COVID19": 2, "NORMAL": 3, "PNEUMONIA": 1},
                              "test": {"COVID19": 1, "NORMAL": 0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["COVID19", "NORMAL", "PNEUMONIA"]
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    returned = sorted(Path(p).relative_to(tmp_path).as_posix()
                      for per_class in info["paths"].values() for ps in per_class.values() for p in ps)
    assert on_disk == returned and len(on_disk) == 7  # no temp files left behind
    # Kaggle naming: test files are numbered after the train files of the same class.
    assert [Path(p).stem for p in info["paths"]["test"]["COVID19"]] == ["COVID19(2)"]
    assert all(re.fullmatch(r"(COVID19|NORMAL|PNEUMONIA)\(\d+\)\.(jpg|png)", Path(p).name) for p in on_disk)
    assert info["num_bytes"] == sum((tmp_path / p).stat().st_size for p in on_disk)
    assert sum(info["formats"].values()) == sum(info["modes"].values()) == 7
    assert info["images_per_second"] > 0


def test_same_seed_byte_identical_and_stable_under_more_images(tmp_path):
    counts = synthetic.small_counts(5, 1)  # 18 images: enough for a 2-process pool
    synthetic.generate_dataset(tmp_path / "a", counts, min_size=32, max_size=80, seed=5)
    synthetic.generate_dataset(tmp_path / "b", counts, min_size=32, max_size=80, seed=5)
    synthetic.generate_dataset(tmp_path / "c", counts, min_size=32, max_size=80, seed=6)
    more = {"train": {name: 7 for name in synthetic.KAGGLE_CLASSES}}
    synthetic.generate_dataset(tmp_path / "d", more, min_size=32, max_size=80, seed=5)

    synthetic.generate_dataset(tmp_path / "e", counts, min_size=32, max_size=80, seed=5, num_workers=2)

    a, b, c, d, e = (_files(tmp_path / x) for x in "abcde")
    assert a == b == e  # same seed: same bytes, with 1 or 2 worker processes
    assert len(c) == len(a) and not set(a.values()) & set(c.values())  # another seed, other images
    # Each image has its own generator: adding images does not change the existing ones.
    assert all(d[k] == v for k, v in a.items() if k.startswith("train/"))


def test_sizes_formats_and_modes_vary_and_match_the_files(tmp_path):
    info = synthetic.generate_dataset(tmp_path, synthetic.small_counts(8, 0), min_size=50, max_size=90,
                                      formats=("jpeg", "png"), modes=("L", "RGB", "I;16"), seed=1)
    shapes, kinds = set(), set()
    for path in (Path(p) for c in info["paths"]["train"].values() for p in c):
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        fmt = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg" if data[:2] == b"\xff\xd8" else "?"
        assert fmt == {".png": "png", ".jpg": "jpeg"}[path.suffix]
        assert 50 <= image.shape[0] <= 90 and 50 <= image.shape[1] <= 90
        if image.dtype == np.uint16:
            kinds.add("I;16")
            assert fmt == "png" and image.ndim == 2 and image.max() > 255  # real 16-bit range
        elif image.ndim == 3:
            kinds.add("RGB")
            assert image.shape[2] == 3
            assert np.abs(image[..., 0].astype(int) - image[..., 2]).max() <= 8  # gray stored as colour
        else:
            kinds.add("L")
        shapes.add(image.shape[:2])
        kinds.add(fmt)
    assert kinds == {"jpeg", "png", "L", "RGB", "I;16"}
    assert len(shapes) >= 10  # varied size and aspect, not one fixed shape
    assert info["modes"]["I;16"] == sum(1 for k in info["paths"]["train"].values() for p in k
                                        if cv2.imread(p, cv2.IMREAD_UNCHANGED).dtype == np.uint16)


def _thumbnails(paths: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for name, files in paths.items():
        for p in files:
            gray = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
            x.append(cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).ravel() / 255.0)
            y.append(labels.LABEL_MAP[name])
    return np.asarray(x), np.asarray(y)


def test_class_pattern_is_learnable_but_metadata_is_not(tmp_path):
    info = synthetic.generate_dataset(tmp_path, synthetic.small_counts(60, 30), min_size=64,
                                      max_size=128, seed=0)
    x_train, y_train = _thumbnails(info["paths"]["train"])
    x_test, y_test = _thumbnails(info["paths"]["test"])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    accuracy = probe.fit(x_train, y_train).score(x_test, y_test)
    assert accuracy >= 0.6, f"32x32 logistic regression accuracy {accuracy:.2f}; chance is 0.33"
    # Size, aspect, format and mode are drawn alike for every class: no file-level shortcut.
    meta, meta_y = [], []
    for name, files in info["paths"]["train"].items():
        for p in files:
            image = cv2.imread(p, cv2.IMREAD_UNCHANGED)
            meta.append([image.shape[0], image.shape[1], image.ndim, p.endswith(".png")])
            meta_y.append(labels.LABEL_MAP[name])
    shortcut = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()),
                               np.asarray(meta, float), meta_y, cv=5).mean()
    assert shortcut < 0.5, f"file metadata predicts the class ({shortcut:.2f}); it must not"


def test_render_xray_shape_dtype_and_label_check():
    image = synthetic.render_xray(2, (301, 245), np.random.default_rng(0))
    assert image.shape == (301, 245) and image.dtype == np.uint8
    assert image.std() > 20  # anatomy, not a flat field
    with pytest.raises(ValueError, match="label=3"):
        synthetic.render_xray(3, (64, 64), np.random.default_rng(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"counts": {"training": {"NORMAL": 1}}}, "split 'training'"),
    ({"counts": {"train": {"VIRAL": 1}}}, "class 'VIRAL'"),
    ({"counts": {"train": {"NORMAL": -1}}}, "must be an integer >= 0"),
    ({"counts": {}}, "non-empty"),
    ({"min_size": 600, "max_size": 500}, "min_size=600, max_size=500"),
    ({"min_size": 8}, "16 <= min_size"),
    ({"formats": ("gif",)}, "formats=.*jpeg, png"),
    ({"formats": ("jpeg",), "modes": ("I;16",)}, "needs 'png'"),
])
def test_invalid_arguments_name_the_value(tmp_path, kwargs, message):
    kwargs = {"counts": synthetic.small_counts(1, 0), **kwargs}
    with pytest.raises(ValueError, match=message):
        synthetic.generate_dataset(tmp_path, kwargs.pop("counts"), **kwargs)
    assert not any(tmp_path.iterdir())  # validated before writing anything


def test_refuses_existing_dataset_unless_overwrite(tmp_path):
    synthetic.generate_dataset(tmp_path, synthetic.small_counts(2, 0), min_size=32, max_size=32)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthetic.generate_dataset(tmp_path, synthetic.small_counts(1, 1), min_size=32, max_size=32)
    info = synthetic.generate_dataset(tmp_path, synthetic.small_counts(1, 1), min_size=32, max_size=32,
                                      overwrite=True)
    images = sorted(p for p in tmp_path.rglob("*.*") if p.parent != tmp_path)
    assert len(images) == info["num_images"] == 6
    assert (tmp_path / "notes.txt").read_text() == "keep me"  # only train/val/test are replaced


def test_kaggle_counts_total():
    assert sum(n for c in synthetic.KAGGLE_COUNTS.values() for n in c.values()) == 6432


def test_tool_presets_and_size_defaults(tool):
    assert tool.resolve_counts("small", 4, 2) == synthetic.small_counts(4, 2)
    assert tool.resolve_counts("kaggle", 50, 15) == synthetic.KAGGLE_COUNTS
    with pytest.raises(ValueError, match="--preset=small only"):
        tool.resolve_counts("kaggle", 3, 1, per_class_given=True)
    with pytest.raises(ValueError, match="--per_class_test=-1"):
        tool.resolve_counts("small", 3, -1)
    assert tool.resolve_sizes("kaggle", None, None) == (1000, 2000)
    assert tool.resolve_sizes("small", None, None) == (256, 512)
    assert tool.resolve_sizes("small", 800, None) == (800, 800)
    assert tool.resolve_sizes("kaggle", 100, 300) == (100, 300)


def test_tool_cli_writes_dataset_and_rejects_bad_flags(tmp_path):
    out = tmp_path / "synthetic"
    cmd = [sys.executable, str(TOOL), f"--output_dir={out}", "--per_class_train=1", "--per_class_test=1",
           "--min_size=32", "--max_size=40", "--seed=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"--data_dir={out}" in run.stdout and "Wrote 6 images" in run.stdout
    assert "synthetic: 6/6 images (100%)" in run.stderr
    assert len(list(out.rglob("*.*"))) == 6

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    bad = subprocess.run(cmd + ["--overwrite", "--preset=kaggle"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert bad.returncode == 1 and "--preset=small only" in bad.stderr
