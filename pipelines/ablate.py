"""Section 4.3's ablation: six generator variants trained and evaluated on the same data and the same M-Seg.

The dataset and M-Seg stages are shared (run once, cached as in `run_pipeline`); each variant has its own GAN
and evaluation stages under RUN/ablation/<variant>/. As in the paper, every variant is evaluated with the binary
mask map applied (the composited output), so all are compared on the restored region alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2u.core.fileio import staged_files
from m2u.pipelines.config import PipelineConfig
from m2u.pipelines.run import STAGE_RECORDS, STAGES, run_folder, run_pipeline, run_stages, with_demo_faces
from m2u.pipelines.stages import RECORD_SUFFIX

COMPOSITE_ROW = "m2u_composite"  # m2u.evaluation.evaluator's row for G(x)·m + x·(1−m)
TABLE_METRICS = (
    ("psnr", "PSNR ↑"),
    ("ssim", "SSIM ↑"),
    ("fid", "FID ↓"),
    ("l1", "L1 ↓"),
    ("lpips", "LPIPS ↓"),
)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    segmentation: bool
    attention: bool
    stages: int


# The paper's order, (i) to (vi).
VARIANTS = (
    Variant("base", "Base (5-stage)", False, False, 5),
    Variant("base_att", "Base + Att. (5-stage)", False, True, 5),
    Variant("base_seg", "Base + Seg. (5-stage)", True, False, 5),
    Variant("base_seg_3stage", "Base + Seg. (3-stage)", True, False, 3),
    Variant("base_seg_att_3stage", "Base + Seg. + Att. (3-stage)", True, True, 3),
    Variant("m2unet", "M2UNet (Seg. + Att., 5-stage)", True, True, 5),
)


def variant_config(config: PipelineConfig, variant: Variant) -> PipelineConfig:
    generator = dataclasses.replace(
        config.gan.generator,
        segmentation_guidance=variant.segmentation,
        channel_attention=variant.attention,
        stages=variant.stages,
    )
    return dataclasses.replace(config, gan=dataclasses.replace(config.gan, generator=generator))


def _link_shared_stages(run: Path, variant_dir: Path) -> None:
    # Each variant's run folder links the shared dataset and M-Seg stages and their records, so their
    # fingerprints (and cached results) are reused instead of being rebuilt six times.
    records = variant_dir / STAGE_RECORDS
    records.mkdir(parents=True, exist_ok=True)
    for stage in STAGES[:2]:
        link = variant_dir / stage
        if not link.is_symlink():
            link.symlink_to(Path("..") / ".." / stage, target_is_directory=True)
        record = records / f"{stage}{RECORD_SUFFIX}"
        if not record.is_symlink():
            record.unlink(missing_ok=True)
            record.symlink_to(Path("..") / ".." / ".." / STAGE_RECORDS / f"{stage}{RECORD_SUFFIX}")


def run_ablation(
    config: PipelineConfig,
    run_dir: str | Path,
    *,
    variants: tuple[Variant, ...] = VARIANTS,
    demo_faces: bool = False,
    echo: Callable[[str], None] = print,
    metric_suite: Any = None,
) -> dict[str, Any]:
    run = Path(run_dir)
    config = with_demo_faces(config, run) if demo_faces else config  # RUN's, which the variants read too
    # RUN is held from the first check to the table: every variant trains on the shared dataset and M-Seg, which
    # another run on RUN would otherwise replace between variants. Checked up to the evaluation: a variant's
    # stage that cannot run is refused before the shared stages train, not after.
    with run_folder(config, run, "evaluation", demo_faces=demo_faces):
        run_stages(config, run, echo, "mseg", metric_suite)
        return _run_variants(config, run, variants, echo, metric_suite)


def _run_variants(
    config: PipelineConfig,
    run: Path,
    variants: tuple[Variant, ...],
    echo: Callable[[str], None],
    metric_suite: Any,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for variant in variants:
        variant_dir = run / "ablation" / variant.name
        _link_shared_stages(run, variant_dir)
        outcomes = run_pipeline(
            variant_config(config, variant),
            variant_dir,
            echo=_said_as(variant, echo),
            metric_suite=metric_suite,
        )
        report = json.loads((variant_dir / "evaluation" / "metrics.json").read_text())
        rows[variant.name] = {
            "label": variant.label,
            "segmentation": variant.segmentation,
            "attention": variant.attention,
            "stages": variant.stages,
            "metrics": report["rows"][COMPOSITE_ROW],
            "unavailable": report.get("unavailable", {}),
            "retrained": not outcomes["gan"].skipped,
        }
    table = {"split": config.evaluation.split, "row": COMPOSITE_ROW, "variants": rows}
    with staged_files() as staged:  # the two published together: a stop between them never leaves them apart
        staged.write_text(run / "ablation.json", json.dumps(table, indent=2))
        staged.write_text(run / "ablation.md", ablation_markdown(table))
        staged.publish()
    return table


def _said_as(variant: Variant, echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` for a variant's stages: each line names its variant ("[m2unet] [gan] running"), six variants apart."""

    def said(line: str) -> None:
        echo(f"[{variant.name}] {line}")

    return said


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def ablation_markdown(table: dict[str, Any]) -> str:
    header = "| Variant | Seg. | Att. | Stages | " + " | ".join(label for _, label in TABLE_METRICS) + " |"
    lines = [
        f"# Ablation (section 4.3): {table['split']} split, composited output",
        "",
        header,
        "|" + "---|" * (4 + len(TABLE_METRICS)),
    ]
    for row in table["variants"].values():
        metrics = row["metrics"]
        cells = [_cell(metrics.get(key)) for key, _ in TABLE_METRICS]
        lines.append(
            f"| {row['label']} | {'✓' if row['segmentation'] else '–'} | {'✓' if row['attention'] else '–'} "
            f"| {row['stages']} | " + " | ".join(cells) + " |"
        )
    # The table's columns only: a metric it does not show (identity) is in each metrics.json.
    columns = dict(TABLE_METRICS)
    missing = sorted(
        {name for row in table["variants"].values() for name in row["unavailable"] if name in columns}
    )
    if missing:
        lines += [
            "",
            "n/a: "
            + "; ".join(f"{columns[name].split()[0]} unavailable" for name in missing)
            + " (see each metrics.json).",
        ]
    return "\n".join(lines) + "\n"
