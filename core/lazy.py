"""Lazy public surfaces: a package lists `name -> submodule` and imports the submodule on first use (PEP 562).

Importing a package then costs nothing until a name is used, and `from <package> import name` loads
only the submodule that defines the name.

Hand-written rather than `lazy_loader.attach` (installed with scikit-image): lazy_loader resolves a name only
in a submodule of the package itself, and m2u's packages also re-export a name from a package below them
(the masking package's `read_image` is `m2u.core.imageio.read_image`). tests/core/test_lazy.py shows both.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


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
