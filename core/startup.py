"""What a console command settles before numpy loads (numpy reads its BLAS settings once, when it loads).

This module imports nothing heavy: a command's entry (`entry_with_one_blas_thread`) acts first and only then
imports its Click layer, which loads numpy.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

# numpy's bundled OpenBLAS reads these when it loads; a value the user set is kept.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS",)


def one_blas_thread() -> bool:
    """One OpenBLAS thread in this process and the worker processes it starts. For commands whose numpy work is
    small arrays (m2u-mask and m2u-make-dataset run one process per core; m2u-unmask's heavy work is torch's, with
    its own threads): OpenBLAS's pool of one thread per core only costs them CPU time (README, "one-BLAS-thread
    start"). Returns False, changing nothing, when numpy is already loaded (too late to take effect)."""
    if "numpy" in sys.modules:
        return False
    for name in _BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    return True


def entry_with_one_blas_thread(module: str, command: str) -> Callable[[], None]:
    """A console-script entry: `one_blas_thread`, then `module.command` (a Click command) imported and run."""

    def main() -> None:
        one_blas_thread()
        getattr(importlib.import_module(module), command)()

    main.__doc__ = f"{module}.{command} with one BLAS thread (m2u.core.startup)."
    return main
