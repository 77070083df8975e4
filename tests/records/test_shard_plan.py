"""Shard planning is pure and pinned: same inputs + seed -> the same split, variants and shards."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from xray_tfdata.records import shard_plan as sp


@dataclasses.dataclass(frozen=True)
class _File:
    relpath: str
    class_name: str


def _files(counts: dict[str, int], split: str = "train") -> list[_File]:
    return [_File(f"{split}/{c}/{c}{i}.png", c) for c, n in counts.items() for i in range(n)]


def test_stable_key_is_a_pinned_sha256_not_pythons_salted_hash():
    assert sp.stable_key(0, "train/NORMAL/a.png") == (
        "6be710debac1981c9e13a33ad10e61ebd5a8b2fa36ea2632a8cd6fcead7a700f")
    assert sp.stable_key(1, "train/NORMAL/a.png") != sp.stable_key(0, "train/NORMAL/a.png")
    assert sp.stable_key(0, "train/NORMAL/a.png", "val") != sp.stable_key(0, "train/NORMAL/a.png")


def test_golden_shard_plan_for_a_tiny_input():
    examples = [sp.PlannedExample(f"train/{c}/{c}{i}.png", "none", 1000)
                for c in ("NORMAL", "COVID19", "PNEUMONIA") for i in range(3)]
    examples.append(sp.PlannedExample("train/COVID19/COVID190.png", "gamma0.4", 1000))
    shards = sp.plan_shards(examples, num_shards=3, seed=0)
    names = [[(e.relpath.rsplit("/", 1)[1], e.augmentation) for e in shard] for shard in shards]
    assert names == [
        [("NORMAL2.png", "none"), ("COVID192.png", "none"), ("NORMAL1.png", "none")],
        [("NORMAL0.png", "none"), ("PNEUMONIA2.png", "none"), ("COVID190.png", "none")],
        [("COVID190.png", "gamma0.4"), ("PNEUMONIA1.png", "none"), ("PNEUMONIA0.png", "none"),
         ("COVID191.png", "none")],
    ]
    # Input order never matters; the seed does.
    assert sp.plan_shards(list(reversed(examples)), num_shards=3, seed=0) == shards
    assert sp.plan_shards(examples, num_shards=3, seed=1) != shards


def test_shards_are_balanced_and_each_holds_a_class_mix():
    examples = [sp.PlannedExample(f"train/{c}/{c}{i}.png") for c in ("A", "B", "C")
                for i in range(40)]
    shards = sp.plan_shards(examples, num_shards=4, seed=0)
    assert sorted(len(s) for s in shards) == [30, 30, 30, 30]
    for shard in shards:
        classes = Counter(e.relpath.split("/")[1] for e in shard)
        assert set(classes) == {"A", "B", "C"}
    assert sorted(e.relpath for s in shards for e in s) == sorted(e.relpath for e in examples)


@pytest.mark.parametrize(
    "n, total_mb, kwargs, expected",
    [
        (100, 10, dict(num_shards=5), 5),                       # fixed count
        (100, 10, dict(num_shards=500), 100),                   # never more shards than examples
        (100, 250, dict(shard_size_mb=100, min_shards=1), 3),   # ceil(250 / 100)
        (100, 10, dict(shard_size_mb=100, min_shards=8), 8),    # min_shards wins
        (3, 10, dict(shard_size_mb=100, min_shards=8), 3),      # ... but capped by examples
        (0, 0, dict(), 0),
    ],
)
def test_shard_count(n, total_mb, kwargs, expected):
    assert sp.shard_count(n, total_mb << 20, **kwargs) == expected


def test_shard_size_mb_sizes_shards_from_encoded_bytes():
    examples = [sp.PlannedExample(f"train/A/{i}.png", "none", 1 << 20) for i in range(10)]
    assert len(sp.plan_shards(examples, shard_size_mb=2.5, min_shards=1)) == 5  # 10.003 MB / 2.5


def test_carve_is_stratified_deterministic_and_seeded():
    files = _files({"NORMAL": 50, "COVID19": 10, "PNEUMONIA": 3})
    units = {f.relpath: f.class_name for f in files}
    val = sp.carve(units, 0.1, 0, "val")
    assert Counter(units[k] for k in val) == {"NORMAL": 5, "COVID19": 1, "PNEUMONIA": 1}
    assert sp.carve(dict(reversed(units.items())), 0.1, 0, "val") == val  # order-free
    assert sp.carve(units, 0.1, 1, "val") != val
    assert sp.carve(units, 0.1, 0, "test") != val  # each split its own draw
    assert sp.carve(units, 0.0, 0, "val") == set()


def test_select_augmented_limits_sources_per_class_by_stable_key():
    files = _files({"NORMAL": 4, "COVID19": 6})
    chosen = sp.select_augmented(files, {"COVID19": ("gamma0.4", "mean3")}, 0, seed=0)
    assert sorted(chosen) == [f.relpath for f in files if f.class_name == "COVID19"]
    assert set(chosen.values()) == {("gamma0.4", "mean3")}
    limited = sp.select_augmented(files, {"COVID19": ("mean3",)}, 2, seed=0)
    assert len(limited) == 2 and set(limited) <= set(chosen)
    assert limited == sp.select_augmented(list(reversed(files)), {"COVID19": ("mean3",)}, 2, 0)
    with pytest.raises(ValueError, match="augment_max_source must be >= 0"):
        sp.select_augmented(files, {}, -1, 0)
