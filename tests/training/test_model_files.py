"""Model files describe themselves (crop size, threshold, alignment, provenance); their users read them; a run
resumes from its saved config; configs that do not fit their weights are refused before allocating."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from m2u.datasets.align import ALIGNMENT_VERSION
from m2u.datasets.synthetic import write_synthetic_dataset
from m2u.training.checkpoint import (
    METADATA_CLASS_KEY,
    METADATA_CONFIG_KEY,
    CheckpointError,
    ModelInfo,
    current_model_info,
    load_model,
    read_model_info,
    save_model,
)
from m2u.training.cli import train_main
from m2u.training.models import MSeg, MSegConfig
from m2u.training.models.mseg import DEFAULT_MASK_THRESHOLD

SIZE = 64


@pytest.fixture(scope="module")
def dataset64(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds64")
    write_synthetic_dataset(out, 24, size=SIZE, seed=0)
    return out


def _train(args: list[str]) -> dict:
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])  # stderr says where a resume continues


FAST = ["--batch-size", "4", "--num-workers", "0", "--no-progress", "--no-test", "--val-batches", "1"]


@pytest.fixture(scope="module")
def run64(dataset64, tmp_path_factory) -> dict[str, Path]:
    """M-Seg and a GAN with non-default widths trained 2 steps each at 64 px through m2u-train."""
    root = tmp_path_factory.mktemp("run64")
    _train(["mseg", "--data", str(dataset64), "--out", str(root / "mseg"), "--max-steps", "2",
            "--base-channels", "4", "--levels", "3", "--threshold", "0.4", *FAST])  # fmt: skip
    _train(["gan", "--data", str(dataset64), "--out", str(root / "gan"), "--max-steps", "2",
            "--mseg", str(root / "mseg" / "mseg.safetensors"), "--width-multiplier", "0.125",
            "--perceptual-weight", "0", *FAST])  # fmt: skip
    return {
        "root": root,
        "mseg": root / "mseg" / "mseg.safetensors",
        "gen": root / "gan" / "generator.safetensors",
    }


def test_model_files_record_size_threshold_alignment_and_provenance(run64, dataset64):
    mseg_info, gen_info = read_model_info(run64["mseg"]), read_model_info(run64["gen"])
    assert mseg_info.crop_size == gen_info.crop_size == SIZE
    assert mseg_info.mask_threshold == 0.4  # the trained-with threshold, not the default
    assert gen_info.alignment["version"] == ALIGNMENT_VERSION
    assert gen_info.normalisation and gen_info.m2u_version
    assert gen_info.provenance["steps"] == 2 and gen_info.provenance["data"] == str(dataset64)
    assert gen_info.provenance["recipe"].startswith("m2u-train ")
    assert gen_info.provenance["mask_threshold"] == 0.4  # the M-Seg the GAN was trained with
    mseg, info = load_model(run64["mseg"])
    assert isinstance(mseg, MSeg) and info == mseg_info and info.mask_threshold_or_default() == 0.4
    assert not hasattr(mseg, "threshold") and not hasattr(mseg, "info")  # facts beside the module, not on it


def test_fp16_files_load_back_into_fp32_models(tmp_path):
    torch.manual_seed(0)
    model = MSeg(MSegConfig(base_channels=16, levels=3))
    full = save_model(tmp_path / "a.safetensors", model)
    half = save_model(tmp_path / "b.safetensors", model, current_model_info(64, 0.5), dtype="fp16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half).module
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded(x), atol=2e-2)


def test_saving_the_same_weights_again_gives_the_same_bytes(tmp_path):
    # safetensors writes its metadata in hash-map order, which changes from one save to the next.
    model = MSeg(MSegConfig(base_channels=4, levels=3))
    info = current_model_info(64, 0.5)
    paths = [save_model(tmp_path / f"{k}.safetensors", model, info, dtype="fp16") for k in range(6)]
    assert len({path.read_bytes() for path in paths}) == 1
    loaded = load_model(paths[0])
    assert loaded.info == info and torch.equal(
        loaded.module.state_dict()["head.weight"].half(), model.state_dict()["head.weight"].half()
    )


def test_config_that_does_not_fit_its_weights_is_one_sentence_before_allocating(tmp_path):
    weights = MSeg(MSegConfig(base_channels=4, levels=3)).state_dict()
    path = tmp_path / "tampered.safetensors"
    # 512 base channels at 5 levels would be about 5 GB of parameters: refused from the shapes alone.
    config = json.dumps(MSegConfig(base_channels=512, levels=5).to_dict())
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path),
              metadata={METADATA_CLASS_KEY: "MSeg", METADATA_CONFIG_KEY: config})  # fmt: skip
    started = time.monotonic()
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "does not match its weights" in message and "\n" not in message


def test_old_files_without_info_fall_back_to_the_one_default(tmp_path):
    model = MSeg(MSegConfig(base_channels=4, levels=3))
    path = save_model(tmp_path / "m.safetensors", model, ModelInfo())
    assert load_model(path).info.mask_threshold_or_default() == DEFAULT_MASK_THRESHOLD


def test_resume_alone_continues_a_run_with_non_default_widths(run64):
    out = run64["root"] / "gan"
    results = _train(["gan", "--out", str(out), "--resume", "--max-steps", "3", *FAST])
    assert results["steps"] == 3
    assert load_model(run64["gen"]).module.config.width_multiplier == 0.125
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 3 and saved["generator"]["width_multiplier"] == 0.125


def test_resume_with_another_architecture_is_one_line_and_writes_nothing(run64):
    out = run64["root"] / "mseg"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(
        train_main, ["mseg", "--out", str(out), "--resume", "--base-channels", "8", "--max-steps", "5", *FAST]
    )
    assert result.exit_code != 0
    assert "--base-channels" in result.output and "architecture" in result.output
    assert "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # Given in a config file or by --set, it is named as given there ("drop the option --base-channels" sent the
    # user looking for an option the command line did not have).
    config_file = run64["root"] / "wider.yaml"
    config_file.write_text("base_channels: 8\n")
    for given, said in [
        (["-c", str(config_file)], f"--resume: base_channels in {config_file} (model.base_channels 4 -> 8)"),
        (["--set", "base_channels=8"], "--resume: --set base_channels (model.base_channels 4 -> 8)"),
        (["--set", "model.levels=4"], "--resume: --set model.levels (model.levels 3 -> 4)"),
    ]:
        result = CliRunner().invoke(train_main, ["mseg", "--out", str(out), "--resume", *given, *FAST])
        assert result.exit_code == 2 and said in result.output, result.output
        assert "drop it (--resume reads it from the run)" in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_model_trained_at_64_is_used_at_64_by_unmask_eval_and_export(run64, dataset64, tmp_path):
    from m2u.evaluation.cli import main as eval_main
    from m2u.inference.cli import export_main
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    unmasker = Unmasker.from_files(run64["mseg"], run64["gen"], UnmaskConfig(progress=False, device="cpu"))
    assert unmasker.usage.crop_size == SIZE and unmasker.usage.mask_threshold == 0.4
    masks, restored = unmasker.restore_crops([np.zeros((SIZE, SIZE, 3), np.uint8)])
    assert restored.shape == (1, SIZE, SIZE, 3)

    out = tmp_path / "export"
    result = CliRunner().invoke(export_main, ["onnx", "--generator", str(run64["gen"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    summary = json.loads((out / "export.json").read_text())
    assert summary["generator"]["image_size"] == SIZE

    report = tmp_path / "report"
    args = ["--data", str(dataset64), "--mseg", str(run64["mseg"]), "--generator", str(run64["gen"]),
            "-o", str(report), "--no-lpips", "--no-fid", "--no-identity", "--skip-paper-size-cost",
            "--latency-repeats", "1", "--grid-rows", "0", "-q", "--max-samples", "4"]  # fmt: skip
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert (
        metrics["image_size"] == SIZE and metrics["mask_threshold"] == 0.4 and metrics["resized_from"] is None
    )


def test_explicit_options_that_contradict_the_file_are_honoured_with_a_warning(run64, tmp_path):
    from m2u.inference.restore import ModelUsageWarning, load_two_stage, model_usage

    models = load_two_stage(run64["mseg"], run64["gen"])
    with pytest.warns(ModelUsageWarning, match="crop size 96"):
        usage = model_usage(models, crop_size=96)
    assert usage.crop_size == 96
    with pytest.warns(ModelUsageWarning, match="mask threshold 0.6") as caught:
        assert model_usage(models, mask_threshold=0.6).mask_threshold == 0.6
    assert not [w for w in caught if "--" in str(w.message)]  # library messages name no CLI flag
    with pytest.raises(ValueError, match=r"mask_threshold must be in \(0, 1\)"):
        model_usage(models, mask_threshold=1.5)


def test_eval_on_a_dataset_of_another_size_resizes_to_the_models_and_says_so(run64, tmp_path):
    from m2u.evaluation.cli import main as eval_main

    data = tmp_path / "ds32"
    write_synthetic_dataset(data, 12, size=32, seed=1)
    report = tmp_path / "report"
    args = ["--data", str(data), "--mseg", str(run64["mseg"]), "--generator", str(run64["gen"]),
            "-o", str(report), "--no-lpips", "--no-fid", "--no-identity", "--skip-paper-size-cost",
            "--latency-repeats", "1", "--grid-rows", "0", "-q", "--split", "train"]  # fmt: skip
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 0, result.output
    assert "resized" in result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["resized_from"] == 32 and metrics["image_size"] == SIZE


def test_training_refuses_a_model_larger_than_memory_before_allocating(dataset64, tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(
        train_main,
        ["mseg", "--data", str(dataset64), "--out", str(tmp_path / "run"), "--base-channels", "4096", *FAST],
    )
    assert result.exit_code != 0 and "memory" in result.output, result.output
    assert time.monotonic() - started < 10
    assert not (tmp_path / "run").exists()  # no state written for a refused run


def test_resume_with_no_other_option_continues_an_interrupted_run(dataset64, tmp_path):
    out = tmp_path / "gan"
    # --max-seconds 0: the run stops (as if interrupted) after its first step, checkpoint written.
    first = _train(["gan", "--data", str(dataset64), "--out", str(out), "--mask-source", "gt",
                    "--width-multiplier", "0.125", "--stages", "3", "--perceptual-weight", "0",
                    "--max-seconds", "0", *FAST])  # fmt: skip
    assert first["steps"] == 1 and first["stop_reason"] == "max_seconds"
    second = _train(["gan", "--out", str(out), "--resume"])
    assert second["steps"] == 2  # continued from step 1, with the run's own data, widths and depth
    generator = load_model(out / "generator.safetensors").module
    assert generator.config.width_multiplier == 0.125 and generator.config.stages == 3
    assert read_model_info(out / "generator.safetensors").provenance["steps"] == 2


def test_library_resume_with_another_architecture_is_refused_before_building(run64):
    from m2u.training.config import MSegTrainConfig, read_run_config
    from m2u.training.trainer import train_mseg

    saved = read_run_config(MSegTrainConfig, run64["root"] / "mseg")
    saved.model = MSegConfig(base_channels=8, levels=3)
    saved.resume = True
    with pytest.raises(CheckpointError, match=r"model.base_channels 4 -> 8"):
        train_mseg(saved)
