"""Plan, then write: which source goes to which split, gets which augmentations, lands in which shard.

Every decision is a pure function of relative paths, class names, sizes and the seed, through one
stable key: sha256(f"{seed}:{relpath}:{salt}"). Nothing depends on file-system order, the number
of workers or timing, so reruns are byte-identical. Python's `hash()` is never used (salted per
process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Mapping, Protocol, Sequence, TypeVar

from xray_tfdata import labels

# Per-record bytes beyond the encoded image: the provenance features, tf.Example and TFRecord
# framing (measured ~250-350 bytes; an estimate only used to size shards).
RECORD_OVERHEAD_BYTES = 320
_MB = 1 << 20


def stable_key(seed: int, relpath: str, salt: str = "none") -> str:
    """The hash every planning decision sorts by; `salt` separates independent decisions."""
    return hashlib.sha256(f"{seed}:{relpath}:{salt}".encode("utf-8")).hexdigest()


class _Source(Protocol):
    relpath: str
    class_name: str


S = TypeVar("S", bound=_Source)


def _carve_count(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 when the fraction is > 0 and n >= 2, and at most n - 1."""
    count = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    return count


def carve(units: Mapping[str, str], fraction: float, seed: int, salt: str) -> set[str]:
    """Which units (unit key -> stratum) to carve out: round(n * fraction) per stratum.

    Per stratum (a class, or a (collection, class) pair) the units with the smallest stable key
    are taken (see `_carve_count` for the bounds), so the choice is stratified and deterministic.
    """
    by_stratum: dict[str, list[str]] = {}
    for unit, stratum in units.items():
        by_stratum.setdefault(stratum, []).append(unit)
    chosen: set[str] = set()
    for members in by_stratum.values():
        ranked = sorted(members, key=lambda u: stable_key(seed, u, salt))
        chosen.update(ranked[:_carve_count(len(members), fraction)])
    return chosen


class _Placed(Protocol):
    relpath: str
    class_name: str
    split: str
    source: str


DEFAULT_TEST_FRACTION = 0.2  # carved from a collection that has no test split of its own
_FIXED_RANK = {"test": 0, "val": 1}


def _majority(members: Sequence[_Placed], classes: Sequence[str]) -> str:
    """The most frequent class of a unit; a tie goes to the class listed first (NORMAL...)."""
    counts = {name: 0 for name in classes}
    for f in members:
        counts[f.class_name] += 1
    return max(classes, key=lambda name: (counts[name], -classes.index(name)))


def assign_splits(files: Sequence[_Placed], *, val_fraction: float, seed: int,
                  test_fraction: float | None = None, holdout_source: str = "",
                  group_of: Mapping[str, str] | None = None,
                  classes: Sequence[str] = labels.DEFAULT_CLASSES) -> dict[str, str]:
    """relpath -> final split ("train", "val" or "test") of every usable file.

    1. With `holdout_source`, all its images are test and no other image is: the other
       collections' test images join their train pool (leave-one-collection-out).
    2. Images with a given val/test split (a folder or a CSV split column) keep it; given-train
       images and images without a split form the pool.
    3. A pool image without a given split whose group (same patient, or joined by a duplicate
       link: `group_of`) has a given val/test image goes with it.
    4. Per collection: test is carved from the pool when the collection has no test images
       (test_fraction; None means DEFAULT_TEST_FRACTION), then val from the rest when it has no
       val images (val_fraction); the rest is train. Carving picks whole units (groups; each
       image alone without `group_of`), stratified by each unit's majority class.
    Without groups on a train/test folder this is exactly the former val carve (same bytes).
    `classes`: the build's class set (ties of a unit's majority go to the first listed).
    """
    group_of = group_of or {}
    unit = lambda f: group_of.get(f.relpath, f.relpath)  # noqa: E731
    split_of: dict[str, str] = {}
    pool: list[_Placed] = []
    given: dict[str, set[str]] = {}
    for f in files:
        if holdout_source and f.source == holdout_source:
            split_of[f.relpath] = "test"
        elif f.split in _FIXED_RANK and not (holdout_source and f.split == "test"):
            split_of[f.relpath] = f.split
            given.setdefault(f.source, set()).add(f.split)
        else:
            pool.append(f)
    fixed_of_unit: dict[str, str] = {}
    for f in files:
        s = split_of.get(f.relpath)
        if s and not (holdout_source and f.source == holdout_source):
            old = fixed_of_unit.get(unit(f))
            fixed_of_unit[unit(f)] = s if old is None or _FIXED_RANK[s] < _FIXED_RANK[old] else old
    members: dict[str, list[_Placed]] = {}
    for f in pool:
        if not f.split and unit(f) in fixed_of_unit:
            split_of[f.relpath] = fixed_of_unit[unit(f)]
        else:
            members.setdefault(unit(f), []).append(f)
    source_of = {u: min(m, key=lambda f: f.relpath).source for u, m in members.items()}
    taken: set[str] = set()
    for split, salt in (("test", "test"), ("val", "val")):
        for source in sorted(set(source_of.values())):
            if split in given.get(source, set()):
                continue
            if split == "test":
                fraction = 0.0 if holdout_source else (
                    DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction)
            else:
                fraction = val_fraction
            units = {u: _majority(m, list(classes)) for u, m in members.items()
                     if source_of[u] == source and u not in taken}
            for u in carve(units, fraction, seed, salt):
                taken.add(u)
                for f in members[u]:
                    split_of[f.relpath] = split
    for m in members.values():
        for f in m:
            split_of.setdefault(f.relpath, "train")
    return {f.relpath: split_of[f.relpath] for f in files}


def select_augmented(
    files: Sequence[S],
    spec: Mapping[str, Sequence[str]],
    max_source: int,
    seed: int,
) -> dict[str, tuple[str, ...]]:
    """relpath -> augmentation names for the train files whose class the spec names.

    With max_source > 0, only that many sources per class (the first by stable key) get variants.
    """
    if max_source < 0:
        raise ValueError(
            f"augment_max_source must be >= 0 (0 = every image of the class). "
            f"Received: augment_max_source={max_source}."
        )
    chosen: dict[str, tuple[str, ...]] = {}
    for class_name, ops in spec.items():
        if not ops:
            continue
        members = sorted((f for f in files if f.class_name == class_name),
                         key=lambda f: stable_key(seed, f.relpath, "augment"))
        if max_source:
            members = members[:max_source]
        for f in members:
            chosen[f.relpath] = tuple(ops)
    return chosen


@dataclasses.dataclass(frozen=True, slots=True)  # one per example: no per-object __dict__
class PlannedExample:
    """One record to write: a source (relpath) in one variant, with its encoded size."""

    relpath: str
    augmentation: str = "none"
    num_bytes: int = 0


def shard_count(
    num_examples: int,
    total_bytes: int,
    *,
    num_shards: int = 0,
    shard_size_mb: float = 100.0,
    min_shards: int = 1,
) -> int:
    """Fixed `num_shards`, else enough shards of ~shard_size_mb, at least `min_shards`.

    Never more shards than examples: an empty shard would starve a reader that owns only it.
    """
    if num_examples <= 0:
        return 0
    if num_shards > 0:
        count = num_shards
    else:
        if shard_size_mb <= 0:
            raise ValueError(
                f"shard_size_mb must be > 0 when num_shards=0. Received: {shard_size_mb}."
            )
        count = max(min_shards, math.ceil(total_bytes / (shard_size_mb * _MB)), 1)
    return min(count, num_examples)


def plan_shards(
    examples: Sequence[PlannedExample],
    *,
    num_shards: int = 0,
    shard_size_mb: float = 100.0,
    min_shards: int = 1,
    seed: int = 0,
) -> list[list[PlannedExample]]:
    """Orders the examples by stable key and cuts them into balanced contiguous shards.

    Because the order is a hash, each shard holds a random class mix (originals and their
    variants are spread too), and shard sizes differ by at most one example.
    """
    total = sum(e.num_bytes + RECORD_OVERHEAD_BYTES for e in examples)
    count = shard_count(len(examples), total, num_shards=num_shards,
                        shard_size_mb=shard_size_mb, min_shards=min_shards)
    ordered = sorted(examples, key=lambda e: stable_key(seed, e.relpath, e.augmentation))
    shards = []
    for i in range(count):
        start, end = (i * len(ordered)) // count, ((i + 1) * len(ordered)) // count
        shards.append(ordered[start:end])
    return shards
