"""A drawn mask template is kept in m2u's cache folder and read back instead of drawn again (issue 28: drawing the
surgical template took ~55 ms of a one-photo run, all seven ~0.25 s): the same arrays and straps either way, a
damaged or missing file drawn again, a read-only cache only slower."""

from __future__ import annotations

import numpy as np
import pytest

from m2u.masking import templates


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("M2U_CACHE", str(folder))
    templates.get_template.cache_clear()
    yield folder
    templates.get_template.cache_clear()


def _same(a: templates.Template, b: templates.Template) -> bool:
    return (
        a.name == b.name
        and a.straps == b.straps
        and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("rgb", "shade", "tint", "alpha"))
        and all(
            getattr(b, k).dtype == np.float32 and getattr(b, k).flags.c_contiguous for k in ("rgb", "alpha")
        )
    )


def _never_drawn(monkeypatch, name: str) -> None:
    def fail():
        raise AssertionError("drawn although its cache file is there")

    monkeypatch.setitem(templates._BUILDERS, name, fail)


def test_a_drawn_template_is_read_back_from_the_cache(cache, monkeypatch):
    drawn = templates.get_template("n95")
    path = templates.cached_template_path("n95")
    assert path.parent == cache and path.is_file()
    templates.get_template.cache_clear()
    _never_drawn(monkeypatch, "n95")
    assert _same(drawn, templates.get_template("n95"))
    assert drawn.straps and isinstance(templates.get_template("n95").straps[0].rgb, tuple)


def test_a_damaged_cache_file_is_drawn_and_written_again(cache):
    drawn = templates.get_template("gas")
    path = templates.cached_template_path("gas")
    path.write_bytes(path.read_bytes()[:1000])  # a truncated file (a full disk, another tool)
    templates.get_template.cache_clear()
    assert _same(drawn, templates.get_template("gas"))
    templates.get_template.cache_clear()
    assert templates._read_cached(path, "gas") is not None  # rewritten whole


def test_the_file_name_follows_the_library_versions_and_old_files_go(cache, monkeypatch):
    templates.get_template("cloth")
    old = templates.cached_template_path("cloth")
    monkeypatch.setattr(templates.np, "__version__", "0.0-other")
    new = templates.cached_template_path("cloth")
    assert new != old and new.name.startswith("template-cloth-")
    templates.get_template.cache_clear()
    templates.get_template("cloth")  # drawn again for the other version; the old file is never read again
    assert new.is_file() and not old.exists()


def test_a_read_only_cache_folder_only_means_drawing_every_time(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("M2U_CACHE", str(blocked / "cache"))
    templates.get_template.cache_clear()
    try:
        template = templates.get_template("kn95")
    finally:
        templates.get_template.cache_clear()
    assert template.alpha.shape == (templates.TEXTURE_HEIGHT, templates.TEXTURE_WIDTH)


def test_a_damaged_file_m2u_did_not_write_is_left_and_the_template_drawn(cache):
    path = templates.cached_template_path("surgical")
    cache.mkdir(parents=True)
    path.write_bytes(b"not a template")  # e.g. copied in by hand: not in the folder's record of m2u's files
    template = templates.get_template("surgical")
    assert template.alpha.shape == (templates.TEXTURE_HEIGHT, templates.TEXTURE_WIDTH)
    assert path.read_bytes() == b"not a template"
