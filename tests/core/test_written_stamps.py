"""m2u.core.fileio's record keeps a stamp of each file m2u wrote (size, time, SHA-256): a person's file put back at a
name m2u wrote earlier is theirs, never replaced or removed; m2u's own files stay m2u's when a folder is copied."""

from __future__ import annotations

import os
import shutil

import pytest

from m2u.core import fileio
from m2u.core.fileio import (
    RECORD_NAME,
    OutputRefusedError,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    mark_written,
    open_append,
    recorded_names,
    remove_written,
)


def _put_back(path, data: bytes) -> None:
    """A person removes m2u's file by hand and puts their own at its name."""
    path.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize("same_size", [False, True])
def test_a_persons_file_put_back_at_a_name_m2u_wrote_is_never_replaced_or_removed(tmp_path, same_size):
    out = tmp_path / "out"
    atomic_write_bytes(out / "photo.jpg", b"m2u's restored photo")
    mine = b"my own photo, same size" if not same_size else b"m2u's restored phot0"
    _put_back(out / "photo.jpg", mine)
    with pytest.raises(OutputRefusedError, match="is not the file m2u wrote there"):
        atomic_write_text(out / "photo.jpg", "a rerun's output")
    with pytest.raises(OutputRefusedError, match="is not the file m2u wrote there"):
        remove_written(out, ["photo.jpg"])
    assert (out / "photo.jpg").read_bytes() == mine


def test_m2us_files_copied_or_touched_stay_m2us(tmp_path):
    out = tmp_path / "out"
    atomic_write_text(out / "report.csv", "m2u's report")
    atomic_write_bytes(out / "sub" / "shard.tar", b"m2u's shard")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)  # new times, the same bytes
    os.utime(out / "report.csv", ns=(0, 0))
    for folder in (out, copy):
        atomic_write_text(folder / "report.csv", "a rerun's report")
        remove_written(folder, ["sub"])
        assert (folder / "report.csv").read_text() == "a rerun's report"
        assert not (folder / "sub").exists()


def test_a_write_killed_before_its_rename_leaves_the_earlier_file_m2us(tmp_path, monkeypatch):
    """The stamp is recorded before the rename (a killed writer must not leave its finished file unrecorded): the
    file m2u wrote there before keeps its own stamp."""
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"first")

    def killed(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"second, never renamed")
    monkeypatch.undo()
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"


def test_names_recorded_alone_stay_any_files_until_m2u_writes_them_with_a_stamp(tmp_path):
    """Records of earlier versions, appended logs and lock files list names alone: any file at the name is m2u's.
    Once m2u writes the name again, only what it wrote is."""
    (tmp_path / RECORD_NAME).write_bytes(b"earlier.jpg\n")
    (tmp_path / "earlier.jpg").write_bytes(b"an earlier version's output")
    check_writable(tmp_path / "earlier.jpg")
    atomic_write_bytes(tmp_path / "earlier.jpg", b"this version's output")
    _put_back(tmp_path / "earlier.jpg", b"a person's")
    with pytest.raises(OutputRefusedError, match="is not the file m2u wrote there"):
        check_writable(tmp_path / "earlier.jpg")

    for line in ("run.log", "more"), ("run.log", "and more"):
        with open_append(tmp_path / line[0]) as handle:
            handle.write(line[1] + "\n")
    (tmp_path / "build.lock").write_text("pid 42")
    mark_written(tmp_path / "build.lock")
    (tmp_path / "build.lock").write_text("pid 4242")  # the lock library rewrites it
    remove_written(tmp_path, ["run.log", "build.lock"])
    assert sorted(os.listdir(tmp_path)) == sorted([RECORD_NAME, "earlier.jpg"])


def test_a_record_line_whose_stamp_cannot_be_read_lists_nothing(tmp_path):
    (tmp_path / RECORD_NAME).write_bytes(b"photo.jpg/not-a-stamp\n")
    (tmp_path / "photo.jpg").write_bytes(b"whose?")
    with pytest.raises(OutputRefusedError, match="was not written by m2u"):
        check_writable(tmp_path / "photo.jpg")


def test_names_are_forgotten_by_appending_so_no_other_writers_line_is_lost(tmp_path):
    """remove_written takes a name out of the record with a line of its own: it does not rewrite the record, so a
    line another m2u process appends meanwhile (its own output) cannot be lost."""
    atomic_write_bytes(tmp_path / "gone.jpg", b"m2u's")
    atomic_write_bytes(tmp_path / "kept.jpg", b"m2u's too")
    before = (tmp_path / RECORD_NAME).read_bytes()
    remove_written(tmp_path, ["gone.jpg"])
    after = (tmp_path / RECORD_NAME).read_bytes()
    assert after.startswith(before) and after[len(before) :].startswith(b"gone.jpg/-5:")
    assert recorded_names(after) == {"kept.jpg"}
    (tmp_path / "gone.jpg").write_bytes(b"a person's, under the name m2u removed")
    with pytest.raises(OutputRefusedError, match="was not written by m2u"):
        check_writable(tmp_path / "gone.jpg")
    (tmp_path / "gone.jpg").unlink()
    atomic_write_bytes(tmp_path / "gone.jpg", b"m2u's again")  # written again: listed again
    check_writable(tmp_path / "gone.jpg")
    check_writable(tmp_path / "kept.jpg")


def test_a_name_written_again_by_another_process_while_it_is_forgotten_stays_m2us(tmp_path, monkeypatch):
    """remove_written checks each file against the record, deletes them all, then appends its forget lines: another
    m2u process that writes a name again in between records its own stamp before those lines. They take out only
    the stamps the check read, so the other process's file stays m2u's (a forget line naming the whole name, or
    every stamp listed by then, made it a refusal later)."""
    atomic_write_bytes(tmp_path / "photo.jpg", b"m2u's first")
    atomic_write_bytes(tmp_path / "other.jpg", b"m2u's other")
    original_forget = fileio._forget

    def written_again_first(folder, names):
        atomic_write_bytes(
            tmp_path / "photo.jpg", b"another m2u process's"
        )  # after the deletion, before the lines
        original_forget(folder, names)

    monkeypatch.setattr(fileio, "_forget", written_again_first)
    remove_written(tmp_path, ["photo.jpg", "other.jpg"])
    monkeypatch.undo()
    assert (tmp_path / "photo.jpg").read_bytes() == b"another m2u process's"
    check_writable(tmp_path / "photo.jpg")
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == {"photo.jpg"}
    remove_written(tmp_path, ["photo.jpg"])  # and forgotten in turn
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == set()
