"""m2u-eval end to end on a tiny synthetic split with checkpoints trained in the tests, and m2u-export."""

from __future__ import annotations

import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage.metrics import peak_signal_noise_ratio

from m2u.datasets.layout import read_manifest
from m2u.datasets.loader import LoaderConfig, count_samples, make_loader
from m2u.evaluation.cli import main as eval_main
from m2u.evaluation.evaluator import EvaluateConfig, evaluate
from m2u.evaluation.lpips import LPIPS, build_lpips_trunk
from m2u.evaluation.suite import MetricsConfig, MetricSuite
from m2u.inference.cli import export_main
from m2u.inference.export import ExportConfig
from m2u.training.checkpoint import load_model
from m2u.training.flops import count_params

ALL_ROWS = {
    "m2u_raw",
    "m2u_composite",
    "masked_input",
    "telea",
    "navier_stokes",
    "telea_gt_mask",
    "navier_stokes_gt_mask",
}


class _TinyFeatures(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _quiet(**overrides) -> EvaluateConfig:
    return EvaluateConfig(progress=False, latency_warmup=1, latency_repeats=2, **overrides)


def test_evaluate_writes_every_row_metric_and_artefact(tiny_dataset, tiny_checkpoints, tmp_path):
    mseg_path, gen_path = tiny_checkpoints
    torch.manual_seed(0)
    suite = MetricSuite(
        MetricsConfig(),
        lpips=LPIPS(build_lpips_trunk("alex", width_divisor=16)),
        fid_features=_TinyFeatures(),
    )
    report = evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, _quiet(grid_rows=3), metric_suite=suite)
    n_test = count_samples(tiny_dataset, "test")
    assert report["n_samples"] == n_test > 0
    assert set(report["rows"]) == ALL_ROWS
    for name, row in report["rows"].items():
        assert row["n_images"] == n_test, name
        for key in (
            "psnr",
            "ssim",
            "l1",
            "lpips",
            "fid",
            "psnr_masked",
            "ssim_masked",
            "l1_masked",
            "lpips_masked",
            "fid_masked",
        ):
            assert isinstance(row[key], float) and np.isfinite(row[key]), (name, key)
        # dlib cannot find faces in 32 px cartoons: every one is counted, none silently dropped.
        assert row["n_identity_no_face"] + int(row["identity_cosine"] is not None) >= 1
    assert "identity" not in report["unavailable"]

    # The masked-input row is the plain PSNR of masked vs unmasked images: recompute it independently.
    batches = list(
        make_loader(tiny_dataset, "test", LoaderConfig.for_evaluation(batch_size=64, num_workers=0))
    )
    masked = torch.cat([b["masked"] for b in batches]).permute(0, 2, 3, 1).numpy().astype(np.float64)
    truth = torch.cat([b["unmasked"] for b in batches]).permute(0, 2, 3, 1).numpy().astype(np.float64)
    expected = np.mean([peak_signal_noise_ratio(t, m, data_range=1.0) for t, m in zip(truth, masked)])
    assert abs(report["rows"]["masked_input"]["psnr"] - expected) < 1e-3

    assert report["mask_quality"]["iou"] > 0.5  # M-Seg was trained for a few steps in the fixture
    complexity = report["complexity"]
    assert complexity["generator_params"] == count_params(load_model(gen_path).module)
    assert complexity["generator_gmacs_256"] > complexity["generator_gmacs_32"] > 0
    assert report["latency"]["cpu"]["median_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"].keys() == ALL_ROWS
    md = (tmp_path / "metrics.md").read_text()
    assert all(f"| {name} |" in md for name in ALL_ROWS)
    assert "| m2u_composite | n/a" not in md
    grid = cv2.imread(str(tmp_path / "grid.png"))
    # 32 px samples are shown as 128 px tiles (4x, nearest neighbour).
    assert grid.shape[1] == 4 * 128 + 5 * 2 and grid.shape[0] == 18 + 3 * (128 + 2) + 2
    with open(tmp_path / "per_sample.csv") as handle:
        per_sample = list(csv.DictReader(handle))
    assert [r["key"] for r in per_sample] == [k for b in batches for k in b["key"]]
    mean_psnr = np.mean([float(r["masked_input.psnr"]) for r in per_sample])
    assert abs(mean_psnr - report["rows"]["masked_input"]["psnr"]) < 1e-3
    page = (tmp_path / "index.html").read_text()
    assert '<img src="grid.png"' in page and "<td>navier_stokes</td>" in page
    mq = report["mask_quality"]
    assert f"Dice {mq['dice']:.4f}" in page and "Cost and latency" in page and "ms over 2 runs" in page
    # The per-mask-type table: from each sample's JSON, in metrics.json and on the page.
    by_type = json.loads((tmp_path / "metrics.json").read_text())["by_mask"]["type"]
    assert set(by_type) == {"synthetic-polygon", "synthetic-ellipse"}
    assert sum(row["n"] for row in by_type.values()) == n_test
    composite = {r["key"]: float(r["m2u_composite.psnr"]) for r in per_sample}
    manifest = read_manifest(tiny_dataset).set_index("key")
    polygon = [v for k, v in composite.items() if manifest.loc[k, "mask_type"] == "synthetic-polygon"]
    assert abs(by_type["synthetic-polygon"]["psnr"] - np.mean(polygon)) < 1e-3  # the CSV has 6 digits
    assert "<td>synthetic-ellipse</td>" in page and "stripes" in page


def test_baselines_on_the_ground_truth_mask_and_a_sample_limit(tiny_dataset, tiny_checkpoints, tmp_path):
    mseg_path, gen_path = tiny_checkpoints
    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    config = _quiet(
        max_samples=4,
        grid_rows=0,
        baseline_mask="ground_truth",
        baselines=("masked_input", "telea"),
        paper_size_cost=False,
    )
    report = evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, config, metric_suite=suite)
    assert report["n_samples"] == 4
    assert set(report["rows"]) == {"m2u_raw", "m2u_composite", "masked_input", "telea_gt_mask"}
    rows = report["rows"]
    # Inpainting from the surrounding skin beats leaving the mask's colour in place.
    assert rows["telea_gt_mask"]["l1_masked"] < rows["masked_input"]["l1_masked"]
    # Outside the mask the baselines keep the input, so the whole-image error is the masked error diluted.
    assert rows["telea_gt_mask"]["l1"] < rows["telea_gt_mask"]["l1_masked"]
    assert report["unavailable"] == {"lpips": "disabled", "fid": "disabled", "identity": "disabled"}
    assert not (tmp_path / "grid.png").exists()
    # A grid an earlier run left in the folder is not this run's: the page does not show it.
    from m2u.core.fileio import atomic_write_bytes

    atomic_write_bytes(tmp_path / "grid.png", b"an earlier run's")
    evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, config, metric_suite=suite)
    assert "grid.png" not in (tmp_path / "index.html").read_text()
    # Both pages say which mask the baselines used (the note said "under M-Seg's predicted mask" whatever it was),
    # and the page says what metrics.md says: the definitions and the identity count were left out of it.
    from m2u.evaluation.report import write_report

    report = json.loads((tmp_path / "metrics.json").read_text())
    report["rows"]["m2u_raw"].update(n_identity_no_face=1, n_images=4)
    write_report(report, tmp_path / "again")
    md, page = ((tmp_path / "again" / name).read_text() for name in ("metrics.md", "index.html"))
    for text in (md, page):
        assert (
            "Baselines inpaint under the ground-truth mask" in text and "under M-Seg's predicted" not in text
        )
        assert "Identity: no face found on 1 of 4 ground-truth images" in text and "Definitions:" in text
    # One timed run is "1 run", and a device whose name is its kind is named once ("Latency (cpu, cpu, ...").
    report["latency"]["cpu"].update(repeats=1, device_name="cpu", torch_threads=2)
    write_report(report, tmp_path / "again")
    assert "Latency (cpu, 2 threads" in (tmp_path / "again" / "metrics.md").read_text()
    assert "over 1 run (" in (tmp_path / "again" / "index.html").read_text()


def test_a_sample_limit_scores_the_first_samples_stored_whatever_the_loader_workers(
    tiny_checkpoints, tmp_path
):
    """The workers' batches interleave: "the first N" was whichever N came first (another set, other figures, with
    --workers 3). Now the first N of the split as stored, the same for 0, 2 or 3 workers and from a glob."""
    from m2u.datasets.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 40, size=32, seed=1, split=(0.0, 0.0, 1.0), shard_size=4)
    stored = [
        k for b in make_loader(data, "test", LoaderConfig.for_evaluation(num_workers=0)) for k in b["key"]
    ]
    assert len(stored) == 40
    mseg_path, gen_path = tiny_checkpoints
    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    scored = {}
    for workers, source in ((0, data), (1, data), (2, data), (2, f"{data}/test/*.tar")):
        out = tmp_path / f"r{workers}{'glob' if isinstance(source, str) else ''}"
        config = _quiet(
            max_samples=6, batch_size=3, num_workers=workers, grid_rows=0, baselines=(), paper_size_cost=False
        )
        report = evaluate(source, mseg_path, gen_path, out, config, metric_suite=suite)
        with open(out / "per_sample.csv") as handle:
            scored[out.name] = (
                sorted(r["key"] for r in csv.DictReader(handle)),
                report["rows"]["m2u_raw"]["psnr"],
            )
    for keys, psnr in scored.values():
        assert keys == sorted(stored[:6]) and psnr == pytest.approx(scored["r0"][1], abs=1e-4)


def test_eval_cli_reports_unavailable_metrics_and_bad_checkpoints(tiny_dataset, tiny_checkpoints, tmp_path):
    mseg_path, gen_path = tiny_checkpoints
    runner = CliRunner()
    common = [
        "--data",
        str(tiny_dataset),
        "--split",
        "test",
        "--max-samples",
        "3",
        "--quiet",
        "--latency-repeats",
        "1",
    ]
    common += ["--skip-paper-size-cost"]
    result = runner.invoke(
        eval_main,
        [
            *common,
            "--mseg",
            str(mseg_path),
            "--generator",
            str(gen_path),
            "-o",
            str(tmp_path / "r"),
            "--no-download",
            "--no-identity",
        ],
    )
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "metrics.md").read_text()
    assert "## Unavailable metrics" in md and "**lpips**" in md and "**fid**" in md
    row = next(line for line in md.splitlines() if line.startswith("| telea |"))
    assert row.count("n/a") == 6  # LPIPS, FID, identity; whole image and mask region: never faked
    swapped = runner.invoke(
        eval_main,
        [*common, "--mseg", str(gen_path), "--generator", str(mseg_path), "-o", str(tmp_path / "s")],
    )
    assert swapped.exit_code == 2  # refused: a model file of the wrong kind
    assert "not an M-Seg model" in swapped.output


def test_eval_cli_takes_a_config_file_and_set_overrides_and_names_a_bad_key(
    tiny_dataset, tiny_checkpoints, tmp_path
):
    mseg_path, gen_path = tiny_checkpoints
    config_file = tmp_path / "eval.toml"
    config_file.write_text(
        'split = "test"\nmax_samples = 2\nprogress = false\nlatency_repeats = 1\npaper_size_cost = false\n'
        'baseline_mask = "both"\ngrid_rows = 0\n'
        "[metrics]\nenable_lpips = false\nenable_fid = false\nenable_identity = false\n"
        "[baseline]\nradius = 5.0\n"
    )
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path)]
    runner = CliRunner()
    out = tmp_path / "r"
    args = [str(config_file), "--data", str(tiny_dataset), *models, "-o", str(out)]
    # the file asks for both masks; an option on the command line wins, --set wins over both
    result = runner.invoke(eval_main, [*args, "--baseline-mask", "predicted", "--set", "baseline.radius=2.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_samples"] == 2 and report["baseline_mask"] == "predicted"
    assert report["config"]["baseline"]["radius"] == 2.5
    assert "telea" in report["rows"] and "telea_gt_mask" not in report["rows"]
    assert not (out / "grid.png").exists()  # grid_rows = 0 from the file
    bad = runner.invoke(eval_main, [*args[:-1], str(tmp_path / "b"), "--set", "metrics.lpips.nett=vgg16"])
    assert bad.exit_code == 2 and "'metrics.lpips.nett'" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b").exists()
    malformed = runner.invoke(eval_main, [*args[:-1], str(tmp_path / "c"), "--set", "grid_rows"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output


def test_export_cli_writes_checked_onnx_files(tiny_checkpoints, tmp_path):
    mseg_path, _ = tiny_checkpoints  # the generator's export is checked in test_baselines_export.py
    runner = CliRunner()
    result = runner.invoke(
        export_main, ["onnx", "--mseg", str(mseg_path), "-o", str(tmp_path), "--image-size", "32"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "export.json").read_text())
    assert set(summary) == {"mseg"}
    (image,) = summary["mseg"]["inputs"]
    (logits,) = summary["mseg"]["outputs"]
    assert image["name"] == "image" and image["shape"] == ["batch", 3, "height", "width"]
    assert "[-1, 1]" in image["range"] and logits["name"] == "mask_logits" and "sigmoid" in logits["range"]
    assert summary["mseg"]["max_abs_diff_vs_torch"] <= 1e-4
    # The recipe export.json gives for m2u's mask from the logits (mirror mean, threshold, holes filled) is what
    # m2u-unmask computes: a reimplementation from export.json alone gets m2u's masks.
    assert "mirror" in logits["range"] and "filled" in logits["range"]
    import onnxruntime
    from scipy.ndimage import binary_fill_holes

    from m2u.inference.restore import load_two_stage, predict_masks

    mseg = load_two_stage(mseg_path, tiny_checkpoints[1]).mseg
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    session = onnxruntime.InferenceSession(str(tmp_path / "mseg.onnx"))

    def probability(images: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-session.run(None, {"image": images})[0]))

    mean = (probability(x.numpy()) + probability(x.numpy()[..., ::-1].copy())[..., ::-1]) / 2
    for threshold in (0.3, 0.5, 0.7):
        recipe = np.stack([binary_fill_holes(plane) for plane in (mean[:, 0] >= threshold)])
        m2u = predict_masks(mseg, x, threshold)[:, 0].numpy() > 0.5
        assert np.mean(recipe != m2u) < 1e-3  # float rounding at the threshold only
    assert (tmp_path / "mseg.onnx").stat().st_size > 0
    static = runner.invoke(
        export_main,
        ["onnx", "--mseg", str(mseg_path), "-o", str(tmp_path / "s"), "--size", "32", "--static-shape"],
    )
    assert static.exit_code == 0, static.output
    assert json.loads((tmp_path / "s" / "export.json").read_text())["mseg"]["inputs"][0]["shape"] == [
        1,
        3,
        32,
        32,
    ]
    # A generator given as --mseg is refused (exit 2) before anything is written.
    _, gen_path = tiny_checkpoints
    wrong = runner.invoke(export_main, ["onnx", "--mseg", str(gen_path), "-o", str(tmp_path / "w")])
    assert wrong.exit_code == 2 and "not an M-Seg model" in wrong.output and "--generator" in wrong.output
    assert not (tmp_path / "w").exists()
    not_a_model = tmp_path / "junk.safetensors"
    not_a_model.write_bytes(b"junk")
    bad = runner.invoke(export_main, ["onnx", "--mseg", str(not_a_model), "-o", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "not a readable safetensors model file" in bad.output
    # The sizes m2u's networks take, as everywhere (16 failed inside onnxruntime, 99999 asked for 120 GB).
    for size in ("16", "99999"):
        out_of_range = runner.invoke(
            export_main, ["onnx", "--mseg", str(mseg_path), "-o", str(tmp_path / "z"), "--size", size]
        )
        assert out_of_range.exit_code == 2 and "32<=x<=2048" in out_of_range.output
    with pytest.raises(ValueError, match="from 32 to 2048"):
        ExportConfig(image_size=16)


@pytest.mark.parametrize(
    "bad",
    [
        dict(baselines=("gimp",)),
        dict(baseline_mask="mine"),
        dict(mask_threshold=1.5),
        dict(baselines=("telea", "telea")),  # scored twice under one row, mixing samples in per_sample.csv
        dict(split="validation"),  # refused only after the models and metric networks had loaded
    ],
)
def test_evaluate_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        EvaluateConfig(**bad)


def test_device_errors_are_clear():
    from m2u.training.device import resolve_device

    assert resolve_device("cpu").type == "cpu" and resolve_device("cpu:0") == torch.device("cpu")
    with pytest.raises(ValueError, match="is not a device"):
        resolve_device("gpu0")
    for parsed_by_torch in ("mps", "xpu", "meta"):  # torch knows them; m2u runs on none (it crashed later)
        with pytest.raises(ValueError, match="is not a device m2u runs on"):
            resolve_device(parsed_by_torch)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_a_mask_covering_nearly_everything_is_a_visible_warning(tiny_dataset, tiny_checkpoints, tmp_path):
    import m2u.evaluation.evaluator as evaluate_module

    mseg_path, gen_path = tiny_checkpoints
    real_restore = evaluate_module.restore_batch

    def everything(*args, **kwargs):
        pred, raw, comp = real_restore(*args, **kwargs)
        return torch.ones_like(pred), raw, comp

    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    config = _quiet(max_samples=4, grid_rows=1, baselines=("masked_input",), paper_size_cost=False)
    import unittest.mock

    with unittest.mock.patch.object(evaluate_module, "restore_batch", everything):
        report = evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, config, metric_suite=suite)
    assert report["mask_quality"]["predicted_coverage"] == 1.0
    assert "covers nearly everything" in report["mask_quality"]["warning"]
    assert (
        '<p class="warning">Warning: M-Seg&#x27;s mask covers nearly everything'
        in (tmp_path / "index.html").read_text()
    )
    assert "**Warning: M-Seg's mask covers nearly everything" in (tmp_path / "metrics.md").read_text()


def test_each_faces_own_print_is_grouped_as_one_print_pattern(tmp_path):
    from m2u.datasets.layout import SHARD_INDEX_DIGITS, SHARD_SUFFIX
    from m2u.datasets.shards import ShardWriter
    from m2u.evaluation.groups import group_means, sample_mask_attributes

    folder = tmp_path / "test"
    folder.mkdir()
    patterns = {"a": "print-5", "b": "print-912", "c": "dots", "d": ""}
    with ShardWriter(folder / f"test-{0:0{SHARD_INDEX_DIGITS}d}{SHARD_SUFFIX}") as writer:
        for key, pattern in patterns.items():
            meta = {"mask": {"type": "cloth", "color": "#000000", "pattern": pattern}}
            writer.write(key, {"json": json.dumps(meta).encode()})
    attributes = sample_mask_attributes(tmp_path, "test", patterns)
    assert {k: v["pattern"] for k, v in attributes.items()} == {
        "a": "print",
        "b": "print",
        "c": "dots",
        "d": "none",
    }
    table = group_means(list(patterns), {"psnr": [20.0, 30.0, 25.0, 10.0]}, attributes, ("psnr",))["pattern"]
    assert table["print"] == {"n": 2, "psnr": 25.0}


def test_a_second_evaluation_into_a_folder_being_written_is_refused_before_scoring(
    tiny_dataset, tiny_checkpoints, tmp_path
):
    from m2u.core.inputs import OutputFolderError, output_lock
    from m2u.evaluation.evaluator import EVAL_TOOL

    mseg_path, gen_path = tiny_checkpoints
    scored = []
    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    suite.update = lambda *a, **k: scored.append(a)  # type: ignore[method-assign]
    with output_lock(tmp_path, EVAL_TOOL), pytest.raises(OutputFolderError, match="another m2u-eval run"):
        evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, _quiet(), metric_suite=suite)
    assert scored == []  # refused before any sample was scored


@pytest.mark.parametrize("stop", ["full disk", "ctrl-c"])
def test_a_rerun_that_cannot_write_its_report_whole_leaves_the_earlier_one(
    tiny_dataset, tiny_checkpoints, tmp_path, monkeypatch, stop
):
    """A full disk (or Ctrl-C) after the first files of a rerun's report deleted the earlier run's index.html,
    metrics.json and grid and left the new metrics.md: neither report was whole. Now the earlier one stays as it
    was until the new one is published whole."""
    import errno

    from m2u.evaluation import evaluator

    mseg_path, gen_path = tiny_checkpoints
    config = _quiet(metrics=MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, dataclasses.replace(config, grid_rows=2))
    report = ("index.html", "metrics.json", "metrics.md", "per_sample.csv", "grid.png")
    before = {name: (tmp_path / name).read_bytes() for name in report}

    def stopped(*args, **kwargs):
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluator, "write_report", stopped)  # after the grid and rows are made
    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else OSError):
        evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, dataclasses.replace(config, grid_rows=0))
    assert {name: (tmp_path / name).read_bytes() for name in report} == before
    assert not list(tmp_path.glob(".*.tmp"))  # nothing staged is left
    monkeypatch.undo()
    evaluate(tiny_dataset, mseg_path, gen_path, tmp_path, dataclasses.replace(config, grid_rows=0))
    assert (tmp_path / "index.html").exists() and (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "grid.png").exists()  # the earlier run's grid: not this report's, gone with it


def test_an_empty_split_is_refused_before_any_model_loads_or_folder_is_made(tmp_path):
    from m2u.datasets import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, size=32, seed=0, split=(0.75, 0.0, 0.25))
    with pytest.raises(ValueError, match=r"split 'val' of .* has no samples to evaluate"):
        evaluate(
            tmp_path / "data",
            tmp_path / "no.safetensors",
            tmp_path / "no.safetensors",
            tmp_path / "r",
            _quiet(split="val"),
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("stored", "trained"), [(32, 64), (64, 32)])
def test_a_resized_pairs_mask_covers_every_pixel_its_mask_colour_reaches(stored, trained):
    from m2u.evaluation.evaluator import _resize_batch

    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, stored, stored, generator=generator) * 0.5 + 0.5
    mask = torch.zeros(2, 1, stored, stored)
    mask[:, :, stored // 3 : stored // 2 + 3, stored // 4 : 3 * stored // 4 + 1] = 1.0
    masked = truth * (1 - mask)  # a black mask
    masked_r, truth_r, mask_r = _resize_batch(masked, truth, mask, trained)
    assert mask_r.shape == (2, 1, trained, trained) and set(mask_r.unique().tolist()) == {0.0, 1.0}
    outside = mask_r.expand_as(masked_r) == 0
    # The ground-truth-mask baselines keep every pixel outside the mask: none of them may hold mask colour.
    assert torch.allclose(masked_r[outside], truth_r[outside], atol=1e-5)
    # and the mask does not grow past the filter's reach (one source pixel each way)
    assert (
        mask_r.mean()
        <= ((stored // 2 + 3 - stored // 3 + 2) * (3 * stored // 4 + 1 - stored // 4 + 2)) / stored**2
    )
