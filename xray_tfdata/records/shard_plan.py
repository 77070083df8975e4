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


def split_train_val(files: Sequence[S], val_fraction: float, seed: int) -> tuple[list[S], list[S]]:
    """Carves a validation split from train files, stratified by class and deterministic.

    Per class, round(n * val_fraction) files (at least 1 when the fraction is > 0 and the class
    has >= 2 files, so no class is missing from validation) go to val, chosen by stable key.
    Both outputs keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in [0, 1). Received: val_fraction={val_fraction}. "
            "Use e.g. 0.1 to hold out 10% of each training class."
        )
    by_class: dict[str, list[S]] = {}
    for f in files:
        by_class.setdefault(f.class_name, []).append(f)
    val_keys: set[str] = set()
    for members in by_class.values():
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        ranked = sorted(members, key=lambda f: stable_key(seed, f.relpath, "val"))
        val_keys.update(f.relpath for f in ranked[:n_val])
    train = [f for f in files if f.relpath not in val_keys]
    val = [f for f in files if f.relpath in val_keys]
    return train, val


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


@dataclasses.dataclass(frozen=True)
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
