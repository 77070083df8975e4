"""embeddings.py / classical.py: classifiers on a tiny model's embeddings, identity checks, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import BRIGHTNESS, tiny_model_file  # noqa: E402
from tests.fixtures import brightness_records as write_records  # noqa: E402
from xray_tfdata import files

# Shared tiny-records / tiny-model builders (pytest puts tests/ on sys.path).
from xray_tfdata.evaluation import classical, inference, metrics


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("classical")
    records = write_records(root / "records", {"train": 12, "test": 6}, seed=3)
    (root / "model").mkdir()
    return tiny_model_file(root / "model" / "best.keras"), records, root


def test_embeddings_come_from_the_embedding_layer(setup):
    model_path, records, _ = setup
    model = inference.load_model(model_path)
    emb, probs, y = classical.extract(model, str(records), "test", batch_size=7)
    assert emb.shape == (18, 4) and emb.dtype == np.float32 and probs.shape == (18, 3)
    # Hand-set units: [1, m, relu(m - 0.35), relu(0.65 - m)], m = mean brightness in [0, 1].
    np.testing.assert_allclose(emb[:, 0], 1.0, atol=1e-6)
    centres = np.array(BRIGHTNESS)[y] / 255.0
    assert np.abs(emb[:, 1] - centres).max() < 0.05
    np.testing.assert_allclose(emb[:, 2], np.maximum(emb[:, 1] - 0.35, 0), atol=1e-5)


def test_classifiers_beat_chance_and_are_saved_with_identity(setup, tmp_path):
    model_path, records, _ = setup
    params = classical.ClassifierParams(rf_trees=25, knn_k=3, seed=0)
    summary = classical.run_classical(str(model_path), str(records), tmp_path, params=params,
                                       bootstrap=100)
    results = summary["results"]
    assert list(results) == ["cnn_head", "svm", "rf", "logreg", "knn"]
    for name, m in results.items():
        assert m["num_examples"] == 18
        assert m["accuracy"] > 0.8, (name, m["accuracy"])  # chance is 1/3
    assert summary["identity"]["embedding_dim"] == 4
    assert summary["identity"]["model_sha256"] == files.sha256_file(model_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["results"]["svm"] == results["svm"]
    report = (tmp_path / "report.txt").read_text()
    assert "cnn_head" in report and "knn" in report
    # A reloaded classifier reproduces the reported metrics on freshly extracted embeddings.
    bundle = classical.load_classifier(tmp_path / "classifiers" / "logreg.joblib", model_path)
    emb, _, y = classical.extract(inference.load_model(model_path), str(records), "test")
    again = metrics.compute_metrics(y, bundle.predict_proba(emb), bundle.predict(emb),
                                    class_names=results["logreg"]["class_names"],
                                    n_resamples=100, seed=0)
    assert again["macro_f1"] == pytest.approx(results["logreg"]["macro_f1"])
    assert again["confusion_matrix"] == results["logreg"]["confusion_matrix"]


def test_identity_refuses_a_different_model(setup, tmp_path):
    model_path, records, root = setup
    params = classical.ClassifierParams(seed=0)
    classical.run_classical(str(model_path), str(records), tmp_path, ("logreg",), params,
                             bootstrap=0)
    saved = tmp_path / "classifiers" / "logreg.joblib"
    # Same architecture and embedding width, but another file: the sha256 must differ.
    other = tiny_model_file(tmp_path / "other.keras")
    with open(other, "ab") as f:
        f.write(b"\0")
    with pytest.raises(classical.IdentityError, match="sha256"):
        classical.load_classifier(saved, other)
    bundle = classical.load_classifier(saved, model_path)
    with pytest.raises(classical.IdentityError, match=r"\[n, 4\]"):
        bundle.predict_proba(np.zeros((2, 5)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(svm_gamma="fast"), "svm_gamma='fast'"), (dict(svm_c=0.0), "svm_c=0.0"),
    (dict(rf_trees=0), "rf_trees=0"), (dict(class_weight="auto"), "class_weight='auto'"),
])
def test_params_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classical.ClassifierParams(**kwargs)


def test_classifier_names_and_knn_size_are_checked():
    assert classical.parse_classifiers(" SVM,knn,svm ") == ("svm", "knn")
    with pytest.raises(ValueError, match="xgb"):
        classical.parse_classifiers("svm,xgb")
    with pytest.raises(ValueError, match="knn_k=9"):
        classical.make_classifier("knn", classical.ClassifierParams(knn_k=9), num_train=6)
    assert classical.ClassifierParams(svm_gamma="0.5").gamma == 0.5


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "xray_tfdata.classical", *args],
                          capture_output=True, text=True, timeout=240, env=env)


def test_cli_reports_table_and_rejects_bad_flags(setup, tmp_path):
    model_path, records, _ = setup
    proc = _cli(f"--model_path={model_path}", f"--records_dir={records}",
                f"--output_dir={tmp_path}", "--classifiers=logreg,knn", "--knn_k=3",
                "--bootstrap=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cnn_head" in proc.stdout and "logreg" in proc.stdout and "knn" in proc.stdout
    assert Path(tmp_path / "classifiers" / "knn.joblib").is_file()
    bad = _cli(f"--model_path={model_path}", "--classifiers=svm,xgb")
    assert bad.returncode == 1 and "svm,xgb" in bad.stderr


class _Planted:
    """A pickle that creates `marker` when unpickled: what a swapped joblib file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_tampered_joblib_file_is_refused_before_it_is_unpickled(tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression

    model_path = tmp_path / "model.keras"  # only its sha256 is read before unpickling
    model_path.write_bytes(b"a model file")
    rng = np.random.default_rng(0)
    clf = LogisticRegression().fit(rng.normal(size=(12, 4)), np.arange(12) % 3)
    identity = classical.EmbeddingIdentity(model_sha256=files.sha256_file(model_path),
                                           embedding_dim=4)
    saved = classical.save_classifier(tmp_path / "logreg.joblib", classical.ClassifierBundle(
        name="logreg", classifier=clf, identity=identity, params={}))
    assert classical.load_classifier(saved, model_path).predict(np.zeros((1, 4))).shape == (1,)

    marker = tmp_path / "executed"
    joblib.dump(_Planted(marker), saved)
    with pytest.raises(ValueError, match=r"logreg.joblib' has sha256 .*, but 'logreg.joblib.json' "
                                         r"records .*: the file changed since it was saved"):
        classical.load_classifier(saved, model_path)
    classical.record_path(saved).unlink()
    with pytest.raises(ValueError, match=r"has no readable record 'logreg.joblib.json'"):
        classical.load_classifier(saved, model_path)
    assert not marker.exists()
