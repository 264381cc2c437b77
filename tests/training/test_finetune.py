"""Fine-tuning (init_weights) and training through the pair augmentation (augment), at tiny sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from m2u.datasets.augment import AugmentConfig
from m2u.training.checkpoint import CheckpointError, load_model
from m2u.training.config import MSegTrainConfig
from m2u.training.data import TensorDataSource
from m2u.training.models import MSegConfig
from m2u.training.trainer import train_mseg

TINY = MSegConfig(base_channels=4, levels=3)
QUIET = {"progress": False, "val_every": 0, "log_every": 1, "num_workers": 0, "evaluate_test": False}


def _data(count: int = 4, size: int = 32) -> TensorDataSource:
    generator = torch.Generator().manual_seed(0)
    unmasked = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 2 :] = 1
    masked = unmasked * (1 - mask) + 0.1 * mask
    return TensorDataSource({"train": {"masked": masked, "unmasked": unmasked, "mask": mask}}, batch_size=2)


def _run(out: Path, **changes) -> Path:
    config = MSegTrainConfig(out=str(out), model=TINY, batch_size=2, max_steps=2, **QUIET, **changes)
    train_mseg(config, _data())
    return out / "mseg.safetensors"


def test_init_weights_starts_from_the_file_and_refuses_a_misfit(tmp_path):
    first = _run(tmp_path / "first")
    # No steps at a learning rate of ~0: the weights stay the file's (a fresh start would differ from them).
    tuned = _run(tmp_path / "tuned", init_weights={"mseg": str(first)}, optimizer={"learning_rate": 1e-12})
    fresh = _run(tmp_path / "fresh", seed=5, optimizer={"learning_rate": 1e-12})
    start, after, other = (load_model(p)[0].state_dict() for p in (first, tuned, fresh))
    key = next(k for k in start if k.endswith("weight"))
    assert torch.allclose(after[key].float(), start[key].float(), atol=1e-6)
    assert not torch.allclose(other[key].float(), start[key].float(), atol=1e-6)
    with pytest.raises(ValueError, match="generator"):
        _run(tmp_path / "bad-name", init_weights={"generator": str(first)})
    wider = MSegTrainConfig(
        out=str(tmp_path / "wider"), model=MSegConfig(base_channels=8, levels=3), batch_size=2, max_steps=1,
        init_weights={"mseg": str(first)}, **QUIET,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="does not fit"):
        train_mseg(wider, _data())


def test_a_fine_tune_from_a_file_of_another_crop_size_says_so_once(tmp_path, tiny_dataset):
    """A starting file trained at another size than the run's crops was fine-tuned from without a word (the model
    files then record only the new size): one warning naming both sizes, as m2u-train's one line."""
    import warnings

    from click.testing import CliRunner

    from m2u.training.checkpoint import ModelUsageWarning
    from m2u.training.cli import train_main

    first = _run(tmp_path / "first")  # 32 px crops
    config = MSegTrainConfig(
        out=str(tmp_path / "large"), model=TINY, batch_size=2, max_steps=3, init_weights={"mseg": str(first)},
        **QUIET,
    )  # fmt: skip
    with pytest.warns(ModelUsageWarning) as said:
        train_mseg(config, _data(size=64))
    assert [str(w.message) for w in said] == [
        f"`init_weights.mseg` {first} was trained on 32 px crops, this run's are 64 px: fine-tuning starts from "
        "weights learned at another size (this run's model files record 64 px)"
    ]
    with warnings.catch_warnings():  # the same size: nothing to say
        warnings.simplefilter("error", ModelUsageWarning)
        _run(tmp_path / "same", init_weights={"mseg": str(first)})
    large = tmp_path / "large" / "mseg.safetensors"
    args = [
        "mseg",
        "--data",
        str(tiny_dataset),
        "-o",
        str(tmp_path / "cli"),
        "--max-steps",
        "2",
        "--workers",
        "0",
    ]
    args += [
        "-q",
        "--no-test",
        "--base-channels",
        "4",
        "--levels",
        "3",
        "--set",
        f"init_weights.mseg={large}",
    ]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: ") == 1
    assert (
        f"warning: `init_weights.mseg` {large} was trained on 64 px crops, this run's are 32 px"
        in result.stderr
    )


def test_a_fine_tune_names_its_starting_file_and_resumes_without_it(tmp_path):
    """Each model file of a fine-tune records the file it started from and that file's SHA-256 (a path names
    whatever is there later: a package reinstalled over the one a release started from). A resume reads every weight
    from its checkpoint, so it neither needs the starting file nor loses that record."""
    from m2u.core.fileio import content_digest
    from m2u.training.trainer import train_mseg

    first = _run(tmp_path / "first")
    digest = content_digest(first)
    tuned = _run(tmp_path / "tuned", init_weights={"mseg": str(first)})
    assert load_model(tuned)[1].provenance["init_from"] == {"file": str(first), "sha256": digest}
    assert "init_from" not in load_model(first)[1].provenance  # trained from scratch
    (tmp_path / "first").rename(tmp_path / "moved")  # reinstalled, or moved away
    resumed = MSegTrainConfig(
        out=str(tmp_path / "tuned"), model=TINY, batch_size=2, max_steps=4, resume=True,
        init_weights={"mseg": str(first)}, **QUIET,
    )  # fmt: skip
    assert train_mseg(resumed, _data())["steps"] == 4
    assert load_model(tuned)[1].provenance["init_from"] == {"file": str(first), "sha256": digest}
    with pytest.raises(ValueError, match="init_weights names 'generator'"):  # still checked on a resume
        train_mseg(dataclasses.replace(resumed, init_weights={"generator": str(first)}, max_steps=5), _data())


def test_a_resume_naming_another_starting_file_is_refused_and_the_same_file_elsewhere_is_not(tmp_path):
    """A resume reads no starting file: one naming another was trained on silently, and config.json then named
    that file as the one the run started from (--print-config reproduced the run from it)."""
    first, other = _run(tmp_path / "first"), _run(tmp_path / "other", seed=7)
    _run(tmp_path / "tuned", init_weights={"mseg": str(first)})
    resumed = MSegTrainConfig(
        out=str(tmp_path / "tuned"), model=TINY, batch_size=2, max_steps=3, resume=True,
        init_weights={"mseg": str(other)}, **QUIET,
    )  # fmt: skip
    config_json = (tmp_path / "tuned" / "config.json").read_text()
    for given in ({"mseg": str(other)}, {}):
        with pytest.raises(CheckpointError, match="another starting file would not be used") as refused:
            train_mseg(dataclasses.replace(resumed, init_weights=given), _data())
        assert f"init_weights.mseg {first} -> {given.get('mseg', 'none')}" in str(refused.value)
        assert (tmp_path / "tuned" / "config.json").read_text() == config_json  # the run as it was
    copy = tmp_path / "copy.safetensors"  # the same file by content, under another name
    copy.write_bytes(first.read_bytes())
    assert train_mseg(dataclasses.replace(resumed, init_weights={"mseg": str(copy)}), _data())["steps"] == 3


def test_a_first_run_asked_to_resume_starts_from_its_files(tmp_path):
    """`resume` with no checkpoint yet (a pipeline's first run) starts from init_weights as a new run does."""
    first = _run(tmp_path / "first")
    tuned = _run(
        tmp_path / "tuned", init_weights={"mseg": str(first)}, resume=True, optimizer={"learning_rate": 1e-12}
    )
    start, after = (load_model(p)[0].state_dict() for p in (first, tuned))
    weights = [k for k in start if k.endswith("weight")]  # (normalisation statistics move with any step)
    assert weights and all(torch.allclose(after[k].float(), start[k].float(), atol=1e-6) for k in weights)
    assert load_model(tuned)[1].provenance["init_from"]["file"] == str(first)


def test_augmented_training_is_reproducible_and_differs_from_plain(tmp_path):
    augment = AugmentConfig(enabled=True, crop=1.0, noise=1.0)
    a = load_model(_run(tmp_path / "a", augment=augment))[0].state_dict()
    b = load_model(_run(tmp_path / "b", augment=augment))[0].state_dict()
    plain = load_model(_run(tmp_path / "plain"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    # The option round-trips through the run's saved config (a dict in config.json).
    assert MSegTrainConfig(augment={"enabled": True, "noise": 0.5}).augment == AugmentConfig(
        enabled=True, noise=0.5
    )


def test_bare_face_share_swaps_in_bare_faces_with_empty_masks_reproducibly():
    from m2u.training.mseg_task import with_bare_faces

    masked, unmasked = torch.zeros(64, 3, 4, 4), torch.ones(64, 3, 4, 4)
    mask = torch.ones(64, 1, 4, 4)
    config = MSegTrainConfig(bare_face_share=0.25)
    torch.manual_seed(3)
    images, targets = with_bare_faces(masked, unmasked, mask, config)
    bare = images.flatten(1).amax(1) > 0
    # The bare samples are exactly those whose target is empty; the others are untouched.
    assert torch.equal(bare, targets.flatten(1).amax(1) == 0)
    assert 4 <= int(bare.sum()) <= 32
    torch.manual_seed(3)
    again, _ = with_bare_faces(masked, unmasked, mask, config)
    assert torch.equal(images, again)
    with pytest.raises(ValueError, match="bare_face_share"):
        MSegTrainConfig(bare_face_share=1.0)


def test_bare_face_training_changes_the_run_and_stays_reproducible(tmp_path):
    a = load_model(_run(tmp_path / "a", bare_face_share=0.5))[0].state_dict()
    b = load_model(_run(tmp_path / "b", bare_face_share=0.5))[0].state_dict()
    plain = load_model(_run(tmp_path / "plain"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
