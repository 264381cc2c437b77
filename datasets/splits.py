"""Hash-based splits and per-sample seeds.

The split of a sample depends only on (seed, its key) — or (seed, its identity) with ``split_by="identity"`` —
never on the order in which inputs were found or on which other files are present. A SHA-256 of those strings is
read as a number u in [0, 1) and compared with the cumulative split fractions.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Sequence

from m2u.datasets.layout import DEFAULT_SPLIT_FRACTIONS, SPLITS


class SplitBy(enum.StrEnum):
    SAMPLE = "sample"
    IDENTITY = "identity"


def unit_hash(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts (same parts → same number, any machine)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def derive_seed(global_seed: int, key: str) -> int:
    """The random seed of one sample: from (global seed, key), never from worker order. 63-bit, non-negative."""
    digest = hashlib.sha256(f"seed\x1f{global_seed}\x1f{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse "0.7,0.15,0.15" (or a sequence) into train/val/test fractions that sum to 1."""
    if isinstance(text, str):
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"split fractions must be numbers like 0.7,0.15,0.15, got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if len(values) != len(SPLITS):
        raise ValueError(f"expected {len(SPLITS)} split fractions (train,val,test), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"split fractions must be finite numbers, got {values}")
    if any(v < 0 for v in values):
        raise ValueError(f"split fractions must be non-negative, got {values}")
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {values} (sum {total:g})")
    return (values[0], values[1], values[2])


def assign_split(group: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """The split ("train", "val" or "test") of a sample whose split group is ``group`` (its key or identity)."""
    u = unit_hash("split", seed, group)
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return split
    return SPLITS[-1]  # u within rounding of 1.0


def shuffle_rank(seed: int, key: str) -> float:
    """Position of a sample in its split's shard order: a seeded pseudo-random order, independent of discovery."""
    return unit_hash("order", seed, key)
