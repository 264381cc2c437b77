"""Planning: which sample goes to which split and shard, decided before any image is processed.

Every planned sample (one per input file and mask variant) gets a key, a split (hash of the key or identity),
a seed (hash of the global seed and key) and a shard. Within a split, samples are ordered by a seeded hash of
their key and cut into shards of ``shard_size`` planned samples; a shard's content therefore depends only on
the inputs and arguments, which is what makes resumed and uninterrupted runs byte-identical. Samples that fail
later (no face, unreadable file) keep their slot and are simply absent from the tar.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from m2u.core.errors import SettingError
from m2u.datasets.layout import (
    DEFAULT_SPLIT_FRACTIONS,
    MAX_KEY_LENGTH,
    SPLITS,
    shard_relpath,
    shard_stats_relpath,
    validate_key,
)
from m2u.datasets.splits import SplitBy, assign_split, derive_seed, shuffle_rank

DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class InputItem:
    """One discovered input file."""

    base_key: str  # the sample key of variant 0 (see variant_key)
    source: str  # path or URL as it will be recorded in the manifest
    identity: str = ""  # "" when unknown
    # The key the input's own name gives (m2u.datasets.sources.split_key) before a hash is appended where names
    # collide ("" = base_key). Splits and seeds read it, so neither changes when another file that collides
    # with this one is added ("photo.png" beside "photo.jpg"): only the recorded key does.
    name_key: str = ""
    # The split key of an earlier input (by source path) with the same bytes ("" = none): the same photo under
    # two names goes to one split, so no test photo is also a training photo. Its seed stays its own.
    same_as: str = ""
    # That input's identity: under an identity split the copy goes with it too (the same bytes are one person,
    # whatever identity a list gives the copy); "" = none.
    same_identity_as: str = ""

    @property
    def stable_key(self) -> str:
        return self.name_key or self.base_key


@dataclass(frozen=True)
class PlannedSample:
    key: str
    base_key: str
    source: str
    identity: str
    variant: int
    split: str
    seed: int
    shard_index: int

    @property
    def shard_id(self) -> tuple[str, int]:
        return (self.split, self.shard_index)


def variant_key(base_key: str, variant: int, variants: int) -> str:
    """With one variant the key is the input's key; with K > 1 each masked version gets ``<key>-m<k>``. A key
    that the suffix would take past MAX_KEY_LENGTH is shortened first, with a hash of the whole key so that
    shortened keys stay distinct (a 94-character file name with two variants used to abort every build)."""
    if variants == 1:
        return base_key
    suffix = f"-m{variant}"
    if len(base_key) + len(suffix) <= MAX_KEY_LENGTH:
        return f"{base_key}{suffix}"
    digest = hashlib.sha1(base_key.encode("utf-8")).hexdigest()[:12]
    head = base_key[: MAX_KEY_LENGTH - len(suffix) - len(digest) - 1].rstrip("_-")
    return f"{head}-{digest}{suffix}"


def _check_inputs(items: Sequence[InputItem], split_by: SplitBy) -> None:
    """Every key valid and used once; with split_by identity, every input has one."""
    seen: dict[str, str] = {}
    missing_identity = []
    for item in items:
        validate_key(item.base_key)
        if item.base_key in seen:
            raise ValueError(
                f"two inputs map to the same sample key {item.base_key!r}: {seen[item.base_key]} and "
                f"{item.source}; rename one of them or pass the folders separately"
            )
        seen[item.base_key] = item.source
        if split_by is SplitBy.IDENTITY and not item.identity:
            missing_identity.append(item.source)
    if missing_identity:
        raise SettingError(
            "split_by",
            f"identity: {len(missing_identity)} input(s) have no identity, e.g. {missing_identity[0]}; "
            "give them in `identity_file` (a line '<file name> <identity>' per input, the identity its last field) "
            "or by `identity_pattern`, matching every input",
        )


def plan_samples(
    items: Sequence[InputItem],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_by: SplitBy | str = SplitBy.SAMPLE,
    variants: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> list[PlannedSample]:
    """Plan every sample; the result is sorted by (split order, shard, position in shard)."""
    split_by = SplitBy(split_by)
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    _check_inputs(items, split_by)
    per_split: dict[str, list[tuple[float, str, InputItem, int]]] = {split: [] for split in SPLITS}
    keys: dict[str, str] = {}
    people = _identities_joined_by_shared_photos(items) if split_by is SplitBy.IDENTITY else {}
    for item in items:
        # Variants of one input share its split, so no face leaks between splits.
        if split_by is SplitBy.IDENTITY:
            group = people.get(item.identity, item.identity)
        else:
            group = item.same_as or item.stable_key
        split = assign_split(group, seed, fractions)
        for variant in range(variants):
            key = validate_key(variant_key(item.base_key, variant, variants))
            if keys.setdefault(key, item.source) != item.source:
                raise ValueError(
                    f"two inputs map to the same sample key {key!r}: {keys[key]} and {item.source}; "
                    "rename one of them"
                )
            # Ranked by the input's key so an input's variants sit side by side (mostly in one shard).
            per_split[split].append((shuffle_rank(seed, item.base_key), key, item, variant))

    plan: list[PlannedSample] = []
    for split in SPLITS:
        ordered = sorted(per_split[split], key=lambda entry: (entry[0], entry[1]))
        for position, (_, key, item, variant) in enumerate(ordered):
            plan.append(
                PlannedSample(
                    key=key,
                    base_key=item.base_key,
                    source=item.source,
                    identity=item.identity,
                    variant=variant,
                    split=split,
                    seed=derive_seed(seed, variant_key(item.stable_key, variant, variants)),
                    shard_index=position // shard_size,
                )
            )
    return plan


def _identities_joined_by_shared_photos(items: Sequence[InputItem]) -> dict[str, str]:
    """Each identity's split group under an identity split: identities that share a photo (the same bytes under
    two identities, `InputItem.same_identity_as`) are one group, named by its first identity in sorted order, so
    neither the photo nor any identity lands in two splits (a copy that only followed the other file's split left
    the rest of its own identity elsewhere). Identities sharing nothing keep their own name, so their splits are
    as before."""
    parent: dict[str, str] = {}

    def root(identity: str) -> str:
        while parent.get(identity, identity) != identity:
            identity = parent[identity]
        return identity

    for item in items:
        if item.same_identity_as and item.same_identity_as != item.identity:
            first, second = sorted((root(item.identity), root(item.same_identity_as)))
            if first != second:
                parent[second] = first
    return {identity: root(identity) for identity in parent}


def group_by_shard(plan: Sequence[PlannedSample]) -> dict[tuple[str, int], list[PlannedSample]]:
    """Planned samples per (split, shard index), in plan order."""
    shards: dict[tuple[str, int], list[PlannedSample]] = {}
    for sample in plan:
        shards.setdefault(sample.shard_id, []).append(sample)
    return shards


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: the planned samples of one shard, in plan order."""

    split: str
    index: int
    samples: tuple[PlannedSample, ...]

    @property
    def shard_id(self) -> tuple[str, int]:
        return (self.split, self.index)

    @property
    def relpath(self) -> str:
        return shard_relpath(self.split, self.index)

    @property
    def stats_relpath(self) -> str:
        return shard_stats_relpath(self.split, self.index)

    def sort_key(self) -> tuple[int, int]:
        return (SPLITS.index(self.split), self.index)


@dataclass(frozen=True)
class ShardOutput:
    """What a shard task returns: the manifest rows in plan order, the written tar's size and SHA-256 (None when
    no sample was written), and timings."""

    split: str
    index: int
    rows: list[dict[str, Any]]
    bytes: int | None
    sha256: str | None
    process_s: float
    write_s: float
    worker: str  # host:pid that ran it
    # A part of a shard (build_shard(..., part=(i, n))): its member bytes are in part_file (None when it wrote no
    # sample) until m2u.datasets.distributors joins the n parts into the shard.
    part: int = 0
    parts: int = 1
    part_file: str | None = None
    # The mask engine that drew its samples (m2u.masking.render.RENDER_VERSION of the worker; None: the synthetic
    # engine): committed with the shard, so no build mixes engines (a Ray node or a partition with another m2u).
    render_version: int | None = None
