"""m2u.core.lazy: names resolve on first use, from a submodule or re-exported from a lower package."""

from __future__ import annotations

import sys
import types

import pytest

from m2u.core.lazy import lazy_exports


def _package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package
    sys.modules[name] = module
    return module


@pytest.fixture
def fake_package():
    module = _package("m2u_lazy_probe")
    yield module
    del sys.modules["m2u_lazy_probe"]


def test_a_re_export_from_another_package_resolves_and_is_cached(fake_package):
    import m2u.core.imageio as imageio

    exports = {"read_image": "m2u.core.imageio"}
    fake_package.__getattr__, fake_package.__dir__ = lazy_exports("m2u_lazy_probe", exports)
    assert fake_package.read_image is imageio.read_image
    assert "read_image" in vars(fake_package)  # cached: the next access bypasses __getattr__
    assert "read_image" in dir(fake_package)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = fake_package.nothing


def test_masking_re_exports_the_core_reader():
    import m2u.core.imageio as imageio
    import m2u.masking as masking

    assert masking.read_image is imageio.read_image
    assert masking.ImageReadError is imageio.ImageReadError


def test_lazy_loader_cannot_re_export_from_another_package(fake_package):
    # Why m2u keeps its own: lazy_loader (installed with scikit-image) looks every name up as "<package>.<sub>".
    lazy_loader = pytest.importorskip("lazy_loader")
    getattr_, _, _ = lazy_loader.attach("m2u_lazy_probe", submod_attrs={"m2u.core.imageio": ["read_image"]})
    with pytest.raises(ModuleNotFoundError):
        getattr_("read_image")
