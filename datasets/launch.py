"""m2u-make-dataset's console entry: one BLAS thread per process (m2u.core.startup), then the Click command."""

from __future__ import annotations

from m2u.core.startup import entry_with_one_blas_thread

main = entry_with_one_blas_thread("m2u.datasets.cli", "main")

if __name__ == "__main__":
    main()
