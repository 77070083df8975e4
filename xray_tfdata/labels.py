"""The fixed label convention shared by every stage."""

from __future__ import annotations

# Fixed project-wide: 0 = NORMAL, 1 = COVID19, 2 = PNEUMONIA. Never reorder.
CLASS_NAMES: tuple[str, ...] = ("NORMAL", "COVID19", "PNEUMONIA")
LABEL_MAP: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
NUM_CLASSES: int = len(CLASS_NAMES)

# Split names the converter writes. Kaggle ships train/test; val is carved from
# train (or taken from a `val` folder when the source has one).
SPLITS: tuple[str, ...] = ("train", "val", "test")


def label_of(class_folder: str) -> int:
    """Maps a class folder name (case-insensitive) to its label id.

    Raises:
      ValueError: naming the folder and the expected names.
    """
    key = class_folder.upper()
    if key not in LABEL_MAP:
        raise ValueError(
            f"Unknown class folder {class_folder!r}; expected one of "
            f"{', '.join(CLASS_NAMES)} (case-insensitive)."
        )
    return LABEL_MAP[key]

# How a classifier weighs the classes (training's loss, the classical classifiers): "balanced"
# = n / (K * n_class) from the training counts, "none" = every example alike.
CLASS_WEIGHT_MODES: tuple[str, ...] = ("balanced", "none")
