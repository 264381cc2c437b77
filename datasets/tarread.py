"""The local fast tar reader: a shard's raw samples (key plus field -> bytes), grouped as webdataset groups them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

# A tar archive ends with two zero blocks (tarfile and GNU tar then pad to whole records): without them a shard
# was cut short, even when it was cut exactly between two members and every member left reads fine.
TAR_BLOCK = 512
TAR_END = b"\0" * (2 * TAR_BLOCK)


def is_stream_url(text: str) -> bool:
    """A shard source that webdataset opens (``s3://...``, ``http://...``, ``pipe:...``), not a local path."""
    return "://" in text or text.startswith("pipe:")


def iter_raw_samples(shards: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Yield raw samples (``__key__`` plus field → bytes) from shards, one shard after another: local shards of
    plain members (what m2u writes) through ``local_tar_samples``, anything else through webdataset."""
    from webdataset.tariterators import tarfile_samples

    for url in shards:
        members = None if is_stream_url(url) else plain_tar_members(url)
        if members is None:
            yield from tarfile_samples([{"url": url}])
        else:
            yield from local_tar_samples(url, members)


_TAR_REGULAR = (b"0", b"\0")
_TAR_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"7")  # links, devices, directories, FIFOs: not samples
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_KEY_AND_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def _tar_header_checksum_ok(header: bytes) -> bool:
    try:
        recorded = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return recorded == unsigned


def plain_tar_members(path: str) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of a local tar's members when every header is a plain ustar/GNU header with its
    name in the name field (regular files, or members webdataset skips); None otherwise (long names, pax headers,
    a bad checksum: webdataset's tarfile reader then reads the shard and reports what it finds)."""
    members: list[tuple[str, int, int]] = []
    try:
        with open(path, "rb") as handle:
            offset = 0
            while True:
                header = handle.read(TAR_BLOCK)
                if len(header) < TAR_BLOCK or header == b"\0" * TAR_BLOCK:
                    return members
                kind = header[156:157]
                if not _tar_header_checksum_ok(header) or header[345:500].strip(b"\0"):
                    return None
                if kind not in _TAR_REGULAR and kind not in _TAR_SKIPPED:
                    return None
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                name = header[:100].split(b"\0", 1)[0].decode("utf-8")
                offset += TAR_BLOCK
                if kind in _TAR_REGULAR and not name.endswith("/"):
                    members.append((name, offset, size))
                offset += -(-size // TAR_BLOCK) * TAR_BLOCK
                handle.seek(offset)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def local_tar_samples(url: str, members: list[tuple[str, int, int]]) -> Iterator[dict[str, Any]]:
    """The samples webdataset's ``tarfile_samples`` yields for this shard (members grouped by key, consecutive,
    field names lower-cased, meta members skipped, a duplicate field an error), read without tarfile's per-member
    overhead: a third of a loader worker's time went to it."""
    current: dict[str, Any] | None = None
    with open(url, "rb") as handle:
        for name, offset, size in members:
            if _META_MEMBER.match(name) or (
                "/" not in name and name.startswith("__") and name.endswith("__")
            ):
                continue
            match = _KEY_AND_FIELD.match(name)
            if match is None:
                continue
            key, field = match.group(1), match.group(2).lower()
            if current is None or key != current["__key__"]:
                if current is not None and len(current) > 2:
                    yield current
                current = {"__key__": key, "__url__": url}
            if field in current:
                raise ValueError(f"{name}: duplicate file name in tar file {field} {current.keys()}")
            handle.seek(offset)
            data = handle.read(size)
            if len(data) != size:
                raise ValueError(f"unexpected end of data in member {name}")
            current[field] = data
    if current is not None and len(current) > 2:
        yield current
