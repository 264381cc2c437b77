"""Output names of the per-file tools (m2u.core.inputs.claim_output_names): a rerun gives each input the name an
earlier run's report gave it, whatever order the inputs come in."""

from __future__ import annotations

from pathlib import Path

from m2u.core.inputs import InputEntry, claim_output_names, earlier_names


def _entries(tmp_path: Path, relatives: list[str]) -> list[InputEntry]:
    entries = []
    for relative in relatives:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        entries.append(InputEntry(path, path.name, str(path.parent)))
    return entries


def _wanted(entries: list[InputEntry], suffix: str = ".jpg") -> list[tuple[str, str]]:
    return [(Path(e.relative).stem, suffix) for e in entries]


def test_a_rerun_in_another_order_or_with_a_new_input_keeps_each_inputs_name(tmp_path):
    a, big, b = _entries(tmp_path, ["a/x.jpg", "b/X.jpg", "b/x.jpg"])
    first = claim_output_names([a, big, b], _wanted([a, big, b]))
    assert first == ["x.jpg", "X-2.jpg", "x-3.jpg"]  # a first run: in input order, as before
    earlier = list(zip((str(e.path) for e in (a, big, b)), first, strict=True))
    again = claim_output_names([big, b, a], _wanted([big, b, a]), earlier)
    assert again == ["X-2.jpg", "x-3.jpg", "x.jpg"]
    (new,) = _entries(tmp_path, ["c/x.jpg"])
    assert claim_output_names([new, b, a], _wanted([new, b, a]), earlier) == ["x-4.jpg", "x-3.jpg", "x.jpg"]
    # b's photos, still there but not given now, keep their names from other inputs
    assert claim_output_names([new, a], _wanted([new, a]), earlier) == ["x-4.jpg", "x.jpg"]


def test_an_earlier_name_is_kept_only_where_the_input_could_get_it_and_its_photo_is_there(tmp_path):
    a, b = _entries(tmp_path, ["a/x.jpg", "b/x.jpg"])
    earlier = [(str(a.path), "x.jpg"), (str(b.path), "x-2.jpg")]
    # Written as PNG now: the earlier JPEG names are not names these inputs get, so they are named afresh (the
    # JPEGs' names stay held: a PNG name never clashes with them)
    assert claim_output_names([b, a], _wanted([b, a], ".png"), earlier) == ["x.png", "x-2.png"]
    a.path.unlink()  # a's photo is gone: the name the report gave it may be taken
    assert claim_output_names([b], _wanted([b]), earlier) == ["x-2.jpg"]
    (c,) = _entries(tmp_path, ["c/x.jpg"])
    assert claim_output_names([c, b], _wanted([c, b]), earlier) == ["x.jpg", "x-2.jpg"]


def test_earlier_names_are_the_outputs_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    rows = [
        ("in/a.jpg", str(out / "sub" / "a.jpg")),
        ("in/b.jpg", ""),  # nothing written
        ("in/c.jpg", str(tmp_path / "elsewhere" / "c.jpg")),
    ]
    assert earlier_names(out, rows) == [("in/a.jpg", "sub/a.jpg")]
