"""All pairs of 256-bit hashes within a Hamming distance, without comparing every pair.

Multi-index hashing (Norouzi et al., generalised pigeonhole): cut the bits into m chunks and
give each chunk a radius r; if m * (r + 1) > d, two hashes within d bits are within r bits on
at least one chunk (were every chunk r + 1 or more apart, the total would be m * (r + 1) > d).
So each chunk's values go into a direct-address table (counting sort: 2**b slots for b-bit
chunks, b <= 24), every hash probes the buckets of its chunk value xor each mask of <= r bits,
and only the hashes found there (candidates) are compared in full. The answer is exactly the
all-pairs answer; only the work differs. Which (m, r) is cheapest depends on d and on how the
hashes cluster, so the candidate count of each plan is measured on a sample of probes and
compared with the all-pairs cost; at large d (or hashes so alike that chunks do not filter),
the vectorised all-pairs search in blocks is the fallback.

A fixed permutation of the bits spreads the pHash's biased low-frequency bits over the chunks
(a chunk of always-similar bits filters nothing). Memory per hash: 36 bytes of permuted bits,
plus, for the chunk being searched, its key, its row order and a 32-byte copy of the words in
key order; then the table (about 5 * 2**b bytes) and a bounded batch of candidates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

HASH_BYTES = 32
BITS = 8 * HASH_BYTES
_MAX_TABLE_BITS = 24  # a 2**24-slot int32 table: 64 MB
_BATCH = 1 << 19  # candidates verified at once: about 40 MB of temporaries, whatever n
_SAMPLE = 2048  # hashes whose probes estimate a plan's candidate count
# Costs per probe, per candidate (either direction) and per all-pairs comparison, in 10 ns:
# fitted to 50k random hashes at d=32 (plans (11, 20, 2): 4.2 s, (17, 15, 1): 6.0 s; all pairs
# 46 s) on this 2-core machine; only their ratios matter.
_PROBE_COST, _CANDIDATE_COST, _PAIR_COST = 2.3, 27.0, 3.7
_PERMUTATION = np.random.default_rng(256).permutation(BITS)


def hash_words(hashes: list[int]) -> np.ndarray:
    """(n, 4) uint64, big-endian words of each 256-bit hash. Raises ValueError outside [0, 2**256)."""
    try:
        raw = b"".join(h.to_bytes(HASH_BYTES, "big") for h in hashes)
    except OverflowError:
        bad = next(h for h in hashes if not 0 <= h < 1 << BITS)
        raise ValueError(f"phash must be a {BITS}-bit unsigned int. Received: {bad!r}.") from None
    return np.frombuffer(raw, dtype=">u8").reshape(len(hashes), BITS // 64).astype(np.uint64)


def close_pairs(words: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= max_distance, in (i, j) order."""
    n = len(words)
    if n < 2:
        return []
    permuted = permuted_bytes(words)
    plan = choose_plan(permuted, max_distance)
    i, j, d = (brute_force(words, max_distance) if plan is None
               else index_search(words, permuted, max_distance, *plan))
    order = np.lexsort((j, i))
    return list(zip(i[order].tolist(), j[order].tolist(), d[order].tolist()))


def _popcount_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between rows of two (k, 4) uint64 arrays, as uint16."""
    dist = np.bitwise_count(a[:, 0] ^ b[:, 0]).astype(np.uint16)
    for w in range(1, a.shape[1]):
        dist += np.bitwise_count(a[:, w] ^ b[:, w])
    return dist


def brute_force(words: np.ndarray, max_distance: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair compared, in row blocks (bounded memory); returns i < j, distance arrays."""
    n = len(words)
    rows = max(1, _BATCH // n)
    out_i, out_j, out_d = [], [], []
    for start in range(0, n - 1, rows):
        block = words[start:start + rows]
        dist = np.bitwise_count(block[:, None, 0] ^ words[None, start:, 0]).astype(np.uint16)
        for w in range(1, words.shape[1]):
            dist += np.bitwise_count(block[:, None, w] ^ words[None, start:, w])
        r, c = np.nonzero(dist <= max_distance)
        keep = c > r  # the strict upper triangle
        r, c = r[keep], c[keep]
        out_i.append(r + start)
        out_j.append(c + start)
        out_d.append(dist[r, c])
    return _joined(out_i, out_j, out_d)


def _joined(out_i: list, out_j: list, out_d: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint16)
    return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64),
            np.concatenate(out_d))


def permuted_bytes(words: np.ndarray) -> np.ndarray:
    """(n, 36) uint8: each hash's bits in the fixed permuted order, then 4 zero bytes of padding."""
    n = len(words)
    out = np.zeros((n, HASH_BYTES + 4), np.uint8)
    for start in range(0, n, 1 << 14):  # unpacked bits in blocks: 256 bytes per hash at a time
        bits = np.unpackbits(words[start:start + (1 << 14)].astype(">u8").view(np.uint8), axis=1)
        out[start:start + len(bits), :HASH_BYTES] = np.packbits(bits[:, _PERMUTATION], axis=1)
    return out


def chunk_key(permuted: np.ndarray, first_bit: int, bits: int) -> np.ndarray:
    """(n,) uint32: permuted bits first_bit .. first_bit + bits - 1 (bits <= 24) of each hash."""
    byte = first_bit // 8
    window = permuted[:, byte:byte + 4].astype(np.uint32)
    word = (window[:, 0] << 24) | (window[:, 1] << 16) | (window[:, 2] << 8) | window[:, 3]
    return (word >> np.uint32(32 - first_bit % 8 - bits)) & np.uint32((1 << bits) - 1)


def _masks(bits: int, radius: int) -> np.ndarray:
    """Every xor mask of at most `radius` set bits among `bits`, as uint32."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), r)]
    return np.array(masks, np.uint32)


def _plans(n: int, max_distance: int) -> list[tuple[int, int, int]]:
    """(chunks, bits per chunk, radius) satisfying the pigeonhole bound chunks * (radius + 1) > d.

    The chunks need not cover all 256 bits (two hashes within d bits are within d on any
    subset), so a chunk is at most log2(n) + 4 bits: about one slot in 16 occupied, so most
    probes stop at the occupancy byte and few candidates are compared, while the table stays
    ~16n slots (more bits would add table memory and cache misses for little).
    """
    cap = int(min(_MAX_TABLE_BITS, max(8, math.ceil(math.log2(n)) + 4)))
    plans = []
    for radius in range(3):
        chunks = max_distance // (radius + 1) + 1
        bits = min(cap, BITS // chunks)
        if bits >= 4:
            plans.append((chunks, bits, radius))
    return plans


def _table(keys: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Counting sort of one chunk: (hash indices ordered by key, start offset of each key)."""
    order = np.argsort(keys, kind="stable").astype(np.int32)
    starts = np.zeros((1 << bits) + 1, np.int32)
    np.cumsum(np.bincount(keys, minlength=1 << bits), out=starts[1:])
    return order, starts


def choose_plan(permuted: np.ndarray, max_distance: int) -> tuple[int, int, int] | None:
    """The cheapest (chunks, bits, radius) by a sampled candidate count, or None for all pairs."""
    n = len(permuted)
    best, best_cost = None, _PAIR_COST * n * (n - 1) / 2
    sample = np.random.default_rng(0).choice(n, size=min(n, _SAMPLE), replace=False)
    for chunks, bits, radius in _plans(n, max_distance):
        masks = _masks(bits, radius)
        candidates = 0.0
        for c in range(chunks):
            keys = chunk_key(permuted, c * bits, bits)
            counts = np.bincount(keys, minlength=1 << bits)
            candidates += float(counts[keys[sample][:, None] ^ masks[None, :]].sum())
            if _CANDIDATE_COST * candidates * n / len(sample) > best_cost:
                break  # already dearer than the best so far
        cost = (_PROBE_COST * n * chunks * len(masks)
                + _CANDIDATE_COST * candidates * n / len(sample))
        if cost < best_cost:
            best, best_cost = (chunks, bits, radius), cost
    return best


def index_search(words: np.ndarray, permuted: np.ndarray, max_distance: int, chunks: int,
                 bits: int, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within max_distance via `chunks` tables of `bits` probed within `radius` bits."""
    n = len(words)
    masks = _masks(bits, radius)
    found: list[tuple[np.ndarray, ...]] = []
    for c in range(chunks):
        keys = chunk_key(permuted, c * bits, bits)
        order, starts = _table(keys, bits)
        # Probing in key order: for one mask, key ^ mask walks the table almost sequentially,
        # so a byte per slot (most probes find an empty one) stays cheap (4x, measured).
        sorted_keys, sorted_words = keys[order], words[order]
        occupied = starts[1:] > starts[:-1]
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        size = 0
        for m, mask in enumerate(masks):
            probe = sorted_keys ^ mask
            query = np.flatnonzero(occupied[probe]).astype(np.int32)
            slot = probe[query]
            pending.append((query, starts[slot], starts[slot + 1]))
            size += int((pending[-1][2] - pending[-1][1]).sum())
            if size >= _BATCH or m == len(masks) - 1:
                query, lo, hi = (np.concatenate(parts) for parts in zip(*pending))
                for part in _batches(hi - lo):
                    i, j, d = _verify(sorted_words, query[part], lo[part], hi[part], max_distance)
                    found.append((order[i], order[j], d))
                pending, size = [], 0
    i, j, d = _joined(*(list(parts) for parts in zip(*found))) if found else _joined([], [], [])
    i, j = np.minimum(i, j), np.maximum(i, j)
    # A pair close on several chunks (or through several masks) is found more than once.
    _, first = np.unique(i * n + j, return_index=True)
    return i[first], j[first], d[first]


def _batches(counts: np.ndarray) -> list[slice]:
    """Consecutive probe ranges holding about _BATCH candidates each (one huge bucket alone)."""
    ends = np.cumsum(counts, dtype=np.int64)
    cuts = np.searchsorted(ends, np.arange(_BATCH, int(ends[-1]) if len(ends) else 0, _BATCH),
                           side="right") if len(ends) else np.zeros(0, np.int64)
    edges = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _verify(words: np.ndarray, query: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            max_distance: int) -> tuple[np.ndarray, ...]:
    """Expands probes (query row, table rows lo:hi) into candidate pairs (positions in `words`,
    each pair once: a < b) and keeps those within max_distance."""
    counts = hi - lo
    total = int(counts.sum())
    ends = np.cumsum(counts)
    j = np.arange(total, dtype=np.int32) + np.repeat(lo - (ends - counts), counts)
    i = np.repeat(query, counts)
    keep = j > i  # both directions are probed (a mask is its own inverse): keep one
    i, j = i[keep], j[keep]
    dist = _popcount_rows(words[i], words[j])
    close = dist <= max_distance
    return i[close], j[close], dist[close]
