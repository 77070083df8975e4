"""Classical classifiers on a CNN's embeddings (the tutorial's "machine learning classifiers").

The CNN's penultimate layer (named "embedding" by xray_tfdata.models) is read through the same
input pipeline as evaluation, for the train split (fit) and the test split (report). Each
scikit-learn classifier sits behind a StandardScaler and is scored with `metrics.compute_metrics`,
next to the CNN's own softmax head on the same examples.

Fitted classifiers are saved (joblib) with the identity of the embedding model: the sha256 of the
.keras file and the embedding width. `load_classifier` refuses a different model file, and
`ClassifierBundle.predict_proba` refuses embeddings of another width, so a classifier can never be
silently applied to features it was not trained on. Beside each `<name>.joblib` a JSON record
holds its sha256 and that identity, checked before the pickle is loaded (`load_classifier`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_tfdata import errors, files, labels, model_classes, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import inference, metrics
from xray_tfdata.layer_names import EMBEDDING_LAYER
from xray_tfdata.records import manifest
from xray_tfdata.settings import nested, setting

CLASSIFIERS = ("svm", "rf", "logreg", "knn")
CLASS_WEIGHTS = labels.CLASS_WEIGHT_MODES
BUNDLE_FORMAT = 1


class IdentityError(ValueError):
    """A saved classifier was asked to work with a different embedding model."""


@dataclasses.dataclass(frozen=True)
class EmbeddingIdentity:
    """What a classifier was fitted on: one model file, one embedding layer and width."""

    model_sha256: str
    embedding_dim: int
    model_name: str = ""
    layer: str = EMBEDDING_LAYER
    # The model's classes, in label order: the classifiers' labels are their ids. (A record
    # from before class sets holds none: the default three.)
    classes: tuple[str, ...] = labels.DEFAULT_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))  # a JSON record gives a list

    def check_classes(self, classes: Sequence[str]) -> None:
        """Refuses records of another class set than the classifiers', in one line."""
        if tuple(classes) != self.classes:
            raise IdentityError(
                f"These classifiers were fitted on the classes {list(self.classes)}, not "
                f"{list(classes)}; fit classifiers for that class set with python -m "
                "xray_tfdata.classical on its model and records.")

    def check_model_file(self, model_path: str | os.PathLike) -> None:
        actual = files.sha256_file(model_path)
        if actual != self.model_sha256:
            raise IdentityError(
                f"These classifiers were fitted on embeddings of a model with sha256 "
                f"{self.model_sha256[:16]}... ({self.model_name or 'unnamed'}), but "
                f"{str(model_path)!r} has sha256 {actual[:16]}.... Embeddings of another model "
                f"mean nothing to them. Rerun python -m xray_tfdata.classical "
                f"--model_path={model_path} to fit classifiers for this model.")

    def check_embeddings(self, embeddings: np.ndarray) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise IdentityError(
                f"Received: embeddings of shape {embeddings.shape}; these classifiers expect "
                f"[n, {self.embedding_dim}] from layer {self.layer!r} of the model with sha256 "
                f"{self.model_sha256[:16]}.... Extract embeddings with that model.")


@dataclasses.dataclass(frozen=True)
class ClassifierParams:
    """Hyperparameters of the classical classifiers; validates itself."""

    svm_c: float = setting(1.0, "SVM (RBF kernel) regularisation C.")
    svm_gamma: str = setting("scale", "SVM RBF gamma: 'scale', 'auto' or a positive float.")
    rf_trees: int = setting(300, "Random forest: number of trees.")
    knn_k: int = setting(5, "k-nearest neighbours: k.")
    logreg_c: float = setting(1.0, "Logistic regression: inverse regularisation C.")
    class_weight: str = setting("balanced", "Class weighting of SVM, random forest and logistic "
                                "regression.", allowed=CLASS_WEIGHTS)
    seed: int = setting(0, "Seed of the classifiers and of the bootstrap.")

    def __post_init__(self):
        for name in ("svm_c", "logreg_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, value, "a positive number, e.g. 1.0")
        errors.positive_int("rf_trees", self.rf_trees)
        errors.positive_int("knn_k", self.knn_k)
        errors.one_of("class_weight", self.class_weight, CLASS_WEIGHTS)
        self.gamma  # validates svm_gamma

    @property
    def gamma(self) -> str | float:
        if self.svm_gamma in ("scale", "auto"):
            return self.svm_gamma
        try:
            value = float(self.svm_gamma)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError("svm_gamma", self.svm_gamma,
                              "'scale', 'auto' or a positive float such as 0.01")
        return value


@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
    """Settings of one `classical` run (its flags): what to fit on and report, and the
    classifiers' own hyperparameters, nested."""

    model_path: str = setting(help="The trained .keras model.",
                              flag_default="workspace/model/best.keras")
    records_dir: str = setting(help="Records directory (dataset_info.json).",
                               flag_default="workspace/records")
    output_dir: str = setting("", "Output directory; default <dir of model>/classical.")
    classifiers: str = setting(",".join(CLASSIFIERS),
                               f"Comma-separated subset of {','.join(CLASSIFIERS)}.")
    train_split: str = setting("train", "Split the classifiers are fit on.",
                               allowed=labels.SPLITS)
    eval_split: str = setting("test", "Split they are reported on.", allowed=labels.SPLITS)
    batch_size: int = setting(64, "Batch size for embedding extraction.")
    bootstrap: int = setting(1000, "Bootstrap resamples for 95% CIs; 0 disables them.")
    params: ClassifierParams = nested(ClassifierParams)

    def __post_init__(self) -> None:
        parse_classifiers(self.classifiers)
        errors.positive_int("batch_size", self.batch_size)
        errors.non_negative_int("bootstrap", self.bootstrap)
        for field in ("model_path", "records_dir", "output_dir"):
            paths.check(field, getattr(self, field))  # a URL's scheme must be one TF knows

    @property
    def resolved_output_dir(self) -> Path | paths.RemotePath:
        return paths.location(self.output_dir
                              or paths.location(self.model_path).resolve().parent / "classical")



def parse_classifiers(spec: str) -> tuple[str, ...]:
    """'svm,rf' -> ('svm', 'rf'); errors name the unknown token and the allowed names."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in spec.split(",") if t.strip()))
    unknown = [n for n in names if n not in CLASSIFIERS]
    if not names or unknown:
        raise ConfigError("classifiers", spec,
                          f"a comma-separated subset of {','.join(CLASSIFIERS)}")
    return names


def make_classifier(name: str, params: ClassifierParams, num_train: int | None = None):
    """A StandardScaler + classifier pipeline, seeded where the classifier is random."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    weight = None if params.class_weight == "none" else "balanced"
    if name == "svm":
        # Platt-scaled scores for AUC (what SVC(probability=True) did before scikit-learn 1.9
        # deprecated it); with ensemble=False one SVC is fitted on all of train, the folds only fit
        # the calibration.
        clf = CalibratedClassifierCV(
            SVC(kernel="rbf", C=params.svm_c, gamma=params.gamma, class_weight=weight,
                random_state=params.seed),
            method="sigmoid", ensemble=False,
        )
    elif name == "rf":
        clf = RandomForestClassifier(n_estimators=params.rf_trees, class_weight=weight,
                                     random_state=params.seed, n_jobs=1)
    elif name == "logreg":
        clf = LogisticRegression(C=params.logreg_c, class_weight=weight, max_iter=5000,
                                 random_state=params.seed)
    elif name == "knn":
        if num_train is not None and params.knn_k > num_train:
            raise ValueError(f"Received: knn_k={params.knn_k}, but the train split has only "
                             f"{num_train} examples. Use --knn_k <= {num_train}.")
        clf = KNeighborsClassifier(n_neighbors=params.knn_k)
    else:
        raise ValueError(f"Received: classifier={name!r}. Allowed: {', '.join(CLASSIFIERS)}.")
    return make_pipeline(StandardScaler(), clf)


# ----------------------------------------------------------------------------- extraction


def feature_model(model):
    """model input -> [flattened "embedding" output, class probabilities] in one pass."""
    import keras

    try:
        layer = model.get_layer(EMBEDDING_LAYER)
    except ValueError as err:
        raise ValueError(f"Model {model.name!r} has no layer named {EMBEDDING_LAYER!r}; build it "
                         f"with xray_tfdata.models.build_model, which names the penultimate "
                         f"features layer 'embedding'.") from err
    embedding = layer.output
    if len(embedding.shape) > 2:
        embedding = keras.layers.Flatten(name="embedding_flat")(embedding)
    return keras.Model(model.inputs, [embedding, model.outputs[0]], name=f"{model.name}_features")


def extract(model, records_dir: str, split: str, batch_size: int = 64,
            classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, d] float32, CNN probabilities [n, C], labels [n]) for one split; labels
    are ids of `classes` (the model's; records of a subset of them are remapped, others
    refused), of the records' own classes when None."""
    image_size, channels = inference.input_spec(model)
    info = manifest.read_info(records_dir)
    label_ids = None
    if classes is not None:
        info, label_ids, _ = inference.records_for_model(info, classes)
    dataset = inference.eval_dataset(info, split, image_size, channels, batch_size,
                                     label_ids=label_ids)
    y, (emb, probs) = inference.run_model(feature_model(model), dataset,
                                          label=f"embeddings {split}",
                                          total=inference.split_size(info, split))
    return emb.astype(np.float32), probs, y


# ----------------------------------------------------------------------------- save / load


@dataclasses.dataclass(frozen=True)
class ClassifierBundle:
    """A fitted classifier with the identity of the embeddings it expects."""

    name: str
    classifier: Any
    identity: EmbeddingIdentity
    params: dict[str, Any]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities [n, len(classes)] in label order (absent classes get 0)."""
        embeddings = np.asarray(embeddings)
        self.identity.check_embeddings(embeddings)
        probs = np.zeros((embeddings.shape[0], len(self.identity.classes)))
        probs[:, self.classifier.classes_] = self.classifier.predict_proba(embeddings)
        return probs

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings)
        self.identity.check_embeddings(embeddings)
        return self.classifier.predict(embeddings).astype(np.int64)


def record_path(path: str | os.PathLike) -> Path | paths.RemotePath:
    """The JSON record saved beside a classifier file: `<name>.joblib.json`."""
    return paths.location(f"{path}.json")


def save_classifier(path: str | os.PathLike, bundle: ClassifierBundle) -> Path:
    """Writes the joblib file, then its JSON record (sha256 of the file + embedding identity)."""
    import joblib
    import sklearn

    path = paths.location(path)
    with files.atomic_path(path) as tmp:
        joblib.dump({"format": BUNDLE_FORMAT, "name": bundle.name, "classifier": bundle.classifier,
                     "identity": dataclasses.asdict(bundle.identity), "params": bundle.params,
                     "sklearn_version": sklearn.__version__}, tmp)
    files.write_json(record_path(path), {"format": BUNDLE_FORMAT, "name": bundle.name,
                                         "sha256": files.sha256_file(path),
                                         "identity": dataclasses.asdict(bundle.identity)})
    return path


def load_classifier(path: str | os.PathLike, model_path: str | os.PathLike,
                    classes: Sequence[str] | None = None) -> ClassifierBundle:
    """Loads a saved classifier, refusing it unless model_path is the model it was fitted for.

    A joblib file is a pickle: loading it runs whatever code it names. So nothing is unpickled
    until the file's sha256 matches the one recorded in `<name>.joblib.json` at save time and
    the model file matches the recorded identity. This catches a replaced or altered joblib file;
    it cannot vouch for a directory someone else may write to (they could rewrite both files):
    load only classifiers you fitted, from directories only you write.

    Raises:
      ValueError: no record beside the file, the file changed since it was saved, or another
        model (see EmbeddingIdentity.check_model_file), or `classes` other than the ones the
        classifiers were fitted on.
    """
    import joblib

    record = record_path(path)
    try:
        saved = json.loads(record.read_text())
        expected, identity = saved["sha256"], EmbeddingIdentity(**saved["identity"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r} has no readable record {record.name!r} beside it ({type(err).__name__}"
            f"), so it is not loaded (a joblib file runs code when loaded). Refit with python -m "
            "xray_tfdata.classical, which writes both.") from None
    # The bytes hashed are the bytes unpickled: a URL is downloaded once, then checked and loaded.
    with paths.local_copy(path) as local:
        actual = files.sha256_file(local)
        if actual != expected:
            raise ValueError(
                f"{str(path)!r} has sha256 {actual[:16]}..., but {record.name!r} records "
                f"{expected[:16]}...: the file changed since it was saved, so it is not loaded (a "
                "joblib file runs code when loaded). Refit with python -m xray_tfdata.classical.")
        identity.check_model_file(model_path)
        if classes is not None:  # the records' class set must be the classifiers'
            identity.check_classes(classes)
        data = joblib.load(local)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a classifier saved by xray_tfdata.classical "
                         f"(format {BUNDLE_FORMAT}); refit with python -m xray_tfdata.classical.")
    return ClassifierBundle(name=data["name"], classifier=data["classifier"], identity=identity,
                            params=data["params"])


# ----------------------------------------------------------------------------- the run


def run_classical(model_path: str, records_dir: str, output_dir: str | os.PathLike,
                  classifiers: tuple[str, ...] = CLASSIFIERS,
                  params: ClassifierParams = ClassifierParams(), *, train_split: str = "train",
                  eval_split: str = "test", batch_size: int = 64, bootstrap: int = 1000
                  ) -> dict[str, Any]:
    """Fits each classifier on train embeddings; reports all and the CNN head on eval_split.

    Writes metrics.json, report.txt and classifiers/<name>.joblib into output_dir; returns the
    metrics.json dict ({"results": {"cnn_head": ..., "svm": ...}, "identity": ..., ...}).
    """
    for name in classifiers:
        if name not in CLASSIFIERS:
            raise ValueError(f"Received: classifier={name!r}. Allowed: {', '.join(CLASSIFIERS)}.")
    output_dir = paths.location(output_dir)
    model = inference.load_model(model_path)
    classes = model_classes.classes_of(model, model_path)
    x_train, _, y_train = extract(model, records_dir, train_split, batch_size, classes)
    x_eval, cnn_probs, y_eval = extract(model, records_dir, eval_split, batch_size, classes)
    if np.unique(y_train).size < 2:
        raise ValueError(f"The {train_split} split holds one class only "
                         f"({np.unique(y_train).tolist()}); classifiers need at least two.")
    identity = EmbeddingIdentity(model_sha256=files.sha256_file(model_path),
                                 embedding_dim=int(x_train.shape[1]), model_name=model.name,
                                 classes=classes)
    results = {"cnn_head": metrics.compute_metrics(y_eval, cnn_probs, n_resamples=bootstrap,
                                                   seed=params.seed, class_names=classes)}
    saved = {}
    for name in classifiers:
        clf = make_classifier(name, params, num_train=int(y_train.size))
        clf.fit(x_train, y_train)
        bundle = ClassifierBundle(name=name, classifier=clf, identity=identity,
                                  params=dataclasses.asdict(params))
        results[name] = metrics.compute_metrics(
            y_eval, bundle.predict_proba(x_eval), bundle.predict(x_eval),
            n_resamples=bootstrap, seed=params.seed, class_names=classes)
        saved[name] = str(save_classifier(output_dir / "classifiers" / f"{name}.joblib", bundle))
    summary = {
        "results": results,
        "identity": dataclasses.asdict(identity),
        "classifier_files": saved,
        "settings": {"model_path": str(model_path), "records_dir": str(records_dir),
                     "train_split": train_split, "eval_split": eval_split,
                     "num_train": int(y_train.size), "num_eval": int(y_eval.size),
                     "classifiers": list(classifiers), "params": dataclasses.asdict(params),
                     "bootstrap": bootstrap},
    }
    files.write_json(output_dir / "metrics.json", summary)
    files.write_atomic(output_dir / "report.txt", comparison_report(summary))
    return summary


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per classifier: accuracy, macro-F1, macro AUC with their 95% CIs."""
    header = f"{'classifier':<10} {'accuracy [95% CI]':<26} {'macro-F1 [95% CI]':<26} " \
             f"{'macro AUC [95% CI]':<26}"
    rows = [header, "-" * len(header)]
    for name, m in results.items():
        rows.append(f"{name:<10} {metrics.headline(m, 'accuracy'):<26} "
                    f"{metrics.headline(m, 'macro_f1'):<26} {metrics.headline(m, 'macro_auc'):<26}")
    return "\n".join(rows)


def comparison_report(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    ident = summary["identity"]
    parts = [f"Classical classifiers on embeddings of {s['model_path']} "
             f"(layer {ident['layer']!r}, {ident['embedding_dim']} features, sha256 "
             f"{ident['model_sha256'][:16]}...)",
             f"fitted on {s['train_split']} ({s['num_train']} examples), reported on "
             f"{s['eval_split']} ({s['num_eval']} examples)", "",
             comparison_table(summary["results"]), ""]
    for name, m in summary["results"].items():
        parts += [f"== {name} ==", metrics.format_summary(m)]
    return "\n".join(parts) + "\n"
