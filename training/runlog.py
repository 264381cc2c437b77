"""What a run writes for people to read: the JSONL log, TensorBoard scalars, PNG grids, metrics.json and the
progress bar. Only rank 0 writes; every method is a no-op on the other ranks."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2u.core.fileio import atomic_write, open_append

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
GRID_DIR = "grids"
TENSORBOARD_DIR = "tensorboard"


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


class RunLog:
    """RUN/log.jsonl (one JSON record per line), RUN/tensorboard, RUN/grids/step-NNNNNNN.png, RUN/metrics.json."""

    def __init__(self, out: Path, task_name: str, is_main: bool) -> None:
        self.out, self.task_name, self.is_main = out, task_name, is_main
        self._writer: Any = None
        self._tensorboard = False
        self._purge_step: int | None = None

    def open_tensorboard(self, purge_step: int | None = None) -> None:
        """Write RUN/tensorboard too, from the first record or grid on: a run stopped before its first step
        (no batch, Ctrl-C while loading) leaves no event file behind. `purge_step` (a resumed run: its
        checkpoint's step + 1): TensorBoard drops the earlier processes' points from that step on, which a
        process killed after its last checkpoint had written and this one writes again."""
        self._tensorboard = self.is_main
        self._purge_step = purge_step

    def _tensorboard_writer(self) -> Any:
        if self._writer is None and self._tensorboard:
            self._tensorboard = False  # one try: without the package the JSONL log goes on alone
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but the JSONL log does not need it
                return None
            self._writer = SummaryWriter(log_dir=str(self.out / TENSORBOARD_DIR), purge_step=self._purge_step)
        return self._writer

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open_append(self.out / LOG_NAME) as handle:  # never through a link (m2u.core.fileio)
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        writer = self._tensorboard_writer()
        if writer is not None and "event" not in record:  # an event (a resume, a stop) is no curve
            split = record.get("split", "train")
            for name, value in record.items():
                if isinstance(value, float | int) and name not in ("step", "epoch", "time"):
                    writer.add_scalar(f"{self.task_name}/{split}/{name}", value, record.get("step", 0))

    def keep_records_through(self, step: int) -> list[dict[str, Any]]:
        """A resumed run's log as of its checkpoint (`step`): the records of steps after it, which a process killed
        (SIGKILL, a crash, a lost node) after its last checkpoint had written and the resumed run writes again,
        are dropped, so the log holds each step once. Records without a step and every event (the earlier
        resumes, stops) are kept, as are lines whose step is not a number; a line cut short by the kill is dropped.
        The log is m2u's own file: rewritten atomically, and only where something is dropped. Returns the records
        kept (none on ranks other than 0)."""
        path = self.out / LOG_NAME
        if not self.is_main or not path.is_file():
            return []
        kept_lines: list[str] = []
        kept: list[dict[str, Any]] = []
        dropped = 0
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped += bool(line.strip())
                    continue
                logged = record.get("step") if isinstance(record, dict) else None
                if (
                    isinstance(record, dict)
                    and "event" not in record
                    and isinstance(logged, int | float)
                    and logged > step
                ):
                    dropped += 1
                    continue
                kept_lines.append(line if line.endswith("\n") else line + "\n")
                if isinstance(record, dict):
                    kept.append(record)
        if dropped:
            atomic_write(path, lambda temp: Path(temp).write_text("".join(kept_lines), encoding="utf-8"))
        return kept

    def save_grid(self, image: torch.Tensor, columns: tuple[str, ...], step: int) -> None:
        """`image` (3, H, W) in [0, 1] as RUN/grids/step-NNNNNNN.png, with the column names above it."""
        if not self.is_main:
            return
        from PIL import Image

        array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if columns:
            from m2u.core.drawing import column_header

            array = np.vstack([column_header(array.shape[1], columns), array])
        path = self.out / GRID_DIR / f"step-{step:07d}.png"
        atomic_write(path, lambda temp: Image.fromarray(array).save(temp, format="PNG"))
        writer = self._tensorboard_writer()
        if writer is not None:
            writer.add_image(f"{self.task_name}/grid", image, step)

    def write_metrics(self, results: dict[str, Any]) -> None:
        if not self.is_main:
            return
        text = json.dumps(results, indent=2, sort_keys=True, default=_finite_or_none)
        atomic_write(self.out / METRICS_NAME, lambda temp: Path(temp).write_text(text + "\n"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_progress(task_name: str, total: int | None, initial: int, compile_note: bool) -> Any:
    """The step progress bar: with a total (the run's planned steps) tqdm shows the rate and the ETA."""
    from tqdm import tqdm

    if compile_note:
        # torch.compile is lazy: the first steps compile the networks, silently, for up to minutes.
        print(
            f"m2u-train {task_name}: --compile: compiling the networks during the first steps "
            "(the progress bar waits for it)",
            file=sys.stderr,
            flush=True,
        )
    return tqdm(total=total, initial=initial, desc=f"m2u-train {task_name}", unit="step")
