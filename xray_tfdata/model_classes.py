"""The class list a `.keras` model file carries, so every consumer reads it from the model.

A Keras archive is a zip (config.json, metadata.json, model.weights.h5); Keras ignores other
members, so training adds `xray_tfdata.json` = {"classes": [...]} beside them. A copied
best.keras keeps its classes; a file from before class sets has no entry and is taken to hold
the default three when its head has three outputs.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Sequence

from xray_tfdata import labels, paths

ENTRY = "xray_tfdata.json"


def save(model, path: str | os.PathLike, classes: Sequence[str]) -> None:
    """model.save(path), then the class list into the archive (a local path: files.atomic_path's
    temporary file, renamed or uploaded afterwards)."""
    classes = labels.parse_classes(classes)
    width = int(model.outputs[0].shape[-1])
    if width != len(classes):
        raise ValueError(f"The model has {width} outputs but {len(classes)} classes were given "
                         f"({list(classes)}); the head must have one output per class.")
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(ENTRY, json.dumps({"classes": list(classes)}))


def stored_classes(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The classes recorded in a model file, or None (an older file, or not a zip)."""
    try:
        with paths.location(path).open("rb") as f, zipfile.ZipFile(f) as archive:
            if ENTRY not in archive.namelist():
                return None
            return labels.parse_classes(json.loads(archive.read(ENTRY))["classes"])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None


def classes_of(model, path: str | os.PathLike) -> tuple[str, ...]:
    """The model's classes: recorded in its file, else the defaults for a 3-output head.

    Raises:
      ValueError: no record and a head that is not 3 wide (the classes cannot be known).
    """
    stored = stored_classes(path)
    width = int(model.outputs[0].shape[-1])
    if stored is not None:
        if len(stored) != width:
            raise ValueError(f"{str(path)!r} records classes {list(stored)} but its head has "
                             f"{width} outputs; retrain or rewrite the model file.")
        return stored
    if width == len(labels.DEFAULT_CLASSES):
        return labels.DEFAULT_CLASSES
    raise ValueError(f"{str(path)!r} records no class list and its head has {width} outputs; "
                     "pass a best.keras written by python -m xray_tfdata.train.")
