r"""Classical classifiers (SVM, random forest, logistic regression, k-NN) on a CNN's embeddings.

  python -m xray_tfdata.classical --model_path=workspace/model/best.keras \
      --records_dir=workspace/records --classifiers=svm,rf,logreg,knn

Extracts the "embedding" layer's features for the train split (fit) and the test split (report)
through the evaluation pipeline, and reports every classifier next to the CNN's own head in the
same metrics (95% bootstrap CIs). Writes metrics.json, report.txt and classifiers/<name>.joblib
(each with the model's sha256 and embedding width) into --output_dir
(default <dir of model>/classical).
"""

from __future__ import annotations


from absl import app, flags

from xray_tfdata import cli, errors, labels, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import classical

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", "workspace/model/best.keras", "The trained .keras model.")
flags.DEFINE_string("records_dir", "workspace/records", "Records directory (dataset_info.json).")
flags.DEFINE_string("output_dir", "", "Output directory; default <dir of model>/classical.")
flags.DEFINE_string("classifiers", ",".join(classical.CLASSIFIERS),
                    f"Comma-separated subset of {','.join(classical.CLASSIFIERS)}.")
flags.DEFINE_enum("train_split", "train", list(labels.SPLITS), "Split the classifiers are fit on.")
flags.DEFINE_enum("eval_split", "test", list(labels.SPLITS), "Split they are reported on.")
flags.DEFINE_float("svm_c", 1.0, "SVM (RBF kernel) regularisation C.")
flags.DEFINE_string("svm_gamma", "scale", "SVM RBF gamma: 'scale', 'auto' or a positive float.")
flags.DEFINE_integer("rf_trees", 300, "Random forest: number of trees.")
flags.DEFINE_integer("knn_k", 5, "k-nearest neighbours: k.")
flags.DEFINE_float("logreg_c", 1.0, "Logistic regression: inverse regularisation C.")
flags.DEFINE_enum("class_weight", "balanced", list(classical.CLASS_WEIGHTS),
                  "Class weighting of SVM, random forest and logistic regression.")
flags.DEFINE_integer("batch_size", 64, "Batch size for embedding extraction.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for 95% CIs; 0 disables them.")
flags.DEFINE_integer("seed", 0, "Seed of the classifiers and of the bootstrap.")


def _validated() -> tuple[tuple[str, ...], classical.ClassifierParams]:
    try:
        names = classical.parse_classifiers(FLAGS.classifiers)
        errors.positive_int("batch_size", FLAGS.batch_size)
        errors.non_negative_int("bootstrap", FLAGS.bootstrap)
        for name in ("model_path", "records_dir", "output_dir"):
            paths.check(name, FLAGS[name].value)  # a URL's scheme must be one TF knows
    except ConfigError as err:
        raise cli.usage_error(err) from err
    params = cli.settings_from_flags(classical.ClassifierParams)
    if (not FLAGS.model_path.endswith(".keras")
            or not paths.location(FLAGS.model_path).is_file()):
        raise app.UsageError(f"--model_path={FLAGS.model_path} is not an existing .keras file. "
                             f"Train first and pass <model_dir>/best.keras.")
    return names, params


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass settings as --flags.")
    names, params = _validated()
    output_dir = paths.location(FLAGS.output_dir
                                or paths.location(FLAGS.model_path).resolve().parent / "classical")
    summary = classical.run_classical(
        FLAGS.model_path, FLAGS.records_dir, output_dir, names, params,
        train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
        batch_size=FLAGS.batch_size, bootstrap=FLAGS.bootstrap)
    s = summary["settings"]
    print(f"Fitted on {s['num_train']} {s['train_split']} embeddings "
          f"({summary['identity']['embedding_dim']} features); {s['eval_split']} split, "
          f"{s['num_eval']} examples:")
    print(classical.comparison_table(summary["results"]))
    print(f"Wrote {output_dir / 'metrics.json'}, {output_dir / 'report.txt'} and "
          f"{output_dir / 'classifiers'}/")


if __name__ == "__main__":
    cli.run(main)
