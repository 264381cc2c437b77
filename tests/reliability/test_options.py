"""Every option is checked before any work, with one sentence naming it, and a refused run leaves no state behind
(so the corrected command is not refused in turn)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.datasets.build import STATE_DIR, BuildConfig
from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.splits import parse_fractions
from m2u.inference.unmask import UnmaskConfig
from m2u.masking import DetectorConfig, MaskConfig
from m2u.masking.cli import main as mask_main
from m2u.pipelines.config import ConfigError, load_config, read_config_file

pytestmark = pytest.mark.timeout(120)  # a regression (a pool re-spawning failing workers) hangs, then fails


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(folder / f"p{i}.png")
    return folder


def _make_dataset(photos, out, *extra):
    args = [str(photos), "-o", str(out), "--mask-engine", "synthetic", "--size", "64", "--quiet"]
    return CliRunner().invoke(make_dataset_main, [*args, *extra])


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--detector-option", "upsample=9", "--detector-option"),
        ("--detector-option", "upsample=two", "--detector-option"),
        ("--detector-option", "hog_threshold=NaN", "--detector-option"),
        ("--detector-option", "no_such_option=1", "--detector-option"),
        ("--split", "nan,0.5,0.5", "--split"),
        ("--split", "inf,-inf,1", "--split"),
        ("--size", "60000", "--size"),
        ("--size", "8", "--size"),
        ("--size", "24", "--size"),
    ],
)
def test_make_dataset_refuses_a_bad_option_before_any_work(photos, tmp_path, option, value, named):
    out = tmp_path / "ds"
    refused = _make_dataset(photos, out, option, value, "--workers", "2")
    assert refused.exit_code != 0
    assert named in refused.output and "Traceback" not in refused.output, refused.output
    assert not (out / STATE_DIR).exists(), "a refused run wrote build state"
    # The corrected command then runs (every input is a no_face row here: exit 1 says no pair was written).
    corrected = _make_dataset(photos, out, "--workers", "2")
    assert corrected.exit_code == 1 and "no pair was written" in corrected.output, corrected.output
    assert (out / "manifest.parquet").is_file()


def test_a_build_that_committed_nothing_does_not_bind_the_next(photos, tmp_path):
    """A state file left by a run stopped before its first shard (or by an older version that refused a bad
    option only in its workers) does not make the corrected command look like a different build."""
    out = tmp_path / "ds"
    assert _make_dataset(photos, out, "--seed", "1").exit_code == 1
    for committed in (out / STATE_DIR).glob("*.parquet"):
        committed.unlink()
    rerun = _make_dataset(photos, out, "--seed", "2")
    assert rerun.exit_code == 2 and "different arguments" not in rerun.output, rerun.output  # refused


@pytest.mark.parametrize(
    "make",
    [
        lambda: DetectorConfig(upsample="2"),
        lambda: DetectorConfig(hog_threshold=float("inf")),
        lambda: DetectorConfig(coarse_scale=float("nan")),
        lambda: MaskConfig(color_weight=float("nan")),
        lambda: MaskConfig(straps="yes"),
        lambda: BuildConfig(seed=1.5),
        lambda: BuildConfig(variants="2"),
        lambda: BuildConfig(split=(float("nan"), 0.5, 0.5)),
        lambda: BuildConfig(size=100_000),
        lambda: UnmaskConfig(crop_size=60000),
        lambda: UnmaskConfig(crop_size=12),
    ],
)
def test_configurations_check_every_value(make):
    with pytest.raises(ValueError) as error:
        make()
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("text", ["nan,0.5,0.5", "0.5,nan,0.5", "inf,0,0", "1e309,0,0"])
def test_split_fractions_must_be_finite(text):
    with pytest.raises(ValueError, match="finite"):
        parse_fractions(text)


def _pattern(path, width, height):
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return path


def test_a_pattern_image_of_absurd_dimensions_is_refused_from_its_header(photos, tmp_path):
    tall = _pattern(tmp_path / "tall.png", 1, 100_000)  # a few hundred bytes of PNG
    assert tall.stat().st_size < 2000
    result = CliRunner().invoke(mask_main, [str(photos), "-o", str(tmp_path / "o"), "--pattern", str(tall)])
    assert result.exit_code == 2 and "--pattern" in result.output and "1x100000" in result.output
    assert not (tmp_path / "o").exists()
    built = _make_dataset(photos, tmp_path / "ds", "--mask-engine", "m2u", "--mask-pattern", str(tall))
    assert built.exit_code != 0 and "--pattern" in built.output, built.output
    assert not (tmp_path / "ds" / STATE_DIR).exists()
    # A reasonable pattern image is accepted.
    MaskConfig(pattern=str(_pattern(tmp_path / "tile.png", 64, 48)))


def test_yaml_aliases_are_refused_naming_the_line(tmp_path):
    laughs = tmp_path / "laughs.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for index in range(1, 9):
        previous, name = chr(ord("a") + index - 1), chr(ord("a") + index)
        lines.append(f"{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}]")
    laughs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"laughs\.yaml, line 2: YAML aliases"):
        read_config_file(laughs)
    plain = tmp_path / "plain.yaml"
    plain.write_text("dataset:\n  size: 96\n")
    assert load_config("smoke", plain).dataset.size == 96


def test_pipeline_overrides_are_checked_like_the_tools_options():
    for bad in ({"dataset": {"size": 60000}}, {"dataset": {"split": [float("nan"), 0.5, 0.5]}}):
        with pytest.raises(ConfigError, match="size|split"):
            load_config("smoke", None, bad)
    with pytest.raises(ConfigError, match="detector_options"):
        load_config("smoke", None, {"dataset": {"detector_options": {"upsample": 9}}})


def _failing_start(*_):
    raise ValueError("a detector option this version cannot use")


def test_a_worker_that_cannot_start_stops_the_run_instead_of_being_replaced_forever(
    photos, tmp_path, monkeypatch
):
    """Whatever makes a worker's start-up fail (an option no check foresaw, a missing model file), a pool would
    replace the worker with another that fails the same way, forever; the run stops with the worker's error."""
    import m2u.datasets.distributors as distributors
    from m2u.core.parallel import WorkerStartError, worker_pool

    with pytest.raises(WorkerStartError, match="cannot use"), worker_pool(2, _failing_start) as pool:
        pool.map(abs, range(8))
    monkeypatch.setattr(distributors, "init_worker", _failing_start)
    result = _make_dataset(photos, tmp_path / "ds", "--workers", "2")
    assert result.exit_code == 2 and "could not start" in result.output and "cannot use" in result.output
