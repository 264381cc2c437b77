"""m2u-pipeline never throws finished work away: runtime settings are not part of a stage's fingerprint, and a
stage that does have to run again keeps its earlier output (moved aside, not deleted)."""

from __future__ import annotations

import dataclasses

import pytest

from m2u.core.runtime import is_runtime_field
from m2u.pipelines.config import apply_overrides, load_config
from m2u.pipelines.run import _stage_config
from m2u.pipelines.stages import STALE_DIR, fingerprint, run_stage

# Settings that change how a run goes, never what it writes (issue 13.1 names these).
RUNTIME = [
    {"dataset": {"workers": 1}},
    {"dataset": {"workers": 64}},
    {"dataset": {"progress": False}},
    {"mseg": {"log_every": 10}},
    {"gan": {"log_every": 10}},
    {"gan": {"num_workers": 7}},
    {"mseg": {"progress": False}},
    {"evaluation": {"num_workers": 3, "progress": False}},
]
# Settings that do change an output.
OUTPUT = [
    {"dataset": {"size": 96}},
    {"dataset": {"seed": 5}},
    {"mseg": {"max_steps": 9}},
    {"gan": {"seed": 3}},
    {"evaluation": {"batch_size": 3}},
]


def _fingerprints(config) -> dict[str, str]:
    upstream, result = ["faces"], {}
    for name in ("dataset", "mseg", "gan", "evaluation"):
        result[name] = fingerprint(_stage_config(config, name), upstream)
        upstream = [*upstream, result[name]]
    return result


@pytest.mark.parametrize("override", RUNTIME, ids=str)
def test_runtime_settings_leave_every_fingerprint_alone(override):
    base = load_config("smoke")
    assert _fingerprints(apply_overrides(base, override)) == _fingerprints(base)


@pytest.mark.parametrize("override", OUTPUT, ids=str)
def test_an_output_setting_reruns_its_stage_and_the_later_ones_only(override):
    base = load_config("smoke")
    before, after = _fingerprints(base), _fingerprints(apply_overrides(base, override))
    (stage,) = override
    order = list(before)
    changed = [name for name in order if before[name] != after[name]]
    assert changed == order[order.index(stage) :]


def test_the_runtime_fields_are_marked_where_they_are_declared():
    config = load_config("smoke")
    marked = {
        (stage, f.name)
        for stage in ("dataset", "mseg", "gan", "evaluation")
        for f in dataclasses.fields(getattr(config, stage))
        if is_runtime_field(f)
    }
    assert {
        ("dataset", "workers"),
        ("gan", "log_every"),
        ("gan", "num_workers"),
        ("mseg", "progress"),
    } <= marked
    # What decides an output is never marked.
    assert not marked & {("dataset", "size"), ("dataset", "seed"), ("gan", "seed"), ("gan", "batch_size")}


def test_a_changed_stage_moves_its_finished_output_aside(tmp_path):
    stage_dir, records = tmp_path / "run" / "mseg", tmp_path / "run" / "stages"

    def train():
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "weights.bin").write_bytes(b"finished work")
        return {}

    quiet = {"log": lambda _: None}
    run_stage("mseg", stage_dir, records, {"epochs": 1}, [], train, **quiet)
    run_stage("mseg", stage_dir, records, {"epochs": 2}, [], train, **quiet)
    stale = list((tmp_path / "run" / STALE_DIR).iterdir())
    assert len(stale) == 1 and stale[0].name.startswith("mseg-")
    assert (stale[0] / "mseg" / "weights.bin").read_bytes() == b"finished work"
    assert (stale[0] / "mseg.json").is_file()  # the record that describes it travels with it
    assert (stage_dir / "weights.bin").is_file()  # the new run wrote its own


def test_partial_output_of_another_configuration_is_moved_aside_not_deleted(tmp_path):
    stage_dir, records = tmp_path / "run" / "dataset", tmp_path / "run" / "stages"

    def killed():
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "shard.tar").write_bytes(b"half a build")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("dataset", stage_dir, records, {"size": 64}, [], killed, log=lambda _: None)
    run_stage("dataset", stage_dir, records, {"size": 96}, [], lambda: {}, log=lambda _: None)
    (stale,) = (tmp_path / "run" / STALE_DIR).iterdir()
    assert (stale / "dataset" / "shard.tar").read_bytes() == b"half a build"
