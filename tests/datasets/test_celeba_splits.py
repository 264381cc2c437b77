"""The split plan of the paper's 12,000 CelebA photos: fractions, disjointness, identities (no image processing)."""

from __future__ import annotations

import pytest

from m2u.datasets.layout import DEFAULT_SPLIT_FRACTIONS, SPLITS
from m2u.datasets.plan import plan_samples
from m2u.datasets.sources import discover_inputs

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def celeba_items(celeba_dir):
    return discover_inputs([celeba_dir], identity_pattern="{identity}_{id}.jpg")


def _fractions(plan):
    return {split: sum(s.split == split for s in plan) / len(plan) for split in SPLITS}


def test_sample_split_of_12000_is_within_one_percent(celeba_items):
    assert len(celeba_items) == 12000
    plan = plan_samples(celeba_items, seed=0)
    for split, expected in zip(SPLITS, DEFAULT_SPLIT_FRACTIONS):
        assert abs(_fractions(plan)[split] - expected) <= 0.01, (split, _fractions(plan))
    keys = {split: {p.key for p in plan if p.split == split} for split in SPLITS}
    sources = {split: {p.source for p in plan if p.split == split} for split in SPLITS}
    # no key and no source in two splits
    assert sum(len(v) for v in keys.values()) == len(set().union(*keys.values())) == 12000
    assert sum(len(v) for v in sources.values()) == len(set().union(*sources.values())) == 12000


def test_identity_split_keeps_identities_apart(celeba_items):
    plan = plan_samples(celeba_items, seed=0, split_by="identity")
    assert all(item.identity for item in celeba_items)
    split_of: dict[str, set[str]] = {}
    for sample in plan:
        split_of.setdefault(sample.identity, set()).add(sample.split)
    assert len(split_of) == 2400 and all(len(s) == 1 for s in split_of.values())
    # 2,400 identities of 5 photos: hashing whole identities has a standard deviation of ~0.9 % per split
    for split, expected in zip(SPLITS, DEFAULT_SPLIT_FRACTIONS):
        assert abs(_fractions(plan)[split] - expected) <= 0.02, (split, _fractions(plan))


def test_split_of_a_photo_does_not_depend_on_the_other_photos(celeba_items):
    full = {s.source: s.split for s in plan_samples(celeba_items, seed=0)}
    subset = plan_samples(celeba_items[5000:5600][::-1], seed=0)
    assert all(full[s.source] == s.split for s in subset)
