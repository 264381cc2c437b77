"""m2u-unmask's console entry: one BLAS thread per process (m2u.core.startup), then the Click command; and
m2u-export's (m2u.core.startup.console_entry)."""

from __future__ import annotations

from m2u.core.startup import console_entry, entry_with_one_blas_thread

unmask_main = entry_with_one_blas_thread("m2u.inference.cli", "unmask_main")
export_main = console_entry("m2u.inference.cli", "export_main")

if __name__ == "__main__":
    unmask_main()
