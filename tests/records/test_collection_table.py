"""The build's collection x class table and its confound warning (pure, from per_source counts)."""

from __future__ import annotations

from xray_tfdata.records import collection_table

NAMES = ("NORMAL", "COVID19", "PNEUMONIA")


def _manifest(per_split: dict[str, dict[str, dict[str, int]]], variants: int = 0) -> dict:
    return {"label_map": {name: i for i, name in enumerate(NAMES)},
            "splits": {split: {"per_source": per_source,
                               "variants_per_class": {"COVID19": variants}}
                       for split, per_source in per_split.items()}}


KAGGLE_LIKE = _manifest({
    "train": {"covid_a": {"NORMAL": 0, "COVID19": 100, "PNEUMONIA": 0},
              "covid_b": {"NORMAL": 0, "COVID19": 60, "PNEUMONIA": 0},
              "kids": {"NORMAL": 300, "COVID19": 0, "PNEUMONIA": 500}},
    "test": {"covid_a": {"NORMAL": 0, "COVID19": 25, "PNEUMONIA": 0},
             "covid_b": {"NORMAL": 0, "COVID19": 14, "PNEUMONIA": 0},
             "kids": {"NORMAL": 70, "COVID19": 0, "PNEUMONIA": 120}}})


def test_counts_sum_every_split_per_collection_and_class():
    assert collection_table.counts(KAGGLE_LIKE) == {
        "covid_a": {"NORMAL": 0, "COVID19": 125, "PNEUMONIA": 0},
        "covid_b": {"NORMAL": 0, "COVID19": 74, "PNEUMONIA": 0},
        "kids": {"NORMAL": 370, "COVID19": 0, "PNEUMONIA": 620}}
    assert collection_table.counts({"label_map": {"NORMAL": 0, "PNEUMONIA": 1},
                                    "splits": {"train": {"per_class": {"NORMAL": 3}}}}) == {}


def test_a_class_only_from_single_class_collections_is_warned_once():
    table = collection_table.counts(KAGGLE_LIKE)
    assert collection_table.confound_warnings(table, NAMES) == [
        "COVID19: all 199 images from covid_a, covid_b, which hold no NORMAL or PNEUMONIA: a "
        "model can learn the collection"]
    # NORMAL and PNEUMONIA share `kids`: no warning for them. One adult collection holding
    # NORMAL next to the COVID19 films removes the COVID19 warning too.
    table["adult"] = {"NORMAL": 40, "COVID19": 10}
    assert collection_table.confound_warnings(table, NAMES) == []


def test_each_class_in_its_own_collection_warns_for_every_class_and_any_class_count():
    table = {"a": {"NORMAL": 5}, "b": {"COVID19": 3}, "c": {"PNEUMONIA": 2, "TB": 0}}
    warnings = collection_table.confound_warnings(table, NAMES + ("TB",))
    assert warnings == [  # TB has no image: neither warned nor listed as an "other" class
        "NORMAL: all 5 images from a, which hold no COVID19 or PNEUMONIA: a model can learn "
        "the collection",
        "COVID19: all 3 images from b, which hold no NORMAL or PNEUMONIA: a model can learn the "
        "collection",
        "PNEUMONIA: all 2 images from c, which hold no NORMAL or COVID19: a model can learn the "
        "collection"]
    # One collection, or one class in the whole build: nothing to confound.
    assert collection_table.confound_warnings({"a": {"NORMAL": 5, "COVID19": 1}}, NAMES) == []
    assert collection_table.confound_warnings({"a": {"NORMAL": 5}, "b": {"NORMAL": 2}},
                                              NAMES) == []


def test_build_report_is_the_table_then_the_warnings_and_nothing_for_one_collection():
    lines = collection_table.build_report(_manifest(
        {"train": {"a": {"NORMAL": 4, "COVID19": 0, "PNEUMONIA": 3},
                   "b": {"NORMAL": 0, "COVID19": 6, "PNEUMONIA": 0}}}, variants=2))
    assert lines[0] == ("Records per collection and class (every split; 2 offline-augmented "
                        "variants included):")
    assert lines[1].split("\n") == [
        "collection   NORMAL  COVID19  PNEUMONIA    total",
        "a                 4        0          3        7",
        "b                 0        6          0        6",
        "total             4        6          3       13"]
    assert lines[2].startswith("WARNING: COVID19: all 6 images from b, which hold no NORMAL or "
                               "PNEUMONIA: a model can learn the collection (")
    assert len(lines) == 3
    assert collection_table.build_report(_manifest({"train": {"a": {"NORMAL": 4}}})) == []
