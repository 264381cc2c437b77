"""m2u-export's output folder and model-file arguments: an earlier export's file this export does not replace is
refused (or removed with `overwrite`, only what m2u wrote), and a path that is no model file is said as such."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from m2u.core.fileio import OutputRefusedError, content_digest
from m2u.inference.cli import export_main
from m2u.inference.export import ExportConfig, export_models
from m2u.training.checkpoint import CheckpointError, ModelInfo, load_model, save_model
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

SIZE = 32


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny M-Seg and generator files (a few kB of weights: each exports in about a second)."""
    root = tmp_path_factory.mktemp("models")
    info = ModelInfo(crop_size=SIZE)
    mseg = save_model(root / "mseg.safetensors", MSeg(MSegConfig(base_channels=4, levels=3)), info)
    generator = CARU2Net(GeneratorConfig(stages=3, width_multiplier=0.125))
    return {"mseg": mseg, "generator": save_model(root / "generator.safetensors", generator, info)}


def _export(out: Path, *args: str):
    return CliRunner().invoke(export_main, ["onnx", *args, "-o", str(out)])


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_an_earlier_exports_file_this_export_would_not_replace_is_refused_or_removed_with_overwrite(
    model_files, tmp_path
):
    out = tmp_path / "onnx"
    both = _export(out, "--mseg", str(model_files["mseg"]), "--generator", str(model_files["generator"]))
    assert both.exit_code == 0, both.output
    before = _snapshot(out)

    # The stale generator.onnx would sit beside the new mseg.onnx, looking like part of this export: refused,
    # named, before anything is written.
    refused = _export(out, "--mseg", str(model_files["mseg"]))
    assert refused.exit_code == 2, refused.output
    assert (
        "generator.onnx" in refused.output and "--overwrite" in refused.output and "--out" in refused.output
    )
    assert "Traceback" not in refused.output and "`" not in refused.output
    assert _snapshot(out) == before

    # The same export again replaces its own files, as before.
    again = _export(out, "--mseg", str(model_files["mseg"]), "--generator", str(model_files["generator"]))
    assert again.exit_code == 0, again.output

    replaced = _export(out, "--mseg", str(model_files["mseg"]), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "generator.onnx").exists() and (out / "mseg.onnx").is_file()
    assert list(json.loads((out / "export.json").read_text())) == ["mseg"]


def test_the_library_refuses_too_and_never_touches_a_persons_own_file(model_files, tmp_path):
    mseg, info = load_model(model_files["mseg"])
    generator, generator_info = load_model(model_files["generator"])
    config = ExportConfig(image_size=SIZE)
    out = tmp_path / "onnx"
    export_models({"mseg": ("m", mseg, info), "generator": ("g", generator, generator_info)}, out, config)
    with pytest.raises(OutputRefusedError, match=r"generator\.onnx of an earlier export.*`overwrite`"):
        export_models({"mseg": ("m", mseg, info)}, out, config)
    summary = export_models({"mseg": ("m", mseg, info)}, out, config, overwrite=True)
    assert list(summary) == ["mseg"] and not (out / "generator.onnx").exists()

    # A generator.onnx m2u did not write is the person's: neither refused nor removed, even with overwrite.
    own = tmp_path / "own"
    own.mkdir()
    (own / "generator.onnx").write_bytes(b"mine")
    export_models({"mseg": ("m", mseg, info)}, own, config, overwrite=True)
    assert (own / "generator.onnx").read_bytes() == b"mine"
    assert list(json.loads((own / "export.json").read_text())) == ["mseg"]


def test_a_path_that_is_no_model_file_says_what_it_is(model_files, tmp_path):
    device = _export(tmp_path / "a", "--mseg", os.devnull)
    assert device.exit_code == 2
    assert "not a regular file (a character device)" in device.output and "not found" not in device.output
    assert "Traceback" not in device.output and len(device.output.strip().splitlines()) == 1

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    not_a_model = _export(tmp_path / "b", "--generator", str(junk))
    assert not_a_model.exit_code == 2 and "is not an m2u model file" in not_a_model.output
    assert len(not_a_model.output.strip().splitlines()) == 1

    with pytest.raises(CheckpointError, match=r"not a regular file \(a folder\)"):
        load_model(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"not a regular file \(a named pipe\)"):
        load_model(fifo)  # said at once, not a reader blocked on the pipe
    with pytest.raises(CheckpointError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_an_export_folder_that_is_a_file_is_one_line(tmp_path):
    from m2u.core.fileio import OutputRefusedError
    from m2u.inference.export import check_export_folder

    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", "/dev/zero"):
        with pytest.raises(OutputRefusedError, match="is not a folder"):
            check_export_folder(out, ["mseg"])


def _both(model_files) -> list[str]:
    return ["--mseg", str(model_files["mseg"]), "--generator", str(model_files["generator"])]


def test_a_failed_export_leaves_the_earlier_export_as_it_was_and_a_new_folder_not_at_all(
    model_files, tmp_path
):
    out = tmp_path / "onnx"
    assert _export(out, *_both(model_files)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    # The generator's parity check fails after the M-Seg was exported and checked: nothing of it reaches the
    # folder (before, mseg.onnx was replaced and the old export.json still described the old one).
    failed = _export(out, *_both(model_files), "--size", "48", "--atol", "1e-12")
    assert failed.exit_code == 1 and "differs from PyTorch" in failed.output
    # It says what to do, as the options that do it.
    assert (
        "; nothing was written: export with another --opset, or with an --atol of at least" in failed.output
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    fresh = tmp_path / "fresh"
    assert _export(fresh, *_both(model_files), "--atol", "1e-12").exit_code == 1
    assert not fresh.exists()  # made by the export, left empty: removed with its lock


def test_ctrl_c_as_an_export_takes_its_names_leaves_one_whole_export(model_files, tmp_path, monkeypatch):
    """A Ctrl-C once the first new file had taken its name left it beside the earlier export's other file, with no
    export.json (removed first): an export of neither run."""
    import signal

    mseg, info = load_model(model_files["mseg"])
    generator, generator_info = load_model(model_files["generator"])
    models = {
        "mseg": (model_files["mseg"], mseg, info),
        "generator": (model_files["generator"], generator, generator_info),
    }
    out = tmp_path / "onnx"
    export_models(models, out, ExportConfig(image_size=SIZE))
    before = {name: (out / f"{name}.onnx").stat().st_ino for name in ("mseg", "generator")}
    replace = os.replace

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        if Path(target).name == "mseg.onnx":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, right after the first file took its name

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        export_models(models, out, ExportConfig(image_size=48))
    monkeypatch.setattr(os, "replace", replace)
    summary = json.loads((out / "export.json").read_text())
    assert {name: entry["image_size"] for name, entry in summary.items()} == {"mseg": 48, "generator": 48}
    assert all(
        (out / f"{name}.onnx").read_bytes() != before[name] for name in before
    )  # both of the new export


def test_a_second_export_into_a_folder_being_written_is_refused(model_files, tmp_path):
    from m2u.core.inputs import output_lock
    from m2u.inference.export import EXPORT_LOCK_TOOL

    out = tmp_path / "onnx"
    out.mkdir()
    with output_lock(out, EXPORT_LOCK_TOOL):
        refused = _export(out, *_both(model_files))
    assert refused.exit_code == 2 and "another m2u-export run is writing" in refused.output
    assert sorted(p.name for p in out.iterdir()) == [f".{EXPORT_LOCK_TOOL}.lock"]


def test_a_dynamic_graph_is_checked_past_its_tracing_size(model_files, tmp_path, monkeypatch):
    from m2u.inference import export

    checked: list[int] = []
    parity = export.onnx_parity

    def recording(model, path, inputs):
        checked.append(inputs[0].shape[-1])
        return parity(model, path, inputs)

    monkeypatch.setattr(export, "onnx_parity", recording)
    assert _export(tmp_path / "onnx", "--mseg", str(model_files["mseg"]), "--size", "48").exit_code == 0
    # Half the tracing size (at least 32, here also the trained size) and one past it (48 + 32).
    assert checked == [32, 80]


def test_models_exported_at_different_sizes_are_said_to_need_a_resize(model_files, tmp_path):
    info = ModelInfo(crop_size=64)
    generator = save_model(
        tmp_path / "g64.safetensors", CARU2Net(GeneratorConfig(stages=3, width_multiplier=0.125)), info
    )
    result = _export(tmp_path / "onnx", "--mseg", str(model_files["mseg"]), "--generator", str(generator))
    assert result.exit_code == 0, result.output
    assert "warning: the models are exported at different sizes (M-Seg 32, generator 64)" in result.output
    assert "(or give one --size)" in result.output  # the option, not ExportConfig's `image_size`


def test_an_export_of_other_model_files_is_refused_and_the_same_files_again_replace_it(model_files, tmp_path):
    """An export is finished work: another model's export into its folder replaced it without a word. The same
    model files again (by content: a copy elsewhere is the same) are a rerun; other ones need --overwrite."""
    out = tmp_path / "onnx"
    assert _export(out, "--mseg", str(model_files["mseg"])).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    torch.manual_seed(1)
    other = save_model(tmp_path / "other.safetensors", MSeg(MSegConfig(base_channels=4, levels=3)))
    refused = _export(out, "--mseg", str(other))
    assert refused.exit_code == 2, refused.output
    assert f"mseg.onnx of {model_files['mseg']}" in refused.output and "--overwrite" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before

    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(model_files["mseg"].read_bytes())
    assert _export(out, "--mseg", str(copy)).exit_code == 0  # the same model file: a rerun
    replaced = _export(out, "--mseg", str(other), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "export.json").read_text())["mseg"]["source"] == str(other)

    # An export.json of an m2u from before `source_sha256` does not say which model it came from: refused too.
    summary = json.loads((out / "export.json").read_text())
    del summary["mseg"]["source_sha256"]
    (out / "export.json").write_text(json.dumps(summary))
    assert _export(out, "--mseg", str(other)).exit_code == 2


def test_each_model_file_is_hashed_once_per_export(model_files, tmp_path, monkeypatch):
    """A rerun into its own export read each model file (hundreds of MB) for the check of an earlier export and
    again for export.json's record (m2u-export: three times, its pre-flight check too). Once now, the record
    unchanged."""
    import m2u.inference.export as export

    read = []
    monkeypatch.setattr(export, "content_digest", lambda path: read.append(path) or content_digest(path))
    mseg = str(model_files["mseg"])
    out = tmp_path / "onnx"
    assert _export(out, "--mseg", mseg).exit_code == 0 and len(read) == 1
    read.clear()
    rerun = _export(out, "--mseg", mseg)  # an earlier export there: checked, then recorded
    assert rerun.exit_code == 0, rerun.output
    assert len(read) == 1
    assert json.loads((out / "export.json").read_text())["mseg"]["source_sha256"] == content_digest(mseg)
    model, info = load_model(mseg)
    read.clear()
    summary = export_models({"mseg": (mseg, model, info)}, out, ExportConfig(image_size=SIZE))
    assert len(read) == 1 and summary["mseg"]["source_sha256"] == content_digest(mseg)


def test_export_json_records_absolute_paths(model_files, tmp_path, monkeypatch):
    """Relative paths as typed resolved only from the shell's folder at export time."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mseg.safetensors").write_bytes(model_files["mseg"].read_bytes())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_main, ["onnx", "--mseg", "run/mseg.safetensors", "-o", "onnx mine"])
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "onnx mine" / "export.json").read_text())["mseg"]
    assert entry["source"] == str(tmp_path / "run" / "mseg.safetensors")
    assert entry["onnx"] == str(tmp_path / "onnx mine" / "mseg.onnx")
    assert entry["source_sha256"] == hashlib.sha256(model_files["mseg"].read_bytes()).hexdigest()
