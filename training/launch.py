"""m2u-train's console entry (m2u.core.startup.console_entry): torch loads inside it."""

from __future__ import annotations

from m2u.core.startup import console_entry

train_main = console_entry("m2u.training.cli", "train_main")

if __name__ == "__main__":
    train_main()
