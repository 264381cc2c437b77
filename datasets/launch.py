"""m2u-make-dataset's console entry: one BLAS thread per process (see m2u.core.startup), then the Click command."""

from __future__ import annotations

from m2u.core.startup import one_blas_thread


def main() -> None:
    one_blas_thread()
    from m2u.datasets.cli import main as command  # loads numpy: after the setting above

    command()


if __name__ == "__main__":
    main()
