"""The class set: which classes a build has, in label-id order, and the checks every stage shares.

A class set is a property of the records (`build_records --classes=NORMAL,PNEUMONIA`; the
manifest's `label_map` stores it), then of the model trained on them (best.keras, the export's
metadata). Nothing downstream assumes three classes: the defaults below are only what a build
without --classes gets, in the order every earlier build used.
"""

from __future__ import annotations

import re
from typing import Sequence

# The Kaggle set's classes, in the label order every existing build uses. Never reorder.
DEFAULT_CLASSES: tuple[str, ...] = ("NORMAL", "COVID19", "PNEUMONIA")
# Kept as the defaults' names for the code and tests that mean exactly the Kaggle build.
CLASS_NAMES: tuple[str, ...] = DEFAULT_CLASSES
LABEL_MAP: dict[str, int] = {name: i for i, name in enumerate(DEFAULT_CLASSES)}
NUM_CLASSES: int = len(DEFAULT_CLASSES)

# The class the operating point is chosen for when it is present, else the first non-NORMAL one.
PREFERRED_POSITIVE = "COVID19"
NEGATIVE_CLASS = "NORMAL"

# Split names the converter writes. Kaggle ships train/test; val is carved from
# train (or taken from a `val` folder when the source has one).
SPLITS: tuple[str, ...] = ("train", "val", "test")

# How a classifier weighs the classes (training's loss, the classical classifiers): "balanced"
# = n / (K * n_class) from the training counts, "none" = every example alike.
CLASS_WEIGHT_MODES: tuple[str, ...] = ("balanced", "none")

_CLASS_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_EXAMPLE = "e.g. NORMAL,PNEUMONIA or NORMAL,COVID19,PNEUMONIA,LUNG_OPACITY"


def is_class_name(name: str) -> bool:
    """Whether `name` is a valid class name: an upper-case identifier such as COVID19."""
    return bool(_CLASS_RE.match(name))


def parse_classes(value: str | Sequence[str]) -> tuple[str, ...]:
    """'NORMAL,PNEUMONIA' (or a sequence) -> ('NORMAL', 'PNEUMONIA'), validated; order kept.

    Raises:
      ValueError: fewer than 2 names, a repeated name, or a name that is not an upper-case
        identifier (A-Z first, then A-Z, 0-9, _); the message names the value, the rule and an
        example.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    bad = [n for n in names if not is_class_name(n)]
    if bad:
        raise ValueError(f"class name(s) {bad} are not upper-case identifiers (A-Z first, then "
                         f"A-Z, 0-9 or _); {_EXAMPLE}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class name(s) {repeated} appear twice in {list(names)}; each class "
                         f"once, {_EXAMPLE}")
    if len(names) < 2:
        raise ValueError(f"{len(names)} class name(s) {list(names)}: a classifier needs at least "
                         f"2 classes, {_EXAMPLE}")
    return names


def label_map(classes: Sequence[str]) -> dict[str, int]:
    """{class name: label id}, ids in the order of `classes` (the manifest's `label_map`)."""
    return {name: i for i, name in enumerate(classes)}


def label_of(class_name: str, classes: Sequence[str] = DEFAULT_CLASSES) -> int:
    """Maps a class name (case-insensitive) to its id in `classes`.

    Raises:
      ValueError: naming the name and the classes of the set.
    """
    ids = {name.upper(): i for i, name in enumerate(classes)}
    if class_name.upper() not in ids:
        raise ValueError(f"Unknown class {class_name!r}; expected one of {', '.join(classes)} "
                         "(case-insensitive).")
    return ids[class_name.upper()]


def default_positive_class(classes: Sequence[str]) -> str:
    """COVID19 when the set has it, else its first class other than NORMAL."""
    if PREFERRED_POSITIVE in classes:
        return PREFERRED_POSITIVE
    return next(c for c in classes if c != NEGATIVE_CLASS)


def positive_class(classes: Sequence[str], requested: str = "") -> str:
    """The operating point's class: `requested` (checked against `classes`) or the default.

    Raises:
      ValueError: `requested` is not one of `classes` (the message lists them).
    """
    if not requested:
        return default_positive_class(classes)
    if requested not in classes:
        raise ValueError(f"positive_class={requested!r} is not one of this model's classes "
                         f"{list(classes)}; pass one of them, e.g. "
                         f"--positive_class={default_positive_class(classes)}")
    return requested


def mismatch_message(model_classes: Sequence[str], records_classes: Sequence[str],
                     records_dir: str = "") -> str:
    """One line naming both class lists (a model run on records of another class set)."""
    where = f" in {records_dir!r}" if records_dir else ""
    return (f"The model's classes {list(model_classes)} do not cover the records{where}, whose "
            f"classes are {list(records_classes)}: run the model trained on these records' "
            "class set, or rebuild the records with "
            f"--classes={','.join(model_classes)}.")


def records_to_model_ids(model_classes: Sequence[str], records_classes: Sequence[str],
                         records_dir: str = "") -> list[int]:
    """For each records label id, the model's id of the same class name.

    Equal lists give the identity; records whose classes are a subset of the model's (an
    external set without PNEUMONIA) are remapped by name. Anything else raises ValueError with
    `mismatch_message`.
    """
    missing = [c for c in records_classes if c not in model_classes]
    if missing:
        raise ValueError(mismatch_message(model_classes, records_classes, records_dir))
    return [list(model_classes).index(c) for c in records_classes]
