"""Why the loader splits shards among ranks and workers itself instead of with webdataset's split_by_node /
split_by_worker: theirs only split the shard list, so with fewer shards than ranks x workers some workers get
nothing and ranks run different numbers of steps; ours cuts a dataset folder's samples into even runs among the
ranks (shards cut between two where needed), and a rank's workers take turns at its batches, so every worker of every
rank gets its share."""

from __future__ import annotations

from collections import Counter

import webdataset

from m2u.datasets import loader as loader_module
from m2u.datasets.loader import LoaderConfig, make_loader

RANKS, WORKERS = 2, 2


def _webdataset_shards(monkeypatch, shards: list[str], rank: int, worker: int) -> list[str]:
    info = (rank, RANKS, worker, WORKERS)
    monkeypatch.setattr(webdataset.utils, "pytorch_worker_info", lambda group=None: info)
    return list(webdataset.split_by_worker(webdataset.split_by_node(shards)))


def _our_keys(monkeypatch, dataset, rank: int, worker: int) -> list[str]:
    class Info:
        id, num_workers = worker, WORKERS

    monkeypatch.setattr(loader_module, "get_worker_info", lambda: Info)
    config = LoaderConfig.for_evaluation(batch_size=1, num_workers=0, rank=rank, world_size=RANKS)
    loaded = make_loader(dataset, "val", config)
    return [key for batch in loaded.dataset for key in batch["key"]]


def test_with_fewer_shards_than_workers_webdataset_starves_workers_and_ours_does_not(
    synthetic_dataset, monkeypatch
):
    shards = make_loader(synthetic_dataset, "val", LoaderConfig.for_evaluation()).dataset.shards
    assert 1 < len(shards) < RANKS * WORKERS  # the case at hand: 40 samples, 15 % val, shards of 4
    theirs = {
        (r, w): _webdataset_shards(monkeypatch, shards, r, w) for r in range(RANKS) for w in range(WORKERS)
    }
    assert [] in theirs.values()  # a worker with no shard at all

    ours = {
        (r, w): _our_keys(monkeypatch, synthetic_dataset, r, w) for r in range(RANKS) for w in range(WORKERS)
    }
    by_rank = [ours[(r, 0)] + ours[(r, 1)] for r in range(RANKS)]
    assert all(by_rank)  # every rank has samples
    counts = Counter(key for keys in ours.values() for key in keys)
    assert set(counts.values()) == {1}  # and every sample is read exactly once
    # A rank's workers take turns at its batches (of one sample here): neither holds more than one extra.
    assert all(abs(len(ours[(r, 0)]) - len(ours[(r, 1)])) <= 1 for r in range(RANKS))
