"""Loss and validation curves of the training stages, drawn from their JSONL logs."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path

from m2u.core.fileio import atomic_write
from m2u.training.runlog import LOG_NAME

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


# Logged values that are not curves to look at: wall-clock stamps and durations.
_NOT_CURVES = {"time", "seconds", "wall_s", "elapsed_s"}
SMOOTHING = 0.9  # exponential moving average of the train curves (TensorBoard's default slider)


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled towards zero."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**n))
    return out


def curve_panels(splits: dict[str, dict[str, list[tuple[int, float]]]]) -> dict[str, dict[str, list]]:
    """{metric: {split: points}} for the metrics worth a panel: no timestamps, no all-zero terms (a loss term
    switched off); a metric logged by train and val gets one panel with both."""
    panels: dict[str, dict[str, list]] = defaultdict(dict)
    for split, metrics in splits.items():
        for name, points in metrics.items():
            if name in _NOT_CURVES or not points or all(value == 0 for _, value in points):
                continue
            panels[name][split] = points
    return dict(sorted(panels.items()))


# One colour per split, the same in every panel and stage (matplotlib's default cycle, colour-blind distinct).
SPLIT_COLORS = {"train": "C0", "val": "C1", "test": "C2"}


def split_color(split: str) -> str:
    """The split's colour; a split not named above gets the next colours of the cycle, never a taken one."""
    if split in SPLIT_COLORS:
        return SPLIT_COLORS[split]
    return f"C{3 + sum(map(ord, split)) % 7}"


def draw_panel(axis, by_split: dict[str, list]) -> None:
    """One metric's curves: train raw (faint) and smoothed, every other split as measured; each split in its own
    colour and labelled in the legend."""
    for split, points in sorted(by_split.items(), key=lambda item: item[0] != "train"):
        steps, values = zip(*points)
        marker = "." if len(points) < 30 else None
        color = split_color(split)
        if split == "train" and len(points) > 2:
            axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            axis.plot(steps, smoothed(list(values)), color=color, label="train (smoothed)")
        else:
            axis.plot(steps, values, marker=marker, color=color, label=split)


def _save_png(figure, temp: Path) -> None:
    figure.savefig(temp, dpi=90, format="png")


def plot_training_curves(stage_dirs: dict[str, Path], out_dir: Path) -> list[Path]:
    """One PNG per stage (`<stage>_train.png`): a panel per metric, train (raw, faint, and smoothed) and val on
    the same axis, integer step ticks. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written: list[Path] = []
    for stage, stage_dir in stage_dirs.items():
        log = Path(stage_dir) / LOG_NAME
        if not log.exists():
            continue
        panels = curve_panels(read_log(log))
        if not panels:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        columns = 2 if len(panels) > 3 else 1
        rows = -(-len(panels) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 2.4 * rows), squeeze=False)
        for axis, (name, by_split) in zip(axes.flat, panels.items()):
            draw_panel(axis, by_split)
            axis.set_title(name, fontsize=9)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        for axis in list(axes.flat)[len(panels) :]:
            axis.set_visible(False)
        for column in range(columns):  # "step" under the lowest panel of each column
            shown = [axes[row, column] for row in range(rows) if row * columns + column < len(panels)]
            if shown:
                shown[-1].set_xlabel("step")
        figure.suptitle(stage)
        figure.tight_layout()
        path = out_dir / f"{stage}_train.png"
        atomic_write(path, functools.partial(_save_png, figure))
        plt.close(figure)
        written.append(path)
    return written
