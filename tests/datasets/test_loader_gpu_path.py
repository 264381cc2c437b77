"""The loader's GPU-side options on CPU: persistent workers keep exact epochs, uint8 batches convert like floats."""

from __future__ import annotations

import torch

from m2u.datasets.loader import LoaderConfig, make_loader, to_float_batch


def _epochs(loader, count):
    return [[key for batch in loader for key in batch["key"]] for _ in range(count)]


def test_persistent_workers_give_the_same_epochs_as_fresh_workers(synthetic_dataset):
    common = {"batch_size": 4, "num_workers": 2, "shuffle_buffer": 5}
    fresh = make_loader(synthetic_dataset, "train", LoaderConfig(**common))
    kept = make_loader(synthetic_dataset, "train", LoaderConfig(persistent_workers=True, **common))
    expected, got = _epochs(fresh, 2), _epochs(kept, 2)
    assert got == expected and got[0] != got[1]  # each epoch reached the kept workers
    first = kept._loader
    kept.set_epoch(0)  # resume-style: choose the epoch explicitly, same workers
    assert [key for batch in kept for key in batch["key"]] == expected[0]
    assert kept._loader is first


def test_uint8_batches_convert_to_the_float_batches(synthetic_dataset):
    config = LoaderConfig.for_evaluation(batch_size=3, num_workers=0)
    floats = next(iter(make_loader(synthetic_dataset, "val", config)))
    raw = next(
        iter(
            make_loader(
                synthetic_dataset,
                "val",
                LoaderConfig.for_evaluation(batch_size=3, num_workers=0, as_uint8=True),
            )
        )
    )
    assert raw["masked"].dtype == raw["mask"].dtype == torch.uint8
    converted = to_float_batch(raw, "cpu")
    for name in ("masked", "unmasked", "mask"):
        assert torch.equal(converted[name], floats[name]), name
    assert converted["key"] == floats["key"]
