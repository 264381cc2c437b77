"""Configuration tree, presets, overrides and the stage cache (no training: fast)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from m2u.pipelines.cli import main
from m2u.pipelines.config import PRESETS, ConfigError, apply_overrides, load_config
from m2u.pipelines.stages import run_stage


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_validates(preset):
    config = load_config(preset)
    assert config.dataset.size in (64, 128, 256)
    assert config.gan.optimizer.learning_rate == pytest.approx(1e-3)  # the paper's, kept by every preset


def test_paper_preset_keeps_the_paper_protocol():
    config = load_config("paper")
    assert (config.dataset.limit, config.dataset.size) == (12000, 256)
    assert tuple(config.dataset.split) == (0.7, 0.15, 0.15)
    assert (config.gan.batch_size, config.gan.epochs) == (8, 100)
    assert config.gan.optimizer.milestones == (50_000, 75_000, 90_000)
    assert (
        config.gan.adversarial_weight,
        config.gan.reconstruction_weight,
        config.gan.perceptual_weight,
    ) == (
        1.0,
        100.0,
        10.0,
    )


def test_unknown_option_is_refused_with_its_path():
    with pytest.raises(ConfigError, match=r"gan\.generator\.widht"):
        apply_overrides(load_config("smoke"), {"gan": {"generator": {"widht": 2}}})


def test_invalid_value_reports_the_stage():
    with pytest.raises(ConfigError, match="gan"):
        apply_overrides(load_config("smoke"), {"gan": {"precision": "fp8"}})


@pytest.mark.parametrize(
    "stage, key, value",
    [
        ("mseg", "out", "/elsewhere/mseg"),
        ("mseg", "data", "data/other"),
        ("gan", "mseg_checkpoint", "runs/mseg/mseg.safetensors"),
        ("gan", "resume", True),
        ("dataset", "overwrite", True),
    ],
)
def test_a_setting_the_pipeline_gives_each_stage_itself_is_refused_not_ignored(stage, key, value):
    with pytest.raises(ConfigError, match=rf"`{stage}\.{key}` is set by the pipeline .* would not be used"):
        load_config("smoke", None, {stage: {key: value}})


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("gan.mseg", "x.pt", "the gan stage uses the M-Seg the mseg stage trained"),  # m2u-train's key
        ("gan.mseg_checkpoint", "x.pt", "the gan stage uses the M-Seg the mseg stage trained"),  # the field's
        ("mseg.out", "elsewhere", "each stage writes to its own folder of the run folder"),
    ],
)
def test_a_refused_pipeline_setting_is_named_as_written_with_why(tmp_path, key, value, why):
    """`--set gan.mseg=x.pt` was refused as `gan.mseg_checkpoint`, a key the user had not typed, without the why."""
    stage, name = key.split(".")
    said = rf"^`{re.escape(key)}` is set by the pipeline itself: {why}, so '{value}' would not be used; leave it out$"
    with pytest.raises(ConfigError, match=said):
        load_config("smoke", None, {stage: {name: value}})  # --set
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"{stage}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=said):
        load_config("smoke", config_file)


def test_a_printed_pipeline_config_loads_back_unchanged(tmp_path):
    runner = CliRunner()
    printed = runner.invoke(
        main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(tmp_path / "r"), "--print-config"]
    )
    assert printed.exit_code == 0, printed.output
    (tmp_path / "printed.yaml").write_text(printed.output)
    again = runner.invoke(
        main, ["run", "-c", str(tmp_path / "printed.yaml"), "-o", str(tmp_path / "r"), "--print-config"]
    )
    assert again.exit_code == 0 and again.output == printed.output


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_print_config_needs_no_run_folder(tmp_path, command):
    """`m2u-pipeline run --print-config` refused to print without -o ("Missing option '-o'"), unlike m2u-train's
    and m2u-eval's: printing writes nothing. A run still needs its folder, and so does a printed config of the
    demo faces, whose folder is the run folder's."""
    import yaml

    runner = CliRunner()
    printed = runner.invoke(main, [command, "--preset", "smoke", str(tmp_path / "faces"), "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.output)["faces"] == [str(tmp_path / "faces")]
    for extra in ([], ["--demo-faces", "--print-config"]):
        faces = [] if extra else [str(tmp_path / "faces")]
        refused = runner.invoke(main, [command, "--preset", "smoke", *faces, *extra])
        said = refused.output.strip().splitlines()[-1]
        assert refused.exit_code == 2 and said.startswith("Error: -o/--out is required"), refused.output
    assert list(tmp_path.iterdir()) == []


def test_faces_may_be_one_folder_written_as_a_string(tmp_path):
    """`faces: DIR` in a pipeline config was refused ("faces must be a list, got 'DIR'"), though `faces` takes
    one input as well as several: a string is that one input, in a config file as with --set."""
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(f"faces: {tmp_path / 'faces'}\n")
    assert load_config("smoke", path).faces == [str(tmp_path / "faces")]
    printed = CliRunner().invoke(main, ["run", "-c", str(path), "--set", "faces=other", "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.output)["faces"] == ["other"]
    with pytest.raises(ConfigError, match="faces must be a list, got 5"):  # not a string: still refused
        load_config("smoke", extra={"faces": 5})


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_files_in_every_format_override_the_preset(tmp_path, suffix):
    path = tmp_path / f"config{suffix}"
    if suffix == ".yaml":
        path.write_text("gan:\n  max_steps: 7\ndataset:\n  size: 96\n")
    elif suffix == ".toml":
        path.write_text("[gan]\nmax_steps = 7\n[dataset]\nsize = 96\n")
    else:
        path.write_text(json.dumps({"gan": {"max_steps": 7}, "dataset": {"size": 96}}))
    config = load_config("smoke", path, {"mseg": {"max_steps": 2}})
    assert (config.gan.max_steps, config.dataset.size, config.mseg.max_steps) == (7, 96, 2)
    assert config.dataset.limit == 40  # from the preset, untouched


def test_cli_set_and_print_config(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "smoke",
            "--faces",
            str(tmp_path),
            "-o",
            str(tmp_path / "run"),
            "--set",
            "gan.generator.width_multiplier=0.5",
            "--set",
            "dataset.limit=3",
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "width_multiplier: 0.5" in result.output and "limit: 3" in result.output
    bad = CliRunner().invoke(main, ["run", "--preset", "smoke", "-o", str(tmp_path), "--set", "nope.x=1"])
    assert bad.exit_code != 0 and "unknown option 'nope'" in bad.output


def test_set_faces_wins_over_the_inputs_as_over_every_option(tmp_path):
    """`m2u-pipeline run a -o r --set faces=[b]` ran on `a`: the INPUTS replaced the --set item, against the
    README's precedence (options on the command line < --set)."""
    import yaml

    args = ["run", "--preset", "smoke", str(tmp_path / "a"), "-o", str(tmp_path / "r"), "--print-config"]
    result = CliRunner().invoke(main, [*args, "--set", f"faces=[{tmp_path / 'b'}]"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["faces"] == [str(tmp_path / "b")]
    alone = CliRunner().invoke(main, args)
    assert yaml.safe_load(alone.output)["faces"] == [str(tmp_path / "a")]


def test_missing_faces_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--faces", str(tmp_path / "absent"), "-o", str(tmp_path / "run")]
    )
    assert result.exit_code != 0
    assert "face inputs not found" in result.output


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"calls": self.calls}


def test_stage_skips_same_config_and_reruns_changed(tmp_path):
    action = Counter()
    stage_dir, records = tmp_path / "s", tmp_path / "records"
    first = run_stage("s", stage_dir, records, {"a": 1}, ["up"], action, log=lambda _: None)
    again = run_stage("s", stage_dir, records, {"a": 1}, ["up"], action, log=lambda _: None)
    assert (first.skipped, again.skipped, action.calls) == (False, True, 1)
    assert again.fingerprint == first.fingerprint and again.result == {"calls": 1}
    changed_upstream = run_stage("s", stage_dir, records, {"a": 1}, ["other"], action, log=lambda _: None)
    assert not changed_upstream.skipped and action.calls == 2
    changed_config = run_stage("s", stage_dir, records, {"a": 2}, ["other"], action, log=lambda _: None)
    assert not changed_config.skipped and action.calls == 3


def test_stage_wipes_partial_output_of_another_config_but_resumes_its_own(tmp_path):
    stage_dir, records = tmp_path / "s", tmp_path / "records"
    seen = []

    def crash():
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "partial").write_text("x")
        raise KeyboardInterrupt  # a kill midway

    with pytest.raises(KeyboardInterrupt):
        run_stage("s", stage_dir, records, {"a": 1}, [], crash, log=lambda _: None)

    def look():
        seen.append((stage_dir / "partial").exists())
        return {}

    run_stage("s", stage_dir, records, {"a": 1}, [], look, log=lambda _: None)  # same config: resume
    with pytest.raises(KeyboardInterrupt):
        run_stage("s", stage_dir, records, {"a": 2}, [], crash, log=lambda _: None)
    run_stage("s", stage_dir, records, {"a": 3}, [], look, log=lambda _: None)  # another config: wiped first
    assert seen == [True, False]


def test_a_rerun_says_which_options_and_which_earlier_stages_changed(tmp_path):
    stage_dir, records = tmp_path / "s", tmp_path / "records"
    said: list[str] = []
    names = ["the face inputs", "the dataset stage"]
    run_stage(
        "gan", stage_dir, records, {"lr": 0.1, "loss": {"l1": 1}}, ["in", "d1"], Counter(), log=said.append
    )
    said.clear()
    config = {"lr": 0.2, "loss": {"l1": 1}}
    run_stage(
        "gan",
        stage_dir,
        records,
        config,
        ["in", "d2"],
        Counter(),
        said.append,
        upstream_names=names,
        config_prefix="gan.",
    )
    assert said[0].startswith(
        "[gan] configuration or inputs changed (gan.lr 0.1 -> 0.2, the dataset stage changed), re-running"
    ), said
    said.clear()
    run_stage(
        "gan",
        stage_dir,
        records,
        {"lr": 0.2, "loss": {"l1": 2}, "new": True},
        ["in", "d2"],
        Counter(),
        said.append,
        config_prefix="gan.",
    )
    assert '(gan.loss.l1 1 -> 2, gan.new "unset" -> true)' in said[0], said


@pytest.mark.parametrize(
    "ending, said",
    [
        (KeyboardInterrupt, "[mseg] stopped by Ctrl-C: a rerun with the same configuration resumes it"),
        (
            RuntimeError("the loader found no shard\nin 3 lines"),
            "[mseg] failed: the loader found no shard in 3 lines",
        ),
    ],
)
def test_pipeline_log_records_how_a_stage_ended(tmp_path, monkeypatch, ending, said):
    """The log is the run's history: a stage stopped or failed is in it, not only on the terminal."""
    from m2u.pipelines import run as pipeline_run

    def ends():
        raise ending

    monkeypatch.setattr(
        pipeline_run,
        "_stage_actions",
        lambda *_: {"dataset": lambda: {}, "mseg": ends, "gan": ends, "evaluation": ends},
    )
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)  # a face input (never read: the stages are stubs)
    config = load_config("smoke", extra={"faces": [str(faces)]})
    echoed: list[str] = []
    with pytest.raises(type(ending) if isinstance(ending, BaseException) else ending):
        pipeline_run.run_pipeline(config, tmp_path / "run", echo=echoed.append, until="mseg")
    log = (tmp_path / "run" / "pipeline.log").read_text().splitlines()
    assert log[-1].endswith(said) and "[mseg] running" in log[-2]
    assert not any(said in line for line in echoed)  # the command says it in its own one line


def test_a_stage_after_one_stopped_midway_is_out_of_date(tmp_path):
    """--until mseg after the gan stage was rerun and stopped: the evaluation was made from the generator moved to
    stale/, and said so (the check had stopped at the first stage without a record)."""
    from m2u.pipelines.run import _note_stages_left_behind

    records = tmp_path / "stages"
    records.mkdir()
    (records / "mseg.json").write_text(json.dumps({"fingerprint": "m1", "upstream": ["in", "d1"]}))
    (records / "gan.pending").write_text("g2")  # rerun under a new configuration, stopped: no record
    (records / "evaluation.json").write_text(
        json.dumps({"fingerprint": "e1", "upstream": ["in", "d1", "m1", "g1"]})
    )
    said: list[str] = []
    _note_stages_left_behind(tmp_path, "mseg", "m1", said.append)
    assert len(said) == 1 and said[0].startswith(f"[evaluation] out of date: {tmp_path / 'evaluation'}")


def test_a_stop_a_library_turned_into_its_own_error_is_logged_as_the_stop(monkeypatch):
    """A SIGTERM to the process group kills the loader's workers and torch raises "worker killed": the console
    said "stopped by SIGTERM" and pipeline.log "failed"."""
    from m2u.core import guard
    from m2u.pipelines.run import _how_it_ended

    monkeypatch.setattr(guard, "_SIGNALLED", [guard.Terminated()])
    killed = RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated.")
    assert _how_it_ended(killed) == "stopped by SIGTERM: a rerun with the same configuration resumes it"
    monkeypatch.setattr(guard, "_SIGNALLED", [])
    assert _how_it_ended(killed).startswith("failed: DataLoader worker (pid 7)")


def test_an_option_emptied_or_removed_is_named_as_changed(tmp_path):
    from m2u.pipelines.stages import describe_change

    record = {"config": {"detector_options": {"upsample": 1}, "lr": 0.1}}
    assert describe_change(record, {"detector_options": {}, "lr": 0.1}, []) == (
        'detector_options "unset" -> {}, detector_options.upsample 1 -> "unset"'
    )


def _stubbed_stages(monkeypatch, calls: list[str], stop_in: str = ""):
    """run_pipeline with each stage's action replaced by one that records its call (and stops in `stop_in`)."""
    from m2u.pipelines import run as pipeline_run

    def action(name):
        def act():
            calls.append(name)
            if name == stop_in:
                raise KeyboardInterrupt
            return {}

        return act

    monkeypatch.setattr(
        pipeline_run, "_stage_actions", lambda *_: {n: action(n) for n in pipeline_run.STAGES}
    )
    # No dataset is built: the plan of its samples (one face: one split) is not checked.
    monkeypatch.setattr(pipeline_run, "check_dataset_plan", lambda *_: None)
    return pipeline_run


def _finished_stubbed_run(tmp_path, monkeypatch):
    """A run of stubbed stages (`_stubbed_stages`) over one face, finished: (the pipeline module, the run folder,
    its config, the stage calls so far)."""
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    config = load_config("smoke", extra={"faces": [str(faces)]})
    pipeline_run.run_pipeline(config, run, echo=lambda _: None)
    return pipeline_run, run, config, calls


def test_the_same_faces_spelled_another_way_leave_a_finished_run_finished(tmp_path, monkeypatch):
    """`faces`, `./faces/` and the absolute path are one set of faces: a finished run is not rerun (every stage
    was, the dataset's record holding the spelling)."""
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    pipeline_run.run_pipeline(load_config("smoke", extra={"faces": ["faces"]}), run, echo=lambda _: None)
    assert calls == list(pipeline_run.STAGES)
    for spelling in ("./faces/", str(faces)):
        said: list[str] = []
        config = load_config("smoke", extra={"faces": [spelling]})
        pipeline_run.run_pipeline(config, run, echo=said.append)
        assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date"
    (faces / "b.jpg").write_bytes(b"y" * 10)  # other faces do rerun it
    said = []
    pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(faces)]}), run, echo=said.append)
    assert calls[4:] == list(pipeline_run.STAGES)
    assert (
        "[dataset] configuration or inputs changed (the face inputs changed: 1 photo added: b.jpg)" in said[0]
    ), said


def test_a_damaged_face_hash_cache_never_fails_a_rerun(tmp_path, monkeypatch):
    """RUN/stages/face-hashes.tsv is a cache (m2u's by name): damaged or edited, it is read as far as it goes and
    written again, and the finished run stays finished."""
    pipeline_run, run, config, calls = _finished_stubbed_run(tmp_path, monkeypatch)
    cache = run / "stages" / "face-hashes.tsv"
    written = cache.read_text()
    cache.write_text("garbage\n")
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date"
    assert cache.read_text() == written


def test_a_run_recorded_with_the_faces_as_spelled_before_stays_finished(tmp_path, monkeypatch):
    """Records made before the spelling left the fingerprint (the faces as given were hashed): still up to date."""
    import json

    from m2u.pipelines.stages import fingerprint

    pipeline_run, run, config, calls = _finished_stubbed_run(tmp_path, monkeypatch)
    # The records as m2u wrote them before: the chain starts from the spelled inputs and the dataset's plain dict.
    upstream = [pipeline_run.inputs_fingerprint(config.faces, exclude=[run], identity="spelled")]
    for name in pipeline_run.STAGES:
        stage = (
            {"faces": config.faces, "dataset": config.dataset} if name == "dataset" else getattr(config, name)
        )
        path = run / "stages" / f"{name}.json"
        record = json.loads(path.read_text())
        record["fingerprint"], record["upstream"] = fingerprint(stage, upstream), upstream
        path.write_text(json.dumps(record))
        upstream = [*upstream, record["fingerprint"]]
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date"
    gan = load_config("smoke", extra={"faces": config.faces, "gan": {"max_steps": 3}})
    pipeline_run.run_pipeline(gan, run, echo=lambda _: None)  # a later change reruns from there on, as before
    assert calls[4:] == ["gan", "evaluation"]


def _dataset_stage_stopped_once(tmp_path, monkeypatch, *folders: str):
    """Faces folders (each holding a.jpg) and a smoke run with stubbed stages whose dataset stage is stopped by
    Ctrl-C, run once on the first folder: (the stubbed m2u.pipelines.run, the run folder, the folders)."""
    made = [tmp_path / name for name in folders]
    for folder in made:
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"x" * 10)
    pipeline_run = _stubbed_stages(monkeypatch, [], stop_in="dataset")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(
            load_config("smoke", extra={"faces": [str(made[0])]}), run, echo=lambda _: None
        )
    return pipeline_run, run, made


def test_a_dataset_stage_stopped_midway_resumes_only_from_the_same_files(tmp_path, monkeypatch):
    """The same faces copied elsewhere are the same inputs once built, but a build stopped midway recorded where
    they were: from the copy it starts again (its partial output moved aside), from the same place it resumes."""
    pipeline_run, run, (faces, copy) = _dataset_stage_stopped_once(tmp_path, monkeypatch, "faces", "copy")
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(copy)]}), run, echo=said.append)
    # not "configuration or inputs changed": the faces are the same, and no finished output was set aside
    assert said[0] == (
        "[dataset] the interrupted run is not resumed (it was started on the faces found elsewhere or with another "
        "mask engine), starting again"
    ), said
    said = []
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(copy)]}), run, echo=said.append)
    # the stubbed build saved nothing: it is not said to resume
    assert said[0] == "[dataset] starting again: the interrupted run saved nothing to resume from", said
    (run / "dataset" / ".m2u-build").mkdir(parents=True)  # what a stopped build leaves
    said = []
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(copy)]}), run, echo=said.append)
    assert said[0] == "[dataset] resuming an interrupted run", said


def test_a_stage_stopped_midway_and_rerun_with_other_settings_says_so(tmp_path, monkeypatch):
    """A first run stopped midway, rerun with another setting, said "configuration or inputs changed, re-running:
    its earlier output is kept in ...", as of a finished output, naming no change: it is the interrupted run's
    partial output that is set aside."""
    pipeline_run, run, (faces,) = _dataset_stage_stopped_once(tmp_path, monkeypatch, "faces")
    (run / "dataset" / ".m2u-build").mkdir(parents=True)  # what a stopped build leaves
    said: list[str] = []
    other = load_config("smoke", extra={"faces": [str(faces)], "dataset": {"size": 32}})
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(other, run, echo=said.append)
    assert said[0].startswith(
        "[dataset] the interrupted run is not resumed (it was of another configuration or other inputs), starting "
        f"again: its partial output is kept in {run / 'stale'}"
    ), said


def test_a_dataset_stage_stopped_midway_is_not_resumed_by_another_mask_engine(tmp_path, monkeypatch):
    """A build stopped midway by an m2u whose mask engine draws otherwise (another RENDER_VERSION) is moved aside
    and built again, where resuming it would meet the build's own refusal (a run cannot pass `overwrite`)."""
    import m2u.masking.render

    pipeline_run, run, (faces,) = _dataset_stage_stopped_once(tmp_path, monkeypatch, "faces")
    config = load_config("smoke", extra={"faces": [str(faces)]})
    (run / "dataset" / ".m2u-build").mkdir(parents=True)  # what a stopped build leaves
    monkeypatch.setattr(m2u.masking.render, "RENDER_VERSION", m2u.masking.render.RENDER_VERSION + 1)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(config, run, echo=said.append)
    assert said[0].startswith(
        "[dataset] the interrupted run is not resumed (it was started on the faces found elsewhere or with another "
        f"mask engine), starting again: its partial output is kept in {run / 'stale'}"
    ), said
    (run / "dataset" / ".m2u-build").mkdir(parents=True)
    said = []
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(config, run, echo=said.append)
    assert said[0] == "[dataset] resuming an interrupted run", said


def test_a_resumed_training_stage_gets_the_time_its_budget_has_left(tmp_path):
    """`max_seconds` of a pipeline stage is the stage's training time: stopped after 5 of 8 s, the rerun trains
    for 3 (m2u-train's own budget is per process)."""
    from m2u.pipelines.run import _with_budget_left
    from m2u.training.checkpoint import save_training_state
    from m2u.training.config import MSegTrainConfig

    run = MSegTrainConfig(out=str(tmp_path / "mseg"), max_seconds=8.0)
    assert _with_budget_left(run) == run  # nothing trained yet
    save_training_state(tmp_path / "mseg" / "checkpoints" / "last.pt", {"seconds": 5.0})
    assert _with_budget_left(run).max_seconds == pytest.approx(3.0)
    save_training_state(tmp_path / "mseg" / "checkpoints" / "last.pt", {"seconds": 9.5})
    assert _with_budget_left(run).max_seconds == 0.0
    unbounded = MSegTrainConfig(out=str(tmp_path / "mseg"))
    assert _with_budget_left(unbounded) == unbounded


def test_a_face_replaced_by_another_of_the_same_size_reruns_the_stages(tmp_path, monkeypatch):
    """The faces count by their bytes: a face swapped for another of the same size (an EXIF edit in place, a
    retouched photo) is other faces, while the same files copied elsewhere are not."""
    import shutil

    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    (faces / "b.jpg").write_bytes(b"z" * 10)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(faces)]}), run, echo=lambda _: None)
    assert calls == list(pipeline_run.STAGES)
    copy = tmp_path / "elsewhere"
    shutil.copytree(faces, copy)  # new inodes and times, the same bytes
    said: list[str] = []
    pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(copy)]}), run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date"
    (copy / "a.jpg").write_bytes(b"y" * 10)
    said = []
    pipeline_run.run_pipeline(load_config("smoke", extra={"faces": [str(copy)]}), run, echo=said.append)
    assert calls[4:] == list(pipeline_run.STAGES)
    assert (
        "[dataset] configuration or inputs changed (the face inputs changed: 1 photo changed: a.jpg)"
        in said[0]
    ), said


def test_the_face_hashes_are_read_again_only_for_files_changed_since(tmp_path, monkeypatch):
    import hashlib

    from m2u.pipelines.run import inputs_fingerprint

    faces = tmp_path / "faces"
    faces.mkdir()
    for name in ("a", "b", "c"):
        (faces / f"{name}.jpg").write_bytes(name.encode() * 20)
    cache = tmp_path / "run" / "stages" / "face-hashes.tsv"
    reads: list[str] = []
    real = hashlib.file_digest

    def counted(handle, name):
        reads.append(handle.name)
        return real(handle, name)

    monkeypatch.setattr(hashlib, "file_digest", counted)
    first = inputs_fingerprint([str(faces)], hash_cache=cache)
    assert len(reads) == 3 and cache.is_file()
    assert inputs_fingerprint([str(faces)], hash_cache=cache) == first and len(reads) == 3
    (faces / "b.jpg").write_bytes(b"B" * 20)
    changed = inputs_fingerprint([str(faces)], hash_cache=cache)
    assert changed != first and len(reads) == 4
    # the cache only saves reading: without it, or with it damaged, the identity is the same
    assert inputs_fingerprint([str(faces)]) == changed
    cache.write_text("garbage\nmore\tgarbage\n")
    assert inputs_fingerprint([str(faces)], hash_cache=cache) == changed


def _record_stages_as_made_with(pipeline_run, run, config, upstream: list[str]) -> None:
    """Rewrite a finished run's stage records as an earlier m2u made them, the faces' identity being `upstream`."""
    import json

    from m2u.pipelines.stages import fingerprint

    for name in pipeline_run.STAGES:
        path = run / "stages" / f"{name}.json"
        record = json.loads(path.read_text())
        record["fingerprint"] = fingerprint(pipeline_run._stage_config(config, name), upstream)
        record["upstream"] = upstream
        path.write_text(json.dumps(record))
        upstream = [*upstream, record["fingerprint"]]


def test_a_run_recorded_with_the_faces_by_names_and_sizes_stays_finished(tmp_path, monkeypatch):
    """Records made on 2026-12-06 (the faces by names and sizes) are still up to date."""
    pipeline_run, run, config, calls = _finished_stubbed_run(tmp_path, monkeypatch)
    upstream = [pipeline_run.inputs_fingerprint(config.faces, exclude=[run], identity="sizes")]
    _record_stages_as_made_with(pipeline_run, run, config, upstream)
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date"


def test_a_recursive_glob_of_faces_is_found_as_the_build_finds_it(tmp_path, monkeypatch):
    """`faces/**/*.jpg` with the photos right in `faces` was "face inputs not found" (glob without recursive)."""
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    config = load_config("smoke", extra={"faces": [str(faces / "**" / "*.jpg")]})
    pipeline_run.run_pipeline(config, tmp_path / "run", echo=lambda _: None)
    assert calls == list(pipeline_run.STAGES)


def test_a_pipeline_run_a_training_run_and_an_evaluation_never_replace_each_others_files(
    tmp_path, monkeypatch
):
    """m2u-pipeline and m2u-train both write config.json at their folder's top, m2u-train and m2u-eval
    metrics.json: each records those names in its lock, and the other command is refused in one line before it
    writes anything (a pipeline run into a finished training run replaced its config.json, and the run could no
    longer be resumed)."""
    from m2u.core.fileio import atomic_write_text
    from m2u.core.inputs import OutputFolderError, output_lock
    from m2u.evaluation.evaluator import evaluate
    from m2u.training.loop import RUN_LOCK_TOOL, RUN_REPORTS

    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    trained = tmp_path / "trained"  # what an m2u-train run leaves at its top
    trained.mkdir()
    with output_lock(trained, RUN_LOCK_TOOL, setting="out", reports=RUN_REPORTS):
        for name in RUN_REPORTS:
            atomic_write_text(trained / name, "{}")
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    config = load_config("smoke", extra={"faces": [str(faces)]})
    with pytest.raises(pipeline_run.PipelineRefused, match=f"{trained} holds an m2u-train run's config.json"):
        pipeline_run.run_pipeline(config, trained, echo=lambda _: None)
    with pytest.raises(OutputFolderError, match=f"{trained} holds an m2u-train run's metrics.json"):
        evaluate(str(tmp_path / "data"), None, None, trained)
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before and not calls
    # The other way round: a pipeline run's folder refuses a training run's lock (the pipeline owns its whole
    # folder: refused as such, before its config.json is found as a clash of names).
    run = tmp_path / "run"
    pipeline_run.run_pipeline(config, run, echo=lambda _: None)
    assert calls == list(pipeline_run.STAGES)
    refused = f"{run} is an m2u-pipeline run folder, every file of which is that run's; this m2u-train run would mix"
    with (
        pytest.raises(OutputFolderError, match=refused),
        output_lock(run, RUN_LOCK_TOOL, setting="out", reports=RUN_REPORTS),
    ):
        pass


def test_faces_without_an_image_are_refused_in_one_line_before_any_stage(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "notes.txt").write_text("no photo")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (
        "no image files found in the inputs (1 file(s) in the input folders have no image suffix"
        in result.output
    )
    assert not (tmp_path / "run").exists()


def test_quiet_turns_every_stages_progress_off_and_a_set_item_still_wins(tmp_path):
    import yaml

    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    base = ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run"), "--print-config"]
    for extra, expected in (
        ([], {"dataset": True, "mseg": True, "gan": True, "evaluation": True}),
        (["-q"], {"dataset": False, "mseg": False, "gan": False, "evaluation": False}),
        (
            ["-q", "--set", "gan.progress=true"],
            {"dataset": False, "mseg": False, "gan": True, "evaluation": False},
        ),
    ):
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 0, result.output
        printed = yaml.safe_load(result.output)
        assert {stage: printed[stage]["progress"] for stage in expected} == expected


def test_a_stage_whose_output_is_gone_runs_again_and_its_new_output_reaches_later_stages(tmp_path):
    """The record alone decided: a stage whose output was deleted was "up to date", and the stages after it failed
    on every rerun; and a stage run again with the same configuration but other bytes (a wall-clock budget) left
    the later stages' records describing its earlier output."""
    import hashlib

    stage_dir, records = tmp_path / "s", tmp_path / "records"
    made = iter([b"first", b"second"])
    logs: list[str] = []

    def action():
        stage_dir.mkdir(exist_ok=True)
        (stage_dir / "out.bin").write_bytes(next(made))
        return {}

    checks = {
        "output_problem": lambda record, folder: (
            "" if (folder / "out.bin").is_file() else "out.bin is missing"
        ),
        "output_digest": lambda: hashlib.sha256((stage_dir / "out.bin").read_bytes()).hexdigest(),
    }
    first = run_stage("s", stage_dir, records, {"a": 1}, [], action, log=logs.append, **checks)
    again = run_stage("s", stage_dir, records, {"a": 1}, [], action, log=logs.append, **checks)
    assert again.skipped and again.chain == first.chain != first.fingerprint
    (stage_dir / "out.bin").unlink()
    third = run_stage("s", stage_dir, records, {"a": 1}, [], action, log=logs.append, **checks)
    assert not third.skipped and third.fingerprint == first.fingerprint
    assert any(
        "its output is not what its record says (out.bin is missing), re-running" in line for line in logs
    )
    assert third.chain != first.chain  # other bytes: every later stage's upstream changes


@pytest.mark.parametrize(
    "stage, key, value",
    [("gan", "precision", "fp16"), ("evaluation", "device", "tpu"), ("mseg", "device", "gpu")],
)
def test_a_stage_device_or_precision_no_stage_could_use_is_refused_before_the_first_stage(stage, key, value):
    """`evaluation.device cuda` on a CPU machine was found after the dataset, M-Seg and GAN had trained."""
    import torch

    from m2u.pipelines.run import PipelineRefused, check_stage_devices

    if torch.cuda.is_available() and value == "fp16":
        pytest.skip("fp16 runs on this machine's CUDA")
    config = load_config("smoke", None, {stage: {key: value}})
    with pytest.raises(PipelineRefused, match=rf"the {stage} stage cannot run .*`{stage}\.{key}`"):
        check_stage_devices(config, "evaluation")
    check_stage_devices(config, "dataset")  # a stage after --until is not checked


def test_demo_faces_are_written_only_for_a_run_that_goes_ahead_and_never_rewritten(tmp_path, monkeypatch):
    """--demo-faces wrote RUN/demo-faces before the run folder was checked (a refused run left 40 files) and wrote
    them again at every run; a face changed since is refused by name, not replaced."""
    import os

    calls: list[str] = []
    _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("a person's file")  # not m2u's: the run is refused
    command = ["run", "--preset", "smoke", "--demo-faces", "-o", str(run)]
    refused = CliRunner().invoke(main, command)
    assert refused.exit_code == 2 and "config.json exists and was not written by m2u" in refused.output
    assert not (run / "demo-faces").exists() and not calls
    (run / "config.json").unlink()
    assert CliRunner().invoke(main, command).exit_code == 0 and len(calls) == 4
    faces = sorted((run / "demo-faces").glob("*.jpg"))
    assert len(faces) == 40
    for face in faces:
        os.utime(face, ns=(10**9, 10**9))  # a rewrite would show as a new time
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert {face.stat().st_mtime_ns for face in faces} == {10**9}
    faces[1].write_bytes(b"someone's edit")
    changed = CliRunner().invoke(main, command)
    assert changed.exit_code == 2 and len(calls) == 4, changed.output
    assert f"{faces[1]} is not the demo face m2u writes there" in changed.output
    assert faces[1].read_bytes() == b"someone's edit"


def test_an_ablation_holds_the_run_folder_from_its_shared_stages_to_its_table(tmp_path, monkeypatch):
    """`ablate` locked RUN only while the shared dataset and M-Seg ran: between variants another run on RUN could
    replace the M-Seg the later variants train with."""
    from m2u.core.inputs import OutputFolderError, output_lock
    from m2u.pipelines import run as pipeline_run
    from m2u.pipelines.ablate import VARIANTS, run_ablation

    run = tmp_path / "run"
    another_run: list[str] = []

    def gan() -> dict:
        try:
            with output_lock(run, pipeline_run.PIPELINE_TOOL):  # what a second m2u-pipeline run on RUN takes
                another_run.append("went ahead")
        except OutputFolderError as error:
            another_run.append(str(error))
        return {}

    def stages(config, dirs, metric_suite):
        def evaluation() -> dict:
            dirs["evaluation"].mkdir(parents=True, exist_ok=True)
            report = {"rows": {"m2u_composite": {"psnr": 30.0}}}
            (dirs["evaluation"] / "metrics.json").write_text(json.dumps(report))
            return {}

        return {"dataset": dict, "mseg": dict, "gan": gan, "evaluation": evaluation}

    monkeypatch.setattr(pipeline_run, "_stage_actions", stages)
    monkeypatch.setattr(pipeline_run, "check_dataset_plan", lambda *_: None)  # no dataset is built
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    config = load_config("smoke", extra={"faces": [str(faces)]})
    table = run_ablation(config, run, variants=VARIANTS[:2], echo=lambda _: None)
    assert set(table["variants"]) == {VARIANTS[0].name, VARIANTS[1].name}
    refused = f"another m2u-pipeline run is writing {run};"
    assert len(another_run) == 2 and all(said.startswith(refused) for said in another_run), another_run
    with output_lock(run, pipeline_run.PIPELINE_TOOL):  # and given back at the end
        pass


def test_an_ablation_whose_variants_cannot_run_is_refused_before_the_shared_stages(tmp_path, monkeypatch):
    """The shared stages were checked only up to M-Seg: a device no evaluation can use was found after they ran."""
    from m2u.pipelines.ablate import run_ablation

    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    config = load_config("smoke", extra={"faces": [str(faces)], "evaluation": {"device": "tpu"}})
    with pytest.raises(pipeline_run.PipelineRefused, match=r"`evaluation\.device`"):
        run_ablation(config, tmp_path / "run", echo=lambda _: None)
    assert not calls and not (tmp_path / "run").exists()


def test_a_partial_or_stopped_run_keeps_the_record_of_the_last_full_run(tmp_path, monkeypatch):
    """config.json and versions.json were written at every run's start: an --until run or one stopped midway
    replaced the configuration the report was made with by its own."""
    pipeline_run, run, _, calls = _finished_stubbed_run(tmp_path, monkeypatch)
    faces = str(tmp_path / "faces")
    full = {name: (run / name).read_bytes() for name in ("config.json", "versions.json")}
    monkeypatch.setattr(pipeline_run, "library_versions", lambda: {"machine": "another"})
    partial = load_config("smoke", extra={"faces": [faces], "mseg": {"max_steps": 7}})
    pipeline_run.run_pipeline(partial, run, echo=lambda _: None, until="mseg")
    assert json.loads((run / "config.latest.json").read_text())["mseg"]["max_steps"] == 7
    assert json.loads((run / "versions.latest.json").read_text()) == {"machine": "another"}
    stopped = load_config("smoke", extra={"faces": [faces], "gan": {"max_steps": 9}})
    _stubbed_stages(monkeypatch, calls, stop_in="gan")
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(stopped, run, echo=lambda _: None)
    assert json.loads((run / "config.latest.json").read_text())["gan"]["max_steps"] == 9
    assert {name: (run / name).read_bytes() for name in full} == full
    _stubbed_stages(monkeypatch, calls)
    pipeline_run.run_pipeline(stopped, run, echo=lambda _: None)  # through every stage: now the full run's
    assert json.loads((run / "config.json").read_text())["gan"]["max_steps"] == 9
    assert json.loads((run / "versions.json").read_text()) == {"machine": "another"}
    monkeypatch.setattr(pipeline_run, "library_versions", lambda: {"machine": "a third"})
    said: list[str] = []
    pipeline_run.run_pipeline(stopped, run, echo=said.append)
    assert said[-1] == "nothing to do: every stage is up to date"
    assert json.loads((run / "versions.json").read_text()) == {"machine": "another"}  # nothing was made here


def test_ctrl_c_while_a_run_record_is_written_leaves_both_its_files_of_one_run(tmp_path, monkeypatch):
    """config.latest.json and versions.latest.json were written one after the other: a Ctrl-C between the two left
    this run's configuration beside the previous run's library versions."""
    import os
    import signal
    from pathlib import Path

    pipeline_run, run, _, calls = _finished_stubbed_run(tmp_path, monkeypatch)
    monkeypatch.setattr(pipeline_run, "library_versions", lambda: {"machine": "another"})
    replace = os.replace

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        if Path(target).name == "config.latest.json":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, right after the record's first file

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    config = load_config("smoke", extra={"faces": [str(tmp_path / "faces")], "mseg": {"max_steps": 7}})
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run_pipeline(config, run, echo=lambda _: None, until="mseg")
    monkeypatch.setattr(os, "replace", replace)
    assert json.loads((run / "config.latest.json").read_text())["mseg"]["max_steps"] == 7
    assert json.loads((run / "versions.latest.json").read_text()) == {"machine": "another"}


def test_ctrl_c_while_the_ablation_table_is_written_leaves_its_two_files_of_one_run(tmp_path, monkeypatch):
    """ablation.json and ablation.md were written one after the other: a Ctrl-C between them left the new table
    beside the previous run's page."""
    import os
    import signal
    from pathlib import Path

    from m2u.pipelines import run as pipeline_run
    from m2u.pipelines.ablate import VARIANTS, run_ablation

    psnr = [30.0]

    def stages(config, dirs, metric_suite):
        def evaluation() -> dict:
            dirs["evaluation"].mkdir(parents=True, exist_ok=True)
            report = {"rows": {"m2u_composite": {"psnr": psnr[0]}}}
            (dirs["evaluation"] / "metrics.json").write_text(json.dumps(report))
            return {}

        return {"dataset": dict, "mseg": dict, "gan": dict, "evaluation": evaluation}

    monkeypatch.setattr(pipeline_run, "_stage_actions", stages)
    monkeypatch.setattr(pipeline_run, "check_dataset_plan", lambda *_: None)  # no dataset is built
    faces, run = tmp_path / "faces", tmp_path / "run"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"x" * 10)
    config = load_config("smoke", extra={"faces": [str(faces)]})
    run_ablation(config, run, variants=VARIANTS[:1], echo=lambda _: None)
    before = {name: (run / name).read_bytes() for name in ("ablation.json", "ablation.md")}
    psnr[0] = 31.5
    for evaluation in run.rglob("evaluation"):  # evaluated again, to a new figure
        (evaluation / "metrics.json").unlink()
    replace = os.replace

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        if Path(target).name == "ablation.json":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, right after the table's first file

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(config, run, variants=VARIANTS[:1], echo=lambda _: None)
    monkeypatch.setattr(os, "replace", replace)
    after = {name: (run / name).read_bytes() for name in ("ablation.json", "ablation.md")}
    assert after != before and all(b"31.5" in text for text in after.values()), after


def _faces_folder(tmp_path, names=("a.jpg", "b.jpg", "c.jpg")):
    faces = tmp_path / "faces"
    faces.mkdir()
    for name in names:
        (faces / name).write_bytes(name.encode() * 10)
    return faces


def test_a_face_beyond_the_dataset_limit_leaves_the_dataset_stage_finished(tmp_path, monkeypatch):
    """The dataset stage reads the first `dataset.limit` photos (by path): a photo added beyond them is read by no
    stage, yet it made the next run rebuild the dataset and retrain everything after it. One the limit keeps (one
    sorting before them) is a new input."""
    faces = _faces_folder(tmp_path)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    config = load_config("smoke", extra={"faces": [str(faces)], "dataset": {"limit": 2}})
    pipeline_run.run_pipeline(config, run, echo=lambda _: None)
    assert calls == list(pipeline_run.STAGES)
    (faces / "z.jpg").write_bytes(b"z" * 10)  # beyond the limit: a.jpg and b.jpg are still the two read
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date", said
    (faces / "0.jpg").write_bytes(b"0" * 10)  # kept by the limit: 0.jpg and a.jpg are read now
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls[4:] == list(pipeline_run.STAGES)


def test_a_run_that_counted_every_face_beyond_the_limit_stays_finished(tmp_path, monkeypatch):
    """Records made before 2026-12-08 counted every face found, beyond `dataset.limit` too: while those faces are
    unchanged, such a run is still up to date (not rebuilt and retrained for the new identity)."""
    faces = _faces_folder(tmp_path)
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    config = load_config("smoke", extra={"faces": [str(faces)], "dataset": {"limit": 2}})
    pipeline_run.run_pipeline(config, run, echo=lambda _: None)
    upstream = [pipeline_run.inputs_fingerprint(config.faces, exclude=[run])]  # every face, as recorded then
    _record_stages_as_made_with(pipeline_run, run, config, upstream)
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert calls == list(pipeline_run.STAGES) and said[-1] == "nothing to do: every stage is up to date", said


def test_the_dataset_stage_says_which_faces_changed(tmp_path, monkeypatch):
    """ "configuration or inputs changed (the face inputs changed)" named no face: it now says how many were added,
    changed and removed, and the first few names."""
    faces = _faces_folder(tmp_path, ("a.jpg", "b.jpg"))
    calls: list[str] = []
    pipeline_run = _stubbed_stages(monkeypatch, calls)
    run = tmp_path / "run"
    config = load_config("smoke", extra={"faces": [str(faces)]})
    pipeline_run.run_pipeline(config, run, echo=lambda _: None)
    (faces / "a.jpg").write_bytes(b"A" * 10)
    (faces / "b.jpg").unlink()
    for name in ("c.jpg", "d.jpg", "e.jpg", "f.jpg"):
        (faces / name).write_bytes(name.encode() * 10)
    said: list[str] = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert said[0].startswith(
        "[dataset] configuration or inputs changed (the face inputs changed: 4 photos added, 1 changed, 1 removed: "
        "c.jpg, d.jpg, e.jpg (and 3 more)), re-running"
    ), said
    (faces / "c.jpg").write_bytes(b"C" * 10)  # against the faces of the dataset just made
    said = []
    pipeline_run.run_pipeline(config, run, echo=said.append)
    assert "(the face inputs changed: 1 photo changed: c.jpg)" in said[0], said
