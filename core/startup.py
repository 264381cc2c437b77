"""What a console command settles before numpy loads (numpy reads its BLAS settings once, when it loads).

This module imports nothing heavy: a command's entry function calls it first and only then imports its Click
layer (which loads numpy).
"""

from __future__ import annotations

import os
import sys

# numpy's bundled OpenBLAS reads these when it loads; a value the user set is kept.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS",)


def one_blas_thread() -> bool:
    """One OpenBLAS thread in this process and the worker processes it starts, for commands that run one process
    per core (m2u-mask, m2u-make-dataset): their numpy work is small arrays, and OpenBLAS's pool of one thread per
    core only costs CPU time, measured at about 0.2 CPU-seconds per process start (benchmarks/masking.py). Returns
    False, changing nothing, when numpy is already loaded (too late to take effect)."""
    if "numpy" in sys.modules:
        return False
    for name in _BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    return True
