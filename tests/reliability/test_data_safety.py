"""Data safety by mechanism (issue 24): each test walks every tool that has the door.

1. Writes: nothing is written through a link planted at an output's or a lock's name, and no file m2u did not
   write is replaced (m2u.core.fileio, m2u.core.inputs locks).
2. Sizes read from files are capped before allocation (model info, template headers, shard members).
3. Configuration values are type- and range-checked however they arrive (m2u.core.configfile).
4. Model files are checked before use; the shipped weights against their checksums.
5. The manifest is the record of a dataset (m2u.datasets.loader).
6. SIGTERM takes workers with it; full disks and refused outputs are one line (m2u.core.guard).
7. A pipeline's run folder inside its faces folder is not read as faces.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.fileio import (
    RECORD_NAME,
    OutputRefusedError,
    atomic_write_bytes,
    atomic_write_text,
    recorded_names,
    replace_problem,
)

from .conftest import CELEBA_DIR

BIN = Path(sys.executable).parent
PRECIOUS = "precious\n"


def _faces(folder: Path, count: int = 2) -> list[Path]:
    if not CELEBA_DIR.is_dir():
        pytest.skip("shared data not available: no face photos")
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p for p in CELEBA_DIR.iterdir() if p.suffix == ".jpg")[:count]
    copies = []
    for i, source in enumerate(names):
        copies.append(folder / f"{chr(ord('a') + i)}.jpg")
        shutil.copy(source, copies[-1])
    return copies


def _invoke(command, args: list[str]):
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    return result.exit_code, result.output


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


# --- 1. writes -----------------------------------------------------------------------------------------------


def test_the_writer_refuses_links_and_files_it_did_not_write_and_replaces_its_own(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "link.txt").symlink_to(victim)
    (out / "theirs.txt").write_text("someone else's")
    (out / "folder.txt").mkdir()
    for name, why in (
        ("link.txt", "symbolic link"),
        ("theirs.txt", "not written by m2u"),
        ("folder.txt", "not a regular"),
    ):
        with pytest.raises(OutputRefusedError, match=why):
            atomic_write_text(out / name, "new")
    assert victim.read_text() == PRECIOUS and (out / "theirs.txt").read_text() == "someone else's"
    atomic_write_text(out / "ours.txt", "first")
    atomic_write_text(out / "ours.txt", "second")  # a rerun replaces what m2u wrote
    assert (out / "ours.txt").read_text() == "second"
    assert recorded_names((out / RECORD_NAME).read_bytes()) == {"ours.txt"}
    # Logs are appended the same way: never through a link, never to a file m2u did not write.
    from m2u.core.fileio import open_append

    (out / "log.jsonl").symlink_to(victim)
    with pytest.raises(OutputRefusedError, match="symbolic link"):
        open_append(out / "log.jsonl")
    with pytest.raises(OutputRefusedError, match="not written by m2u"):
        open_append(out / "theirs.txt")
    with open_append(out / "pipeline.log") as handle:
        handle.write("one\n")
    with open_append(out / "pipeline.log") as handle:
        handle.write("two\n")
    assert (out / "pipeline.log").read_text() == "one\ntwo\n"
    # The record itself is never followed through a link.
    other = tmp_path / "other"
    other.mkdir()
    (other / RECORD_NAME).symlink_to(victim)
    with pytest.raises(OutputRefusedError, match="symbolic link"):
        atomic_write_bytes(other / "x.bin", b"x")
    assert victim.read_text() == PRECIOUS


@pytest.mark.parametrize("tool", ["m2u-mask", "m2u-unmask", "m2u-make-dataset"])
def test_no_tool_opens_its_lock_through_a_link(tool, tmp_path, tiny_models):
    from m2u.datasets.cli import main as make_dataset
    from m2u.inference.cli import unmask_main
    from m2u.masking.cli import main as mask

    inputs = tmp_path / "in"
    _faces(inputs, 1)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "v.txt"
    victim.write_text(PRECIOUS)
    lock = {
        "m2u-mask": ".m2u-mask.lock",
        "m2u-unmask": ".m2u-unmask.lock",
        "m2u-make-dataset": ".m2u-build.lock",
    }
    (out / lock[tool]).symlink_to(victim)
    mseg, generator = tiny_models
    command, args = {
        "m2u-mask": (mask, [str(inputs), "-o", str(out), "--quiet"]),
        "m2u-unmask": (
            unmask_main,
            [str(inputs), "-o", str(out), "--mseg", str(mseg), "--generator", str(generator)],
        ),
        "m2u-make-dataset": (make_dataset, [str(inputs), "-o", str(out), "--size", "64", "--quiet"]),
    }[tool]
    code, output = _invoke(command, args)
    assert code != 0
    assert "symbolic link" in _one_line_error(output)
    assert victim.read_text() == PRECIOUS


def test_every_writing_tool_refuses_a_link_or_a_stranger_at_an_output_name(tmp_path, tiny_models):
    """The issue's reproductions and their siblings: m2u-mask (file form, contact sheet), m2u-unmask (NAME.png,
    report.csv), m2u-pipeline (its run records), m2u-export (export.json), m2u-train (RUN/config.json)."""
    from m2u.inference.cli import export_main, unmask_main
    from m2u.masking.cli import main as mask
    from m2u.pipelines.cli import main as pipeline

    mseg, generator = tiny_models
    a, b = _faces(tmp_path / "m", 2)
    stranger = a.with_name("a_surgical.jpg")
    b.rename(stranger)
    kept = stranger.read_bytes()
    code, output = _invoke(mask, [str(a), "-o", str(a.parent), "--quiet"])
    assert code != 0 and "not written by m2u" in _one_line_error(output) and stranger.read_bytes() == kept

    before = a.read_bytes()
    code, output = _invoke(mask, [str(a), "-o", str(tmp_path / "o"), "--contact-sheet", str(a)])
    assert code != 0 and "is one of the inputs" in _one_line_error(output) and a.read_bytes() == before

    u = tmp_path / "u"
    (p,) = _faces(u, 1)
    p.with_suffix(".png").write_bytes(kept)  # another photo that happens to be called p.png
    models = ["--mseg", str(mseg), "--generator", str(generator)]
    code, output = _invoke(unmask_main, [str(p), "-o", str(u), "--format", "png", *models])
    assert code != 0 and "not written by m2u" in _one_line_error(output)
    assert p.with_suffix(".png").read_bytes() == kept

    s = tmp_path / "S"
    s.mkdir()
    victim = tmp_path / "v5.txt"
    victim.write_text(PRECIOUS)
    (s / "report.csv").symlink_to(victim)
    code, output = _invoke(unmask_main, [str(p), "-o", str(s), *models])
    assert code != 0 and "symbolic link" in _one_line_error(output) and victim.read_text() == PRECIOUS

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").symlink_to(victim)
    # --until dataset: two faces plan no test split, which the pipeline refuses first for a run through evaluation
    code, output = _invoke(
        pipeline, ["run", "--faces", str(u), "-o", str(run), "--preset", "smoke", "--until", "dataset"]
    )
    assert code != 0 and "symbolic link" in _one_line_error(output) and victim.read_text() == PRECIOUS

    x = tmp_path / "x"
    x.mkdir()
    (x / "mseg.onnx").write_text("someone's file")
    code, output = _invoke(export_main, ["onnx", *models, "-o", str(x)])
    assert code != 0 and "not written by m2u" in _one_line_error(output)
    assert (x / "mseg.onnx").read_text() == "someone's file"


def test_m2u_train_never_writes_its_run_files_through_links(tmp_path):
    from m2u.datasets import write_synthetic_dataset
    from m2u.training.cli import train_main

    data = tmp_path / "data"
    write_synthetic_dataset(data, 12, size=32, seed=0, split=(0.5, 0.25, 0.25))
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "v.txt"
    victim.write_text(PRECIOUS)
    (run / "config.json").symlink_to(victim)
    code, output = _invoke(
        train_main,
        ["mseg", "--data", str(data), "-o", str(run), "--max-steps", "1", "--device", "cpu", "--no-progress"]
        + ["--base-channels", "4", "--levels", "2", "--workers", "0", "--no-test", "--batch-size", "2"],
    )
    assert code != 0 and "symbolic link" in _one_line_error(output)
    assert victim.read_text() == PRECIOUS


# --- 2. sizes read from files --------------------------------------------------------------------------------


def test_sizes_read_from_files_are_capped_before_anything_is_allocated(tmp_path, tiny_models):
    """A model file's crop size (m2u-unmask, m2u-export, m2u-eval all load through load_model), a --pack
    template's header (m2u-mask, m2u-make-dataset) and a shard member's header (m2u-train, m2u-eval)."""
    from m2u.core.imageio import header_problem
    from m2u.datasets.codecs import decode_image
    from m2u.inference.cli import export_main, unmask_main
    from m2u.masking.cli import main as mask
    from m2u.masking.templates_pack import TemplatePackError, load_template_pack
    from m2u.training.checkpoint import CheckpointError, ModelInfo, load_model, save_model

    mseg, generator = tiny_models
    huge = save_model(tmp_path / "huge.safetensors", load_model(generator).module, ModelInfo(crop_size=6000))
    with pytest.raises(CheckpointError, match="crop_size 6000"):
        load_model(huge)
    (face,) = _faces(tmp_path / "in", 1)
    for command, args in (
        (unmask_main, [str(face), "-o", str(tmp_path / "u")]),
        (export_main, ["onnx", "-o", str(tmp_path / "x")]),
    ):
        code, output = _invoke(command, [*args, "--mseg", str(mseg), "--generator", str(huge)])
        assert code != 0 and "crop_size 6000" in _one_line_error(output)

    # A 12000x12000 RGBA PNG of a few hundred kB: refused from its header.
    pack = tmp_path / "pack"
    pack.mkdir()
    Image.new("RGBA", (12000, 12000)).save(pack / "big.png", optimize=False, compress_level=9)
    assert (pack / "big.png").stat().st_size < 2_000_000
    (pack / "masks.cfg").write_text(
        "[big]\ntemplate = big.png\n" + "".join(f"mask_{k} = 1,1\n" for k in ("a", "b", "c", "f", "e", "d"))
    )
    with pytest.raises(TemplatePackError, match="exceeds the limit"):
        load_template_pack(pack)
    code, output = _invoke(mask, [str(face), "-o", str(tmp_path / "m"), "--pack", str(pack), "--code", "big"])
    assert code != 0 and "exceeds the limit" in output and "Traceback" not in output

    buffer = tmp_path / "member.png"
    Image.new("L", (4000, 3000)).save(buffer)
    assert "exceeds the limit" in header_problem(buffer.read_bytes(), 2048)
    with pytest.raises(ValueError, match="exceeds the limit"):
        decode_image(buffer.read_bytes())


# --- 3. configuration values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mask_threshold", ".nan", "mask_threshold"),
        ("mask_threshold", "1.5", "mask_threshold must be in"),
        ("optimizer.learning_rate", ".inf", "optimizer.learning_rate"),
        ("batch_size", "2.7", "batch_size must be an integer"),
        ("seed", "2001-12-14", "seed must be an integer"),
        ("optimizer", "5", "optimizer must be"),
        ("max_seconds", "[1, 2]", "max_seconds"),
    ],
)
def test_bad_configuration_values_are_refused_naming_the_key_however_they_arrive(
    key, value, message, tmp_path
):
    from m2u.core.configfile import ConfigError, config_from_dict, parse_overrides
    from m2u.pipelines.config import PipelineConfig, apply_overrides
    from m2u.training.cli import train_main
    from m2u.training.config import MSegTrainConfig

    with pytest.raises(ConfigError, match=message):  # --set, a config file and a preset all become this
        config_from_dict(MSegTrainConfig, parse_overrides([f"{key}={value}"]))
    with pytest.raises(ConfigError, match=message):  # m2u-pipeline's stages
        apply_overrides(PipelineConfig(), {"mseg": parse_overrides([f"{key}={value}"])})
    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        f"{key.split('.')[0]}: " + (f"{{{key.split('.')[1]}: {value}}}" if "." in key else value) + "\n"
    )
    run = tmp_path / "run"
    for way in (["--set", f"{key}={value}"], [str(config_file)]):
        code, output = _invoke(train_main, ["mseg", "--data", str(tmp_path), "-o", str(run), *way])
        assert code != 0 and key.split(".")[-1] in output and "Traceback" not in output, output
        assert not run.exists(), "refused before anything is written"


def test_numbers_written_as_yaml_1_1_strings_are_read_as_numbers():
    from m2u.core.configfile import config_from_dict, parse_overrides
    from m2u.training.config import MSegTrainConfig

    config = config_from_dict(
        MSegTrainConfig,
        parse_overrides(
            ["max_seconds=1e3", "mask_threshold=5e-1", "max_steps=1e3", "optimizer.learning_rate=2e-4"]
        ),
    )
    assert config.max_seconds == 1000.0 and config.mask_threshold == 0.5 and config.max_steps == 1000
    assert isinstance(config.max_steps, int) and config.optimizer.learning_rate == 2e-4


# --- 4. model files ------------------------------------------------------------------------------------------


def test_damaged_model_files_are_refused_in_one_sentence(tmp_path, tiny_models):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from m2u.training.checkpoint import (
        CheckpointError,
        ModelInfo,
        load_model,
        save_model,
        save_training_state,
    )

    mseg, generator = tiny_models

    def rewritten(name: str, change) -> Path:
        tensors = load_file(mseg)
        with safe_open(str(mseg), framework="pt") as handle:
            metadata = handle.metadata()
        change(tensors, metadata)
        path = tmp_path / name
        save_file(tensors, path, metadata=metadata)
        return path

    first = sorted(k for k in load_file(mseg) if k.endswith("weight"))[0]
    cases = {
        "non-finite": (
            rewritten("nan.safetensors", lambda t, m: t[first].fill_(float("nan"))),
            "NaN or infinite",
        ),
        "integer-cast": (
            rewritten(
                "int.safetensors",
                lambda t, m: t.update({k: v.to(torch.int32) for k, v in t.items() if v.is_floating_point()}),
            ),
            "not floating point",
        ),
        "flipped exponent": (
            rewritten("big.safetensors", lambda t, m: t[first].mul_(1e30)),
            "no training produces",
        ),
    }
    model = load_model(mseg).module
    cases["threshold"] = (
        save_model(tmp_path / "thr.safetensors", model, ModelInfo(mask_threshold=1.5)),
        "threshold 1.5",
    )
    state = tmp_path / "last.pt"
    save_training_state(state, {"step": 1})
    cases["training checkpoint"] = (state, "saved with torch.save, such as a training checkpoint")
    # a zip of photos is no training checkpoint; an empty file is said empty
    import zipfile

    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("a.jpg", b"x")
    cases["zip"] = (tmp_path / "photos.zip", "is a zip archive, not a model file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.safetensors", r"is empty \(0 bytes\)")
    for what, (path, message) in cases.items():
        with pytest.raises(CheckpointError, match=message) as refused:
            load_model(path)
        assert "\n" not in str(refused.value), what  # one sentence


def test_the_shipped_weights_are_verified_against_their_checksums(tmp_path, monkeypatch):
    import m2u.inference.pretrained as pretrained

    source = pretrained.pretrained_dir()
    if not (source / pretrained.MSEG_FILE).is_file():
        pytest.skip("no shipped model in this installation")
    copy = tmp_path / pretrained.DEFAULT_MODEL
    shutil.copytree(source, copy)
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path)
    assert pretrained.pretrained_paths()[0] == copy / pretrained.MSEG_FILE  # intact: loads
    data = bytearray((copy / pretrained.MSEG_FILE).read_bytes())
    data[-100_000:] = bytes(255 - v for v in data[-100_000:])  # 100 kB flipped
    (copy / pretrained.MSEG_FILE).write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedDamaged, match="SHA-256"):
        pretrained.pretrained_paths()


def test_the_shipped_mask_classifier_is_verified_against_the_checksums_too(tmp_path, monkeypatch):
    import m2u.inference.mask_presence as presence
    import m2u.inference.pretrained as pretrained

    if not presence.MASK_CLASSIFIER.is_file():
        pytest.skip("no shipped mask classifier in this installation")
    copy = tmp_path / pretrained.DEFAULT_MODEL
    shutil.copytree(presence.MASK_CLASSIFIER.parent, copy)
    monkeypatch.setattr(presence, "MASK_CLASSIFIER", copy / pretrained.MASK_CLASSIFIER_FILE)
    presence.load_mask_classifier.cache_clear()
    try:
        assert isinstance(presence.load_mask_classifier(), presence.MaskPresenceNet)  # intact: loads
        presence.load_mask_classifier.cache_clear()
        data = bytearray((copy / pretrained.MASK_CLASSIFIER_FILE).read_bytes())
        data[-1000:] = bytes(255 - v for v in data[-1000:])
        (copy / pretrained.MASK_CLASSIFIER_FILE).write_bytes(bytes(data))
        with pytest.raises(pretrained.PretrainedDamaged, match="SHA-256"):
            presence.load_mask_classifier()
    finally:
        presence.load_mask_classifier.cache_clear()  # the next caller loads the real file again


def test_a_candidate_mask_classifier_outside_a_model_folder_loads_unchecked(tmp_path, monkeypatch):
    """benchmarks/real_masks.py --classifier measures a candidate file from runs/: no checksums.json beside it."""
    import m2u.inference.mask_presence as presence

    if not presence.MASK_CLASSIFIER.is_file():
        pytest.skip("no shipped mask classifier in this installation")
    candidate = tmp_path / "candidate.safetensors"
    shutil.copyfile(presence.MASK_CLASSIFIER, candidate)
    monkeypatch.setattr(presence, "MASK_CLASSIFIER", candidate)
    presence.load_mask_classifier.cache_clear()
    try:
        assert isinstance(presence.load_mask_classifier(), presence.MaskPresenceNet)
    finally:
        presence.load_mask_classifier.cache_clear()


# --- 5. the manifest is the record ---------------------------------------------------------------------------


# An edited stats record needs a build's commit markers: test_an_edited_stats_record_disagrees_with_the_commit_marker.
@pytest.mark.parametrize("damage", ["manifest deleted", "stats deleted", "not finalised"])
def test_training_and_evaluation_refuse_a_dataset_that_is_not_what_its_record_says(
    damage, tmp_path, tiny_models
):
    from m2u.datasets import write_synthetic_dataset
    from m2u.datasets.layout import MANIFEST_NAME, STATE_DIR, STATS_NAME, split_shards, stats_path_of
    from m2u.datasets.loader import LoaderConfig, ShardError, make_loader
    from m2u.evaluation.cli import main as evaluate
    from m2u.training.cli import train_main

    data = tmp_path / "data"
    write_synthetic_dataset(data, 24, size=32, seed=0, split=(0.5, 0.25, 0.25), shard_size=2)
    shard = split_shards(data, "train")[0]
    if damage == "manifest deleted":
        (data / MANIFEST_NAME).unlink()
        (data / STATE_DIR).mkdir(exist_ok=True)
    elif damage == "stats deleted":
        for split in ("train", "test"):
            stats_path_of(split_shards(data, split)[0]).unlink()
    else:
        (data / MANIFEST_NAME).unlink()
        (data / STATS_NAME).unlink(missing_ok=True)
        (data / STATE_DIR).mkdir(exist_ok=True)
    with pytest.raises(ShardError):
        make_loader(data, "train", LoaderConfig(num_workers=0, batch_size=2))
    mseg, generator = tiny_models
    code, output = _invoke(
        evaluate,
        ["--data", str(data), "--mseg", str(mseg), "--generator", str(generator), "-o", str(tmp_path / "r")]
        + ["--no-lpips", "--no-fid", "--no-identity", "--skip-paper-size-cost", "--device", "cpu", "-q"],
    )
    assert code != 0 and _one_line_error(output)
    assert not (tmp_path / "r" / "metrics.json").exists()
    code, output = _invoke(
        train_main,
        ["mseg", "--data", str(data), "-o", str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu"]
        + ["--base-channels", "4", "--levels", "2", "--workers", "0", "--no-progress", "--no-test"],
    )
    assert code != 0 and _one_line_error(output)
    assert str(shard.parent.parent) in output or "manifest" in output or "stats" in output


def test_an_edited_stats_record_disagrees_with_the_commit_marker(tmp_path):
    from m2u.datasets.build import build_dataset
    from m2u.datasets.config import BuildConfig
    from m2u.datasets.layout import SPLITS, split_shards, stats_path_of
    from m2u.datasets.loader import LoaderConfig, ShardError, make_loader

    from .conftest import photo_list

    data = tmp_path / "data"
    config = BuildConfig(mask_engine="synthetic", size=64, shard_size=2, workers=1, progress=False)
    build_dataset([photo_list(tmp_path, 8)], data, config)
    split = next((s for s in SPLITS if split_shards(data, s)), None)
    if split is None:
        pytest.skip("no shard was written (shared faces absent)")
    path = stats_path_of(split_shards(data, split)[0])
    stats = json.loads(path.read_text())
    stats["bytes"] += 512  # as if the shard had one more member
    path.write_text(json.dumps(stats))
    with pytest.raises(ShardError, match="edited"):
        make_loader(data, split, LoaderConfig(num_workers=0, batch_size=2))


# --- 6. stops and full disks ---------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("tool", ["m2u-make-dataset", "m2u-mask"])
def test_sigterm_to_a_tool_takes_its_workers_with_it(tool, tmp_path):
    faces = tmp_path / "in"
    copies = _faces(faces, 2)
    # The workers must still be busy at the SIGTERM: m2u-mask does ~100 of these photos a second with two workers.
    for i in range(120 if tool == "m2u-make-dataset" else 800):
        shutil.copy(copies[i % 2], faces / f"x{i:02d}.jpg")
    args = {
        "m2u-make-dataset": [
            str(faces),
            "-o",
            str(tmp_path / "out"),
            "--size",
            "64",
            "--workers",
            "2",
            "--quiet",
        ],
        "m2u-mask": [str(faces), "-o", str(tmp_path / "out"), "--workers", "2", "--quiet"],
    }[tool]
    process = subprocess.Popen(
        [str(BIN / tool), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2 and process.poll() is None:
        workers = {p for p in _children(process.pid) if _alive(p)}
        time.sleep(0.2)
    if len(workers) < 2:
        process.kill()
        pytest.skip(f"{tool} finished or never started two workers")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "SIGTERM" in stderr
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "a worker outlived its terminated parent"
    assert not list((tmp_path / "out").rglob("*.tmp")), "no temporary file left"
    if tool == "m2u-mask":
        # Its report.csv says what the stopped run finished, and the folder holds exactly those outputs.
        with open(tmp_path / "out" / "report.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        said = re.search(r"report\.csv lists the (\d+) of (\d+) outputs finished", stderr)
        inputs = len(list(faces.iterdir()))
        assert said and int(said.group(1)) == len(rows) < int(said.group(2)) == inputs, stderr
        written = {str(path) for path in (tmp_path / "out").rglob("*.jpg")}
        assert written == {row["output"] for row in rows if row["status"] == "ok"}


def test_a_worker_dies_with_its_parent_even_after_sigkill(tmp_path):
    script = (
        "import os, time\n"
        "from m2u.core.parallel import worker_pool\n"
        "def task(_):\n    time.sleep(60)\n"
        "with worker_pool(2) as pool:\n"
        "    print(os.getpid(), flush=True)\n"
        "    pool.map(task, [0])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    deadline = time.time() + 30
    workers: set[int] = set()
    while time.time() < deadline and not workers:
        workers = {p for p in _children(process.pid) if _alive(p)}
        time.sleep(0.1)
    assert workers
    time.sleep(0.5)  # the worker has run its start-up (PR_SET_PDEATHSIG)
    process.kill()
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _full_disk_on_replace(monkeypatch):
    import m2u.core.fileio as fileio

    def full(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(fileio.os, "replace", full)


def test_a_full_disk_leaves_every_output_complete_or_absent_and_says_so_in_one_line(
    tmp_path, monkeypatch, tiny_models
):
    from m2u.inference.cli import unmask_main
    from m2u.masking.cli import main as mask
    from m2u.training.checkpoint import save_training_state

    (face,) = _faces(tmp_path / "in", 1)
    mseg, generator = tiny_models
    _full_disk_on_replace(monkeypatch)
    for command, args, out in (
        (mask, [str(face), "-o", str(tmp_path / "m"), "--quiet"], tmp_path / "m"),
        (
            unmask_main,
            [str(face), "-o", str(tmp_path / "u"), "--mseg", str(mseg), "--generator", str(generator)],
            tmp_path / "u",
        ),
    ):
        code, output = _invoke(command, args)
        line = _one_line_error(output)
        assert code != 0 and ("disk is full" in line or "No space left" in line)
        assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".m2u-")], (
            "no partial output"
        )
    with pytest.raises(OSError, match="No space"):
        save_training_state(tmp_path / "run" / "last.pt", {"step": 1})
    assert not (tmp_path / "run" / "last.pt").exists()
    from m2u.datasets import write_synthetic_dataset
    from m2u.training.cli import train_main

    data = tmp_path / "data"
    monkeypatch.undo()
    write_synthetic_dataset(data, 12, size=32, seed=0, split=(0.5, 0.25, 0.25))
    _full_disk_on_replace(monkeypatch)
    code, output = _invoke(
        train_main,
        ["mseg", "--data", str(data), "-o", str(tmp_path / "t"), "--max-steps", "1", "--device", "cpu"]
        + ["--base-channels", "4", "--levels", "2", "--workers", "0", "--no-progress", "--no-test"]
        + ["--batch-size", "2"],
    )
    assert code != 0 and "disk is full" in _one_line_error(output)


def test_a_read_only_folder_and_a_corrupt_resume_config_are_one_line(tmp_path, monkeypatch):
    from m2u.masking.cli import main as mask
    from m2u.training.cli import train_main

    (face,) = _faces(tmp_path / "in", 1)
    import m2u.core.fileio as fileio

    real_new_temp = fileio._new_temp

    def read_only(path):  # creating the temporary file beside an output is where a read-only folder fails
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path.parent))

    monkeypatch.setattr(fileio, "_new_temp", read_only)
    code, output = _invoke(mask, [str(face), "-o", str(tmp_path / "ro"), "--quiet"])
    assert code != 0 and "read-only" in _one_line_error(output)
    monkeypatch.setattr(fileio, "_new_temp", real_new_temp)

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    code, output = _invoke(train_main, ["mseg", "-o", str(run), "--resume"])
    assert code != 0 and "config.json" in _one_line_error(output)


def test_m2u_pipeline_onto_a_folder_whose_dataset_holds_other_files_is_one_line(tmp_path):
    from m2u.pipelines.cli import main as pipeline

    faces = tmp_path / "faces"
    _faces(faces, 2)
    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / "notes.txt").write_text("mine")
    code, output = _invoke(
        pipeline, ["run", "--faces", str(faces), "-o", str(run), "--preset", "smoke", "--until", "dataset"]
    )
    assert code == 2 and "holds files that are not a dataset build's (notes.txt)" in _one_line_error(output)
    assert (run / "dataset" / "notes.txt").read_text() == "mine"


# --- 7. a run folder inside the faces folder -----------------------------------------------------------------


def test_a_pipeline_run_inside_its_faces_folder_does_not_read_its_own_outputs(tmp_path):
    from m2u.pipelines.run import inputs_fingerprint

    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(faces / f"f{i}.png")
    run = faces / "run"
    before = inputs_fingerprint([str(faces)], exclude=[run])
    (run / "gan").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(run / "gan" / "grid.png")
    (run / "dataset" / "train").mkdir(parents=True)
    (run / "dataset" / "train" / "train-000000.tar").write_bytes(b"x" * 512)
    assert inputs_fingerprint([str(faces)], exclude=[run]) == before
    assert inputs_fingerprint([str(faces)]) != before  # the same files would count without the exclusion
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(faces / "new.png")
    assert inputs_fingerprint([str(faces)], exclude=[run]) != before  # a new face still counts


def test_replace_problem_names_why(tmp_path):
    assert replace_problem(tmp_path / "new.txt") == ""
    (tmp_path / "old.txt").write_text("x")
    assert "not written by m2u" in replace_problem(tmp_path / "old.txt")
