"""The one writer of m2u's output files (every package writes finished files through it) and the library versions
record.

A file is written under a hidden temporary name beside its target (``.<name>.XXXXXXXX.tmp``, created with
O_EXCL, so never through a link) and renamed to its real name only once complete: a killed run or a full disk
never leaves a truncated file under the real name (an interrupted file simply does not exist yet), and
concurrent writers never see each other's half-written bytes. Leftovers of killed writers match both ``*.tmp``
and ``.*.tmp``: the dataset build clears them at start-up, and every command that locks its output folder
(m2u.core.inputs.output_lock: m2u-mask, m2u-unmask, m2u-eval, the trainer) once it holds the lock.

Only what is ours is replaced. Each folder m2u writes into keeps a record, ``.m2u-written``, of the files m2u
wrote there: a line per file written (appended: `_record_line`), its name and a stamp of what was written (size,
modification time, SHA-256). A name about to be replaced must be a regular file listed in that record and still be
a file m2u wrote there: the same size and either the same modification time or the same bytes (a folder copied
or synced elsewhere keeps its bytes, not always its times). A person's file put back at a name m2u wrote earlier
is theirs. Files m2u appends to (logs) or that lock libraries write (lock files) are recorded by name alone, as
every file was before the stamps (such lines in older records still read so). Writers only ever append to the
record: a name whose file m2u deleted is taken out by a line of its own (`_forget`), naming the stamps it takes out,
so a stamp another m2u process records at that name meanwhile stays. A record that has grown well past what it still
needs to say is rewritten without the stamps no file there can match any more and that cannot be a file about to
arrive (`_compact_record`), under a lock every appender of this version takes, so that none of their lines is lost.
A symbolic link planted at an output's name, a folder or FIFO there, or a file m2u did not write (another
person's photo that happens to have the output's name) is refused with `OutputRefusedError` and left as it is.
The rename replaces a name, never writes through it, so a link planted after the check is replaced, not
followed. The record file itself is opened without following links.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import platform
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from m2u.core.errors import UserError

TEMP_SUFFIX = ".tmp"
# How m2u's text files (reports, logs) encode what UTF-8 cannot: a file name that is not UTF-8 reaches Python as
# lone surrogates ("caf\udce9.jpg"), which are written as that escape rather than failing the whole report.
REPORT_TEXT_ERRORS = "backslashreplace"
RECORD_NAME = ".m2u-written"  # the names m2u wrote in a folder: the files it may replace there
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Folder -> (the record's size when read, its entries): a rerun replacing many files reads the record once.
# Keyed by the folder's name too, and each entry keeps the record's first bytes: a record deleted with its folder
# and a new one on the reused inode (temporary folders, test after test) is told apart instead of being read as
# the old one (seen as a flaky refusal of a dataset's own train.parquet in the full suite).
_RECORDS: dict[tuple[int, int, str], tuple[int, bytes, dict[str, frozenset[Stamp] | None]]] = {}
_RECORD_PREFIX = 256
# A record is compacted (`_compact_record`) once it is at least this large and twice the size it had when this
# process last compacted or measured it: a rerun that writes every file again adds a line per file, so without it a
# folder rewritten ten times keeps ten stamps per name. Doubling keeps the cost (a read and a stat per name) in
# proportion to what was appended.
COMPACT_RECORD_FROM = 1 << 16
_COMPACT_AT: dict[str, int] = {}
# A stamp written this shortly before the record last changed is kept whatever the file at its name holds: it may be
# a file another process is about to rename into place (`commit` records first, and a large file's digest is read
# between the end of its writing, the stamp's time, and the record line). Measured against the record's own
# modification time, so that the file system's clock is compared with itself.
IN_FLIGHT_NS = 60 * 10**9
# The first line of a compacted record. It lists nothing (a stamp no version reads), and its random token tells a
# record on a reused inode from the one a process has cached (`_read_record` compares the first bytes).
_COMPACTED_MARK = b"//m2u-compacted-"
# How often an appender opens the record again when a compaction replaced it while the appender waited.
_APPEND_TRIES = 1000
# Folders whose file system refused a write under the record's lock (see `_append_to_record`).
_UNLOCKED_FOLDERS: set[str] = set()


@dataclass(frozen=True)
class Stamp:
    """What m2u wrote at a name: the file's size, modification time (ns) and SHA-256 (hex)."""

    size: int
    mtime_ns: int
    sha256: str

    def text(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.sha256}"

    @classmethod
    def parse(cls, text: str) -> Stamp | None:
        parts = text.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        return cls(int(parts[0]), int(parts[1]), parts[2])


def content_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a regular file's bytes; opened without following a link or waiting on a FIFO swapped in
    at the name (OSError for anything but a regular file)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _stamp_of(path: str | os.PathLike[str], sha256: str | None = None) -> Stamp:
    """The stamp of the finished file at `path` (its digest read from the file unless the writer knows it)."""
    info = os.lstat(path)
    return Stamp(info.st_size, info.st_mtime_ns, sha256 or content_digest(path))


# The longest file name most file systems take (NAME_MAX), and what atomic_write's temporary name adds to a name
# (".<name>.<8 hex>.tmp"): an output name must leave room for both.
NAME_MAX_BYTES = 255
_TEMP_NAME_EXTRA = 2 + 8 + len(TEMP_SUFFIX)


def fit_stem(stem: str, room: int = 64) -> str:
    """An output name's stem (an input's file name without its suffix) cut, where need be, so that it with `room`
    bytes of suffixes after it (`_surgical_mask.png`, `-2`) and the temporary name round it is still a file name
    the file system takes; a cut stem ends in a hash of the whole one, so long names that share a start stay
    distinct. Names are measured in the file system's bytes (a non-ASCII letter takes several)."""
    limit = NAME_MAX_BYTES - _TEMP_NAME_EXTRA - room
    if len(os.fsencode(stem)) <= limit:
        return stem
    digest = hashlib.sha1(os.fsencode(stem)).hexdigest()[:12]
    cut = stem
    while len(os.fsencode(cut)) > limit - len(digest) - 1:
        cut = cut[:-1]  # whole characters, never half of a multi-byte one
    return f"{cut}-{digest}"


def claim_name(stem: str, suffix: str, taken: set[str]) -> str:
    """`stem + suffix`, or `stem-2 + suffix`, -3... where that name is taken already, added to `taken`: one run's
    output names. Names that differ only in letter case are one name here, as they are one file on the disks of
    macOS and Windows (x.jpg and x.JPG from a Linux disk)."""
    name, k = stem + suffix, 1
    while name.casefold() in taken:
        k += 1
        name = f"{stem}-{k}{suffix}"
    taken.add(name.casefold())
    return name


def report_text(text: str) -> str:
    """`text` as m2u's text outputs write it (REPORT_TEXT_ERRORS): valid UTF-8, for writers that take a str (Parquet)."""
    return text.encode("utf-8", REPORT_TEXT_ERRORS).decode("utf-8")


def cache_dir() -> Path:
    """Where m2u keeps files it derives locally: $M2U_CACHE, else $XDG_CACHE_HOME/m2u, else ~/.cache/m2u."""
    if os.environ.get("M2U_CACHE"):
        return Path(os.environ["M2U_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m2u"


def write_cache_file(path: str | os.PathLike[str], write: Callable[[str], object]) -> bool:
    """`atomic_write` of a file m2u derives and keeps in a cache (cache_dir, a run's digests); False when it cannot
    be written (a read-only folder, or a file at that name m2u's record does not list): a cache is only a faster
    start, so it never fails the command. A damaged cache file m2u wrote is written again (`by_name`)."""
    try:
        atomic_write(path, write, by_name=True)
    except (OSError, OutputRefusedError):
        return False
    return True


class OutputRefusedError(ValueError):
    """An output name m2u must not write: a symbolic link, not a regular file, or a file m2u did not write."""


# A record's entries: name -> the stamps of the files m2u wrote at it, or None where any file at the name is m2u's
# (a line without a stamp: appended logs, lock files, records of earlier versions).
Entries = dict[str, frozenset[Stamp] | None]


def _read_record(folder: Path) -> Entries:
    """The folder's record (read-only: the mapping is shared by later reads)."""
    path = folder / RECORD_NAME
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputRefusedError(f"{path} is a symbolic link; m2u does not write through links") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputRefusedError(f"{path} is not a regular file")
        key = (info.st_dev, info.st_ino, os.fspath(folder))  # the record file, as this folder names it
        size, prefix, entries = _RECORDS.get(key, (0, b"", {}))
        if size and os.pread(fd, len(prefix), 0) != prefix:
            size, entries = 0, {}  # another file on a reused inode
        if size == info.st_size:
            return entries
        # The record only grows (appends): read what was added since; anything else is read again whole.
        start = size if size < info.st_size else 0
        entries = _with_lines(entries if start else {}, os.pread(fd, info.st_size - start, start))
        _RECORDS[key] = (info.st_size, os.pread(fd, _RECORD_PREFIX, 0), entries)
        return entries
    finally:
        os.close(fd)


# A record line is a name as it is, or, for a name holding a line break (which would split it into two lines), "/"
# and the name with backslash, newline and carriage return escaped as \\, \n and \r; then, for a file whose stamp
# is recorded, "/" and the stamp (`Stamp.text`). No file name holds "/", so none of these meet: the plain names of
# records written before (one per line, backslashes and all) read as they always did.
_ESCAPED = b"/"
# In a stamp's place: the name is no longer m2u's (`_forget`); followed by a stamp, only that stamp is taken out.
_FORGOTTEN = b"-"
_ESCAPES = {b"\\": b"\\\\", b"\n": b"\\n", b"\r": b"\\r"}
_UNESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPES = {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}


def _record_line(name: str, stamp: Stamp | None = None, forgotten: bool = False) -> bytes:
    """`name`'s line in a record (newline included): see _ESCAPED. `forgotten`: the line that takes `stamp` out of
    the name's stamps (its file was deleted), or without a stamp the whole name."""
    raw = os.fsencode(name)
    if b"\n" in raw or b"\r" in raw:
        raw = _ESCAPED + re.sub(rb"[\\\n\r]", lambda m: _ESCAPES[m.group()], raw)
    if forgotten:
        raw += b"/" + _FORGOTTEN + (stamp.text().encode() if stamp is not None else b"")
    elif stamp is not None:
        raw += b"/" + stamp.text().encode()
    return raw + b"\n"


def _parse_line(line: bytes) -> tuple[str, Stamp | None, bool] | None:
    """The name, stamp and whether it is taken out (`_forget`) that a record `line` (without its newline) lists;
    None for a line that lists nothing (empty, or a stamp m2u cannot read: nothing is taken for m2u's on it, nor
    taken out). Names are the file system's bytes (a name need not be UTF-8): os.fsdecode gives back the str Python lists
    the folder with, so an undecodable name is found again."""
    escaped = line.startswith(_ESCAPED)
    body = line[1:] if escaped else line
    stamp: Stamp | None = None
    forgotten = False
    if b"/" in body:
        body, stamp_text = body.rsplit(b"/", 1)
        forgotten = stamp_text.startswith(_FORGOTTEN)
        if forgotten:
            stamp_text = stamp_text[len(_FORGOTTEN) :]
        if stamp_text:
            stamp = Stamp.parse(stamp_text.decode("ascii", "replace"))
            if stamp is None:
                return None
    if escaped:
        body = _UNESCAPE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group()), body)
    return (os.fsdecode(body), stamp, forgotten) if body else None


def _with_lines(entries: Entries, data: bytes) -> Entries:
    """`entries` with the record lines of `data` added in order: a stamp adds to the name's stamps (narrowing a
    name recorded without one to what was written), a line without a stamp makes any file at the name m2u's, a
    forgotten line (`_forget`) takes its stamp out of the name's (the name goes with its last stamp), or without
    a stamp the whole name."""
    merged = dict(entries)
    growing: dict[str, set[Stamp]] = {}  # names given stamps here: sets grown in place, frozen at the end
    # Lines end at "\n" alone (not splitlines): a "\r" is part of a name written by an earlier version.
    for line in data.split(b"\n"):
        parsed = _parse_line(line)
        if parsed is None:
            continue
        name, stamp, forgotten = parsed
        if stamp is not None and forgotten:
            if name in merged and merged[name] is not None:
                if name not in growing:
                    growing[name] = set(merged[name] or ())
                growing[name].discard(stamp)
                if not growing[name]:
                    growing.pop(name)
                    merged.pop(name)
            continue
        if stamp is not None:
            if name not in growing:
                growing[name] = set(merged.get(name) or ())
            growing[name].add(stamp)
            merged[name] = frozenset()  # a placeholder, filled below
            continue
        growing.pop(name, None)
        if forgotten:
            merged.pop(name, None)
        else:
            merged[name] = None
    merged.update((name, frozenset(stamps)) for name, stamps in growing.items())
    return merged


def recorded_names(data: bytes) -> set[str]:
    """The names a record's bytes list (a record fetched from object storage)."""
    return set(_with_lines({}, data))


def _record(folder: Path, name: str, stamp: Stamp | None = None) -> os.stat_result | None:
    """Append `name` (with the `stamp` of what was written at it) to the folder's record (one O_APPEND write:
    concurrent writers do not interleave). Without a stamp (a log about to be appended to, a lock) the name is
    m2u's whatever it holds from then on. Returns the record's status after the write (None: already listed so)."""
    entries = _read_record(folder)
    if name in entries:
        stamps = entries[name]
        if stamps is None if stamp is None else (stamps is not None and stamp in stamps):
            return None
    return _append_to_record(folder, _record_line(name, stamp), create=True)


def _append_to_record(folder: Path, lines: bytes, create: bool = False) -> os.stat_result | None:
    """Append `lines` to the folder's record in one O_APPEND write, holding a shared lock on it so that a compaction
    (which holds it exclusively) never replaces the file between this write and its own read. A record replaced
    while the lock was awaited is opened again. Returns the record's status after the write; None where there is no
    record and `create` is false (removed with its folder)."""
    path = folder / RECORD_NAME
    # Opened for reading too: where flock is emulated by byte-range locks (NFS), a shared lock needs read access.
    flags = os.O_RDWR | os.O_APPEND | _NOFOLLOW | (os.O_CREAT if create else 0)
    for _ in range(_APPEND_TRIES):
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            locked = os.fspath(folder) not in _UNLOCKED_FOLDERS and _lock_record(fd, exclusive=False)
            if locked and not _still_at(fd, path):
                continue  # compacted meanwhile: this file is no longer the record
            try:
                os.write(fd, lines)
            except PermissionError:
                if not locked:
                    raise
                # Where locks are mandatory byte-range locks (SMB), a shared lock forbids writing even through its
                # own descriptor: written unlocked, as records always were, and from then on this process neither
                # locks nor compacts there (its lock would block the other writers' lines).
                _unlock_record(fd)
                _UNLOCKED_FOLDERS.add(os.fspath(folder))
                _COMPACT_AT[os.fspath(folder)] = sys.maxsize
                os.write(fd, lines)
            return os.fstat(fd)
        finally:
            os.close(fd)  # releases the lock
    raise OSError(f"{path} was replaced {_APPEND_TRIES} times while m2u waited to add a line to it")


def _lock_record(fd: int, exclusive: bool, wait: bool = True) -> bool:
    """flock `fd` (released when it is closed). False where the platform has no flock or, without `wait`, another
    process holds it: a record is then appended to without the lock (as records always were) and never compacted."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def _unlock_record(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the one at `path` (not replaced by a compaction, nor removed)."""
    info = os.fstat(fd)
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)


def _compact_if_grown(folder: Path, record: os.stat_result | None) -> None:
    """Compact the folder's record (its status after a write: `record`) where it has grown past COMPACT_RECORD_FROM
    and twice its size when this process last compacted or measured it (see COMPACT_RECORD_FROM)."""
    size = record.st_size if record is not None else 0
    if record is None or size < COMPACT_RECORD_FROM:
        return
    key = os.fspath(folder)
    if size < _COMPACT_AT.get(key, 0):
        return
    compacted = None
    try:
        # A compaction keeps at least the last stamp per name and every stamp in flight: a record that cannot halve
        # even so (most names written once, or reruns within the minute) is not read and stat-ed name by name (a new
        # process's first write into a large folder would pay for that every time).
        if 2 * _shortest_length(_read_record(folder), record.st_mtime_ns - IN_FLIGHT_NS) <= size:
            compacted = _compact_record(folder)
    except (OSError, ValueError):
        # A record that cannot be rewritten (a read-only folder), or a name no file can have (a NUL byte in a
        # damaged record): it stays as it is, and every write still goes on.
        compacted = None
    _COMPACT_AT[key] = 2 * max(COMPACT_RECORD_FROM, compacted if compacted is not None else size)


def _shortest_length(entries: Entries, in_flight_from: int) -> int:
    """About the bytes of a record listing of `entries` one stamp per stamped name, or all its stamps from
    `in_flight_from` on where there are more: the least a compaction can leave of them (`_compact_lines`)."""
    total = 0
    for name, stamps in entries.items():
        line = len(os.fsencode(name)) + 2  # the separator and newline; escapes would only add
        if not stamps:
            total += line
            continue
        kept = [s for s in stamps if s.mtime_ns > in_flight_from] or [next(iter(stamps))]
        # Two colons and 64 hex digits per stamp.
        total += sum(line + 66 + len(str(s.size)) + len(str(s.mtime_ns)) for s in kept)
    return total


def _compact_lines(folder: Path, data: bytes, in_flight_from: int) -> bytes:
    """The lines of a record whose bytes are `data` (the record of `folder`), saying no more than is still needed.
    Kept: a line per name listed without a stamp; every line this version cannot read, as it is (a later version's);
    per stamped name, the stamp appended last and every stamp from `in_flight_from` on (files that may be about to
    arrive: IN_FLIGHT_NS), and of the stamps the file at the name could match, those of its size and time where there
    are such (the file is that one), else one per digest of its size (its bytes may be m2u's where its time is not, as
    in a copied folder). A name left without a stamp is left out: no file there can be m2u's. A stamp dropped is one
    no file now at its name can match: compacting never makes m2u's a file that was not, and can only make a person's
    a file m2u once wrote there and that is put back later."""
    entries = _with_lines({}, data)
    last: dict[str, Stamp] = {}
    unread: set[bytes] = set()
    for line in data.split(b"\n"):
        parsed = _parse_line(line)
        if parsed is None:
            if line and not line.startswith(_COMPACTED_MARK):
                unread.add(line)
        elif parsed[1] is not None and not parsed[2]:
            last[parsed[0]] = parsed[1]
    lines = [line + b"\n" for line in sorted(unread)]
    for name in sorted(entries):
        stamps = entries[name]
        if stamps is None:
            lines.append(_record_line(name))
            continue
        try:
            info = os.lstat(folder / name)
            size, mtime = (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else (None, None)
        except (OSError, ValueError):  # no file there, or a name no file can have (a damaged record's)
            size = mtime = None
        kept = {s for s in stamps if s.mtime_ns > in_flight_from or s == last.get(name)}
        sized = [s for s in stamps if s.size == size]
        exact = [s for s in sized if s.mtime_ns == mtime]
        if exact:
            kept.update(exact)
        else:
            newest: dict[str, Stamp] = {}
            for stamp in sorted(sized, key=lambda s: s.mtime_ns):
                newest[stamp.sha256] = stamp
            kept.update(newest.values())
        lines += [_record_line(name, s) for s in sorted(kept, key=Stamp.text)]
    return b"".join(lines)


def _compact_record(folder: Path) -> int | None:
    """Rewrite the folder's record as `_compact_lines` has it, holding its exclusive lock (every appender holds the
    shared one while it writes, so no line is appended to the file being replaced; an appender that waited opens the
    new file). Skipped (None) where another process holds a lock on it, the platform has no flock, another user owns
    it (the new file would be this user's), or the rewrite would not halve it; otherwise the new size. Written under
    a temporary name and renamed over the record: a compaction killed midway leaves the old record whole."""
    path = folder / RECORD_NAME
    try:
        fd = os.open(path, os.O_RDWR | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        owner = getattr(os, "geteuid", None)  # not POSIX: no flock either, so never compacted (below)
        if not stat.S_ISREG(info.st_mode) or (owner is not None and info.st_uid != owner()):
            return None
        if not _lock_record(fd, exclusive=True, wait=False) or not _still_at(fd, path):
            return None
        info = os.fstat(fd)
        data = os.pread(fd, info.st_size, 0)
        mark = _COMPACTED_MARK + secrets.token_hex(8).encode() + b"\n"
        lines = mark + _compact_lines(folder, data, info.st_mtime_ns - IN_FLIGHT_NS)
        if 2 * len(lines) > len(data):
            return None
        temp = os.fspath(folder / f".{RECORD_NAME}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            # Not _new_temp: a folder removed meanwhile (with its record) must not be made again.
            temp_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except FileNotFoundError:
            return None
        try:
            with os.fdopen(temp_fd, "wb") as handle:
                handle.write(lines)
                # The record's group too (a shared folder's group, which a setgid folder gives new files anyway);
                # a group this user is not in cannot be given, and the record then takes this user's.
                if hasattr(os, "fchown"):  # POSIX only
                    with contextlib.suppress(OSError):
                        os.fchown(handle.fileno(), -1, info.st_gid)
            os.chmod(temp, stat.S_IMODE(info.st_mode))  # after the chown, which may clear setgid bits
            if not _still_at(fd, path):  # removed meanwhile (with its folder): not brought back
                os.unlink(temp)
                return None
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _RECORDS.pop((info.st_dev, info.st_ino, os.fspath(folder)), None)
        return len(lines)
    finally:
        os.close(fd)


def _written_problem(path: Path, info: os.stat_result, by_name: bool = False) -> str:
    """Why the regular file at `path` (its lstat `info`) is not m2u's to replace ("" when it is): not in its
    folder's record, or not what m2u wrote there (another size, or both another time and other bytes). `by_name`:
    listed is enough, for files only m2u puts at their names and that a rerun must replace when damaged (caches,
    a dataset's shards and build files)."""
    entries = _read_record(path.parent)
    if path.name not in entries:
        return "was not written by m2u"
    stamps = entries[path.name]
    if stamps is None or by_name:
        return ""
    sized = [stamp for stamp in stamps if stamp.size == info.st_size]
    if any(stamp.mtime_ns == info.st_mtime_ns for stamp in sized):
        return ""
    if sized and _digest_or_none(path) in {stamp.sha256 for stamp in sized}:
        return ""  # copied or synced: the times changed, the bytes are m2u's
    return "is not the file m2u wrote there (changed or put there since)"


def _digest_or_none(path: Path) -> str | None:
    """content_digest, or None where the name no longer holds a regular file (replaced meanwhile)."""
    try:
        return content_digest(path)
    except OSError:
        return None


def mark_written(path: str | os.PathLike[str]) -> None:
    """List `path` in its folder's record as m2u's: for files m2u makes without atomic_write (lock files), so
    that `remove_written` may remove them with the rest."""
    path = Path(path)
    _record(path.parent, path.name)


def replace_problem(path: str | os.PathLike[str], by_name: bool = False) -> str:
    """Why m2u must not write `path` ("" when it may): a link, not a regular file, or a file it did not write
    (`by_name`: see _written_problem)."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ""
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link; m2u does not write through links (remove the link or choose another output)"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} exists and is not a regular file"
    problem = _written_problem(path, info, by_name)
    if problem:
        return f"{path} exists and {problem} (see {path.parent / RECORD_NAME}); move it away or choose another output"
    return ""


def check_writable(path: str | os.PathLike[str], by_name: bool = False) -> None:
    """Raise OutputRefusedError when `path` may not be written (see replace_problem)."""
    problem = replace_problem(path, by_name)
    if problem:
        raise OutputRefusedError(problem)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[str], object],
    durable: bool = False,
    *,
    by_name: bool = False,
) -> Path:
    """Call ``write(temp_path)`` for a hidden temporary file beside ``path``, then rename it to ``path``.

    ``path`` must be new or a regular file m2u wrote there before (OutputRefusedError otherwise, checked before
    anything is written). The temporary name is unique to this writer (concurrent writers of one file never
    share it). ``durable`` also flushes the file to disk before the rename, for commit records that must survive
    a power loss.

    The parent folder is created when missing. On any exception (KeyboardInterrupt and a full disk included) the
    temporary file is removed, ``path`` is left as it was and the exception propagates. The file gets the mode
    the umask gives any new file.
    """
    path = Path(path)
    check_writable(path, by_name)
    fd, temp = _new_temp(path)
    os.close(fd)
    try:
        write(temp)
        if durable:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        # `write` may have replaced the file (a library writing to the name): the mode any new file gets.
        os.chmod(temp, new_file_mode())
        _commit_temp(temp, path, by_name=by_name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _new_temp(path: Path) -> tuple[int, str]:
    """(open descriptor, name) of a new hidden temporary file beside `path` (``.<name>.XXXXXXXX.tmp``), created
    with O_EXCL and without following links, mode 0o666 less the umask; the parent folder is created when
    missing. (tempfile.mkstemp would leave it 0600, costing two umask calls and a chmod per file.)"""
    for attempt in range(100):
        temp = _temp_name(path)
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666), temp
        except FileExistsError:
            continue
        except FileNotFoundError:
            if attempt:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
    raise FileExistsError(f"no free temporary name beside {path}")


def _temp_name(path: Path) -> str:
    """A random hidden temporary name beside `path` (``.<name>.XXXXXXXX.tmp``: `_HIDDEN_TEMP_NAME`); its maker
    creates it exclusively and draws again when it is taken."""
    return os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def written_files_not_in(
    out: str | os.PathLike[str], produced: set[Path], take: Callable[[Path], bool] = lambda path: True
) -> list[Path]:
    """The files under `out` that m2u wrote (their folders' records) and that `produced` (this run's outputs) does
    not hold, among those `take` accepts; hidden files and folders are not searched: an earlier run's outputs,
    which a per-file command keeps (finished work) and names."""
    found = []
    for folder, folders, files in os.walk(out):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if not name.startswith(".") and path not in produced and take(path) and not replace_problem(path):
                found.append(path)
    return sorted(found)


def arrow_path(path: str | os.PathLike[str]) -> str:
    """`path` for pyarrow's readers and writers: absolute, since pyarrow takes a relative path with a colon in it
    (`ds:1/manifest.parquet`) for a URI of an unknown file system."""
    return os.path.abspath(os.fspath(path))


def new_file_mode() -> int:
    """The mode a new file gets in this process (0o666 less the umask). Read from /proc where Linux says it: the
    only other way, setting the umask and setting it back, leaves every other thread a moment in which the files
    it creates get umask 0 (world-writable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)  # no /proc (macOS) or a kernel before 4.7: the swap, as Python itself offers no read
    os.umask(umask)
    return 0o666 & ~umask


def new_temp_file(path: str | os.PathLike[str]) -> str:
    """The name of a new, empty hidden temporary file beside `path` (atomic_write's kind), for a writer that
    stages several files and `commit`s them together once all are written; `path` must be one m2u may write."""
    check_writable(path)
    fd, temp = _new_temp(Path(path))
    os.close(fd)
    return temp


def _commit_temp(temp: str, path: Path, sha256: str | None = None, by_name: bool = False) -> None:
    info = os.lstat(temp)
    if not stat.S_ISREG(info.st_mode):
        raise OutputRefusedError(f"the temporary file for {path} was replaced while it was written")
    commit(temp, path, sha256, by_name=by_name)


def open_new(path: str | os.PathLike[str], mode: int = 0o644):
    """A new file at `path` opened for binary writing: created with O_EXCL (never an existing file, never
    through a link), for writers that stream into their own temporary file and then `commit` it."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode), "wb")


def open_append(path: str | os.PathLike[str], encoding: str = "utf-8"):
    """`path` opened for appending text (a log): created when missing and recorded as m2u's, never opened
    through a link (O_NOFOLLOW), and an existing file only when m2u wrote it (OutputRefusedError otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(path)
    # Recorded before the file is created, as `commit` records before its rename: a process killed in between
    # leaves no log of its own that the next run would refuse.
    _record(path.parent, path.name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputRefusedError(f"{path} is a symbolic link; m2u does not write through links") from None
        raise
    return os.fdopen(fd, "a", encoding=encoding, errors=REPORT_TEXT_ERRORS)


def commit(
    temp: str | os.PathLike[str],
    path: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    by_name: bool = False,
) -> Path:
    """Rename the finished temporary file `temp` to `path` if `path` may be replaced (checked again here: a link
    planted while the file was written is refused), recording the name and the file's stamp as m2u's (`sha256`:
    its digest where the writer hashed it on the way, else it is read back). For writers that stream into their own
    temporary file (the dataset shards); everything else uses atomic_write. `by_name`: see _written_problem."""
    path = Path(path)
    check_writable(path, by_name)
    # Recorded before the rename: a writer killed between the two (a dataset build's pool kills its other workers
    # when one dies, and one was caught there in CI) must not leave m2u's own finished file unrecorded, which every
    # rerun would then refuse as not m2u's. Killed before the rename, the record names a file m2u was about to
    # write where it may write (checked just above); the rename then never came, and a rerun writes it. (The
    # file m2u wrote there before keeps its own stamp in the record: each write adds one.) A rename keeps the
    # temporary file's size and time, so its stamp is the finished file's.
    record = _record(path.parent, path.name, _stamp_of(temp, sha256))
    os.replace(temp, path)
    # After the rename, so that this file matches its stamp when the compaction looks.
    _compact_if_grown(path.parent, record)
    return path


# The names m2u's writers give their temporary files: atomic_write's ".<name>.<8 hex>.tmp" and the shard
# writer's "<name>.<pid>-<8 hex>.tmp" (m2u.datasets.shards). Only these are a killed writer's leftovers: a
# person's own "notes.tmp" or ".draft.tmp" beside m2u's outputs is theirs.
_HIDDEN_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
_WRITER_TEMP_NAME = re.compile(r".+\.\d+-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))


def is_temp_name(name: str, hidden_only: bool = False) -> bool:
    """Whether `name` is one m2u's writers give a temporary file (see _HIDDEN_TEMP_NAME)."""
    if _HIDDEN_TEMP_NAME.fullmatch(name):
        return True
    return not hidden_only and _WRITER_TEMP_NAME.fullmatch(name) is not None


def remove_temp_files(
    folder: str | os.PathLike[str],
    *,
    recursive: bool = False,
    hidden_only: bool = False,
    older_than: float | None = None,
) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` (m2u's temporary names only, `is_temp_name`;
    atomic_write's hidden ones alone with ``hidden_only``; in every subfolder too with ``recursive``; with
    ``older_than`` (a time.time() value) only those last modified before it); returns what was removed, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = (".*" if hidden_only else "*") + TEMP_SUFFIX
    removed = []
    for path in sorted(folder.rglob(pattern) if recursive else folder.glob(pattern)):
        if is_temp_name(path.name, hidden_only) and path.is_file():
            if older_than is not None and not _modified_before(path, older_than):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _modified_before(path: Path, when: float) -> bool:
    try:
        return path.stat().st_mtime < when
    except FileNotFoundError:  # its writer finished (renamed it) meanwhile
        return False


def remove_written(
    folder: str | os.PathLike[str],
    names: Iterable[str],
    ours: Callable[[PurePosixPath], bool] | None = None,
    *,
    by_name: bool = False,
) -> None:
    """Delete the entries `names` of `folder` that m2u wrote (what `--overwrite` replaces): a file its folder's
    record lists, or a folder (not a link) holding only such files, killed writers' temporary files and folders
    of the same kind; a folder is removed once empty. Anything else there (a person's own file put into a split
    folder, a link) is refused with OutputRefusedError before anything is deleted, naming the first few.
    `ours`: which files (by their path below `folder`) the tool replacing them writes; the record is shared by
    every m2u tool, so without it an m2u-eval report written into a dataset's split folder would go too.
    `by_name`: a listed file goes whatever it holds now (see _written_problem)."""
    folder = Path(folder)
    files: list[Path] = []
    folders: list[Path] = []  # deepest last: removed in reverse
    problems: list[str] = []
    # What each file's record listed for it when it was checked, before anything is deleted: the stamps to take out
    # (a stamp another m2u process records at the name from then on is its own, and stays).
    seen: dict[Path, frozenset[Stamp] | None] = {}

    def visit(path: Path) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{path} is a symbolic link")
        elif stat.S_ISDIR(info.st_mode):
            folders.append(path)
            for entry in sorted(os.listdir(path)):
                child = path / entry
                if entry == RECORD_NAME or is_temp_name(entry):
                    files.append(child)
                else:
                    visit(child)
        elif not stat.S_ISREG(info.st_mode):
            problems.append(f"{path} was not written by m2u")
        elif problem := _written_problem(path, info, by_name):
            problems.append(f"{path} {problem}")
        elif ours is not None and not ours(PurePosixPath(path.relative_to(folder).as_posix())):
            problems.append(f"{path} is another m2u tool's output")
        else:
            files.append(path)
            # Listed (checked just above), unless another process forgot it meanwhile: then nothing to take out.
            entries = _read_record(path.parent)
            if path.name in entries:
                seen[path] = entries[path.name]

    for name in names:
        visit(folder / name)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise OutputRefusedError(
            f"{'; '.join(problems[:3])}{more}: m2u replaces only what it wrote; move these away first"
        )
    gone: dict[Path, dict[str, frozenset[Stamp] | None]] = {}
    for path in files:
        if path.name == RECORD_NAME:
            info = os.lstat(path)
            _RECORDS.pop(
                (info.st_dev, info.st_ino, os.fspath(path.parent)), None
            )  # a new one may reuse the inode
            _COMPACT_AT.pop(os.fspath(path.parent), None)  # a new record there starts small
        elif path in seen:  # a listed file (temporary files are not listed)
            gone.setdefault(path.parent, {})[path.name] = seen[path]
        path.unlink(missing_ok=True)
    for parent, names_gone in gone.items():
        _forget(parent, names_gone)
    for path in reversed(folders):
        path.rmdir()


def _forget(folder: Path, names: dict[str, frozenset[Stamp] | None]) -> None:
    """Take `names` out of the folder's record once their files are deleted: a person's file put there later under
    one of them is theirs, not m2u's to replace. Appended (one O_APPEND write, as every record line), not rewritten
    here: a rewrite without the compaction's lock would lose the lines another m2u process appends meanwhile. Each
    line names a stamp taken out (`names`: name -> the stamps the record listed when the file was checked, before it
    was deleted; None for a name listed without one, which goes whole), not the name: a stamp another process
    records at the name after that check (it wrote the name again) stays, and its file stays m2u's."""
    record = folder / RECORD_NAME
    if not os.path.lexists(record):
        return  # removed with its folder
    listed = _read_record(folder)
    lines = b""
    for name in sorted(names):
        if name not in listed:
            continue
        stamps = names[name]
        if stamps is None:  # listed by name alone: the name goes
            lines += _record_line(name, forgotten=True)
        else:
            lines += b"".join(
                _record_line(name, stamp, forgotten=True) for stamp in sorted(stamps, key=Stamp.text)
            )
    if lines:
        _append_to_record(folder, lines)  # None: removed meanwhile, with its folder


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, durable: bool = False, *, by_name: bool = False
) -> Path:
    """`atomic_write` of `data`, written through the temporary file's own descriptor (m2u-mask writes three
    files per photo: every system call saved counts)."""
    path = Path(path)
    check_writable(path, by_name)
    sha256 = hashlib.sha256(data).hexdigest()
    fd, temp = _new_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _commit_temp(temp, path, sha256, by_name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    encoding: str = "utf-8",
    durable: bool = False,
    *,
    by_name: bool = False,
) -> Path:
    return atomic_write(
        path,
        lambda temp: Path(temp).write_text(text, encoding=encoding, errors=REPORT_TEXT_ERRORS),
        durable,
        by_name=by_name,
    )


def folder_clock(folder: str | os.PathLike[str]) -> int:
    """The folder's file-system clock now (ns): a file written there later has at least this mtime, however
    coarse that clock is (what a run stopped midway compares to tell its own writes from an earlier run's)."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=folder, prefix=".m2u-clock-") as probe:
        return os.fstat(probe.fileno()).st_mtime_ns


class StagedFiles:
    """The files of one report (its rows, pages, images) written under hidden temporary names beside their targets
    (atomic_write's kind) and published together by `publish`: until then the files at the targets' names (an
    earlier run's finished report) are left as they are, so a rerun stopped midway (Ctrl-C, SIGTERM, an error, a
    full disk) leaves the earlier report whole, never a mix of the two runs. `staged_files` removes whatever was
    not published. Each target must be one m2u may write (checked when it is staged, and again at `publish`)."""

    def __init__(self) -> None:
        self._temps: dict[Path, str] = {}  # target -> its temporary file, in the order staged
        self._removals: list[tuple[Path, list[str], Callable[[PurePosixPath], bool] | None]] = []

    def write(self, path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
        """Stage `path`: ``write(temp_path)`` writes its content (a library writing to a file name)."""
        path = Path(path)
        try:
            temp = new_temp_file(path)
            previous = self._temps.pop(path, None)  # staged again: the last content wins
            if previous is not None:
                Path(previous).unlink(missing_ok=True)
            self._temps[path] = temp
            write(temp)
            os.chmod(temp, new_file_mode())  # `write` may have replaced the file: the mode any new file gets
        except BaseException:
            # A report missing one file (a full disk, a refusal) must not be published as the rest of it: nothing
            # staged so far is kept, and a later `publish` puts only what is staged after this.
            self.discard()
            raise
        return path

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> Path:
        return self.write(path, lambda temp: Path(temp).write_bytes(data))

    def write_text(self, path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        return self.write(
            path, lambda temp: Path(temp).write_text(text, encoding=encoding, errors=REPORT_TEXT_ERRORS)
        )

    def staged_path(self, path: str | os.PathLike[str]) -> str | None:
        """Where the content staged for `path` is until it is published (None: nothing staged for it), for a
        writer whose next file reads it (a page summing up the rows)."""
        return self._temps.get(Path(path))

    def remove_at_publish(
        self,
        folder: str | os.PathLike[str],
        names: Iterable[str],
        ours: Callable[[PurePosixPath], bool] | None = None,
    ) -> None:
        """Delete `names` of `folder` (m2u's own: `remove_written`) when the report is published: an earlier run's
        file this report has not (its grid, its contact-sheet cells), which goes with the earlier report, not
        before it."""
        names = [name for name in names if os.path.lexists(Path(folder) / name)]
        if names:
            self._removals.append((Path(folder), names, ours))

    def publish(self) -> list[Path]:
        """Put every staged file at its name, in the order staged (the report's entry last), and delete what
        `remove_at_publish` named; returns the files published. Ctrl-C and SIGTERM are held off meanwhile (they
        arrive once it is done): the renames take moments, and a report half replaced would mix two runs. Every
        name is recorded as m2u's before the first rename, and a rename that fails (a full disk) puts back the files
        already replaced (`_replace_all`): the targets hold the whole new report or the whole earlier one."""
        with _stops_held():
            staged = list(self._temps.items())
            for path, temp in staged:
                info = os.lstat(temp)
                if not stat.S_ISREG(info.st_mode):
                    raise OutputRefusedError(
                        f"the temporary file for {path} was replaced while it was written"
                    )
                check_writable(path)
            records = [_record(path.parent, path.name, _stamp_of(temp)) for path, temp in staged]
            _replace_all(staged)
            self._temps.clear()
            for (path, _), record in zip(staged, records, strict=True):  # once every file matches its stamp
                _compact_if_grown(path.parent, record)
            for folder, names, ours in self._removals:
                remove_written(folder, names, ours)
            self._removals.clear()
        return [path for path, _ in staged]

    def discard(self) -> None:
        """Remove the staged files not published (the targets keep what they held)."""
        for temp in self._temps.values():
            Path(temp).unlink(missing_ok=True)
        self._temps.clear()
        self._removals.clear()


# What os.link says on a file system without hard links (FAT, some network shares): the earlier file is then moved
# aside instead of linked (`_replace_all`).
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}
)


def _replace_all(pairs: list[tuple[Path, str]]) -> None:
    """Rename each temporary file of `pairs` (target, temporary) to its target, all or none: the file at a target
    is kept under a hidden temporary name (a hard link: the target never goes missing) until every rename is
    done, and a rename that fails (a full disk, any OSError) puts those back and removes the targets that had no
    file, then raises one line naming the target. Backups are temporary names, so a process killed meanwhile
    leaves them for the next run's clean-up of temporary files."""
    backups: list[tuple[Path, str]] = []  # target -> where its earlier file is kept meanwhile
    created: list[Path] = []  # targets that had no file
    try:
        for path, temp in pairs:
            if os.path.lexists(path):  # checked by `publish`: a regular file m2u wrote
                backups.append((path, _back_up(path)))
                os.replace(temp, path)
            else:
                os.replace(temp, path)
                created.append(path)
    except OSError as error:
        failed = next((path for path, temp in pairs if os.path.lexists(temp)), pairs[-1][0])
        _put_back(backups, created, failed, error)
        raise OSError(
            error.errno,
            f"{error.strerror or error}; nothing was published: the files replaced before it were put back",
            os.fspath(failed),
        ) from error
    for _, backup in backups:
        with contextlib.suppress(OSError):
            os.unlink(backup)


def _back_up(path: Path) -> str:
    """A new hidden temporary name holding the file at `path`: a hard link to it, or, where the file system has
    none, the file itself moved there (the target is then missing until the rename that follows)."""
    for _ in range(100):
        backup = _temp_name(path)
        try:
            os.link(path, backup, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            os.rename(path, backup)  # a free name: one not taken a moment ago
        return backup
    raise FileExistsError(f"no free temporary name beside {path}")


def _put_back(backups: list[tuple[Path, str]], created: list[Path], failed: Path, error: OSError) -> None:
    """Undo the renames `_replace_all` made before `error`: each earlier file back at its target, each target that
    had none removed. One that cannot be put back keeps its earlier file under the backup name, which the error
    names (the next run's clean-up would take it for a killed writer's temporary file)."""
    stuck = []
    for path, backup in reversed(backups):
        try:
            if _same_file(backup, path):  # not replaced yet; rename(2) would leave both links of one file
                os.unlink(backup)
            else:
                os.replace(backup, path)
        except OSError:
            stuck.append(f"{path} (its earlier file is {backup})")
    for path in created:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if stuck:
        # Not an OSError: the guard's line for one says nothing half-written was left, which is not so here.
        raise UserError(
            f"{failed}: {error.strerror or error} while the report was published, and these could not be put back "
            f"as they were: {'; '.join(stuck)}"
        ) from error


def _same_file(one: str | Path, other: str | Path) -> bool:
    try:
        return os.path.samestat(os.lstat(one), os.lstat(other))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """A `StagedFiles` whose files not published when the block ends (an exception, Ctrl-C) are removed."""
    staged = StagedFiles()
    try:
        yield staged
    finally:
        staged.discard()


@contextlib.contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held off: recorded while the block runs and raised again as it ends, to the handler they
    had (m2u.core.guard's, Python's own). Handlers, not a signal mask: a signal sent to the process goes to any of
    its threads that does not block it (torch's, OpenMP's), and Python then runs the handler in the main thread
    anyway. Only the main thread sets handlers: elsewhere nothing changes; an ignored signal stays ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def record(signum: int, frame: object) -> None:
        arrived.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # None: a handler not set from Python
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for received in dict.fromkeys(arrived):
            signal.raise_signal(received)


def library_versions(packages: Iterable[str], platform_info: bool = False) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names); a missing package is recorded as
    "not installed" rather than dropped. ``platform_info`` adds the Python version, machine and system."""
    versions: dict[str, str] = {}
    if platform_info:
        versions.update(
            python=platform.python_version(), machine=platform.machine(), system=platform.system()
        )
    from importlib import metadata  # imported here: every command imports this module, few call this

    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def folder_storing_no_files(path: str | os.PathLike[str]) -> str:
    """The nearest existing folder above `path` where its file system stores no files (no blocks: the kernel's
    /proc and /sys, which refuse to make anything with "No such file or directory"); "" elsewhere."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    try:
        return folder if os.statvfs(folder).f_blocks == 0 else ""
    except OSError:
        return ""
