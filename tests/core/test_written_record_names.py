"""m2u.core.fileio's record of what it wrote (.m2u-written): every name a file can have is listed as one entry."""

from __future__ import annotations

import os

import pytest

from m2u.core.fileio import RECORD_NAME, atomic_write_text, check_writable, recorded_names, remove_written

NAMES = ["new\nline.jpg", "carriage\rreturn.jpg", "back\\slash.jpg", "both\\n\n\\.jpg"]
if os.fsencode(os.fsdecode(b"caf\xe9.jpg")) == b"caf\xe9.jpg":  # surrogateescape names (a POSIX file system)
    NAMES.append(os.fsdecode(b"caf\xe9\n.jpg"))


@pytest.mark.parametrize("name", NAMES)
def test_any_file_name_is_recorded_as_one_name_and_replaced_again(tmp_path, name):
    out = tmp_path / "out"
    atomic_write_text(out / name, "first run")
    atomic_write_text(out / name, "second run")  # m2u's own file: replaced, not refused
    assert (out / name).read_text() == "second run"
    check_writable(out / name.replace("\n", "").replace("\r", ""))  # no made-up name is listed either
    for part in name.replace("\r", "\n").split("\n"):
        if part and part != name:
            (out / part).write_text("a person's")
            with pytest.raises(ValueError, match="not written by m2u"):
                check_writable(out / part)
            (out / part).unlink()
    remove_written(out, [name])  # and the record without it still lists nothing else
    assert sorted(os.listdir(out)) == [RECORD_NAME]
    (out / name).write_text("a person's, under the name m2u wrote before")
    with pytest.raises(ValueError, match="not written by m2u"):
        check_writable(out / name)


def test_records_written_before_read_as_they_always_did(tmp_path):
    """One plain name per line, as earlier versions wrote them (a backslash is part of the name)."""
    names = ["plain.jpg", "back\\slash.jpg", "back\\nslash.jpg", "trailing\\"]
    (tmp_path / RECORD_NAME).write_bytes(b"".join(os.fsencode(n) + b"\n" for n in names))
    for name in names:
        (tmp_path / name).write_text("an earlier run's")
        check_writable(tmp_path / name)
    # A plain name is still written as earlier versions did, its stamp after it; the earlier lines stay as they were.
    atomic_write_text(tmp_path / "plain2.jpg", "x")
    lines = (tmp_path / RECORD_NAME).read_bytes().split(b"\n")
    assert lines[: len(names)] == [os.fsencode(n) for n in names] and lines[len(names)].startswith(
        b"plain2.jpg/"
    )
    atomic_write_text(tmp_path / "back\\slash2.jpg", "x")
    assert (tmp_path / RECORD_NAME).read_bytes().split(b"\n")[-2].startswith(b"back\\slash2.jpg/")
    assert recorded_names((tmp_path / RECORD_NAME).read_bytes()) == {*names, "plain2.jpg", "back\\slash2.jpg"}
