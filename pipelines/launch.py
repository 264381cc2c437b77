"""m2u-pipeline's console entry (m2u.core.startup.console_entry): torch loads inside it."""

from __future__ import annotations

from m2u.core.startup import console_entry

main = console_entry("m2u.pipelines.cli", "main")

if __name__ == "__main__":
    main()
