"""Issue 20: the class set is a property of the records, read by every consumer.

One tiny build per class set (module-scoped): a binary NORMAL/PNEUMONIA set from class folders,
and a 4-class set from COVID-19-Radiography-style folders mapped with --label_map. Each is trained
for one epoch and run through evaluate, explain, export, predict and the web app's REST answers.
Images encode their class as brightness (a signal a one-epoch CNN picks up), 32 px.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import fixtures
from xray_tfdata import labels, model_classes
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import convert, manifest
from xray_tfdata.records.conversion_config import ConversionConfig

SIZE = 32
BINARY = ("NORMAL", "PNEUMONIA")
FOUR = ("NORMAL", "COVID19", "PNEUMONIA", "LUNG_OPACITY")
# Radiography Database folder -> class, and each class's brightness.
RADIOGRAPHY = {"Normal": "NORMAL", "COVID": "COVID19", "Viral Pneumonia": "PNEUMONIA",
               "Lung_Opacity": "LUNG_OPACITY"}
BRIGHTNESS = {"NORMAL": 40, "COVID19": 100, "PNEUMONIA": 160, "LUNG_OPACITY": 220}


def _png(value: int, rng: np.random.Generator) -> bytes:
    image = np.clip(rng.normal(value, 12, (40, 36)), 0, 255).astype(np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def _folders(root: Path, layout: dict[str, dict[str, str]], counts: dict[str, int],
             seed: int) -> Path:
    """root/<split>/<folder>/<i>.png for layout {split: {folder: class}}."""
    rng = np.random.default_rng(seed)
    for split, folders in layout.items():
        for folder, class_name in folders.items():
            (root / split / folder).mkdir(parents=True)
            for i in range(counts[split]):
                (root / split / folder / f"{i:03d}.png").write_bytes(
                    _png(BRIGHTNESS[class_name], rng))
    return root


def _build(data_dir: Path, out: Path, **overrides) -> dict:
    config = dict(data_dir=str(data_dir), output_dir=str(out), image_size=SIZE, num_workers=1,
                  min_shards=1, val_fraction=0.25, seed=0)
    config.update(overrides)
    return convert.build_records(ConversionConfig(**config), progress=False)


def _train(records: Path, model_dir: Path):
    from xray_tfdata.settings import from_flat
    from xray_tfdata.training import loop
    from xray_tfdata.training.config import TrainConfig

    return loop.train(from_flat(
        TrainConfig, records_dir=str(records), model_dir=str(model_dir), model="seed_cnn",
        epochs=2, global_batch_size=8, learning_rate=1e-2, warmup_epochs=0, cache="memory",
        augment=False, shuffle_buffer=64, export=True))


def _evaluate(model_path: Path, records: Path, out: Path, **overrides) -> dict:
    from xray_tfdata.evaluation import evaluator

    config = dict(model_path=str(model_path), records_dir=str(records), output_dir=str(out),
                  bootstrap=0, shortcut_probe=False, gradcam_per_class=0)
    config.update(overrides)
    return evaluator.evaluate(evaluator.EvalConfig(**config))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    data = _folders(root / "data", {s: {"NORMAL": "NORMAL", "pneumonia": "PNEUMONIA"}
                                    for s in ("train", "test")}, {"train": 16, "test": 4}, 1)
    result = _build(data, root / "records", classes="NORMAL,PNEUMONIA")
    summary = _train(root / "records", root / "model")
    return root, result, summary


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    data = _folders(root / "data", {s: RADIOGRAPHY for s in ("train", "test")},
                    {"train": 12, "test": 3}, 2)
    result = _build(data, root / "records", classes=",".join(FOUR),
                    label_map="COVID=COVID19,Viral Pneumonia=PNEUMONIA,Lung_Opacity=LUNG_OPACITY")
    summary = _train(root / "records", root / "model")
    return root, result, summary


def _check_model_outputs(root: Path, summary: dict, classes: tuple[str, ...]) -> None:
    """best.keras, calibration.json, the export, summary.json and run_spec.json name `classes`."""
    model_dir = root / "model"
    assert summary["resolved"]["classes"] == list(classes)
    assert model_classes.stored_classes(model_dir / "best.keras") == classes
    spec = json.loads((model_dir / "run_spec.json").read_text())
    assert spec["records"]["classes"] == list(classes)
    calibration = json.loads((model_dir / "calibration.json").read_text())
    assert calibration["classes"] == list(classes)
    assert calibration["val_operating_point"]["positive_class"] == \
        labels.default_positive_class(classes)
    from xray_tfdata.serving import export

    serving = export.load_serving(model_dir / "export")
    assert serving.class_names == classes
    images = [_png(BRIGHTNESS[c], np.random.default_rng(9)) for c in classes]
    probs = serving.predict(images)
    assert probs.shape == (len(classes), len(classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- the binary set


def test_binary_build_has_two_label_ids_in_the_given_order(binary):
    root, result, _ = binary
    assert result["label_map"] == {"NORMAL": 0, "PNEUMONIA": 1}
    assert result["args"]["classes"] == "NORMAL,PNEUMONIA"
    info = manifest.read_info(root / "records")
    assert info.classes == BINARY
    assert info.class_counts("train") == [12, 12] and info.class_counts("test") == [4, 4]
    assert set(result["splits"]["train"]["per_class"]) == set(BINARY)


def test_binary_trains_a_two_way_head_and_records_its_classes(binary):
    root, _, summary = binary
    assert summary["status"] == "completed"
    assert len(summary["resolved"]["class_weights"]) == 2
    _check_model_outputs(root, summary, BINARY)
    from xray_tfdata.evaluation import inference

    model = inference.load_model(root / "model" / "best.keras")
    assert model.outputs[0].shape[-1] == 2


def test_binary_evaluates_and_explains_over_its_two_classes(binary):
    root, _, _ = binary
    result = _evaluate(root / "model" / "best.keras", root / "records", root / "eval",
                       gradcam_per_class=2)
    assert result["class_names"] == list(BINARY)
    assert result["records_classes"] == list(BINARY) and "class_note" not in result
    assert np.asarray(result["confusion_matrix"]).shape == (2, 2)
    assert result["operating_point"]["positive_class"] == "PNEUMONIA"
    assert result["operating_point"]["num_val_positive"] == 4
    assert set(result["border_attention"]["per_class"]) == set(BINARY)
    from xray_tfdata.evaluation import gradcam_report

    report = gradcam_report.explain(gradcam_report.ExplainConfig(
        model_path=str(root / "model" / "best.keras"), records_dir=str(root / "records"),
        per_class=2, output_dir=str(root / "explain")))
    assert report["classes"] == list(BINARY)
    assert set(report["sheets"]) == set(BINARY)
    assert {image["true"] for image in report["images"]} == set(BINARY)


def test_binary_positive_class_must_be_the_models(binary):
    root, _, _ = binary
    with pytest.raises(ConfigError, match=r"one of the model's classes \['NORMAL', 'PNEUMONIA'\]"):
        _evaluate(root / "model" / "best.keras", root / "records", root / "eval_pc",
                  positive_class="COVID19")


def test_binary_predicts_and_serves_two_classes(binary):
    root, _, _ = binary
    from django.conf import settings
    from django.test import Client

    from xray_tfdata.serving import predict
    from xray_tfdata.serving.web import model as model_lib
    from xray_tfdata.serving.web.settings import WebSettings, configure

    export_dir = root / "model" / "export"
    image = root / "one.png"
    image.write_bytes(_png(BRIGHTNESS["PNEUMONIA"], np.random.default_rng(3)))
    loaded = model_lib.load(export_dir)
    [answer] = predict.predict_files(loaded.serving, [str(image)])
    assert set(answer["probabilities"]) == set(BINARY)
    if not settings.configured:
        configure(WebSettings(model_path=str(export_dir), allowed_hosts=("testserver",)))
    previous = model_lib.current()
    model_lib.install(loaded)
    try:
        client = Client()
        assert client.get("/v1/models/xray").json()["classes"] == list(BINARY)
        reply = client.post("/v1/models/xray:predict", data={"image": image.open("rb")})
        assert reply.status_code == 200, reply.content
        assert reply.json()["classes"] == list(BINARY)
        assert len(reply.json()["predictions"][0]) == 2
        assert "NORMAL, PNEUMONIA" in client.get("/").content.decode()
    finally:
        model_lib.install(previous)
    # best.keras served directly: exported in memory with its own classes.
    assert model_lib.load(root / "model" / "best.keras").class_names == BINARY


# --------------------------------------------------------------------------- the 4-class set


def test_four_classes_from_radiography_folders_mapped_with_label_map(four):
    root, result, summary = four
    assert result["label_map"] == {name: i for i, name in enumerate(FOUR)}
    assert manifest.read_info(root / "records").class_counts("test") == [3, 3, 3, 3]
    assert summary["status"] == "completed"
    _check_model_outputs(root, summary, FOUR)
    evaluated = _evaluate(root / "model" / "best.keras", root / "records", root / "eval")
    assert evaluated["class_names"] == list(FOUR)
    assert np.asarray(evaluated["confusion_matrix"]).shape == (4, 4)
    assert evaluated["operating_point"]["positive_class"] == "COVID19"


def test_a_model_on_records_of_another_class_set_is_refused_in_one_line(binary, four):
    with pytest.raises(manifest.ManifestError) as err:
        _evaluate(binary[0] / "model" / "best.keras", four[0] / "records", binary[0] / "bad")
    message = str(err.value)
    assert "\n" not in message
    assert "['NORMAL', 'PNEUMONIA']" in message and str(list(FOUR)) in message


def test_classical_classifiers_record_and_check_their_classes(binary):
    root, _, _ = binary
    from xray_tfdata.evaluation import classical

    summary = classical.run_classical(str(root / "model" / "best.keras"), str(root / "records"),
                                      root / "classical", ("logreg",), bootstrap=0)
    assert list(summary["identity"]["classes"]) == list(BINARY)
    assert summary["results"]["logreg"]["class_names"] == list(BINARY)
    path = root / "classical" / "classifiers" / "logreg.joblib"
    bundle = classical.load_classifier(path, root / "model" / "best.keras", BINARY)
    assert bundle.predict_proba(np.zeros((1, summary["identity"]["embedding_dim"]))).shape \
        == (1, 2)
    with pytest.raises(classical.IdentityError, match=r"fitted on the classes \['NORMAL', "
                                                      r"'PNEUMONIA'\], not \['NORMAL', "):
        classical.load_classifier(path, root / "model" / "best.keras", labels.DEFAULT_CLASSES)


# --------------------------------------------------------------------------- subsets, checks


def test_three_class_model_on_an_external_set_without_pneumonia(tmp_path):
    """Records with NORMAL and COVID19 only (ids 0, 1 of their own set): remapped by name to
    the model's ids and reported over the classes present."""
    model_path = fixtures.tiny_model_file(tmp_path / "tiny.keras")
    rng = np.random.default_rng(4)
    data = tmp_path / "external"
    for class_name, value in (("NORMAL", fixtures.BRIGHTNESS[0]),
                              ("COVID19", fixtures.BRIGHTNESS[1])):
        (data / "test" / class_name).mkdir(parents=True)
        for i in range(6):
            (data / "test" / class_name / f"{i}.png").write_bytes(_png(value, rng))
    # The model's COVID19 is id 1; give the records another order to prove the remap.
    _build(data, tmp_path / "records", image_size=fixtures.TINY_SIZE, classes="COVID19,NORMAL")
    result = _evaluate(model_path, tmp_path / "records", tmp_path / "eval")
    assert result["class_names"] == list(labels.DEFAULT_CLASSES)
    assert result["records_classes"] == ["COVID19", "NORMAL"]
    assert "metrics cover the classes present" in result["class_note"]
    assert result["per_class"]["PNEUMONIA"]["support"] == 0
    assert result["per_class"]["NORMAL"]["support"] == 6
    assert result["per_class"]["COVID19"]["support"] == 6
    # The brightness model separates them: remapped labels, so no COVID19 is called NORMAL.
    assert result["per_class"]["COVID19"]["sensitivity"] == 1.0


def test_a_csv_whose_labels_do_not_map_warns_and_train_refuses_it(tmp_path, caplog):
    """Issue 16 item 2: `No Finding` / `COVID-19` without --label_map left PNEUMONIA alone."""
    rng = np.random.default_rng(5)
    rows = ["path,label"]
    for i in range(24):
        label = ("No Finding", "COVID-19", "Pneumonia")[i % 3] if i < 21 else "No Finding"
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(60 + 7 * i, rng))
        rows.append(f"img/{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        result = _build(tmp_path, tmp_path / "records", labels_csv=str(tmp_path / "labels.csv"),
                        image_size=16)
    text = caplog.text
    assert "17 of 24 rows" in text and "'No Finding' 10" in text and "'COVID-19' 7" in text
    assert "No image of class NORMAL, COVID19" in text
    assert result["label_map"] == labels.LABEL_MAP  # the default build is unchanged
    from xray_tfdata.settings import from_flat
    from xray_tfdata.training import setup
    from xray_tfdata.training.config import TrainConfig

    with pytest.raises(manifest.ManifestError,
                       match=r"holds 1 class\(es\) \(NORMAL 0, COVID19 0, PNEUMONIA \d+\).*"
                             r"--label_map"):
        setup.resolve_data(from_flat(TrainConfig, records_dir=str(tmp_path / "records"),
                                     model_dir=str(tmp_path / "m"), global_batch_size=2))
    # Asked for explicitly, a class without any image fails, naming what was found instead.
    with pytest.raises(convert.ConversionError,
                       match=r"No image of class NORMAL .*found PNEUMONIA 7; skipped unmapped "
                             r"labels 'No Finding' 10, 'COVID-19' 7.*--label_map=<name>=NORMAL"):
        _build(tmp_path, tmp_path / "records2", labels_csv=str(tmp_path / "labels.csv"),
               image_size=16, classes="NORMAL,PNEUMONIA")


@pytest.mark.parametrize("value, match", [
    ("NORMAL", r"a classifier needs at least 2 classes"),
    ("NORMAL,normal", r"\['normal'\] are not upper-case identifiers"),
    ("NORMAL,PNEUMONIA,NORMAL", r"\['NORMAL'\] appear twice"),
    ("NORMAL,1ST", r"not upper-case identifiers"),
])
def test_bad_class_sets_name_the_value_and_the_rule(value, match):
    with pytest.raises(ConfigError, match=r"classes must be .*Received: classes=.*" + match):
        ConversionConfig(data_dir="d", output_dir="o", classes=value)


def test_label_map_and_augment_are_checked_against_the_class_set():
    with pytest.raises(ConfigError, match=r"label_map.*CLASS in \['NORMAL', 'PNEUMONIA'\]"):
        ConversionConfig(data_dir="d", output_dir="o", classes="NORMAL,PNEUMONIA",
                         label_map="COVID=COVID19")
    with pytest.raises(ConfigError, match=r"augment.*Unknown class 'COVID19'; expected one of "
                                          r"NORMAL, PNEUMONIA"):
        ConversionConfig(data_dir="d", output_dir="o", classes="NORMAL,PNEUMONIA",
                         augment="COVID19:gamma0.4")
    spaced = ConversionConfig(data_dir="d", output_dir="o", classes=" NORMAL, PNEUMONIA")
    assert spaced.classes == "NORMAL,PNEUMONIA"
    assert "classes" not in ConversionConfig(data_dir="d", output_dir="o").manifest_args()


def test_unmapped_folders_say_how_to_map_them(tmp_path):
    for folder in ("Normal", "Viral Pneumonia"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "a.png").write_bytes(_png(50, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"Unexpected folder\(s\) \['Viral Pneumonia'\].*"
                                         r"--label_map=<folder>=<CLASS>"):
        _build(tmp_path / "data", tmp_path / "out", classes="NORMAL,PNEUMONIA")
