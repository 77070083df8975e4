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

from absl import app

from xray_tfdata import cli, paths
from xray_tfdata.evaluation import classical

cli.define_flags(classical.ClassicalConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass settings as --flags.")
    config = cli.settings_from_flags(classical.ClassicalConfig)
    if not paths.location(config.model_path).is_file():
        raise app.UsageError(f"--model_path={config.model_path} is not an existing .keras file. "
                             f"Train first and pass <model_dir>/best.keras.")
    from xray_tfdata.records.manifest import ManifestError

    output_dir = config.resolved_output_dir
    try:
        summary = classical.run_classical(
            config.model_path, config.records_dir, output_dir,
            classical.parse_classifiers(config.classifiers), config.params,
            train_split=config.train_split, eval_split=config.eval_split,
            batch_size=config.batch_size, bootstrap=config.bootstrap)
    except ManifestError as err:  # records that do not fit the model: one line, no traceback
        cli.fail(str(err))
    s = summary["settings"]
    print(f"Fitted on {s['num_train']} {s['train_split']} embeddings "
          f"({summary['identity']['embedding_dim']} features); {s['eval_split']} split, "
          f"{s['num_eval']} examples:")
    print(classical.comparison_table(summary["results"]))
    print(f"Wrote {output_dir / 'metrics.json'}, {output_dir / 'report.txt'} and "
          f"{output_dir / 'classifiers'}/")


if __name__ == "__main__":
    cli.run(main)
