"""The build's progress bar: samples done and counts per status, from per-shard reports (the latest wins)."""

from __future__ import annotations

from m2u.datasets.layout import Status


class BuildProgress:
    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="pair", disable=not enabled, desc="m2u-make-dataset")
        self._done: dict[tuple[str, int], int] = {}
        self._counts: dict[tuple[str, int], dict[str, int]] = {}

    def update(self, shard_id: tuple[str, int], done: int, counts: dict[str, int]) -> None:
        """Shard ``shard_id`` has ``done`` samples processed with these counts (a retried shard starts again)."""
        self._done[shard_id] = done
        self._counts[shard_id] = dict(counts)
        self._bar.n = sum(self._done.values())
        self._bar.set_postfix(self.counts(), refresh=False)
        self._bar.refresh()

    def counts(self) -> dict[str, int]:
        total = {status.value: 0 for status in Status}
        for counts in self._counts.values():
            for status, n in counts.items():
                total[status] += n
        return total

    def close(self) -> None:
        self._bar.close()
