"""Lazy public surfaces: a package lists `name -> submodule` and imports the submodule on first use (PEP 562);
and `loaded_once`, functools.cache for a model loaded once per process, built by one thread.

Importing a package then costs nothing until a name is used, and `from <package> import name` loads
only the submodule that defines the name.

Hand-written rather than `lazy_loader.attach` (installed with scikit-image): lazy_loader resolves a name only
in a submodule of the package itself, and m2u's packages also re-export a name from a package below them
(the masking package's `read_image` is `m2u.core.imageio.read_image`). tests/core/test_lazy.py shows both.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from m2u.core.locks import ForkSafeLock

R = TypeVar("R")


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__, __dir__ = lazy_exports(__name__, {"Name": "submodule", ...})` in a package's __init__."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # A dotted name is an absolute module (a re-export from a lower package); a plain one is a submodule.
        target = module if "." in module else f"{package}.{module}"
        value = getattr(importlib.import_module(target), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


class LoadedOnce(Generic[R]):
    """`functools.cache` for what a process loads once (a model, an interpreter), whose first call per arguments is
    made by one thread at a time: with functools.cache alone, threads sharing an Unmasker that made their first
    calls at once each loaded their own copy meanwhile (8 threads: dlib's landmark model built 8 times, the mask
    classifiers 4-8 times, 936-978 MB at the peak against 675 MB for one thread), and objects meant to be one per
    process (each with its own lock) were several. Reentrant: a loader may call itself with other arguments."""

    def __init__(self, load: Callable[..., R]):
        self._cached = functools.cache(load)
        # A child forked while another thread loads finds it unlocked (and loads its own: the load never finished).
        self._lock = ForkSafeLock(reentrant=True)
        functools.update_wrapper(self, load)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        with self._lock:
            return self._cached(*args, **kwargs)

    def cache_clear(self) -> None:
        with self._lock:
            self._cached.cache_clear()

    def cache_info(self) -> Any:
        return self._cached.cache_info()


def loaded_once(load: Callable[..., R]) -> LoadedOnce[R]:
    """The decorator: `@loaded_once` where `@functools.cache` would load a model (see LoadedOnce)."""
    return LoadedOnce(load)
