"""Patient ids: a keyed hash instead of the id, groups that never cross splits, overlap checks.

Raw patient ids never leave the labels-CSV reader: each is replaced at once by
HMAC-SHA256(key, "<source>\\0<id>") (hex), so equal ids of two collections stay different
patients. The key is `--patient_key` when given (never written anywhere; the manifest holds a
short fingerprint only, so a rerun with another key is refused) or else derived from `--seed`.
Why a key: a plain hash of a short id (NIH ids are 5 digits) is reversed by hashing every
candidate. With the seed-derived key anyone who reads the manifest's seed can do the same, so the
hash only keeps ids out of casual view; pass a long random --patient_key for records you share.

Groups: images of one patient, joined by exact / near-duplicate links (the same X-ray filed
under two patients) into one unit, so that neither a patient nor a duplicate crosses splits.
numpy/stdlib only (no TensorFlow): runs in the converter's main process before the pass.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
from typing import Iterable, Protocol, Sequence

OVERLAP_MODES: tuple[str, ...] = ("error", "warn")
MAX_EXAMPLES = 5


def derive_key(seed: int, patient_key: str = "") -> bytes:
    """The HMAC key: --patient_key's bytes, else a key derived from --seed."""
    if patient_key:
        return patient_key.encode("utf-8")
    return hashlib.sha256(f"xray_tfdata patient key, seed {seed}".encode("utf-8")).digest()


def key_fingerprint(patient_key: str) -> str:
    """What the manifest records of a --patient_key: enough to tell two keys apart, no more."""
    digest = hashlib.sha256(f"xray_tfdata key check:{patient_key}".encode("utf-8"))
    return "sha256:" + digest.hexdigest()[:12]


def patient_hash(key: bytes, source: str, patient_id: str) -> str:
    """Hex HMAC-SHA256 of one patient id; "" when the id is empty (no patient known)."""
    patient_id = patient_id.strip()
    if not patient_id:
        return ""
    return hmac.new(key, f"{source}\0{patient_id}".encode("utf-8"), hashlib.sha256).hexdigest()


class _File(Protocol):
    relpath: str
    split: str
    patient: str


def overlapping_patients(files: Iterable[_File]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Patients whose images the input puts in two or more splits (folders / CSV split column).

    Returns [(patient hash, [(split, relpath) of one image per split])], sorted by hash. Images
    without a given split are not counted: the converter places them with their patient.
    """
    per_patient: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for f in sorted(files, key=lambda f: f.relpath):
        if f.patient and f.split:
            per_patient[f.patient].setdefault(f.split, f.relpath)
    return [(p, sorted(splits.items())) for p, splits in sorted(per_patient.items())
            if len(splits) > 1]


def overlap_message(overlaps: Sequence[tuple[str, list[tuple[str, str]]]]) -> str:
    """"3 patient(s) appear in more than one split, e.g. ..." naming images, never ids."""
    examples = "; ".join(
        " and ".join(f"{path!r} ({split})" for split, path in splits)
        for _, splits in overlaps[:MAX_EXAMPLES])
    return (f"{len(overlaps)} patient(s) appear in more than one split of the input, e.g. the "
            f"patient of {examples}")


def groups(keys: Sequence[str], patient_of: dict[str, str],
           links: Iterable[Sequence[str]] = ()) -> dict[str, str]:
    """key -> group id (the smallest key of its group) for patients joined by duplicate links.

    Images of one patient form a group; each link (a list of keys: an exact-duplicate group or a
    near pair) joins the groups of its images. An image without a patient is its own group until
    a link joins it. Pure and deterministic: the same input gives the same groups.
    """
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smallest key is the root: stable ids

    first_of_patient: dict[str, str] = {}
    for k in sorted(keys):
        p = patient_of.get(k, "")
        if p:
            union(first_of_patient.setdefault(p, k), k)
    for link in links:
        present = [k for k in link if k in parent]
        for other in present[1:]:
            union(present[0], other)
    return {k: find(k) for k in keys}
