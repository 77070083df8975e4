"""Leakage control: exact (sha256) and near (perceptual hash) duplicates within and across splits.

The Kaggle COVID-19 set is assembled from several public collections and carries repeats, some
of them across train and test. Exact duplicates share the source file's sha256; near duplicates
(the same X-ray re-encoded, resized or re-windowed) have pHashes within `near_distance` bits.

Why a 256-bit DCT hash: chest X-rays all look alike at thumbnail scale. Measured on the real
sample (36 X-rays, 630 pairs, and 108 copies of them halved + JPEG q70, brightened, or shrunk to
80 % + PNG): a 64-bit dHash put distinct patients 3 bits apart while copies reached 5 (useless at
Kaggle scale: tens of thousands of false pairs); this 256-bit pHash keeps distinct X-rays >= 78
bits apart and copies <= 18. The default threshold, 32 bits, sits between with room both sides.
Near pairs come from a multi-index hash search (near_pairs.py): exactly the all-pairs answer
without comparing every pair. numpy + OpenCV only: hashing runs in converter workers.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import cv2
import numpy as np

from xray_tfdata.records import near_pairs

HASH_SIDE = 16  # low-frequency DCT block kept: 16x16 coefficients = 256 bits
_THUMB = 64
HASH_BITS = HASH_SIDE * HASH_SIDE
DEFAULT_NEAR_DISTANCE = 32
# Which copy survives --dedupe=drop: evaluation splits outrank training, so the test (then val)
# copy is kept and the training copy dropped; unknown split names rank last.
_SPLIT_RANK = {"test": 0, "val": 1, "train": 2}


def perceptual_hash(gray: np.ndarray) -> int:
    """256-bit DCT perceptual hash (pHash) of an image, as an int in [0, 2**256).

    The image (HxW, HxWx1 or HxWx3 in RGB order, any size >= 1x1) is reduced to a 64x64 gray
    thumbnail with area averaging; the 16x16 lowest-frequency coefficients of its 2-D DCT are
    compared with their median (the DC term excluded from the median): bit i (row-major, most
    significant first) is set when coefficient i is above it. Robust to re-encoding, resizing,
    brightness and contrast changes, which move coefficients together, not across the median.
    """
    if not isinstance(gray, np.ndarray) or gray.ndim not in (2, 3) or gray.size == 0:
        raise ValueError(
            f"perceptual_hash expects a non-empty HxW or HxWxC image. Received: "
            f"{getattr(gray, 'shape', type(gray).__name__)}."
        )
    if gray.ndim == 3:
        gray = gray[..., 0] if gray.shape[2] == 1 else cv2.cvtColor(
            np.ascontiguousarray(gray[..., :3]), cv2.COLOR_RGB2GRAY
        )
    # Area-average in uint8 first (fast path), then to float for the DCT. No crop: cropping to
    # a size multiple shifts content differently at different source sizes and flips bits.
    thumb = cv2.resize(np.ascontiguousarray(gray), (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(thumb.astype(np.float32))[:HASH_SIDE, :HASH_SIDE].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return int(a ^ b).bit_count()


@dataclasses.dataclass(frozen=True)
class HashedItem:
    """One source file's hashes. `key` is the source path relative to data_dir (unique)."""

    key: str
    split: str
    sha256: str
    phash: int


def _sorted_unique(items: Sequence[HashedItem]) -> list[HashedItem]:
    ordered = sorted(items, key=lambda it: it.key)
    for prev, cur in zip(ordered, ordered[1:]):
        if prev.key == cur.key:
            raise ValueError(
                f"HashedItem keys must be unique (one per source file). Received {cur.key!r} twice."
            )
    return ordered


def find_duplicates(
    items: Sequence[HashedItem], near_distance: int = DEFAULT_NEAR_DISTANCE
) -> dict:
    """Finds exact and near duplicates; the result is sorted, so reruns give identical output.

    Returns:
      {"exact": [{"sha256", "paths", "splits", "cross_split"}, ...] sorted by first path,
       "near": [{"paths": [a, b], "splits": [sa, sb], "distance", "cross_split"}, ...] sorted by
               (a, b), a < b; pairs that are exact duplicates are not repeated here.}
    """
    if not isinstance(near_distance, (int, np.integer)) or not 0 <= near_distance <= HASH_BITS:
        raise ValueError(
            f"near_distance must be an int in [0, {HASH_BITS}] (0 = identical hashes only; "
            f"negative values are not allowed). Received: near_distance={near_distance!r}."
        )
    ordered = _sorted_unique(items)

    by_sha: dict[str, list[HashedItem]] = collections.defaultdict(list)
    for item in ordered:
        by_sha[item.sha256].append(item)
    exact = [
        {
            "sha256": sha,
            "paths": [it.key for it in group],
            "splits": [it.split for it in group],
            "cross_split": len({it.split for it in group}) > 1,
        }
        for sha, group in by_sha.items()
        if len(group) > 1
    ]
    exact.sort(key=lambda g: g["paths"][0])

    near = []
    words = near_pairs.hash_words([it.phash for it in ordered])
    for i, j, dist in near_pairs.close_pairs(words, int(near_distance)):
        a, b = ordered[i], ordered[j]
        if a.sha256 == b.sha256:
            continue
        near.append({
            "paths": [a.key, b.key],
            "splits": [a.split, b.split],
            "distance": dist,
            "cross_split": a.split != b.split,
        })
    return {"exact": exact, "near": near}


def plan_drops(
    items: Sequence[HashedItem], duplicates: dict, *, include_near: bool = True
) -> dict[str, str]:
    """Which sources `--dedupe=drop` removes: {key: reason}.

    Items are visited test first, then val, then train, each in sorted key order; an item is
    kept unless it duplicates (exactly, or nearly when include_near) an item already kept. So the
    train/val copy of anything also in test is dropped, a train copy of a val image is dropped,
    and within one split the first key is kept and later repeats are dropped. The reason names
    the kept copy, e.g. "exact duplicate of test:COVID19/a.png".
    """
    ordered = _sorted_unique(items)
    split_of = {it.key: it.split for it in ordered}
    group_of: dict[str, int] = {}
    for gid, group in enumerate(duplicates.get("exact", [])):
        for key in group["paths"]:
            group_of[key] = gid
    neighbours: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    if include_near:
        for pair in duplicates.get("near", []):
            a, b = pair["paths"]
            neighbours[a].append((b, pair["distance"]))
            neighbours[b].append((a, pair["distance"]))

    visit = sorted(ordered, key=lambda it: (_SPLIT_RANK.get(it.split, len(_SPLIT_RANK)), it.key))
    rank = {it.key: i for i, it in enumerate(visit)}
    kept_of_group: dict[int, str] = {}
    kept: set[str] = set()
    drops: dict[str, str] = {}
    for item in visit:
        gid = group_of.get(item.key)
        if gid is not None and gid in kept_of_group:
            other = kept_of_group[gid]
            drops[item.key] = f"exact duplicate of {split_of[other]}:{other}"
            continue
        close = [(rank[k], k, d) for k, d in neighbours.get(item.key, ()) if k in kept]
        if close:
            _, other, dist = min(close)
            drops[item.key] = f"near duplicate (distance {dist}) of {split_of[other]}:{other}"
            continue
        kept.add(item.key)
        if gid is not None:
            kept_of_group[gid] = item.key
    return dict(sorted(drops.items()))


def with_splits(duplicates: dict, split_of: dict[str, str]) -> dict:
    """`find_duplicates`' result with the splits (and cross_split flags) of `split_of`.

    Lets the converter find duplicates once, before splitting (their links keep patients
    together), instead of a second near-pair search after it. Order is by paths, so unchanged.
    """
    def relabel(group: dict) -> dict:
        splits = [split_of[p] for p in group["paths"]]
        return {**group, "splits": splits, "cross_split": len(set(splits)) > 1}

    return {"exact": [relabel(g) for g in duplicates["exact"]],
            "near": [relabel(p) for p in duplicates["near"]]}


def summarize(duplicates: dict) -> dict[str, int]:
    """Counts for the log line and the manifest summary."""
    exact, near = duplicates.get("exact", []), duplicates.get("near", [])
    return {
        "exact_groups": len(exact),
        "exact_files": sum(len(g["paths"]) for g in exact),
        "exact_cross_split_groups": sum(bool(g["cross_split"]) for g in exact),
        "near_pairs": len(near),
        "near_cross_split_pairs": sum(bool(p["cross_split"]) for p in near),
    }


# Near pairs grow as n^2 on pathological data (a 64-bit hash once listed 856k pairs: a 220 MB
# manifest that every pipeline build had to parse). The manifest keeps the closest pairs, cross-
# split first, and the full counts; --dedupe=drop always acts on all pairs.
MAX_NEAR_PAIRS_IN_MANIFEST = 10_000


def manifest_section(duplicates: dict, drops: dict[str, str]) -> dict:
    """The manifest's "duplicates": all exact groups, the closest near pairs, full counts."""
    near, counts = duplicates["near"], summarize(duplicates)
    kept = sorted(near, key=lambda p: (not p["cross_split"], p["distance"], p["paths"]))
    kept = sorted(kept[:MAX_NEAR_PAIRS_IN_MANIFEST], key=lambda p: p["paths"])
    return {
        "exact": duplicates["exact"],
        "near": kept,
        "near_pairs_total": counts["near_pairs"],
        "near_cross_split_total": counts["near_cross_split_pairs"],
        "near_pairs_listed": len(kept),
        "dropped": [{"path": k, "reason": drops[k]} for k in sorted(drops)],
    }
