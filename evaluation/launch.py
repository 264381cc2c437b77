"""m2u-eval's console entry (m2u.core.startup.console_entry): torch loads inside it."""

from __future__ import annotations

from m2u.core.startup import console_entry

entry = console_entry("m2u.evaluation.cli", "entry")

if __name__ == "__main__":
    entry()
