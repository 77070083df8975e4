"""near_pairs: the multi-index search returns exactly the all-pairs answer, for every plan and distance."""

from __future__ import annotations

import numpy as np
import pytest

from xray_tfdata.records import near_pairs


def _reference(words: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All pairs by a different route: unpacked bits and a matrix product (small n only)."""
    bits = np.unpackbits(words.astype(">u8").view(np.uint8), axis=1).astype(np.float32)
    dist = (bits @ (1 - bits).T + (1 - bits) @ bits.T).round().astype(int)
    i, j = np.nonzero(np.triu(dist <= max_distance, k=1))
    return list(zip(i.tolist(), j.tolist(), dist[i, j].tolist()))


def _flip(rng: np.random.Generator, row: np.ndarray, flips: int) -> np.ndarray:
    bits = np.unpackbits(row.astype(">u8").view(np.uint8))
    bits[rng.choice(256, size=flips, replace=False)] ^= 1
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _random_with_plants(n: int, seed: int) -> np.ndarray:
    """Random hashes; 10 % of them replaced by copies of others with 0..40 bits flipped."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 63, (n, 4), dtype=np.uint64) << np.uint64(1)
    words |= rng.integers(0, 2, (n, 4), dtype=np.uint64)
    for _ in range(n // 10):
        src, dst = rng.integers(0, n, 2)
        words[dst] = _flip(rng, words[src], int(rng.integers(0, 41)))
    return words


def _clustered(n: int, seed: int) -> np.ndarray:
    """Many images sharing a few base hashes with a few flipped bits (groups of 1 to 30)."""
    rng = np.random.default_rng(seed)
    words = np.empty((n, 4), np.uint64)
    i = 0
    while i < n:
        base = rng.integers(0, 1 << 63, 4, dtype=np.uint64) << np.uint64(1)
        for _ in range(min(n - i, int(rng.integers(1, 31)))):
            words[i] = _flip(rng, base, int(rng.integers(0, 12)))
            i += 1
    return words[rng.permutation(n)]


@pytest.mark.parametrize("max_distance", [0, 3, 12, 32, 50, 256])
def test_close_pairs_equals_all_pairs_on_random_and_planted(max_distance):
    # All pairs at 256 bits: fewer hashes, or the 4.5M-tuple answer dominates the test time.
    words = _random_with_plants(3000 if max_distance < 256 else 800, seed=max_distance)
    expected = _reference(words, max_distance)
    assert near_pairs.close_pairs(words, max_distance) == expected
    if max_distance <= 32:  # the plants are found, not just an empty answer
        assert len(expected) >= (3 if max_distance < 12 else 80)
    if max_distance == 256:
        assert len(expected) == 800 * 799 // 2


@pytest.mark.parametrize("max_distance", [0, 1, 8, 20, 32])
def test_every_index_plan_is_exact(max_distance):
    # Not only the plan the cost model picks: each (chunks, bits, radius) plan must be exact.
    words = np.concatenate([_random_with_plants(1500, seed=1), _clustered(1500, seed=2)])
    expected = _reference(words, max_distance)
    permuted = near_pairs.permuted_bytes(words)
    plans = near_pairs._plans(len(words), max_distance)
    assert plans
    for plan in plans:
        i, j, d = near_pairs.index_search(words, permuted, max_distance, *plan)
        order = np.lexsort((j, i))
        got = list(zip(i[order].tolist(), j[order].tolist(), d[order].tolist()))
        assert got == expected, plan


def test_clustered_hashes_match():
    words = _clustered(4000, seed=5)
    expected = _reference(words, 32)
    assert len(expected) > 20_000  # dense groups: many true pairs
    assert near_pairs.close_pairs(words, 32) == expected


def test_random_hashes_at_the_default_distance_use_the_index():
    words = _random_with_plants(20_000, seed=9)
    assert near_pairs.choose_plan(near_pairs.permuted_bytes(words), 32) is not None
    assert near_pairs.choose_plan(near_pairs.permuted_bytes(words), 120) is None  # all pairs


def test_hash_words_layout_and_range():
    words = near_pairs.hash_words([1, (1 << 255) | 2])
    assert words.dtype == np.uint64 and words.shape == (2, 4)
    assert words[0].tolist() == [0, 0, 0, 1]
    assert words[1].tolist() == [1 << 63, 0, 0, 2]
    with pytest.raises(ValueError, match="256-bit"):
        near_pairs.hash_words([0, 1 << 256])
    with pytest.raises(ValueError, match="-1"):
        near_pairs.hash_words([-1])
    assert near_pairs.close_pairs(near_pairs.hash_words([5]), 3) == []
