"""dedupe: dHash bits by hand, exact/near duplicates within and across splits, drop planning."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from xray_tfdata.records import dedupe
from xray_tfdata.records.dedupe import (
    HashedItem,
    find_duplicates,
    hamming,
    perceptual_hash,
    plan_drops,
)

ALL_ONES = (1 << 256) - 1


def _random_hash(rng: np.random.Generator) -> int:
    return int.from_bytes(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), "big")


def _item(key: str, split: str, sha: str = "", phash: int = 0) -> HashedItem:
    return HashedItem(key=key, split=split, sha256=sha or f"sha-{key}", phash=phash)


def test_hamming_hand_values():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, ALL_ONES) == 256
    assert hamming(1 << 255, 1 << 255) == 0


def test_perceptual_hash_bits_by_hand():
    # A 64x64 image is its own thumbnail. A vertical cosine of frequency 1 puts its energy
    # (besides DC) into DCT coefficient (row 1, col 0), far above the median of the AC terms
    # (~0); the same wave upside down makes that coefficient strongly negative.
    y = np.arange(64, dtype=np.float64)
    wave = 100 * np.cos(np.pi * (2 * y + 1) / 128)
    up = np.repeat(128 + wave[:, None], 64, axis=1).round().astype(np.uint8)
    down = np.repeat(128 - wave[:, None], 64, axis=1).round().astype(np.uint8)

    def bit(value: int, row: int, col: int) -> int:
        return (value >> (255 - (row * 16 + col))) & 1

    assert bit(perceptual_hash(up), 0, 0) == 1  # DC: the image is bright on average
    assert bit(perceptual_hash(up), 1, 0) == 1
    assert bit(perceptual_hash(down), 1, 0) == 0
    assert bit(perceptual_hash(up), 0, 1) == 0  # no horizontal variation
    assert perceptual_hash(np.full((64, 64), 9, np.uint8)) >> 255 == 1  # flat: only DC


def test_perceptual_hash_layouts_and_tiny_images():
    assert perceptual_hash(np.full((1, 1), 9, np.uint8)) == 1 << 255  # flat: only DC
    noise = np.random.default_rng(1).integers(0, 256, (64, 72), np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 6)
    assert perceptual_hash(image[..., None]) == perceptual_hash(image)
    assert perceptual_hash(np.repeat(image[..., None], 3, axis=2)) == perceptual_hash(image)
    with pytest.raises(ValueError, match="non-empty"):
        perceptual_hash(np.zeros((0, 4), np.uint8))


def test_perceptual_hash_near_for_reencoded_far_for_different():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (240, 200), np.uint8), (0, 0), 12)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(image, (100, 120), interpolation=cv2.INTER_AREA),
                            [cv2.IMWRITE_JPEG_QUALITY, 70])
    reencoded = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    brighter = np.clip(image.astype(int) + 20, 0, 255).astype(np.uint8)
    other = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 256, (240, 200), np.uint8), (0, 0), 12),
                          None, 0, 255, cv2.NORM_MINMAX)
    base = perceptual_hash(image)
    assert hamming(base, perceptual_hash(reencoded)) <= dedupe.DEFAULT_NEAR_DISTANCE // 2
    assert hamming(base, perceptual_hash(brighter)) <= dedupe.DEFAULT_NEAR_DISTANCE // 2
    assert hamming(base, perceptual_hash(other)) > 2 * dedupe.DEFAULT_NEAR_DISTANCE


def test_find_duplicates_exact_and_near():
    items = [
        _item("train/NORMAL/b.png", "train", "s1", 0b0000),
        _item("test/NORMAL/a.png", "test", "s1", 0b0000),  # exact copy across splits
        _item("train/NORMAL/c.png", "train", "s2", 0b1111),  # 4 bits from the s1 copies
        _item("train/COVID19/d.png", "train", "s3", 0b11111),  # 5 from s1, 1 from c
        _item("train/COVID19/e.png", "train", "s4", ALL_ONES),
        _item("train/COVID19/f.png", "train", "s4", ALL_ONES),  # exact within train
    ]
    result = find_duplicates(items, near_distance=4)
    assert result["exact"] == [
        {"sha256": "s1", "paths": ["test/NORMAL/a.png", "train/NORMAL/b.png"],
         "splits": ["test", "train"], "cross_split": True},
        {"sha256": "s4", "paths": ["train/COVID19/e.png", "train/COVID19/f.png"],
         "splits": ["train", "train"], "cross_split": False},
    ]
    assert result["near"] == [
        {"paths": ["test/NORMAL/a.png", "train/NORMAL/c.png"], "splits": ["test", "train"],
         "distance": 4, "cross_split": True},
        {"paths": ["train/COVID19/d.png", "train/NORMAL/c.png"], "splits": ["train", "train"],
         "distance": 1, "cross_split": False},
        {"paths": ["train/NORMAL/b.png", "train/NORMAL/c.png"], "splits": ["train", "train"],
         "distance": 4, "cross_split": False},
    ]  # d is 5 bits from a and b: outside near_distance=4; e/f exact pair not repeated as near
    assert len(find_duplicates(items, near_distance=5)["near"]) == 5
    assert find_duplicates(items, near_distance=0)["near"] == []
    assert dedupe.summarize(result) == {
        "exact_groups": 2, "exact_files": 4, "exact_cross_split_groups": 1,
        "near_pairs": 3, "near_cross_split_pairs": 1,
    }


def test_find_duplicates_matches_brute_force_and_is_order_independent():
    rng = np.random.default_rng(7)
    centres = [_random_hash(rng) for _ in range(40)]
    items = []
    for i in range(700):  # > one 256-row block, clustered so there are many near pairs
        h = centres[i % 40]
        for bit in rng.choice(256, size=int(rng.integers(0, 4)), replace=False):
            h ^= 1 << int(bit)
        items.append(_item(f"k{i:04d}", ("train", "val", "test")[i % 3], f"s{i % 650}", h))
    result = find_duplicates(items, near_distance=3)
    brute = sorted(
        (a.key, b.key, hamming(a.phash, b.phash))
        for a in items for b in items
        if a.key < b.key and a.sha256 != b.sha256 and hamming(a.phash, b.phash) <= 3
    )
    assert [(*p["paths"], p["distance"]) for p in result["near"]] == brute
    assert len(brute) > 1000
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert find_duplicates(shuffled, near_distance=3) == result


def test_find_duplicates_full_kaggle_scale_finds_planted_pairs():
    rng = np.random.default_rng(11)
    hashes = [_random_hash(rng) for _ in range(6432)]
    items = [_item(f"x{i:05d}", "train" if i % 5 else "test", phash=h)
             for i, h in enumerate(hashes)]
    planted = {(7, 6000): 2, (100, 3210): 0, (6431, 5): 1}
    for (i, j), flips in planted.items():
        items[j] = _item(items[j].key, items[j].split, phash=items[i].phash ^ ((1 << flips) - 1))
    found = {tuple(p["paths"]): p["distance"] for p in find_duplicates(items)["near"]}
    # 256-bit random hashes are > 10 bits apart with overwhelming probability: only the plants.
    expected = {tuple(sorted((f"x{i:05d}", f"x{j:05d}"))): f for (i, j), f in planted.items()}
    assert found == expected


def test_find_duplicates_validates():
    with pytest.raises(ValueError, match="near_distance=-1"):
        find_duplicates([], near_distance=-1)
    with pytest.raises(ValueError, match="'a' twice"):
        find_duplicates([_item("a", "train"), _item("a", "test")])
    with pytest.raises(ValueError, match="256-bit"):
        find_duplicates([_item("a", "train", phash=-1), _item("b", "train")])


def test_plan_drops_keeps_test_then_val_then_first_key():
    items = [
        _item("test/a.png", "test", "s1", 0), _item("train/a.png", "train", "s1", 0),
        _item("val/a.png", "val", "s1", 0),
        _item("train/b1.png", "train", "s2", 0xFFFF << 32),
        _item("train/b2.png", "train", "s2", 0xFFFF << 32),
        _item("val/c.png", "val", "s3", ALL_ONES), _item("train/c.png", "train", "s3", ALL_ONES),
        _item("test/d1.png", "test", "s4", 0xF0F0), _item("test/d2.png", "test", "s4", 0xF0F0),
        _item("train/e.png", "train", "s5", 0xF0F3),  # near (distance 2) to test/d1
        _item("train/lonely.png", "train", "s6", 0x123456789),
    ]
    drops = plan_drops(items, find_duplicates(items, near_distance=4))
    assert drops == {
        "test/d2.png": "exact duplicate of test:test/d1.png",
        "train/a.png": "exact duplicate of test:test/a.png",
        "train/b2.png": "exact duplicate of train:train/b1.png",
        "train/c.png": "exact duplicate of val:val/c.png",
        "train/e.png": "near duplicate (distance 2) of test:test/d1.png",
        "val/a.png": "exact duplicate of test:test/a.png",
    }
    assert list(drops) == sorted(drops)
    exact_only = plan_drops(items, find_duplicates(items), include_near=False)
    assert "train/e.png" not in exact_only and len(exact_only) == 5


def test_plan_drops_near_chain_keeps_item_whose_neighbour_was_dropped():
    items = [_item("a", "test", phash=0), _item("b", "train", phash=0b1111),
             _item("c", "train", phash=0b11111111)]  # a-b 4, b-c 4, a-c 8
    drops = plan_drops(items, find_duplicates(items, near_distance=4))
    assert drops == {"b": "near duplicate (distance 4) of test:a"}


def test_perceptual_hash_separates_real_xrays_from_their_copies(real_sample_dir):
    """The threshold's margin, measured on real chest X-rays (see the module docstring)."""
    from xray_tfdata.records import image_io

    grays = [image_io.read_source(p)[0] for p in sorted(real_sample_dir.glob("*/*"))[:12]]
    hashes = [perceptual_hash(g) for g in grays]
    distinct = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    copies = []
    for gray, h in zip(grays, hashes):
        small = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        copies.append(hamming(h, perceptual_hash(cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE))))
    assert max(copies) < dedupe.DEFAULT_NEAR_DISTANCE < min(distinct)


def test_manifest_lists_at_most_the_closest_near_pairs_and_counts_all(monkeypatch):
    near = [{"paths": [f"train/a{i:03d}", f"{s}/b{i:03d}"], "splits": ["train", s],
             "distance": d, "cross_split": s != "train"}
            for i, (s, d) in enumerate([("train", 1), ("test", 9), ("train", 3), ("test", 2)])]
    monkeypatch.setattr(dedupe, "MAX_NEAR_PAIRS_IN_MANIFEST", 2)
    out = dedupe.manifest_section({"exact": [], "near": near}, {"train/a000": "why"})
    # Cross-split pairs first (closest first), then sorted by path for a stable manifest.
    assert [p["paths"][1] for p in out["near"]] == ["test/b001", "test/b003"]
    assert (out["near_pairs_total"], out["near_cross_split_total"], out["near_pairs_listed"]) == (4, 2, 2)
    assert out["dropped"] == [{"path": "train/a000", "reason": "why"}]


def test_with_splits_equals_finding_duplicates_after_the_split():
    rng = np.random.default_rng(0)
    base = [int(rng.integers(0, 2**63)) << 193 for _ in range(4)]
    items = [HashedItem(f"k{i}", "", f"sha{i % 3}", base[i % 4] ^ (i & 3)) for i in range(12)]
    split_of = {f"k{i}": ("train", "val", "test")[i % 3 if i < 6 else 0] for i in range(12)}
    before = find_duplicates(items, near_distance=4)
    after = find_duplicates([HashedItem(it.key, split_of[it.key], it.sha256, it.phash)
                             for it in items], near_distance=4)
    assert after["exact"] and after["near"] and dedupe.with_splits(before, split_of) == after
