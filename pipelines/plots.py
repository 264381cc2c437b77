"""Loss and validation curves of the training stages, drawn from their JSONL logs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from m2u.training.trainer import LOG_NAME

_BOOKKEEPING = {"step", "epoch", "split", "event", "lr", "seconds", "samples"}


def read_log(path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{split: {metric: [(step, value), ...]}} from a trainer log; lines that are not records are skipped."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill mid-write
        split, step = record.get("split"), record.get("step")
        if split is None or step is None:
            continue
        for key, value in record.items():
            if key not in _BOOKKEEPING and isinstance(value, int | float):
                series[split][key].append((int(step), float(value)))
    return series


def plot_training_curves(stage_dirs: dict[str, Path], out_dir: Path) -> list[Path]:
    """One PNG per stage and split (train losses, validation metrics); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for stage, stage_dir in stage_dirs.items():
        log = Path(stage_dir) / LOG_NAME
        if not log.exists():
            continue
        for split, metrics in read_log(log).items():
            if not metrics:
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            figure, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.2 * len(metrics)), squeeze=False)
            for axis, (name, points) in zip(axes[:, 0], sorted(metrics.items())):
                steps, values = zip(*points)
                axis.plot(steps, values, marker="." if len(points) < 30 else None)
                axis.set_ylabel(name)
                axis.grid(alpha=0.3)
            axes[-1, 0].set_xlabel("step")
            figure.suptitle(f"{stage}: {split}")
            figure.tight_layout()
            path = out_dir / f"{stage}_{split}.png"
            figure.savefig(path, dpi=90)
            plt.close(figure)
            written.append(path)
    return written
