"""The build's progress bar: samples done and counts per status, from per-shard reports (the latest wins)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from m2u.datasets.layout import MANIFEST_STATUSES


class BuildProgress:
    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="pair", disable=not enabled, desc="m2u-make-dataset")
        self._done: dict[Any, int] = {}
        self._counts: dict[Any, dict[str, int]] = {}

    def update(self, key: Hashable, done: int, counts: dict[str, int]) -> None:
        """Shard ``key`` (or part ``(shard, i)`` of it) has ``done`` samples processed with these counts (a retried
        one starts again). A report for a whole shard replaces those of its parts."""
        for part in [k for k in self._done if isinstance(k[0], tuple) and k[0] == key]:
            del self._done[part], self._counts[part]
        self._done[key] = done
        self._counts[key] = dict(counts)
        self._bar.n = sum(self._done.values())
        self._bar.set_postfix(self.counts(), refresh=False)
        self._bar.refresh()

    def counts(self) -> dict[str, int]:
        total = {status.value: 0 for status in MANIFEST_STATUSES}
        for counts in self._counts.values():
            for status, n in counts.items():
                total[status] += n
        return total

    def close(self) -> None:
        self._bar.close()
