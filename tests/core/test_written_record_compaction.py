"""m2u.core.fileio compacts a folder's record (.m2u-written) once reruns have bloated it with stamps no file can match
any more, without losing a line another process appends meanwhile, and without making anything m2u's that was not."""

from __future__ import annotations

import os
import threading
import time

import pytest

from m2u.core import fileio
from m2u.core.fileio import (
    RECORD_NAME,
    OutputRefusedError,
    Stamp,
    atomic_write_bytes,
    check_writable,
    recorded_names,
)

fcntl = pytest.importorskip("fcntl")


def _lines(folder) -> list[bytes]:
    return (folder / RECORD_NAME).read_bytes().splitlines()


def test_reruns_keep_the_record_bounded_and_every_file_m2us(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "COMPACT_RECORD_FROM", 2000)
    names = ["a.jpg", "b.jpg", "line\nbreak.jpg", "d.jpg"]
    for rerun in range(40):
        for name in names:
            atomic_write_bytes(tmp_path / name, b"x" * (10 + rerun))  # another size each rerun
    # 160 stamp lines without compaction (about 15 KB); compacted at each doubling past 2000 bytes.
    assert (tmp_path / RECORD_NAME).stat().st_size < 4000
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == set(names)
    for name in names:
        check_writable(tmp_path / name)
    fileio._compact_record(tmp_path)
    assert len(_lines(tmp_path)) == len(names)  # one stamp per name: the file there now


def test_a_compaction_keeps_what_may_still_be_m2us_and_drops_the_rest(tmp_path):
    for content in (b"first run", b"second run, longer", b"second run, longer", b"second run, longer"):
        for name in ("photo.jpg", "touched.jpg", "theirs.jpg"):
            atomic_write_bytes(tmp_path / name, content)
    fileio.mark_written(tmp_path / "run.log")  # recorded by name alone: any file there is m2u's
    os.utime(tmp_path / "touched.jpg", ns=(1, 1))  # copied or synced: another time, m2u's bytes
    (tmp_path / "theirs.jpg").unlink()
    (tmp_path / "theirs.jpg").write_bytes(b"a person's photo, 25 bytes")  # neither size m2u wrote
    # Without a compaction, the first run's bytes put back at any of these names would count as m2u's.
    before = (tmp_path / RECORD_NAME).read_bytes()
    assert fileio._compact_record(tmp_path) == len((tmp_path / RECORD_NAME).read_bytes()) < len(before) / 2
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == recorded_names(before)
    assert len(_lines(tmp_path)) == 4  # one stamp each (the last run's: the same bytes each rerun), the log
    for name in ("photo.jpg", "touched.jpg", "run.log"):
        check_writable(tmp_path / name)
    for name in ("theirs.jpg", "photo.jpg"):
        (tmp_path / name).write_bytes(b"first run")  # bytes m2u wrote there once, and no longer lists
        with pytest.raises(OutputRefusedError, match="is not the file m2u wrote there"):
            check_writable(tmp_path / name)


def test_the_stamp_recorded_last_stays_for_the_file_about_to_arrive(tmp_path):
    """`commit` records a stamp before it renames the file into place: a compaction in between keeps it."""
    for size in range(1, 30):
        fileio._record(tmp_path, "arriving.jpg", Stamp(size, 1000 + size, "0" * 64))
    fileio._compact_record(tmp_path)
    assert fileio._read_record(tmp_path)["arriving.jpg"] == {Stamp(29, 1029, "0" * 64)}
    (tmp_path / "arriving.jpg").write_bytes(b"x" * 29)  # the rename
    os.utime(tmp_path / "arriving.jpg", ns=(1029, 1029))
    check_writable(tmp_path / "arriving.jpg")


def test_no_compaction_while_another_process_holds_the_record(tmp_path, monkeypatch):
    for rerun in range(10):
        atomic_write_bytes(tmp_path / "photo.jpg", b"x" * (rerun + 1))
    before = (tmp_path / RECORD_NAME).read_bytes()
    with open(tmp_path / RECORD_NAME, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another compaction under way
        assert fileio._compact_record(tmp_path) is None
    assert (tmp_path / RECORD_NAME).read_bytes() == before
    assert fileio._compact_record(tmp_path) is not None and len(_lines(tmp_path)) == 1


def test_a_line_appended_while_a_compaction_runs_lands_in_the_new_record(tmp_path, monkeypatch):
    """An appender waits on the compaction's lock; the record it opened is then replaced, and it must write to the
    new one (written to the old file, the line would vanish with it, and its file would be refused as not m2u's)."""
    for rerun in range(10):
        atomic_write_bytes(tmp_path / "photo.jpg", b"x" * (rerun + 1))
    record = tmp_path / RECORD_NAME
    compacting = threading.Event()
    real_lines = fileio._compact_lines

    def slow_lines(folder, data):
        compacting.set()
        time.sleep(0.3)  # the other writer opens the old record and waits on its lock meanwhile
        return real_lines(folder, data)

    monkeypatch.setattr(fileio, "_compact_lines", slow_lines)
    compaction = threading.Thread(target=fileio._compact_record, args=(tmp_path,))
    compaction.start()
    assert compacting.wait(5)
    atomic_write_bytes(tmp_path / "new.jpg", b"written during the compaction")
    compaction.join()
    assert recorded_names(record.read_bytes()) == {"photo.jpg", "new.jpg"}
    check_writable(tmp_path / "new.jpg")
    assert len(_lines(tmp_path)) == 2


def test_the_file_there_keeps_its_own_stamp_when_later_writes_never_arrived(tmp_path):
    """Writes killed between recording their stamps and renaming their files (one of the same bytes, one of others):
    the file still there keeps the stamp with its own time, so it stays m2u's without being read again."""
    photo = tmp_path / "photo.jpg"
    for _ in range(3):
        atomic_write_bytes(photo, b"m2u's bytes")
    there = next(
        s for s in fileio._read_record(tmp_path)["photo.jpg"] if s.mtime_ns == photo.stat().st_mtime_ns
    )
    pending = [
        Stamp(there.size, there.mtime_ns + 10**9, there.sha256),
        Stamp(99, there.mtime_ns + 2 * 10**9, "f" * 64),
    ]
    for stamp in pending:
        fileio._record(tmp_path, "photo.jpg", stamp)
    assert fileio._compact_record(tmp_path) is not None
    assert fileio._read_record(tmp_path)["photo.jpg"] == {there, pending[1]}
    check_writable(photo)
