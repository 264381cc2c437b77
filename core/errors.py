"""Errors of the library that name a setting, in words that fit every way in.

A library function does not know whether its caller is a CLI flag, a config file, a `--set` override or Python:
it names a setting by its configuration key (the field of the config dataclass and the key of a config file:
``limit``, ``identity_file``, ``split_by``), and another setting it mentions in backticks (```overwrite```). The
CLIs render both as their flags (``--limit``, ``--overwrite``: m2u.core.cli.cli_message), so a CLI user reads the
flag and a library user the key.
"""

from __future__ import annotations


class SettingError(ValueError):
    """A setting's value that cannot be used: `setting` is its configuration key, `message` what is wrong with it.
    ``str()``: "limit: must be >= 1, got 0"; a CLI says "--limit: must be >= 1, got 0". A ValueError, so callers
    that catch a bad value keep working."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting, self.message = setting, message


class UserError(Exception):
    """An error whose message tells the user all there is to say (a damaged shard, a dataset without its
    manifest): every command prints it as one line (m2u.core.guard, which the library's modules below it cannot
    import: m2u.core.fileio)."""


__all__ = ["SettingError", "UserError"]
