"""The one atomic writer and the versions record (m2u.core.fileio)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m2u.core.fileio import (
    RECORD_NAME,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    library_versions,
    recorded_names,
)


def test_atomic_write_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"  # the parent folder is created
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == [RECORD_NAME, "out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the umask from Linux's /proc")
def test_a_write_takes_the_new_file_mode_without_setting_the_umask(tmp_path, monkeypatch):
    """Setting the umask to read it (and back) left other threads a moment of umask 0, their new files
    world-writable: the mode is read from /proc, and the process's umask (0o027 here) is honoured."""
    from m2u.core.fileio import StagedFiles

    previous = os.umask(0o027)
    try:

        def refuse(mask: int) -> int:
            raise AssertionError(f"os.umask({mask:o}) called while writing")

        monkeypatch.setattr(os, "umask", refuse)
        atomic_write_text(tmp_path / "one.txt", "x")
        staged = StagedFiles()
        staged.write_text(tmp_path / "two.txt", "y")
        staged.publish()
    finally:
        monkeypatch.undo()
        os.umask(previous)
    for name in ("one.txt", "two.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_a_failing_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"finished work")  # an earlier run's output: m2u may replace it
    seen = []

    def half_then_fail(temp: str) -> None:
        seen.append(temp)
        with open(temp, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"finished work"
    assert os.path.basename(seen[0]).startswith(".out.bin.") and seen[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME, "out.bin"]


def test_a_writer_killed_right_after_its_rename_leaves_a_file_m2u_may_replace(tmp_path, monkeypatch):
    """A dataset build kills its other workers when one dies; one killed just after moving its shard into place
    must not leave a file every rerun refuses as not m2u's."""
    import m2u.core.fileio as fileio

    target = tmp_path / "shard.tar"
    real_replace = os.replace

    def replace_then_die(source, destination):
        real_replace(source, destination)
        raise SystemExit(9)  # the process ends here: nothing after the rename runs

    monkeypatch.setattr(fileio.os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        atomic_write_bytes(target, b"a finished shard")
    monkeypatch.undo()
    assert target.read_bytes() == b"a finished shard"
    assert fileio.replace_problem(target) == ""  # the rerun may write it again
    atomic_write_bytes(target, b"the rerun's shard")
    assert target.read_bytes() == b"the rerun's shard"


def test_a_log_opened_by_a_process_killed_right_after_creating_it_may_be_appended_to_again(
    tmp_path, monkeypatch
):
    import m2u.core.fileio as fileio

    log = tmp_path / "run.log"
    real_open = os.open

    def create_then_die(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if Path(path) != log:
            return fd  # the record of names
        os.close(fd)
        raise SystemExit(9)  # the process ends right after the log exists

    monkeypatch.setattr(fileio.os, "open", create_then_die)
    with pytest.raises(SystemExit):
        fileio.open_append(log)
    monkeypatch.undo()
    assert log.exists() and fileio.replace_problem(log) == ""
    with fileio.open_append(log) as handle:
        handle.write("the next run\n")
    assert log.read_text() == "the next run\n"


def test_library_versions_records_missing_packages_instead_of_dropping_them():
    versions = library_versions(["numpy", "no-such-package-m2u"], platform_info=True)
    assert versions["no-such-package-m2u"] == "not installed"
    assert versions["numpy"][0].isdigit()
    assert {"python", "machine", "system"} <= set(versions)


def test_a_cache_file_that_cannot_be_written_is_false_not_an_error(tmp_path):
    from m2u.core.fileio import write_cache_file

    target = tmp_path / "cache" / "derived.bin"
    assert write_cache_file(target, lambda temp: Path(temp).write_bytes(b"v1"))
    assert write_cache_file(target, lambda temp: Path(temp).write_bytes(b"v2"))  # m2u's own: replaced
    assert target.read_bytes() == b"v2"
    foreign = tmp_path / "cache" / "someone-elses.bin"
    foreign.write_bytes(b"theirs")
    assert not write_cache_file(foreign, lambda temp: Path(temp).write_bytes(b"ours"))
    assert foreign.read_bytes() == b"theirs"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert not write_cache_file(blocked / "derived.bin", lambda temp: Path(temp).write_bytes(b"x"))


def test_remove_written_removes_only_what_m2u_wrote_and_refuses_before_deleting_anything(tmp_path):
    from m2u.core.fileio import OutputRefusedError, remove_written

    atomic_write_text(tmp_path / "manifest.parquet", "ours")
    atomic_write_text(tmp_path / "train" / "train-000000.tar", "ours")
    atomic_write_text(tmp_path / "train" / "deep" / "part.json", "ours")
    (tmp_path / "train" / ".train-000001.tar.1a2b3c4d.tmp").write_text("a killed writer's")
    (tmp_path / "notes.txt").write_text("a person's, not named")
    (tmp_path / "train" / "mine.txt").write_text("a person's, inside a folder m2u wrote")
    with pytest.raises(OutputRefusedError, match=r"train/mine\.txt was not written by m2u.*move these away"):
        remove_written(tmp_path, ["manifest.parquet", "train", "absent"])
    assert (tmp_path / "manifest.parquet").exists() and (tmp_path / "train" / "train-000000.tar").exists()

    (tmp_path / "train" / "mine.txt").unlink()
    remove_written(tmp_path, ["manifest.parquet", "train", "absent"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME, "notes.txt"]
    atomic_write_text(tmp_path / "train" / "train-000000.tar", "again")  # a new record, read afresh
    assert recorded_names((tmp_path / "train" / RECORD_NAME).read_bytes()) == {"train-000000.tar"}


def test_remove_written_refuses_a_link_and_never_follows_it(tmp_path):
    from m2u.core.fileio import OutputRefusedError, remove_written

    elsewhere = tmp_path / "elsewhere"
    atomic_write_text(elsewhere / "train-000000.tar", "a shard m2u wrote, reached through a link")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train").symlink_to(elsewhere)
    with pytest.raises(OutputRefusedError, match="is a symbolic link"):
        remove_written(tmp_path / "out", ["train"])
    assert (elsewhere / "train-000000.tar").exists()


def test_a_new_record_on_a_reused_inode_is_not_read_as_the_old_one(tmp_path, monkeypatch):
    from m2u.core import fileio

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / RECORD_NAME).write_bytes(
        b"a.txt\nb.txt\n"
    )  # names alone, as logs and earlier versions record them
    assert set(fileio._read_record(old)) == {"a.txt", "b.txt"}
    (new).mkdir()
    (new / RECORD_NAME).write_bytes(b"c.txt\nd.txt\n")  # the same size
    stat_of = os.fstat
    reused = os.stat(old / RECORD_NAME)

    def same_inode(fd):  # as if the file system had given the new record the old one's inode
        info = stat_of(fd)
        return os.stat_result((info.st_mode, reused.st_ino, reused.st_dev, *info[3:10]))

    monkeypatch.setattr(fileio.os, "fstat", same_inode)
    assert set(fileio._read_record(new)) == {"c.txt", "d.txt"}
    (new / RECORD_NAME).write_bytes(b"a.txt\nz.txt\n")  # same size and first name, in the old record's folder
    assert set(fileio._read_record(new)) == {"a.txt", "z.txt"}


def test_only_m2us_own_temporary_names_are_cleared_as_leftovers(tmp_path):
    """A person's `.notes.tmp` or `draft.tmp` beside m2u's outputs is theirs: m2u-train's start-up, the dataset
    build's and `--overwrite` removed every `.*.tmp` / `*.tmp` there."""
    from m2u.core.fileio import OutputRefusedError, remove_temp_files, remove_written
    from m2u.datasets.shards import remove_stray_temp_files

    killed = [".mseg.safetensors.0a1b2c3d.tmp", "train-000001.tar.4242-0a1b2c3d.tmp", "train-000002.tar.tmp"]
    mine = [".notes.tmp", "draft.tmp", ".x.NOTHEX00.tmp"]
    for name in killed + mine:
        (tmp_path / name).write_text("x")
    assert [p.name for p in remove_temp_files(tmp_path, hidden_only=True)] == [killed[0]]
    (tmp_path / killed[0]).write_text("x")
    assert sorted(p.name for p in remove_temp_files(tmp_path)) == sorted(killed[:2])
    for name in killed:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in remove_stray_temp_files(tmp_path)) == sorted(killed)
    assert all((tmp_path / name).read_text() == "x" for name in mine)
    atomic_write_text(tmp_path / "out" / "train" / "train-000000.tar", "ours")
    (tmp_path / "out" / "train" / ".notes.tmp").write_text("a person's")
    with pytest.raises(OutputRefusedError, match=r"\.notes\.tmp was not written by m2u"):
        remove_written(tmp_path / "out", ["train"])


def test_a_name_removed_by_overwrite_is_a_persons_again(tmp_path):
    """`--overwrite` deleted m2u's file but left its name in the record: a person's file put there later under
    that name was then taken for m2u's and replaced without a word."""
    from m2u.core.fileio import OutputRefusedError, atomic_write_text, check_writable, remove_written

    atomic_write_text(tmp_path / "generator.onnx", "m2u's")
    atomic_write_text(tmp_path / "mseg.onnx", "m2u's")
    remove_written(tmp_path, ["generator.onnx"])
    (tmp_path / "generator.onnx").write_text("a person's own")
    with pytest.raises(OutputRefusedError, match="not written by m2u"):
        check_writable(tmp_path / "generator.onnx")
    check_writable(tmp_path / "mseg.onnx")  # the other name stays m2u's


def test_staged_files_leave_the_earlier_files_until_published(tmp_path):
    """A report of several files is replaced whole: until `publish` the earlier files stay as they were, and files
    not published (an exception, Ctrl-C) are removed."""
    from m2u.core.fileio import atomic_write_text, staged_files

    for name in ("rows.csv", "index.html", "old.png"):
        atomic_write_text(tmp_path / name, f"earlier {name}")
    with pytest.raises(KeyboardInterrupt), staged_files() as staged:
        staged.write_text(tmp_path / "rows.csv", "new rows")
        raise KeyboardInterrupt
    assert [p.name for p in sorted(tmp_path.iterdir()) if not p.name.startswith(".m2u")] == [
        "index.html",
        "old.png",
        "rows.csv",
    ]
    assert (tmp_path / "rows.csv").read_text() == "earlier rows.csv"
    with staged_files() as staged:
        staged.write_text(tmp_path / "rows.csv", "new rows")
        staged.write_text(tmp_path / "index.html", "new page")
        staged.remove_at_publish(tmp_path, ["old.png"])
        assert (tmp_path / "index.html").read_text() == "earlier index.html" and (
            tmp_path / "old.png"
        ).exists()
        staged.publish()
    assert (tmp_path / "rows.csv").read_text() == "new rows" and (
        tmp_path / "index.html"
    ).read_text() == "new page"
    assert not (tmp_path / "old.png").exists() and not list(tmp_path.glob("*.tmp")) + list(
        tmp_path.glob(".*.tmp")
    )
    atomic_write_text(tmp_path / "index.html", "m2u may replace what it published")


def test_ctrl_c_while_staged_files_are_published_arrives_once_all_are(tmp_path, monkeypatch):
    import signal

    from m2u.core.fileio import staged_files

    renames = []
    replace = os.replace

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        renames.append(target)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first of three renames

    with staged_files() as staged:
        for name in ("a.csv", "b.json", "index.html"):
            staged.write_text(tmp_path / name, name)
        monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            staged.publish()
    assert len(renames) == 3 and all(
        (tmp_path / name).read_text() == name for name in ("a.csv", "b.json", "index.html")
    )


def _earlier_report(folder: Path) -> dict[str, str]:
    """An earlier run's report (two of its three files: the third name is new in this run) and the new content."""
    for name in ("rows.csv", "index.html"):
        atomic_write_text(folder / name, f"earlier {name}")
    return {"rows.csv": "new rows", "faces.jsonl": "new faces", "index.html": "new page"}


def _left_as_earlier(folder: Path) -> None:
    assert (folder / "rows.csv").read_text() == "earlier rows.csv"
    assert (folder / "index.html").read_text() == "earlier index.html"
    assert not (folder / "faces.jsonl").exists()
    assert not list(folder.glob("*.tmp")) + list(folder.glob(".*.tmp"))  # neither staged files nor backups


def _fails_at(real, position: int):
    """`real` (os.replace, os.link) raising a full disk on its `position`-th call (1-based), passing the rest."""
    import errno

    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) == position:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0], args[1])
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("position", [1, 2, 3])
def test_a_full_disk_while_staged_files_are_published_puts_back_those_already_replaced(
    tmp_path, monkeypatch, position
):
    """A rename failing midway (a full disk) used to leave the first files new and the rest old: every target is
    now as it was, the new name that had no file is gone, and the error names the target in one line."""
    from m2u.core.fileio import staged_files
    from m2u.core.guard import describe_os_error

    new = _earlier_report(tmp_path)
    with staged_files() as staged:
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        monkeypatch.setattr(os, "replace", _fails_at(os.replace, position))
        with pytest.raises(OSError) as caught:
            staged.publish()
    monkeypatch.undo()
    _left_as_earlier(tmp_path)
    failed = tmp_path / list(new)[position - 1]
    assert describe_os_error(caught.value).startswith(f"{failed}: the disk is full (OSError)")
    assert "put back" in str(caught.value) and "\n" not in str(caught.value)
    with staged_files() as staged:  # the rerun, once there is room, publishes the whole report
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        staged.publish()
    assert {name: (tmp_path / name).read_text() for name in new} == new


@pytest.mark.parametrize("position", [1, 2])
def test_a_full_disk_while_an_earlier_file_is_kept_aside_puts_back_the_rest(tmp_path, monkeypatch, position):
    """The earlier file's backup (a hard link) itself failing: the targets replaced before it are put back."""
    from m2u.core.fileio import staged_files

    new = _earlier_report(tmp_path)
    with staged_files() as staged:
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        monkeypatch.setattr(os, "link", _fails_at(os.link, position))
        with pytest.raises(OSError, match="put back"):
            staged.publish()
    monkeypatch.undo()
    _left_as_earlier(tmp_path)


def test_without_hard_links_the_earlier_files_are_moved_aside_and_put_back(tmp_path, monkeypatch):
    """A file system without hard links (os.link: EPERM): the earlier file is moved aside, and put back as well."""
    import errno

    from m2u.core.fileio import staged_files

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    new = _earlier_report(tmp_path)
    monkeypatch.setattr(os, "link", no_links)
    with staged_files() as staged:
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        monkeypatch.setattr(os, "replace", _fails_at(os.replace, 3))
        with pytest.raises(OSError, match="put back"):
            staged.publish()
    monkeypatch.undo()
    _left_as_earlier(tmp_path)
    monkeypatch.setattr(os, "link", no_links)
    with staged_files() as staged:
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        staged.publish()
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_text() for name in new} == new
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("position", [1, 2, 3])
def test_a_full_disk_while_files_are_staged_removes_every_staged_file(tmp_path, position):
    """A write failing while the report is staged: the targets are untouched, every file staged so far is removed
    at once (not only when the block ends), and a `publish` after it publishes none of them."""
    import errno

    from m2u.core.fileio import StagedFiles

    new = _earlier_report(tmp_path)
    staged = StagedFiles()
    with pytest.raises(OSError):
        for k, (name, text) in enumerate(new.items(), 1):
            if k == position:

                def full(temp: str) -> None:
                    Path(temp).write_text("half")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temp)

                staged.write(tmp_path / name, full)
            else:
                staged.write_text(tmp_path / name, text)
    _left_as_earlier(tmp_path)
    assert staged.publish() == []
    _left_as_earlier(tmp_path)


def test_an_earlier_file_that_cannot_be_put_back_is_named_and_kept(tmp_path, monkeypatch):
    """The rename that would put an earlier file back failing too: the error names the target and where its
    earlier file is, and that file is kept (not taken for a leftover and removed)."""
    import errno

    from m2u.core.errors import UserError
    from m2u.core.fileio import staged_files

    new = _earlier_report(tmp_path)
    replace = os.replace

    def full_from_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) >= 2:  # faces.jsonl's rename, then putting rows.csv's earlier file back
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0], args[1])
        return replace(*args, **kwargs)

    calls: list[tuple] = []
    with staged_files() as staged:
        for name, text in new.items():
            staged.write_text(tmp_path / name, text)
        monkeypatch.setattr(os, "replace", full_from_the_second)
        with pytest.raises(
            UserError, match=r"could not be put back as they were: .*rows\.csv \(its earlier file is"
        ):
            staged.publish()
    monkeypatch.undo()
    (backup,) = tmp_path.glob(".rows.csv.*.tmp")
    assert backup.read_text() == "earlier rows.csv" and (tmp_path / "rows.csv").read_text() == "new rows"
    assert (tmp_path / "index.html").read_text() == "earlier index.html" and not (
        tmp_path / "faces.jsonl"
    ).exists()
