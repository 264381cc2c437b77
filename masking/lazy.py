"""Lazy package attributes: a package lists {name: submodule} and imports a submodule on first use.

Used by the packages whose submodules pull in heavy libraries (torch, OpenCV, dlib), so that importing a
light part (a config dataclass) does not load them all."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for `package`, resolving each exported name from `package.<submodule>`."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module protocol's name)
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
