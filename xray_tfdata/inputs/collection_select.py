"""Which collections a run reads (`--collections` / `--exclude_collections`), and their counts.

Records carry their collection (`image/source/collection`, the `name` of `--data_dir=name=path`)
and the manifest counts every split per collection and class (`splits.<split>.per_source`), so a
leave-one-collection-out run filters the one set of records in the input pipeline, needs no
rebuild, and still knows its exact example and class counts (steps per epoch, class weights)
without reading a record. Records of a single unnamed collection have one collection, "".

Pure functions over the manifest's DatasetInfo, no TensorFlow: the commands validate with them before
TensorFlow loads.
"""

from __future__ import annotations

from typing import Sequence

from xray_tfdata.errors import ConfigError
from xray_tfdata.records.manifest import DatasetInfo


def parse_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """"a,b" or ["a", "b"] -> ("a", "b"); blanks dropped, order kept, duplicates removed."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip() for item in items]
    return tuple(dict.fromkeys(name for name in names if name))


def per_source(info: DatasetInfo, split: str) -> dict[str, dict[str, int]]:
    """{collection: {class name: n}} of a split ({"": per_class} for unnamed records)."""
    split_info = info.require_split(split)
    return {k: dict(v) for k, v in split_info.per_source.items()} or {
        "": dict(split_info.per_class)}


def all_names(manifest: DatasetInfo) -> list[str]:
    """Every collection named in any split of the records."""
    return sorted({name for split in manifest.splits
                   for name in per_source(manifest, split)})


def select(manifest: DatasetInfo, split: str, include: Sequence[str] = (),
           exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The collections of `split` to read: `include` (all when empty) minus `exclude`.

    Raises:
      ConfigError: a name the records do not have (field "collections" or
        "exclude_collections"), or nothing left to read.
    """
    known = all_names(manifest)
    for field, names in (("collections", include), ("exclude_collections", exclude)):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(field, ",".join(names), f"collections of these records: {known}",
                              "Collections are the names of --data_dir=name=path,... at "
                              "build_records; records of one unnamed folder have none.")
    present = per_source(manifest, split)
    kept = tuple(name for name in sorted(present)
                 if (not include or name in include) and name not in exclude)
    if not kept:
        field = "collections" if include else "exclude_collections"
        raise ConfigError(field, ",".join(include or exclude),
                          f"a selection that keeps one of the collections of split {split!r} "
                          f"({sorted(present)})")
    return kept


def class_counts(manifest: DatasetInfo, split: str, include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> list[int]:
    """Examples per class id (label order) in the selected collections of `split`."""
    present = per_source(manifest, split)
    kept = select(manifest, split, include, exclude)
    return [sum(int(present[name].get(cls, 0)) for name in kept) for cls in manifest.classes]


def num_examples(manifest: DatasetInfo, split: str, include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> int:
    return sum(class_counts(manifest, split, include, exclude))


def streams(manifest: DatasetInfo, split: str, include: Sequence[str] = (),
            exclude: Sequence[str] = ()) -> dict[int, tuple[str, ...]]:
    """{class id: the selected collections holding that class} (classes with no example left
    out): the per-(class, collection) streams of sampling.balanced_collections."""
    present = per_source(manifest, split)
    kept = select(manifest, split, include, exclude)
    out = {}
    for class_id, cls in enumerate(manifest.classes):
        holding = tuple(name for name in kept if int(present[name].get(cls, 0)) > 0)
        if holding:
            out[class_id] = holding
    return out


def collection_ids(manifest: DatasetInfo, include: Sequence[str] = (),
                   exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The selected collections in id order: sorted names over every split of the records, so
    an id means the same collection in every split and every run on these records (the
    collection adversary's targets, InputConfig.label_collections)."""
    return tuple(name for name in all_names(manifest)
                 if (not include or name in include) and name not in exclude)
