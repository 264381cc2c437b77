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


def test_loaded_once_builds_once_for_threads_calling_first_at_once():
    """functools.cache lets every thread that calls before the first build ends build its own (an Unmasker shared
    by 8 threads loaded dlib's landmark model 8 times); loaded_once makes them wait for the one build."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from m2u.core.lazy import loaded_once

    built = []

    @loaded_once
    def load(name: str = "a") -> object:
        built.append(name)
        time.sleep(0.05)
        return object() if name == "a" else load("a")  # reentrant: a loader may call itself

    gate = threading.Barrier(4)

    def first_call(_):
        gate.wait()
        return load("a")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(first_call, range(4)))
    assert built == ["a"] and all(r is results[0] for r in results)
    assert load("b") is results[0] and load.cache_info().currsize == 2
    load.cache_clear()
    assert load("a") is not results[0]


def test_the_inference_classifiers_load_once_for_threads_calling_first_at_once(monkeypatch):
    """The mask, upside-down and box orientation classifiers an Unmasker's threads ask for on their first faces."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import m2u.inference.mask_presence as presence

    built = []

    def slow_load(file, what):
        built.append(what)
        time.sleep(0.05)
        return object()

    monkeypatch.setattr(presence, "_load", slow_load)
    loaders = (
        presence.load_mask_classifier,
        presence.load_upside_down_classifier,
        presence.load_box_orientation_net,
    )
    for loader in loaders:
        loader.cache_clear()
    gate = threading.Barrier(4)

    def first_call(loader):
        gate.wait()
        return loader()

    try:
        for loader in loaders:
            with ThreadPoolExecutor(4) as pool:
                assert len({id(net) for net in pool.map(first_call, [loader] * 4)}) == 1
    finally:
        for loader in loaders:
            loader.cache_clear()  # the next caller loads the real files
    assert sorted(built) == ["box orientation net", "mask classifier", "upside-down classifier"]
