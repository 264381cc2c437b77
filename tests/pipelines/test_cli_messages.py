"""What `m2u-pipeline` says and which exit code it gives: a stage's library error as one line in the pipeline's words,
refusals before any stage, the dataset stage's failed and passed-over inputs, options that cannot go together."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from m2u.pipelines.cli import main


def _faces(folder, count=30):
    """`count` files a plan counts as faces, each its own bytes (no image is read before the dataset stage)."""
    folder.mkdir()
    for k in range(count):
        (folder / f"{k}.jpg").write_bytes(b"x%d" % k)
    return folder


def _stub_stages(monkeypatch, failing: dict | None = None, dataset_result: dict | None = None):
    """Each stage's action replaced: `failing` maps a stage to the error it raises; the dataset stage returns
    `dataset_result`; the plan of the (fake) faces is not checked."""
    from m2u.pipelines import run as pipeline_run

    def action(name):
        def act():
            if name in (failing or {}):
                raise failing[name]
            return dataset_result or {} if name == "dataset" else {}

        return act

    monkeypatch.setattr(
        pipeline_run, "_stage_actions", lambda *_: {n: action(n) for n in pipeline_run.STAGES}
    )
    monkeypatch.setattr(pipeline_run, "check_dataset_plan", lambda *_: None)
    return pipeline_run


@pytest.mark.parametrize(
    "stage, error, code, said",
    [
        (
            "evaluation",
            ValueError("split 'val' of R/dataset has no samples to evaluate"),
            2,
            "Error: the evaluation stage: split 'val' of R/dataset has no samples to evaluate",
        ),
        (
            "dataset",
            "setting",
            2,
            "Error: the dataset stage: `dataset.split_by`: identity: no identity; give an "
            "`dataset.identity_file`",
        ),
        ("gan", "checkpoint", 2, "Error: the gan stage: x.pt is not a checkpoint"),
        ("mseg", "nan", 1, "Error: the mseg stage: the loss is NaN at step 3"),  # it ran and failed: 1
    ],
)
def test_a_stage_library_error_is_one_line_in_the_pipelines_words(
    tmp_path, monkeypatch, stage, error, code, said
):
    """`--set evaluation.split=val` on a dataset with an empty val split ended in a traceback after training."""
    from m2u.core.errors import SettingError
    from m2u.training.checkpoint import CheckpointError

    if error == "nan":
        from m2u.training.guards import NonFiniteLossError

        error = NonFiniteLossError("the loss is NaN at step 3")
    if error == "checkpoint":
        error = CheckpointError("x.pt is not a checkpoint")
    if error == "setting":
        error = SettingError("split_by", "identity: no identity; give an `identity_file`")
    _stub_stages(monkeypatch, failing={stage: error})
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == code, result.output
    assert said in result.output and "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, (ValueError, OSError)), result.exception


def test_a_stage_stopped_for_a_non_finite_loss_names_its_settings_as_the_pipeline_does(tmp_path, monkeypatch):
    """The mseg stage's non-finite loss advice said "resume it with a lower --lr", an option the pipeline does not
    have: its users give `--set mseg.lr=...` (and `mseg.precision`)."""
    import torch

    from m2u.training.config import MSegTrainConfig
    from m2u.training.data import TensorDataSource
    from m2u.training.guards import NonFiniteLossError
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    nan = torch.full((4, 3, 16, 16), float("nan"))
    data = TensorDataSource(
        {"train": {"masked": nan, "unmasked": nan, "mask": torch.zeros(4, 1, 16, 16)}}, 2, 0
    )
    config = MSegTrainConfig(
        out=str(tmp_path / "mseg"), model=MSegConfig(base_channels=4, levels=2), batch_size=2, precision="bf16",
        progress=False, val_every=0, num_workers=0,
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError) as stopped:  # the loop's own error, advice and all
        train_mseg(config, data)
    _stub_stages(monkeypatch, failing={"mseg": stopped.value})
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "Error: the mseg stage: non-finite loss" in result.output
    assert "run it again with a lower `mseg.lr` or `mseg.precision` fp32" in result.output
    assert "--lr" not in result.output and "--precision" not in result.output


@pytest.mark.parametrize(
    "stage, error, said",
    [
        (
            "gan",
            FileNotFoundError(2, "No such file or directory", "R/mseg/mseg.safetensors"),
            "the gan stage: R/mseg/mseg.safetensors: No such file or directory (FileNotFoundError); outputs are",
        ),
        (
            "dataset",
            OSError(28, "No space left on device", "R/dataset/train-000000.tar"),
            "the dataset stage: R/dataset/train-000000.tar: the disk is full (OSError); outputs are",
        ),
        (
            "mseg",
            "shard",
            "the mseg stage: R/dataset/train-000003.tar is damaged",
        ),  # a UserError: the guard's 1
    ],
)
def test_a_file_system_error_in_a_stage_names_the_stage(tmp_path, monkeypatch, stage, error, said):
    """A stage's OSError (and a UserError no branch named) reached m2u.core.guard, whose line named no stage."""
    from m2u.datasets.shardcheck import ShardError

    if error == "shard":
        error = ShardError("R/dataset/train-000003.tar is damaged")
    _stub_stages(monkeypatch, failing={stage: error})
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output  # it ran and failed, as every command's file-system error
    last = result.output.splitlines()[-1]
    assert last.startswith(f"Error: {said}") and "Traceback" not in result.output, result.output


# What torch's DataLoader raises for an error in a worker: the worker's traceback in the message (ExceptionWrapper).
_WORKER_TRACEBACK = (
    "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
    '  File "worker.py", line 3, in fetch\n    raise ValueError("shard 3 is damaged")\n'
    "ValueError: shard 3 is damaged\n"
)


@pytest.mark.parametrize(
    "stage, error_class, code",
    [("dataset", "BuildError", 2), ("mseg", "ValueError", 2), ("gan", "PipelineError", 1)],
)
def test_a_stage_error_carrying_a_workers_traceback_is_said_as_its_last_line(
    tmp_path, monkeypatch, stage, error_class, code
):
    """The one line held the worker's whole traceback, flattened ("... Traceback (most recent call last): File ...")."""
    from m2u.datasets.config import BuildError
    from m2u.pipelines.run import PipelineError

    error = {"BuildError": BuildError, "ValueError": ValueError, "PipelineError": PipelineError}[error_class]
    _stub_stages(monkeypatch, failing={stage: error(_WORKER_TRACEBACK)})
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == code, result.output
    assert result.output.splitlines()[-1] == f"Error: the {stage} stage: shard 3 is damaged", result.output
    assert "Traceback" not in result.output and "worker.py" not in result.output


@pytest.mark.parametrize(
    "sets, said",
    [
        (
            ["--set", "dataset.split=[1,0,0]"],
            "the evaluation stage cannot run (checked before any stage started): the test split has no samples: "
            "`dataset.split` [1.0, 0.0, 0.0] splits the 30 samples planned as train 30, val 0, test 0; choose "
            "other fractions or another `evaluation.split`",
        ),
        (
            ["--set", "dataset.split=[0,0.5,0.5]"],
            "the mseg stage cannot run (checked before any stage started): the train split has no samples",
        ),
        (
            ["--set", "dataset.split_by=identity"],
            "the dataset stage cannot run (checked before any stage started): `dataset.split_by`: identity: 30 "
            "input(s) have no identity",
        ),
        (
            ["--set", "dataset.split_by=identity", "--set", "dataset.identity_file=none.txt"],
            "the dataset stage cannot run (checked before any stage started): `dataset.identity_file`: none.txt",
        ),
    ],
)
def test_a_split_no_sample_reaches_is_refused_before_any_stage(tmp_path, sets, said):
    """An evaluation split the split fractions leave empty was found after M-Seg and the GAN had trained."""
    faces = _faces(tmp_path / "faces")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(run), *sets])
    assert result.exit_code == 2 and said in result.output, result.output
    assert not run.exists()
    if "split=" in sets[-1]:  # a run that stops before the stage that would read the empty split goes ahead
        assert (
            "the evaluation stage"
            not in CliRunner()
            .invoke(
                main, ["run", "--preset", "smoke", str(faces), "-o", str(run), *sets, "--until", "dataset"]
            )
            .output
        )


def test_the_dataset_stages_failed_and_passed_over_inputs_are_said_and_exit_1(tmp_path):
    """A zero-byte .jpg, a text file named .jpg and a readme.txt were never mentioned, and the run exited 0."""
    from m2u.pipelines.demo_faces import write_demo_faces

    faces = write_demo_faces(tmp_path / "faces", count=4)[0].parent
    (faces / "zero.jpg").write_bytes(b"")
    (faces / "text.jpg").write_text("not a photo")
    (faces / "readme.txt").write_text("about these faces")
    run = tmp_path / "run"
    command = ["run", "--preset", "smoke", str(faces), "-o", str(run), "-q", "--until", "dataset"]
    for time in ("first", "rerun"):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, (time, result.output)
        line = next(
            line for line in result.output.splitlines() if line.startswith(f"[dataset] {run / 'dataset'}:")
        )
        stats = json.loads((run / "dataset" / "stats.json").read_text())["counts"]["by_status"]
        assert stats["error"] == 2
        assert f"{stats['no_face']} without a face" in line and "2 errors" in line, line
        assert "have no image suffix and were not read (.txt 1)" in result.output
    assert "[dataset] up to date" in result.output  # the rerun said it from the stage's record


def test_a_dataset_stage_whose_inputs_were_all_read_says_its_summary_and_exits_0(tmp_path, monkeypatch):
    counts = {"samples": {"train": 8, "val": 1, "test": 1}, "by_status": {"ok": 10, "no_face": 0, "error": 0}}
    _stub_stages(monkeypatch, dataset_result={"counts": counts, "passed_over": ""})
    faces = _faces(tmp_path / "faces")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(run)])
    assert result.exit_code == 0, result.output
    assert f"[dataset] {run / 'dataset'}: train 8, val 1, test 1 pairs; 0 without a face" in result.output


def test_the_dataset_summary_is_said_when_a_later_stage_fails(tmp_path, monkeypatch):
    counts = {"samples": {"train": 8, "val": 1, "test": 1}, "by_status": {"ok": 10, "no_face": 0, "error": 3}}
    _stub_stages(
        monkeypatch,
        failing={"gan": ValueError("bad")},
        dataset_result={"counts": counts, "passed_over": "1 file(s) ... (.txt 1)"},
    )
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "the gan stage: bad" in result.output
    assert "3 errors" in result.output and "(.txt 1)" in result.output


def test_demo_faces_and_inputs_together_are_a_usage_error(tmp_path):
    """--demo-faces silently replaced the faces INPUTS gave."""
    faces = _faces(tmp_path / "faces")
    run = tmp_path / "run"
    for given in ([str(faces)], ["--faces", str(faces)], ["--set", f"faces=[{faces}]"]):
        result = CliRunner().invoke(
            main, ["run", "--preset", "smoke", *given, "--demo-faces", "-o", str(run)]
        )
        assert result.exit_code == 2 and "--demo-faces uses the embedded demo faces" in result.output, (
            result.output
        )
        assert not run.exists()


def test_another_run_on_the_run_folder_is_named_by_the_option_the_user_typed(tmp_path):
    from m2u.core.inputs import output_lock
    from m2u.pipelines.run import PIPELINE_TOOL

    faces = _faces(tmp_path / "faces")
    run = tmp_path / "run"
    run.mkdir()
    with output_lock(run, PIPELINE_TOOL):
        result = CliRunner().invoke(main, ["run", "--preset", "smoke", str(faces), "-o", str(run)])
    assert result.exit_code == 2 and "or choose another --out" in result.output, result.output
    assert "out_dir" not in result.output


def test_vgg_weights_missing_are_named_by_the_gan_stages_keys(tmp_path, monkeypatch):
    import torch

    def unreachable(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    faces = _faces(tmp_path / "faces")
    sets = ["--set", "gan.perceptual_weight=1", "--set", "gan.vgg_weights=imagenet"]
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "r"), *sets]
    )
    assert result.exit_code == 2, result.output
    assert "pass its path with `gan.vgg_weights` PATH, or set `gan.perceptual_weight` 0" in result.output


def test_a_dataset_the_run_folder_holds_without_its_record_names_what_the_user_can_do(tmp_path):
    """It said "use `overwrite` to replace it", and `--set dataset.overwrite=true` is refused as the pipeline's."""
    from m2u.pipelines.demo_faces import write_demo_faces

    faces = write_demo_faces(tmp_path / "faces", count=3)[0].parent
    run = tmp_path / "run"
    command = ["run", "--preset", "smoke", str(faces), "-o", str(run), "-q", "--until", "dataset"]
    assert CliRunner().invoke(main, command).exit_code == 0
    (run / "stages" / "dataset.json").unlink()
    result = CliRunner().invoke(main, [*command, "--set", "dataset.size=32"])
    assert result.exit_code == 2, result.output
    assert (
        "holds a build made with different arguments (size); move it out of the run folder" in result.output
    )
    assert "overwrite" not in result.output


def test_the_training_stages_take_m2u_trains_config_keys(tmp_path):
    """README: "`--lr` is `lr`"; `--set gan.lr=...` was refused as an unknown option, and so was a `gan:` block
    copied from `m2u-train gan --print-config`."""
    import yaml

    from m2u.pipelines.config import load_config
    from m2u.training.cli import train_main

    config = load_config("smoke", extra={"gan": {"lr": 0.0002, "stages": 3}, "mseg": {"workers": 0}})
    assert config.gan.optimizer.learning_rate == 0.0002 and config.gan.generator.stages == 3
    assert config.mseg.num_workers == 0
    assert (
        load_config("smoke", extra={"gan": {"optimizer": {"learning_rate": 0.5}}}).gan.optimizer.learning_rate
        == 0.5
    )
    printed = CliRunner().invoke(
        train_main,
        ["gan", "--data", "d", "--out", "o", "--mask-source", "gt", "--lr", "0.003", "--print-config"],
    )
    assert printed.exit_code == 0, printed.output
    block = {k: v for k, v in yaml.safe_load(printed.output).items() if k not in ("data", "out")}
    assert block["mseg"] is None and block["resume"] is False  # m2u-train's "not given": the pipeline's own
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"gan": block}))
    copied = load_config("smoke", tmp_path / "p.yaml")
    assert copied.gan.optimizer.learning_rate == 0.003 and copied.gan.mask_source == "gt"
    faces = _faces(tmp_path / "faces")
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "smoke",
            str(faces),
            "-o",
            str(tmp_path / "r"),
            "--set",
            "gan.lr=0.0002",
            "--print-config",
        ],
    )
    assert (
        result.exit_code == 0 and yaml.safe_load(result.output)["gan"]["optimizer"]["learning_rate"] == 0.0002
    )
    refused = CliRunner().invoke(
        main, ["run", "--preset", "smoke", str(faces), "-o", str(tmp_path / "r"), "--set", "gan.mseg=x.pt"]
    )
    assert refused.exit_code == 2 and "`gan.mseg` is set by the pipeline" in refused.output, refused.output
    assert "mseg_checkpoint" not in refused.output  # the field it sets: not what was typed


def test_the_evaluation_stage_takes_m2u_evals_config_keys(tmp_path):
    """The dataset block, the training blocks (m2u-train's keys) and m2u-eval say `workers`, but the evaluation
    block took only its field's name: `--set evaluation.workers=2` was an unknown option. It takes m2u-eval's
    config keys now, as the training blocks take m2u-train's; its files are the pipeline's, refused by their key."""
    import yaml

    from m2u.evaluation.cli import main as eval_main
    from m2u.pipelines.config import load_config

    config = load_config("smoke", extra={"evaluation": {"workers": 3, "limit": 5}})
    assert (config.evaluation.num_workers, config.evaluation.max_samples) == (3, 5)
    assert (
        load_config("smoke", extra={"evaluation": {"num_workers": 2}}).evaluation.num_workers == 2
    )  # its field
    printed = CliRunner().invoke(eval_main, ["--workers", "2", "--no-fid", "--print-config"])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"evaluation": yaml.safe_load(printed.output)}))
    copied = load_config("smoke", tmp_path / "p.yaml")  # a block of m2u-eval --print-config
    assert copied.evaluation.num_workers == 2 and copied.evaluation.metrics.enable_fid is False
    run = tmp_path / "r"
    refused = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), "--set", "evaluation.data=d"]
    )
    said = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 2 and said.startswith(
        "Error: `evaluation.data` is set by the pipeline itself: "
    ), said
    assert not run.exists()


@pytest.mark.parametrize("given", ["sets", "file"])
def test_a_stage_blocks_keys_that_cannot_go_together_are_one_line_naming_the_block(tmp_path, given):
    """`gan.optimizer` given a value beside `gan.lr` (which sets gan.optimizer.learning_rate) ended in a ValueError
    traceback naming no block: "optimizer.learning_rate: optimizer is a value, not a group"."""
    run = tmp_path / "r"
    if given == "sets":
        args = ["--set", "gan.optimizer=3", "--set", "gan.lr=0.001"]
    else:
        (tmp_path / "pipeline.yaml").write_text("gan:\n  optimizer: 3\n  lr: 0.001\n")
        args = ["-c", str(tmp_path / "pipeline.yaml")]
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), *args])
    assert result.exit_code == 2, result.output
    said = "Error: invalid value under gan: optimizer.learning_rate: optimizer is a value, not a group"
    assert result.output.splitlines()[-1] == said and "Traceback" not in result.output, result.output
    assert not run.exists()


def test_an_ablations_stage_lines_name_their_variant_and_its_note_only_the_tables_columns(
    tmp_path, monkeypatch
):
    """ "[gan] running / [evaluation] done" repeated six times without the variant, and the n/a note listed
    "identity unavailable", which is no column of the table."""
    from m2u.pipelines import run as pipeline_run
    from m2u.pipelines.ablate import VARIANTS, run_ablation
    from m2u.pipelines.config import load_config

    def stages(config, dirs, metric_suite):
        def evaluation() -> dict:
            dirs["evaluation"].mkdir(parents=True, exist_ok=True)
            report = {
                "rows": {"m2u_composite": {"psnr": 30.0}},
                "unavailable": {"identity": "no", "fid": "no"},
            }
            (dirs["evaluation"] / "metrics.json").write_text(json.dumps(report))
            return {}

        return {"dataset": dict, "mseg": dict, "gan": dict, "evaluation": evaluation}

    monkeypatch.setattr(pipeline_run, "_stage_actions", stages)
    monkeypatch.setattr(pipeline_run, "check_dataset_plan", lambda *_: None)
    faces = _faces(tmp_path / "faces")
    said: list[str] = []
    run = tmp_path / "run"
    run_ablation(
        load_config("smoke", extra={"faces": [str(faces)]}), run, variants=VARIANTS[:2], echo=said.append
    )
    for variant in VARIANTS[:2]:
        assert (
            f"[{variant.name}] [gan] running" in said and f"[{variant.name}] [evaluation] running" in said
        ), said
    assert not any(line.startswith(("[gan]", "[evaluation]")) for line in said), said
    markdown = (run / "ablation.md").read_text()
    assert "n/a: FID unavailable (see each metrics.json)." in markdown and "identity" not in markdown


@pytest.mark.parametrize(
    ("items", "file_text", "said"),
    [
        (
            ["gan.lr=abc"],
            None,
            "Error: gan.lr must be a finite number, got 'abc' (gan.lr: from --set gan.lr)",
        ),
        (
            ["mseg.lr=0.001", "gan.lr=-1"],
            None,
            "Error: gan.lr must be a finite number > 0, got -1 (gan.lr: from --set gan.lr)",
        ),
        (
            [],
            "gan:\n  lr: abc\n",
            "Error: gan.lr must be a finite number, got 'abc' (gan.lr: from {file}, key gan.lr)",
        ),
        (
            ["mseg.epochs=0"],
            None,
            "Error: mseg.epochs must be >= 1, got 0 (mseg.epochs: from --set mseg.epochs)",
        ),
        (
            ["mseg.levels=0"],
            None,
            "Error: mseg.levels must be >= 2, got 0 (mseg.levels: from --set mseg.levels)",
        ),
        (
            ["dataset.shard_size=0"],
            None,
            "Error: `dataset.shard_size`: must be >= 1, got 0 (dataset.shard_size: from --set dataset.shard_size)",
        ),
        # A stage block that is not a mapping: said in a config file's words (was "gan must be GanTrainConfig,
        # got 3", without where it came from), as every other block is.
        (
            [],
            "gan: 3\n",
            "Error: gan must be a mapping of options (key: value), got 3 (gan: from {file}, key gan)",
        ),
        (
            ["mseg=3"],
            None,
            "Error: mseg must be a mapping of options (key: value), got 3 (mseg: from --set mseg)",
        ),
        (
            [],
            "dataset: [1]\n",
            "Error: dataset must be a mapping of options (key: value), got [1] (dataset: from {file}, key dataset)",
        ),
    ],
)
def test_a_refused_stage_value_says_the_key_that_gave_it(tmp_path, items, file_text, said):
    """`--set gan.lr=abc` was refused as "gan.optimizer.learning_rate must be a finite number", a key the user had
    not typed and that said nothing of where it came from; then "... (gan.optimizer.learning_rate: from --set
    gan.lr)", still naming the field beside the key. The message speaks of the key typed, and says where it was
    written as m2u-train does (m2u.core.configfile.written_at); a dataset stage's value says it too."""
    run = tmp_path / "r"
    args = [arg for item in items for arg in ("--set", item)]
    if file_text is not None:
        (tmp_path / "pipeline.yaml").write_text(file_text)
        args += ["-c", str(tmp_path / "pipeline.yaml")]
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), *args])
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert last == said.format(file=tmp_path / "pipeline.yaml"), last
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "meant", "where"),
    [
        (["--set", "gan.workerz=1"], "did you mean 'gan.workers'?", "(from --set gan.workerz)"),
        (["--set", "mseg.lrr=0.1"], "did you mean 'mseg.lr'?", "(from --set mseg.lrr)"),
        (["-c", "{file}"], "did you mean 'dataset.limit'?", "(from {file}, key dataset.limt)"),
    ],
)
def test_an_unknown_key_is_matched_against_the_keys_a_stage_block_takes_and_says_where_it_was(
    tmp_path, args, meant, where
):
    """`--set gan.workerz=1` suggested nothing and listed only the fields' names ('num_workers'), not `workers`, `lr`
    or `stages`, the m2u-train keys the README says the block takes; and no unknown key said where it was written."""
    from m2u.training.cli import train_main

    file = tmp_path / "p.yaml"
    file.write_text("dataset:\n  limt: 4\n")
    args = [arg.format(file=file) for arg in args]
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(tmp_path / "r"), *args]
    )
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert meant in last and last.endswith(where.format(file=file)), last
    if "gan.workerz" in where:
        assert "'workers'" in last.split("known here: ")[1], last
        trained = CliRunner().invoke(train_main, ["gan", "--set", "workerz=1", "--print-config"])
        assert trained.exit_code == 2 and "did you mean 'workers'?" in trained.output, trained.output
