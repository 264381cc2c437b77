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


def _flat_template(name: str, value: float, width: int = 256) -> templates.Template:
    plane = np.full((width // 2, width), value, np.float32)
    return templates.Template(name, np.dstack([plane] * 3), plane + 1 - value, plane * 0, plane * 0 + 1)


def test_a_pyramid_being_built_is_not_read_half_built(monkeypatch):
    """Template.level appended its pyramid's levels one by one: a second thread asking for a small level meanwhile
    took the full-size one (apply_mask in a thread pool drew other bytes for the same seed on its first calls).
    The interleaving is made here: the second call comes while the first builds its second level."""
    template = _flat_template("t", 0.5)
    pyr_down = templates.cv2.pyrDown
    inside: list = []

    def pyr_down_with_a_second_caller(image):
        if not inside:
            inside.append(None)
            inside[0] = template.level(40)[0].shape  # the other thread, between two levels
        return pyr_down(image)

    monkeypatch.setattr(templates.cv2, "pyrDown", pyr_down_with_a_second_caller)
    first = template.level(40)[0].shape
    assert inside == [first] and first[1] == 64


def test_a_cached_texture_is_never_another_templates(monkeypatch):
    """The texture cache was keyed by id(template): a template dropped (two threads' first calls each loading one,
    a reloaded pack) left its texture to the next object given its id. Two templates given one id stand for that."""
    from m2u.masking import shading

    monkeypatch.setattr(shading, "_TEXTURES", type(shading._TEXTURES)())
    monkeypatch.setattr(
        shading, "id", lambda _: 1, raising=False
    )  # both templates get one id, as a reused one
    dark, light = _flat_template("dark", 0.2), _flat_template("light", 0.8)
    args = (200.0, None, 0.5, None, 0.5)
    assert float(shading.premultiplied_texture(dark, *args)[..., 0].mean()) == pytest.approx(0.2)
    assert float(shading.premultiplied_texture(light, *args)[..., 0].mean()) == pytest.approx(0.8)
