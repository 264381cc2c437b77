"""m2u.core.fileio compacts a folder's record (.m2u-written) once reruns have bloated it with stamps no file can match
any more, without losing a line another process appends meanwhile, and without making anything m2u's that was not.

Stamps are mostly recorded here with chosen times (`_record`), not by writing the same file again: where a file
system's times are coarse, two writes in a row can share one time and so one stamp."""

from __future__ import annotations

import hashlib
import os
import sys
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
    remove_written,
)

fcntl = pytest.importorskip("fcntl")

PAST = 1_600_000_000 * 10**9  # 2020: long before any record line these tests append


def _lines(folder) -> list[bytes]:
    """The record's lines, less a compaction's mark (which lists nothing)."""
    lines = (folder / RECORD_NAME).read_bytes().splitlines()
    return [line for line in lines if not line.startswith(fileio._COMPACTED_MARK)]


def _stamp(data: bytes, mtime_ns: int) -> Stamp:
    return Stamp(len(data), mtime_ns, hashlib.sha256(data).hexdigest())


def _stale(folder, name: str = "old.jpg", count: int = 20) -> None:
    """Stamps of files long replaced at `name` (none of them the size of a file there): what reruns leave."""
    for k in range(count):
        fileio._record(folder, name, Stamp(1000 + k, PAST + k, "e" * 64))
    atomic_write_bytes(folder / name, b"the file there now")


@pytest.fixture
def settled(monkeypatch):
    """No stamp counts as a file about to arrive: every one no file matches may go."""
    monkeypatch.setattr(fileio, "IN_FLIGHT_NS", 0)


def test_reruns_keep_the_record_bounded_and_every_file_m2us(tmp_path, monkeypatch, settled):
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


def test_a_compaction_keeps_what_may_still_be_m2us_and_drops_the_rest(tmp_path, settled):
    first, last = b"first run", b"second run, longer"
    for name in ("photo.jpg", "touched.jpg", "theirs.jpg"):
        fileio._record(tmp_path, name, _stamp(first, PAST))
        fileio._record(tmp_path, name, _stamp(last, PAST + 1))  # the same bytes, written again later
        atomic_write_bytes(tmp_path / name, last)
    real = {
        n: max(fileio._read_record(tmp_path)[n], key=lambda s: s.mtime_ns)
        for n in ("touched.jpg", "theirs.jpg")
    }
    os.utime(tmp_path / "touched.jpg", ns=(1, 1))  # copied or synced: another time, m2u's bytes
    (tmp_path / "theirs.jpg").unlink()
    (tmp_path / "theirs.jpg").write_bytes(b"a person's photo, 25 bytes")  # neither size m2u wrote
    fileio.mark_written(tmp_path / "run.log")  # recorded by name alone: any file there is m2u's
    # Taken out: its last stamp forgotten (m2u deleted that file), the one before it matches no file there.
    fileio._record(tmp_path, "gone.jpg", Stamp(5, PAST, "a" * 64))
    fileio._record(tmp_path, "gone.jpg", Stamp(6, PAST + 1, "b" * 64))
    fileio._forget(tmp_path, {"gone.jpg": frozenset({Stamp(6, PAST + 1, "b" * 64)})})
    with open(tmp_path / RECORD_NAME, "ab") as record:
        record.write(b"later.jpg/a stamp this version cannot read\n")  # a later version's line
    before = (tmp_path / RECORD_NAME).read_bytes()
    assert fileio._compact_record(tmp_path) == len((tmp_path / RECORD_NAME).read_bytes()) < len(before) / 2
    after = (tmp_path / RECORD_NAME).read_bytes()
    assert recorded_names(after) == {"photo.jpg", "touched.jpg", "theirs.jpg", "run.log"}
    assert b"\nlater.jpg/a stamp this version cannot read\n" in after
    listed = fileio._read_record(tmp_path)
    assert len(listed["photo.jpg"]) == 1  # the stamp of its size and time: the file there
    assert listed["touched.jpg"] == {real["touched.jpg"]}  # of its size, one per digest: the newest
    assert listed["theirs.jpg"] == {real["theirs.jpg"]}  # no file of its size there: the stamp appended last
    for name in ("photo.jpg", "touched.jpg", "run.log"):
        check_writable(tmp_path / name)
    for name in ("theirs.jpg", "photo.jpg"):
        (tmp_path / name).write_bytes(first)  # bytes m2u wrote there once, and no longer lists
        with pytest.raises(OutputRefusedError, match="is not the file m2u wrote there"):
            check_writable(tmp_path / name)
    (tmp_path / "gone.jpg").write_bytes(b"a" * 5)  # the size of the stamp left: still not listed
    with pytest.raises(OutputRefusedError, match="was not written by m2u"):
        check_writable(tmp_path / "gone.jpg")


def test_the_stamp_recorded_last_stays_for_the_file_about_to_arrive(tmp_path, settled):
    """`commit` records a stamp before it renames the file into place: a compaction in between keeps it."""
    # Whole seconds: a file system keeping coarse times still holds them exactly.
    stamps = [_stamp(b"x" * size, PAST + size * 10**9) for size in range(1, 30)]
    for stamp in stamps:
        fileio._record(tmp_path, "arriving.jpg", stamp)
    fileio._compact_record(tmp_path)
    assert fileio._read_record(tmp_path)["arriving.jpg"] == {stamps[-1]}
    (tmp_path / "arriving.jpg").write_bytes(b"x" * 29)  # the rename
    os.utime(tmp_path / "arriving.jpg", ns=(stamps[-1].mtime_ns,) * 2)
    check_writable(tmp_path / "arriving.jpg")


def test_another_writers_stamp_of_the_same_name_stays_while_its_file_may_arrive(tmp_path):
    """Two processes write one name: A records its stamp, B records its own, renames its file and compacts, then A's
    rename lands. A's stamp is neither the last nor its file's yet, but recent: it stays, and A's file is m2u's."""
    _stale(tmp_path)
    mine = b"process A's photo, written first"
    stamp_a = _stamp(mine, time.time_ns())
    fileio._record(tmp_path, "photo.jpg", stamp_a)
    atomic_write_bytes(tmp_path / "photo.jpg", b"process B's photo")
    assert fileio._compact_record(tmp_path) is not None
    (tmp_path / "photo.jpg").write_bytes(mine)  # A's rename
    os.utime(tmp_path / "photo.jpg", ns=(stamp_a.mtime_ns, stamp_a.mtime_ns))
    check_writable(tmp_path / "photo.jpg")


def test_the_file_there_keeps_the_stamp_of_its_own_time(tmp_path, settled):
    """Writes killed between recording their stamps and renaming their files (the same bytes, then others): the
    file there keeps the stamp with its own time, so it stays m2u's without being read again."""
    photo = tmp_path / "photo.jpg"
    data = b"m2u's bytes"
    photo.write_bytes(data)
    os.utime(photo, ns=(PAST, PAST))
    there = _stamp(data, PAST)
    pending = [_stamp(data, PAST + 10**9), Stamp(99, PAST + 2 * 10**9, "f" * 64)]
    for stamp in (there, *pending):
        fileio._record(tmp_path, "photo.jpg", stamp)
    _stale(tmp_path)
    assert fileio._compact_record(tmp_path) is not None
    assert fileio._read_record(tmp_path)["photo.jpg"] == {there, pending[1]}
    check_writable(photo)


def test_a_record_that_would_not_halve_or_is_another_users_is_left_as_it_is(tmp_path, monkeypatch, settled):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        atomic_write_bytes(tmp_path / name, name.encode())
    before = (tmp_path / RECORD_NAME).read_bytes()
    assert fileio._compact_record(tmp_path) is None  # nothing to drop
    _stale(tmp_path)
    before = (tmp_path / RECORD_NAME).read_bytes()
    monkeypatch.setattr(fileio.os, "geteuid", lambda: os.stat(tmp_path / RECORD_NAME).st_uid + 1)
    assert fileio._compact_record(tmp_path) is None  # the new file would be this user's, not its owner's
    assert (tmp_path / RECORD_NAME).read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setattr(fileio, "IN_FLIGHT_NS", 0)
    os.chmod(tmp_path / RECORD_NAME, 0o640)
    assert fileio._compact_record(tmp_path) is not None
    assert (tmp_path / RECORD_NAME).stat().st_mode & 0o777 == 0o640  # its mode kept


def _another_group() -> int | None:
    """A group this process may give its files other than its own: any, as root; else one it is a member of."""
    if os.geteuid() == 0:
        return os.getegid() + 4242
    return next((gid for gid in os.getgroups() if gid != os.getegid()), None)


def test_a_compacted_record_keeps_its_group(tmp_path, settled):
    group = _another_group()
    if group is None:
        pytest.skip("this user is in no group but its own")
    _stale(tmp_path)
    os.chown(tmp_path / RECORD_NAME, -1, group)
    os.chmod(tmp_path / RECORD_NAME, 0o664)  # written by a team sharing the folder
    assert fileio._compact_record(tmp_path) is not None
    info = (tmp_path / RECORD_NAME).stat()
    assert (info.st_gid, info.st_mode & 0o777) == (group, 0o664)


def test_no_compaction_while_another_process_holds_the_record(tmp_path, settled):
    _stale(tmp_path)
    before = (tmp_path / RECORD_NAME).read_bytes()
    with open(tmp_path / RECORD_NAME, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another compaction under way
        assert fileio._compact_record(tmp_path) is None
    assert (tmp_path / RECORD_NAME).read_bytes() == before
    assert fileio._compact_record(tmp_path) is not None and len(_lines(tmp_path)) == 1


@pytest.mark.parametrize("change", ["write", "forget"])
def test_a_line_appended_while_a_compaction_runs_lands_in_the_new_record(
    tmp_path, monkeypatch, settled, change
):
    """An appender (a write, or remove_written's forget lines) waits on the compaction's lock; the record it opened
    is then replaced, and it must write to the new one: written to the old file, the line would vanish with it (a
    write's file refused later as not m2u's, a forgotten name m2u's again)."""
    _stale(tmp_path)
    atomic_write_bytes(tmp_path / "photo.jpg", b"m2u's")
    record = tmp_path / RECORD_NAME
    old = os.open(record, os.O_RDONLY)  # the file the compaction replaces
    compacting, reopened = threading.Event(), []
    real_lines, real_still_at = fileio._compact_lines, fileio._still_at

    def slow_lines(folder, data, in_flight_from):
        compacting.set()
        time.sleep(0.3)  # the other writer opens the old record and waits on its lock meanwhile
        return real_lines(folder, data, in_flight_from)

    def still_at(fd, path):
        there = real_still_at(fd, path)
        reopened.append(not there)
        return there

    monkeypatch.setattr(fileio, "_compact_lines", slow_lines)
    compaction = threading.Thread(target=fileio._compact_record, args=(tmp_path,))
    compaction.start()
    assert compacting.wait(5)
    monkeypatch.setattr(fileio, "_still_at", still_at)
    if change == "write":
        atomic_write_bytes(tmp_path / "new.jpg", b"written during the compaction")
    else:
        remove_written(tmp_path, ["photo.jpg"])
    compaction.join()
    assert any(reopened)  # it did wait, and opened the new record
    assert b"new.jpg" not in os.pread(old, 1 << 20, 0) and b"photo.jpg/-" not in os.pread(old, 1 << 20, 0)
    os.close(old)
    if change == "write":
        assert recorded_names(record.read_bytes()) == {"old.jpg", "photo.jpg", "new.jpg"}
        check_writable(tmp_path / "new.jpg")
    else:
        assert recorded_names(record.read_bytes()) == {"old.jpg"}


def test_a_name_no_file_can_have_does_not_stop_writes(tmp_path, monkeypatch, settled):
    """A damaged record (a NUL byte in a name: no file can have it, and lstat refuses it) is compacted, keeping that
    name's last stamp as any name's, and every write goes on."""
    monkeypatch.setattr(fileio, "COMPACT_RECORD_FROM", 500)
    with open(tmp_path / RECORD_NAME, "ab") as record:
        record.write(b"bad\x00name/5:1:" + b"0" * 64 + b"\n")
    for rerun in range(20):
        atomic_write_bytes(tmp_path / "photo.jpg", b"x" * (rerun + 1))
    assert "photo.jpg" in recorded_names((tmp_path / RECORD_NAME).read_bytes())
    assert (tmp_path / RECORD_NAME).stat().st_size < 1000  # compacted: 20 writes make about 2 KB
    check_writable(tmp_path / "photo.jpg")


def test_where_a_lock_forbids_writing_the_line_is_written_unlocked_and_never_compacted(tmp_path, monkeypatch):
    """SMB's mandatory byte-range locks refuse a write under a shared lock, even through its own descriptor."""
    real_write, refused = os.write, []

    def locked_somewhere(path) -> bool:
        probe = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(probe)

    def write(fd, data):  # a record line written while any lock is held on the record is refused
        if bytes(data).endswith(b"\n") and locked_somewhere(tmp_path / RECORD_NAME):
            refused.append(bytes(data))
            raise PermissionError(13, "Permission denied")
        return real_write(fd, data)

    atomic_write_bytes(tmp_path / "first.jpg", b"m2u's")  # the record exists: the probe can open it
    monkeypatch.setattr(fileio.os, "write", write)
    for name in ("photo.jpg", "other.jpg"):
        atomic_write_bytes(tmp_path / name, b"m2u's")
    monkeypatch.undo()
    assert len(refused) == 1  # the second write did not take the lock at all
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == {"first.jpg", "photo.jpg", "other.jpg"}
    check_writable(tmp_path / "photo.jpg")
    assert fileio._COMPACT_AT[os.fspath(tmp_path)] == sys.maxsize
    fileio._UNLOCKED_FOLDERS.discard(os.fspath(tmp_path))


def test_a_record_of_names_written_once_is_not_read_name_by_name(tmp_path, monkeypatch):
    """Most names stamped once, or reruns within the minute (their stamps in flight): no compaction could halve it,
    so a write does not pay for reading and stat-ing every name (a new process's first write into a large folder
    would, each time)."""
    monkeypatch.setattr(fileio, "COMPACT_RECORD_FROM", 2000)
    tried = []
    monkeypatch.setattr(fileio, "_compact_record", lambda folder: tried.append(folder))
    for k in range(60):
        atomic_write_bytes(tmp_path / f"photo{k}.jpg", b"m2u's")
    assert (tmp_path / RECORD_NAME).stat().st_size > 4000 and not tried

    def rerun(text: str) -> None:
        fileio._COMPACT_AT.clear()  # a new process
        for k in range(60):
            atomic_write_bytes(tmp_path / f"photo{k}.jpg", text.encode())  # new stamps

    for k in range(3):
        rerun(f"m2u's, rerun {k}")
    assert not tried  # every stamp written within the minute: none could go
    monkeypatch.setattr(fileio, "IN_FLIGHT_NS", 0)  # the reruns a minute apart
    rerun("m2u's, a later rerun")
    assert tried  # reruns: now it could halve


def test_a_record_replaced_before_the_lock_is_taken_is_not_compacted_from_the_old_one(
    tmp_path, monkeypatch, settled
):
    """Another compaction replaces the record between this one's open and its lock: compacting the old file's lines
    over the new record would lose whatever was appended to the new one since."""
    _stale(tmp_path)
    real_lock = fileio._lock_record

    def replaced_first(fd, exclusive, wait=True):
        if exclusive:
            data = (tmp_path / RECORD_NAME).read_bytes()
            (tmp_path / "swap").write_bytes(data)
            os.replace(tmp_path / "swap", tmp_path / RECORD_NAME)  # the other compaction's new file
            fileio._record(tmp_path, "new.jpg", Stamp(3, PAST, "c" * 64))  # and a line appended to it
        return real_lock(fd, exclusive, wait)

    monkeypatch.setattr(fileio, "_lock_record", replaced_first)
    assert fileio._compact_record(tmp_path) is None
    assert "new.jpg" in recorded_names((tmp_path / RECORD_NAME).read_bytes())


def test_each_compaction_leaves_one_mark_of_its_own(tmp_path, settled):
    """The first line tells a compacted record from an earlier one on a reused inode (the cache compares first
    bytes): a new token each time, and never two marks."""
    marks = []
    for _ in range(2):
        _stale(tmp_path, count=30)
        assert fileio._compact_record(tmp_path) is not None
        lines = (tmp_path / RECORD_NAME).read_bytes().splitlines()
        assert sum(line.startswith(fileio._COMPACTED_MARK) for line in lines) == 1
        marks.append(lines[0])
    assert marks[0] != marks[1]


@pytest.mark.parametrize("removed", ["record", "folder"])
def test_a_record_removed_during_a_compaction_is_not_brought_back(tmp_path, monkeypatch, settled, removed):
    """remove_written (--overwrite) takes the record out, and the folder with it where nothing else is left."""
    folder = tmp_path / "run"
    folder.mkdir()
    for k in range(20):
        fileio._record(folder, "gone.jpg", Stamp(k + 1, PAST + k, "e" * 64))
    real_lines = fileio._compact_lines

    def removed_meanwhile(folder_, data, in_flight_from):
        lines = real_lines(folder_, data, in_flight_from)
        (folder / RECORD_NAME).unlink()
        if removed == "folder":
            folder.rmdir()
        return lines

    monkeypatch.setattr(fileio, "_compact_lines", removed_meanwhile)
    assert fileio._compact_record(folder) is None
    assert not os.path.lexists(folder / RECORD_NAME)
    assert folder.exists() == (removed == "record")
    if removed == "record":
        assert os.listdir(folder) == []  # nor its temporary file left


def test_an_appender_gives_up_on_a_record_replaced_endlessly(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "photo.jpg", b"m2u's")
    monkeypatch.setattr(fileio, "_APPEND_TRIES", 3)
    monkeypatch.setattr(fileio, "_still_at", lambda fd, path: False)
    with pytest.raises(OSError, match="replaced 3 times"):
        atomic_write_bytes(tmp_path / "other.jpg", b"m2u's")


def test_the_benchmark_measures_the_record_with_and_without_the_compaction(
    tmp_path, monkeypatch, load_benchmark
):
    """benchmarks/written_record.py --quick, with the compaction's threshold lowered to the quick run's size."""
    import json

    monkeypatch.setattr(fileio, "COMPACT_RECORD_FROM", 4000)
    bench = load_benchmark("written_record")
    assert bench.main(["--quick", "-o", str(tmp_path / "record.json")]) == 0
    report = json.loads((tmp_path / "record.json").read_text())
    sizes = report["record_bytes_after_each_rerun"]
    assert sizes["off"] == sizes["back to back"] == sizes["off again"]  # within the minute: nothing can go
    assert sizes["off"][0] < sizes["off"][1] < sizes["off"][2]
    assert sizes["apart"][:2] == sizes["off"][:2] and sizes["apart"][2] < sizes["off"][2]
    assert set(report["time_per_write_vs_off"]) == set(bench.SETTINGS) and report["quick"] is True
    assert fileio.COMPACT_RECORD_FROM == 4000  # each setting's changes undone
