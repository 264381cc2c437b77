"""The loader's faster paths (issue 28) read exactly what the plain ones read: simplejpeg decodes the same pixels as
OpenCV, the local tar reader yields the samples webdataset yields, and the batches equal a plain decode."""

from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest
import torch

from m2u.datasets import codecs
from m2u.datasets.layout import split_shards
from m2u.datasets.loader import LoaderConfig, make_loader
from m2u.datasets.splits import unit_hash
from m2u.datasets.synthetic import write_synthetic_dataset
from m2u.datasets.tarread import iter_raw_samples, plain_tar_members


def _webdataset_samples(url: str) -> list[dict]:
    from webdataset.tariterators import tarfile_samples

    return list(tarfile_samples([{"url": url}]))


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("jpg")
    write_synthetic_dataset(out, 24, size=64, shard_size=8, image_format="jpg")
    return out


def test_jpeg_decoder_gives_opencvs_pixels(jpeg_dataset):
    if codecs.simplejpeg is None:
        pytest.skip("simplejpeg not installed")
    buffer = np.empty((64, 64, 3), np.uint8)
    shard = str(split_shards(jpeg_dataset, "train")[0])
    for sample in iter_raw_samples([shard]):
        data = sample["masked.jpg"]
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(codecs.decode_image(data, rgb=False, buffer=buffer), reference)
        assert np.array_equal(codecs.decode_image(data), reference[:, :, ::-1])
    # A damaged JPEG is refused with a reason, by its header check or by OpenCV.
    with pytest.raises(ValueError, match="could not decode|not a readable image"):
        codecs.decode_image(b"\xff\xd8" + b"\x00" * 64)


def test_local_tar_reader_yields_what_webdataset_yields(jpeg_dataset):
    for shard in split_shards(jpeg_dataset, "train"):
        assert plain_tar_members(str(shard)) is not None  # m2u's own shards take the fast path
        assert list(iter_raw_samples([str(shard)])) == _webdataset_samples(str(shard))


def test_tar_with_long_names_or_pax_headers_falls_back_to_webdataset(tmp_path):
    path = tmp_path / "odd.tar"
    long_key = "k" * 120  # longer than a ustar name field: GNU long-name member
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in ((f"{long_key}.txt", b"a"), (f"{long_key}.JSON", b"{}"), ("b.txt", b"b")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert plain_tar_members(str(path)) is None
    samples = list(iter_raw_samples([str(path)]))
    assert samples == _webdataset_samples(str(path))
    assert samples[0]["__key__"] == long_key and set(samples[0]) >= {"txt", "json"}


def test_duplicate_member_is_an_error_as_in_webdataset(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("a.txt", "a.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="duplicate"):
        list(iter_raw_samples([str(path)]))


def test_batches_equal_a_plain_decode_with_flips(jpeg_dataset):
    """Every batch row is the OpenCV decode of its sample, RGB channel-first, flipped where (seed, epoch, key)
    says; the mask is the PNG above 127."""
    config = LoaderConfig(batch_size=5, num_workers=0, shuffle_buffer=7, hflip_prob=0.5, seed=3)
    dataset = make_loader(jpeg_dataset, "train", config).dataset
    raw = {s["__key__"]: s for s in iter_raw_samples([str(p) for p in split_shards(jpeg_dataset, "train")])}
    rows, flips = 0, 0
    for batch in dataset:
        assert batch["masked"].is_contiguous() and batch["masked"].dtype == torch.uint8
        for row, key in enumerate(batch["key"]):
            flip = unit_hash("hflip", 3, dataset.epoch, key) < 0.5
            for field, member in (("masked", "masked.jpg"), ("unmasked", "unmasked.jpg")):
                image = cv2.imdecode(np.frombuffer(raw[key][member], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                image = image[:, ::-1] if flip else image
                assert np.array_equal(batch[field][row].numpy(), image.transpose(2, 0, 1))
            mask = cv2.imdecode(np.frombuffer(raw[key]["mask.png"], np.uint8), cv2.IMREAD_GRAYSCALE) > 127
            assert np.array_equal(batch["mask"][row, 0].numpy(), mask[:, ::-1] if flip else mask)
            rows, flips = rows + 1, flips + flip
    assert rows == len(raw) and 0 < flips < rows


def test_members_not_asked_for_are_not_decoded(jpeg_dataset, monkeypatch):
    from m2u.datasets import loader as loader_module

    decoded: list[int] = []
    real = loader_module.decode_image

    def counting(data, rgb=True, buffer=None):
        decoded.append(len(data))
        return real(data, rgb, buffer)

    monkeypatch.setattr(loader_module, "decode_image", counting)
    both = LoaderConfig(batch_size=4, num_workers=0, shuffle_buffer=0, hflip_prob=0.0)
    full = list(make_loader(jpeg_dataset, "train", both))
    n_full = len(decoded)
    decoded.clear()
    only = LoaderConfig(
        batch_size=4, num_workers=0, shuffle_buffer=0, hflip_prob=0.0, members=("masked", "mask")
    )
    part = list(make_loader(jpeg_dataset, "train", only))
    assert len(decoded) * 2 == n_full  # one image member per sample instead of two
    for a, b in zip(full, part, strict=True):
        assert set(b) == {"masked", "mask", "key"} and a["key"] == b["key"]
        assert torch.equal(a["masked"], b["masked"]) and torch.equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="members"):
        LoaderConfig(members=("masked", "depth"))


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_member_size_read_without_pillow_is_pillows_and_capped(fmt, monkeypatch):
    import m2u.core.imageio as imageio
    from m2u.datasets.layout import MAX_IMAGE_SIZE

    if fmt == "jpg" and codecs.simplejpeg is None:
        pytest.skip("simplejpeg not installed")
    from PIL import Image

    small = cv2.imencode(f".{fmt}", np.zeros((30, 50, 3), np.uint8))[1].tobytes()
    assert codecs._declared_size(small) == Image.open(io.BytesIO(small)).size == (50, 30)
    big = cv2.imencode(f".{fmt}", np.zeros((8, MAX_IMAGE_SIZE + 1), np.uint8))[1].tobytes()
    calls = []
    monkeypatch.setattr(imageio, "header_problem", lambda *a: calls.append(a) or "")
    with pytest.raises(ValueError, match="exceeds the limit"):
        codecs.decode_image(big)
    assert codecs.decode_image(small).shape == (30, 50, 3) and not calls  # Pillow was not needed
    # A damaged header goes to Pillow's reading, which says why.
    with pytest.raises(ValueError):
        codecs.decode_image(small[:2] + b"\x00" * 40)
    assert calls


def test_buffer_ring_reuses_a_released_slot_and_never_waits():
    from m2u.datasets.batches import BufferRing

    ring = BufferRing.create(workers=2, slots=2)
    shapes = {"masked": (2, 3, 4, 4), "mask": (2, 1, 4, 4)}
    first_slot, first = ring.acquire(1, shapes)
    second_slot, second = ring.acquire(1, shapes)
    assert first_slot != second_slot and first["masked"].data_ptr() != second["masked"].data_ptr()
    assert ring.acquire(1, shapes) is None  # every slot out: the caller allocates a batch of its own
    assert ring.acquire(0, shapes) is not None  # another worker's slots are its own
    ring.release(1, first_slot)
    again_slot, again = ring.acquire(1, shapes)
    assert again_slot == first_slot and again["masked"].data_ptr() == first["masked"].data_ptr()
    ring.release(1, again_slot)
    bigger = {"masked": (2, 3, 8, 8), "mask": (2, 1, 8, 8)}
    _, resized = ring.acquire(1, bigger)  # another image size: the slot's tensors are made again
    assert tuple(resized["masked"].shape) == (2, 3, 8, 8)


def test_worker_batches_reuse_their_shared_memory_and_stay_exact(jpeg_dataset, monkeypatch):
    """One worker refills a few shared-memory batches (released once converted); every batch kept by the consumer
    equals the in-process loader's, so no refill ever reaches a batch the consumer holds."""
    from m2u.datasets.batches import BufferRing

    released: list[tuple[int, int]] = []
    real_release = BufferRing.release

    def record(self, worker, slot):
        released.append((worker, slot))
        real_release(self, worker, slot)

    monkeypatch.setattr(BufferRing, "release", record)
    config = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=8, hflip_prob=0.5, prefetch_factor=2)
    expected = list(make_loader(jpeg_dataset, "train", config))
    loader = make_loader(jpeg_dataset, "train", LoaderConfig(**{**config.__dict__, "num_workers": 1}))
    kept = list(loader)
    assert [b["key"] for b in kept] == [b["key"] for b in expected]
    for got, want in zip(kept, expected, strict=True):
        for name in ("masked", "unmasked", "mask"):
            assert torch.equal(got[name], want[name]), name
    assert len(released) == len(kept) > len(set(released))  # every batch released, slots used again
    assert len(set(released)) <= config.prefetch_factor + 2
    # The trainer's path keeps the raw uint8 batches: no ring, nothing released.
    released.clear()
    raw = list(
        make_loader(
            jpeg_dataset, "train", LoaderConfig(**{**config.__dict__, "num_workers": 1, "as_uint8": True})
        )
    )
    assert len(raw) == len(kept) and not released
