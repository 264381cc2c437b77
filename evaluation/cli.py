"""m2u-eval: a thin Click layer over `m2u.evaluation.evaluator` and `m2u.evaluation.real_masks`.

m2u-eval [-c CONFIG_FILE] --data OUT --mseg M --generator G -o REPORT [--set fid=false ...]
A config file (YAML, TOML or JSON) holds the options by their long names and any other EvaluateConfig field by
its (dotted) field name; options given on the command line override it, `--set` overrides both. Every option's
default is EvaluateConfig's.

m2u-eval real-masks PHOTOS... [--labels LABELS] -o REPORT: m2u-unmask on real masked photos, scored against binary
label images of the masks where given (`real_masks_main`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    EXIT_SOME_FAILED,
    Refused,
    alias_option,
    apply_aliases,
    cli_message,
    device_option,
    exit_codes_help,
    limit_option,
    out_option,
    progress_options,
    threshold_option,
    workers_option,
)
from m2u.core.guard import guard_command
from m2u.datasets.storage import check_dataset
from m2u.evaluation.baselines import BASELINES, BaselineConfig
from m2u.evaluation.evaluator import BASELINE_MASKS, EvaluateConfig, MetricsConfig
from m2u.evaluation.identity import IdentityConfig
from m2u.evaluation.lpips import LPIPSConfig
from m2u.evaluation.real_masks import MAX_THUMB, RealMaskConfig
from m2u.inference.cli import restoration_config, restoration_options
from m2u.training.cliutil import (
    ConfigBinding,
    config_file_options,
    model_file_options,
    model_warnings,
    user_errors,
)

EVAL_BINDING = ConfigBinding(
    EvaluateConfig,
    {
        "threshold": "mask_threshold",
        "inpaint_radius": "baseline.radius",
        "lpips_net": "metrics.lpips.net",
        "lpips_trunk_weights": "metrics.lpips.trunk_weights",
        "lpips_head_weights": "metrics.lpips.head_weights",
        "download": "metrics.allow_download",
        "fid_weights": "metrics.fid.weights_path",
        "identity_box": "metrics.identity.box",
        "lpips": "metrics.enable_lpips",
        "fid": "metrics.enable_fid",
        "identity": "metrics.enable_identity",
        "workers": "num_workers",
        "limit": "max_samples",
    },
    other=frozenset({"data", "mseg_path", "generator_path", "out_dir"}),
)


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=exit_codes_help(
        "a metric that cannot be computed here, e.g. LPIPS without its weights, is said and left out",
        None,
        "a model file of the wrong kind, an output folder holding another command's reports",
    ),
)
@config_file_options
@click.option("--data", help="Dataset folder or fsspec URL (m2u-make-dataset's -o); required.")
@click.option(
    "--split", default=EvaluateConfig.split, show_default=True, type=click.Choice(["train", "val", "test"])
)
@model_file_options
@out_option("Report folder; required.", required=False)
@click.option(
    "--batch-size", default=EvaluateConfig.batch_size, show_default=True, type=click.IntRange(min=1)
)
@workers_option(
    EvaluateConfig.num_workers,
    help="Data-loading worker processes; 0 = load in this process (no worker processes).",
)
@alias_option("--num-workers", target="workers", type=click.IntRange(min=0))
@limit_option("Evaluate only the first N samples of the split.")
@alias_option("--max-samples", target="limit", type=click.IntRange(min=1))
@threshold_option(EvaluateConfig.mask_threshold)
@click.option(
    "--baselines",
    multiple=True,
    default=EvaluateConfig.baselines,
    show_default=True,
    type=click.Choice(sorted(BASELINES)),
    help="Baselines to run; repeatable (--baselines telea --baselines navier_stokes).",
)
@alias_option("--baseline", target="baselines", multiple=True, type=click.Choice(sorted(BASELINES)))
@click.option(
    "--baseline-mask",
    default=EvaluateConfig.baseline_mask,
    show_default=True,
    type=click.Choice(BASELINE_MASKS),
    help="Masks the inpainting baselines get: M-Seg's prediction, the ground truth, or both (two rows each).",
)
@click.option("--inpaint-radius", default=BaselineConfig.radius, show_default=True, type=float)
@click.option("--lpips-net", default=LPIPSConfig.net, show_default=True, type=click.Choice(["alex", "vgg16"]))
@click.option(
    "--lpips-trunk-weights",
    type=click.Path(exists=True, dir_okay=False),
    help="torchvision AlexNet/VGG16 .pth.",
)
@click.option(
    "--lpips-head-weights", type=click.Path(exists=True, dir_okay=False), help="LPIPS v0.1 linear heads .pth."
)
@click.option(
    "--fid-weights",
    type=click.Path(exists=True, dir_okay=False),
    help="FID Inception weights (pt_inception-2015-12-05).",
)
@click.option(
    "--download/--no-download",
    default=MetricsConfig.allow_download,
    show_default=True,
    help="--no-download: the metric networks (LPIPS, FID) use only the files named and the torch.hub cache.",
)
@click.option(
    "--identity-box", default=IdentityConfig.box, show_default=True, type=click.Choice(["detect", "frame"])
)
@click.option("--lpips/--no-lpips", default=MetricsConfig.enable_lpips, show_default=True)
@click.option("--fid/--no-fid", default=MetricsConfig.enable_fid, show_default=True)
@click.option("--identity/--no-identity", default=MetricsConfig.enable_identity, show_default=True)
@click.option("--grid-rows", default=EvaluateConfig.grid_rows, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--latency-repeats", default=EvaluateConfig.latency_repeats, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--paper-size-cost/--skip-paper-size-cost",
    default=EvaluateConfig.paper_size_cost,
    show_default=True,
    help="Count MACs at 256x256 (one slow forward pass).",
)
@device_option(EvaluateConfig.device)
@progress_options
def main(**kw) -> None:
    """Evaluate M-Seg + CARU2-Net on a dataset split, with OpenCV baselines; write REPORT/metrics.json,
    metrics.md, grid.png and index.html. Without --mseg/--generator: the model shipped with m2u.

    A config file (-c, configs/eval.yaml) holds the options by their long names (data, out, batch_size,
    lpips_net, ...); --print-config prints the resolved one. `m2u-eval real-masks -h`: the same model on real
    masked photos, against label images of the masks."""
    from m2u.evaluation.evaluator import evaluate

    ctx = click.get_current_context()
    apply_aliases(kw, ctx)
    if kw.pop("quiet"):
        kw["progress"] = False
        ctx.set_parameter_source("progress", ParameterSource.COMMANDLINE)
    config = EVAL_BINDING.build(kw)
    if kw["print_config"]:
        EVAL_BINDING.print_config(ctx.command, config, kw)
        return
    for name, flag in (("data", "--data"), ("out_dir", "-o/--out")):
        if not kw[name]:
            raise click.UsageError(f"{flag} is required (or its key in the config file)")
    # The data first: a wrong --data is one line, before any model loads or weights are looked for.
    try:
        check_dataset(kw["data"])
    except ValueError as exc:
        raise click.UsageError(cli_message(exc)) from None
    try:
        with model_warnings():
            report = evaluate(kw["data"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except OSError:
        raise  # a full disk, a read-only folder: m2u.core.guard says which file, exit 1
    except user_errors() as exc:
        raise Refused(EVAL_BINDING.message(exc)) from exc
    out = Path(kw["out_dir"])
    click.echo((out / "metrics.md").read_text())
    click.echo(f"report: {out / 'index.html'}")
    for name, reason in report["unavailable"].items():
        click.echo(f"unavailable: {name}: {reason}", err=True)


@click.command(
    "real-masks",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=exit_codes_help(
        "photos without a face or without a label are counted, not failures",
        "some photos or labels could not be read or scored (status unreadable, error or bad_label: each has its row "
        "and reason)",
    ),
)
@click.argument("photos", nargs=-1, required=True, type=click.Path())
@click.option(
    "--labels",
    "labels_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of binary label images of the masks, each at its photo's path below the photo folder (any image "
    "format; grey >= --label-threshold is mask). Without it: faces found and mask fraction only.",
)
@model_file_options
@out_option("Report folder.")
@click.option(
    "--label-threshold",
    default=RealMaskConfig.label_threshold,
    show_default=True,
    type=click.IntRange(1, 254),
    help="Label pixels at or above this grey value are mask (JPEG labels have soft edges).",
)
@click.option(
    "--thumb",
    default=RealMaskConfig.thumb,
    show_default=True,
    type=click.IntRange(16, MAX_THUMB),
    help="Sheet cell px.",
)
@limit_option()
@restoration_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def real_masks_main(**kw) -> None:
    """Run m2u-unmask on the PHOTOS (files, folders, globs), with m2u-unmask's restoration options, and score what
    it finds and touches: faces found, mask fraction and, with --labels, Dice, IoU and remnant share (label pixels
    left unchanged; and the near remnant, left within 12 levels) against each label.
    Writes REPORT/real_masks.csv (one row per photo), REPORT/faces.jsonl (one line per face found: its evidence and,
    if left, its reason), REPORT/summary.json and REPORT/index.html (a contact sheet: photo | predicted mask |
    restored | label)."""
    from m2u.evaluation.real_masks import (
        INPUT_PROBLEMS,
        evaluate_real_masks,
        plan_real_masks,
        summary_figures,
    )
    from m2u.inference.unmask import Unmasker

    try:
        unmask_config = restoration_config(kw, progress=False)
        config = RealMaskConfig(label_threshold=kw["label_threshold"], thumb=kw["thumb"], limit=kw["limit"])
        plan_real_masks(
            kw["photos"], kw["out_dir"], kw["labels_dir"], config
        )  # refusals before the model loads
        with model_warnings():
            unmasker = Unmasker.from_files(kw["mseg_path"], kw["generator_path"], unmask_config)
            summary = evaluate_real_masks(
                kw["photos"], kw["out_dir"], unmasker, kw["labels_dir"], config, progress=not kw["quiet"]
            )
    except OSError:
        raise  # a full disk, a read-only folder: m2u.core.guard says which file, exit 1
    except user_errors() as exc:
        raise Refused(cli_message(exc)) from exc  # a refusal: exit 2, as m2u-eval's and every command's
    for key, text in summary_figures(summary):
        click.echo(f"{key}: {text}")
    click.echo("statuses: " + ", ".join(f"{status} {n}" for status, n in summary["statuses"].items()))
    # One line per photo or label that could not be scored as given, as m2u-unmask says its failed photos.
    with open(Path(kw["out_dir"]) / "real_masks.csv", newline="") as table:
        for row in csv.DictReader(table):
            if row["status"] in INPUT_PROBLEMS:
                click.echo(f"{row['status']}: {row['photo']}: {row['reason']}", err=True)
    for sentence in summary.get("passed_over", []):
        click.echo(sentence, err=True)
    click.echo(f"report: {Path(kw['out_dir']) / 'index.html'}")
    failed = sum(
        n for status, n in summary["statuses"].items() if status in ("unreadable", "error", "bad_label")
    )
    if failed:  # as every per-file tool: some inputs (a photo or its label) could not be read
        sys.exit(EXIT_SOME_FAILED)


def entry() -> None:
    """The m2u-eval console script: `m2u-eval real-masks ...` runs `real_masks_main`, anything else `main` (the
    dataset evaluation keeps its command line, CONFIG_FILE first)."""
    import sys

    args = sys.argv[1:]
    # The subcommand where a person puts it: after flags both commands know too (`m2u-eval -q real-masks ...`).
    first = next((k for k, arg in enumerate(args) if not arg.startswith("-")), None)
    if (
        first is not None
        and args[first] == "real-masks"
        and all(a in ("-q", "--quiet") for a in args[:first])
    ):
        real_masks_main(args=args[:first] + args[first + 1 :], prog_name="m2u-eval real-masks")
    else:
        main()


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)
guard_command(real_masks_main)
