from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from m2u.datasets.build import STATE_DIR, BuildConfig, BuildError, BuildLockedError, build_dataset, build_lock
from m2u.datasets.cli import main as cli_main
from m2u.datasets.codecs import decode_image, decode_mask
from m2u.datasets.layout import MANIFEST_COLUMNS, MANIFEST_NAME, SPLITS, read_manifest, split_shards
from m2u.datasets.loader import LoaderConfig, make_loader


def _faceless_folder(root: Path) -> Path:
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"noise_{i}.png"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "sub" / "flat.png"), np.full((40, 40, 3), 128, np.uint8))
    (folder / "broken.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _config(**overrides) -> BuildConfig:
    defaults = dict(mask_engine="synthetic", workers=1, progress=False, size=64, shard_size=4)
    defaults.update(overrides)
    return BuildConfig(**defaults)


def test_every_input_is_in_the_manifest_even_without_a_face(tmp_path):
    out = tmp_path / "out"
    result = build_dataset([_faceless_folder(tmp_path)], out, _config())
    manifest = read_manifest(out).set_index("key")
    assert tuple(read_manifest(out).columns) == MANIFEST_COLUMNS
    assert sorted(manifest.index) == ["broken", "noise_0", "noise_1", "noise_2", "sub__flat"]
    assert manifest.loc["broken", "status"] == "error" and manifest.loc["broken", "reason"]
    assert (manifest.drop("broken")["status"] == "no_face").all()
    assert manifest.loc["noise_0", "width"] == 48 and len(manifest.loc["noise_0", "source_sha256"]) == 64
    assert manifest["shard"].isna().all()  # nulls, not empty strings
    assert not any(split_shards(out, s) for s in SPLITS)
    assert result.stats["counts"]["by_status"] == {"ok": 0, "no_face": 4, "refused": 0, "error": 1}
    assert json.loads((out / "stats.json").read_text())["arguments"]["seed"] == 0


def test_limit_keeps_the_first_inputs_by_path_as_its_help_says(tmp_path):
    """--help said "the first N inputs (in the order they are found)", but the build keeps the first N by path:
    `b.png a.png --limit 1` builds a.png. The help now says which N photos a run reads."""
    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    later, earlier = photos / "noise_2.png", photos / "noise_0.png"
    args = [
        str(later),
        str(earlier),
        "-o",
        str(out),
        "--limit",
        "1",
        "--mask-engine",
        "synthetic",
        "--workers",
        "1",
    ]
    result = CliRunner().invoke(cli_main, [*args, "--size", "64", "-q"])
    assert result.exit_code == 1 and "no pair was written" in result.output, result.output  # no face in noise
    assert list(read_manifest(out)["source"]) == [str(earlier)]
    (limit,) = [p for p in cli_main.params if p.name == "limit"]
    assert "first N inputs by path" in (limit.help or "") and "order they are found" not in (limit.help or "")


def test_stats_json_records_what_the_folder_scans_passed_over(tmp_path):
    """A photo in a format m2u does not read (.heic) or a hidden one was said on stderr only: the build's record
    (stats.json) had no trace of it once the job's log was gone."""
    photos = _faceless_folder(tmp_path)
    (photos / "photo.heic").write_bytes(b"HEIC bytes")
    cv2.imwrite(str(photos / ".hidden.png"), np.zeros((40, 40, 3), np.uint8))
    out = tmp_path / "out"
    result = build_dataset([photos], out, _config())
    passed_over = json.loads((out / "stats.json").read_text())["passed_over"]
    assert passed_over == result.skipped
    assert (
        "(.heic 1, .txt 1)" in passed_over
        and "1 image file(s) in the input folders are hidden" in passed_over
    )
    clean = tmp_path / "clean"
    (clean / "sub").mkdir(parents=True)
    cv2.imwrite(str(clean / "sub" / "flat.png"), np.full((40, 40, 3), 128, np.uint8))
    build_dataset([clean], tmp_path / "out2", _config())
    assert json.loads((tmp_path / "out2" / "stats.json").read_text())["passed_over"] is None


def test_changed_arguments_are_refused_unless_overwrite(tmp_path):
    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config())
    with pytest.raises(BuildError, match=r"different arguments \(seed\).*`overwrite`"):
        build_dataset([photos], out, _config(seed=1))
    result = build_dataset([photos], out, _config(seed=1, overwrite=True))
    assert result.stats["arguments"]["seed"] == 1
    assert not result.stats["resumed"]
    assert build_dataset([photos], out, _config(seed=1)).stats["resumed"]
    # the same arguments over other inputs: said as other inputs, naming them, not as arguments
    cv2.imwrite(str(photos / "noise_new.png"), np.full((48, 48, 3), 7, np.uint8))
    with pytest.raises(
        BuildError, match=r"other inputs \(since then 1 photo added: .*noise_new\.png\).*`overwrite`"
    ):
        build_dataset([photos], out, _config(seed=1))


def test_a_build_drawn_by_another_mask_engine_is_not_resumed(tmp_path):
    """A build begun by an m2u whose masks came out otherwise (an earlier RENDER_VERSION, or a state file from before
    render versions) is not continued with this engine's masks: said as such, and `overwrite` replaces it."""
    from m2u.datasets.build import BUILD_STATE_NAME
    from m2u.masking.render import RENDER_VERSION

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config(mask_engine="m2u"))
    state_file = out / STATE_DIR / BUILD_STATE_NAME
    state = json.loads(state_file.read_text())
    assert state["render_version"] == RENDER_VERSION
    assert build_dataset([photos], out, _config(mask_engine="m2u")).stats["resumed"]
    before_versions = {k: v for k, v in state.items() if k != "render_version"}
    earlier_states = (
        ({**state, "render_version": RENDER_VERSION - 1}, RENDER_VERSION - 1),
        (before_versions, 1),
    )
    for earlier, version in earlier_states:
        state_file.write_text(json.dumps(earlier))
        message = rf"mask engine version {version}, and this m2u draws version {RENDER_VERSION}"
        with pytest.raises(BuildError, match=message):
            build_dataset([photos], out, _config(mask_engine="m2u"))
    assert not build_dataset([photos], out, _config(mask_engine="m2u", overwrite=True)).stats["resumed"]
    # the synthetic engine draws no templates: its builds carry no render version
    synthetic = tmp_path / "synthetic"
    build_dataset([photos], synthetic, _config())
    assert "render_version" not in json.loads((synthetic / STATE_DIR / BUILD_STATE_NAME).read_text())


def test_a_shard_drawn_by_another_mask_engine_is_rebuilt_or_never_committed(tmp_path):
    """Each commit records the engine that drew the shard: a shard of another engine (a partition or a Ray node with
    another m2u) is drawn again on resume, and a worker's shard of another engine is not committed at all."""
    import dataclasses

    import pyarrow.parquet as pq

    from m2u.datasets.distributors import make_distributor
    from m2u.datasets.manifest import RENDER_VERSION_KEY, marker_path
    from m2u.masking.render import RENDER_VERSION

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    config = _config(mask_engine="m2u")
    build_dataset([photos], out, config)
    marker = marker_path(out, "train", 0)
    table = pq.read_table(marker)
    assert table.schema.metadata[RENDER_VERSION_KEY] == str(RENDER_VERSION).encode()
    older = {**table.schema.metadata, RENDER_VERSION_KEY: str(RENDER_VERSION - 1).encode()}
    pq.write_table(table.replace_schema_metadata(older), marker)
    assert build_dataset([photos], out, config).stats["shards_rebuilt_damaged"] == 1
    assert pq.read_schema(marker).metadata[RENDER_VERSION_KEY] == str(RENDER_VERSION).encode()

    class OtherEngineNode:
        """Runs the shards as usual, but they come back as drawn by another m2u."""

        def run(self, job, tasks, progress, inherited_fds=()):
            for output in make_distributor(config).run(job, tasks, progress, inherited_fds):
                yield dataclasses.replace(output, render_version=RENDER_VERSION - 1)

    fresh = tmp_path / "fresh"
    with pytest.raises(
        BuildError, match=rf"with mask engine version {RENDER_VERSION - 1}.*same m2u on every node"
    ):
        build_dataset([photos], fresh, config, distributor=OtherEngineNode())
    assert not list((fresh / STATE_DIR).glob("*.parquet"))  # nothing committed


def test_a_refused_rerun_names_every_difference_and_a_finalize_is_not_told_to_overwrite(tmp_path):
    from m2u.datasets.build import BUILD_STATE_NAME

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config(mask_engine="m2u"))
    state_file = out / STATE_DIR / BUILD_STATE_NAME
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "render_version": 1}))
    with pytest.raises(
        BuildError, match=r"different arguments \(seed\) and mask engine version 1.*`overwrite`"
    ):
        build_dataset([photos], out, _config(mask_engine="m2u", seed=5))
    with pytest.raises(
        BuildError, match=r"mask engine version 1.*; finalize with the m2u and the arguments that built it"
    ):
        build_dataset([photos], out, _config(mask_engine="m2u", finalize=True))


def test_a_rerun_refused_for_other_inputs_names_the_photos_added_and_removed(tmp_path):
    """A rerun after photos were added to (or removed from) the inputs was refused as "another plan of samples
    (other inputs or identities, or an m2u version that plans them otherwise)": which, the user had to find out."""
    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config())
    shutil.copyfile(photos / "noise_1.png", photos / "sub" / "new.png")
    (photos / "noise_0.png").unlink()
    with pytest.raises(
        BuildError, match=r"made with other inputs \(since then 1 photo added, 1 removed: "
    ) as info:
        build_dataset([photos], out, _config())
    assert f"{photos / 'sub' / 'new.png'}, {photos / 'noise_0.png'}); use `overwrite`" in str(info.value)


def test_a_build_stopped_before_its_first_commit_binds_nothing(tmp_path):
    """An earlier run (other arguments) stopped before it committed a shard, leaving its state and an empty split
    folder: a new build starts there, and is not told the folder holds a dataset without build state."""

    class StoppedAtOnce:
        def run(self, job, tasks, progress, inherited_fds=()):
            (Path(job.out_dir) / "train").mkdir(exist_ok=True)  # as a shard writer leaves it
            raise KeyboardInterrupt
            yield

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_dataset([photos], out, _config(seed=9), distributor=StoppedAtOnce())
    assert (out / "train").is_dir() and not list((out / STATE_DIR).glob("*.parquet"))
    result = build_dataset([photos], out, _config())
    assert not result.stats["resumed"] and (out / "manifest.parquet").is_file()


def test_overwrite_replaces_only_what_the_build_wrote(tmp_path):
    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config())
    (out / "train").mkdir(exist_ok=True)
    (out / "train" / "train-000005.tar").write_text("a person's own file in a split folder")
    with pytest.raises(
        BuildError, match=r"cannot replace the build .*train-000005\.tar was not written by m2u"
    ):
        build_dataset([photos], out, _config(seed=1, overwrite=True))
    assert (out / "train" / "train-000005.tar").exists() and (out / "manifest.parquet").exists()
    (out / "train" / "train-000005.tar").unlink()
    assert build_dataset([photos], out, _config(seed=1, overwrite=True)).stats["arguments"]["seed"] == 1


def test_overwrite_leaves_another_m2u_tools_output_in_a_split_folder(tmp_path):
    """m2u-eval's report written into a split folder is m2u's (the folder's record lists it) but not the build's:
    `overwrite` refuses it by name instead of deleting it with the shards."""
    from m2u.core.fileio import atomic_write_text

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config())
    atomic_write_text(out / "train" / "train-000000_stats.json", "{}")  # the build's kind of file
    atomic_write_text(out / "train" / "metrics.json", "{}")  # as m2u-eval -o OUT/train writes it
    with pytest.raises(BuildError, match=r"train/metrics\.json is another m2u tool's output"):
        build_dataset([photos], out, _config(seed=1, overwrite=True))
    assert (out / "train" / "metrics.json").exists() and (out / "manifest.parquet").exists()
    (out / "train" / "metrics.json").unlink()
    build_dataset([photos], out, _config(seed=1, overwrite=True))
    stats = out / "train" / "train-000000_stats.json"
    assert not stats.exists() or stats.read_text() != "{}"  # replaced with the rest of the build


def test_a_persons_files_in_a_split_named_folder_are_not_called_a_dataset(tmp_path):
    """OUT/train/notes.txt alone was "a dataset without build state; use `overwrite`", and `overwrite` then
    refused the file as not m2u's: the user was sent round. It is refused as other files, naming them."""
    photos = _faceless_folder(tmp_path)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match=r"already holds other files \(train/notes\.txt\)") as refused:
        build_dataset([photos], out, _config())
    assert "overwrite" not in str(refused.value)
    (out / "train" / "notes.txt").unlink()
    with pytest.raises(BuildError, match=r"already holds other files \(train/\)"):
        build_dataset([photos], out, _config())
    # A dataset whose build state is gone is still one: `overwrite` replaces it.
    build_dataset([photos], tmp_path / "ds", _config())
    shutil.rmtree(tmp_path / "ds" / STATE_DIR)
    with pytest.raises(BuildError, match="holds a dataset without build state; use `overwrite`"):
        build_dataset([photos], tmp_path / "ds", _config())


def test_a_second_concurrent_run_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with (
        build_lock(out),
        pytest.raises(BuildLockedError, match=f"another m2u-make-dataset run is writing .*pid {os.getpid()}"),
    ):
        build_dataset([_faceless_folder(tmp_path)], out, _config())


def test_an_out_that_is_the_input_folder_is_said_to_be_it(tmp_path):
    """`m2u-make-dataset photos -o photos` was refused as "already holds other files (broken.jpg, ...)", though
    m2u-mask and m2u-unmask say that OUT is the input folder; so does it now, however the folder is written."""
    photos = _faceless_folder(tmp_path)
    before = sorted(p.relative_to(photos) for p in photos.rglob("*"))
    for out in (photos, photos / "sub" / ".."):
        result = CliRunner().invoke(cli_main, [str(photos), "-o", str(out), "--mask-engine", "synthetic"])
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"Error: --out {out} is the input folder {photos}: the dataset would be written among the photos; "
            "choose another output folder\n"
        )
    assert sorted(p.relative_to(photos) for p in photos.rglob("*")) == before


def test_cli_reports_clear_errors(tmp_path):
    photos = _faceless_folder(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    runner = CliRunner()
    result = runner.invoke(
        cli_main, [str(photos), "-o", str(foreign), "--mask-engine", "synthetic", "--quiet"]
    )
    assert result.exit_code == 2 and "already holds other files" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    result = runner.invoke(cli_main, [str(photos), "-o", str(tmp_path / "o"), "--split", "0.5,0.5"])
    assert result.exit_code == 2 and "expected 3 split fractions" in result.output
    result = runner.invoke(
        cli_main, [str(photos), "-o", str(tmp_path / "m"), "--mask-type", "nonsense", "--quiet"]
    )
    assert result.exit_code == 2 and "unknown mask type 'nonsense'" in result.output
    result = runner.invoke(cli_main, [str(photos), "-o", str(tmp_path / "m"), "--mask-option", "colour=red"])
    assert result.exit_code == 2 and "unknown mask option(s) ['colour']" in result.output
    # A --pack that holds no masks.cfg is refused before any photo is read, and a refused run leaves no OUT
    result = runner.invoke(cli_main, [str(photos), "-o", str(tmp_path / "p"), "--pack", str(photos)])
    assert (
        result.exit_code == 2 and "no masks.cfg at" in result.output and len(result.output.splitlines()) == 1
    )
    result = runner.invoke(cli_main, [str(tmp_path / "nothing-here"), "-o", str(tmp_path / "n")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "n").exists()
    # A notebook's hidden checkpoint copy is passed over, and said to be.
    (photos / ".ipynb_checkpoints").mkdir()
    (photos / ".ipynb_checkpoints" / "copy.jpg").write_bytes(b"x")
    args = [str(photos), "-o", str(tmp_path / "o"), "--mask-engine", "synthetic", "--quiet", "--workers", "1"]
    result = runner.invoke(cli_main, args)
    assert (
        result.exit_code == 1
        and "4 without a face, 0 refused by the masking checks, 1 errors" in result.output
    )
    assert "1 image file(s) in the input folders are hidden" in result.output


# --- on real faces (../shared) -------------------------------------------------------------------------------


def _list_file(tmp_path: Path, files: list[Path]) -> Path:
    path = tmp_path / "inputs.txt"
    path.write_text("".join(f"{f}\n" for f in files))
    return path


@pytest.mark.shared
def test_celeba_subset_pairs_are_aligned_and_readable(celeba_first, tmp_path):
    files = celeba_first(16)
    out = tmp_path / "out"
    config = _config(
        workers=2, image_format="png", identity_pattern="{identity}_{id}.jpg", split_by="identity"
    )
    build_dataset([_list_file(tmp_path, files)], out, config)
    manifest = read_manifest(out)
    assert sorted(manifest["source"]) == sorted(str(f) for f in files)
    assert manifest.groupby("identity")["split"].nunique().max() == 1
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) >= 14
    shards = [str(p) for s in SPLITS for p in split_shards(out, s)]
    seen = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        masked, unmasked = decode_image(sample["masked.png"]), decode_image(sample["unmasked.png"])
        mask = decode_mask(sample["mask.png"])
        meta = json.loads(sample["json"])
        assert masked.shape == unmasked.shape == (64, 64, 3) and 0.05 < (mask > 0).mean() < 0.7
        assert np.array_equal(masked[mask == 0], unmasked[mask == 0])
        assert len(meta["landmarks"]) == 68 and len(meta["align_matrix"]) == 2
        row = ok[ok["key"] == sample["__key__"]].iloc[0]
        assert meta["source"] == row["source"] and meta["seed"] == row["seed"]
        assert row["shard"] == sample["__url__"][len(str(out)) + 1 :]
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(ok["key"])
    present = [split for split in SPLITS if split_shards(out, split)]
    config = LoaderConfig.for_evaluation(num_workers=0)
    loaded = [k for split in present for batch in make_loader(out, split, config) for k in batch["key"]]
    assert sorted(loaded) == sorted(seen)


@pytest.mark.shared
def test_jpeg_pairs_differ_only_near_the_mask(celeba_first, tmp_path):
    out = tmp_path / "out"
    build_dataset(
        [_list_file(tmp_path, celeba_first(4))], out, _config(size=128, image_format="jpg", quality=95)
    )
    shards = [str(p) for s in SPLITS for p in split_shards(out, s)]
    count = 0
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        masked = decode_image(sample["masked.jpg"]).astype(int)
        unmasked = decode_image(sample["unmasked.jpg"]).astype(int)
        mask = decode_mask(sample["mask.png"])
        # JPEG codes 16x16 blocks (4:2:0) independently: only blocks touching the mask (plus chroma smoothing)
        near = cv2.dilate(mask, np.ones((49, 49), np.uint8)) > 0
        assert np.array_equal(masked[~near], unmasked[~near])
        assert np.abs(masked - unmasked)[mask == 0].mean() < 2.0
        count += 1
    assert count >= 3


_KILL_ARGS = ["--mask-engine", "synthetic", "--workers", "1", "--size", "96", "--shard-size", "2", "--quiet"]


@pytest.mark.shared
@pytest.mark.slow  # four processes that each load the dlib models: ~20 s
def test_sigkill_midway_then_rerun_equals_an_uninterrupted_run(celeba_first, tmp_path, dataset_snapshot):
    inputs = _list_file(tmp_path, celeba_first(24))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    command = [sys.executable, "-m", "m2u.datasets.cli", str(inputs)]
    subprocess.run([*command, "-o", str(reference), *_KILL_ARGS], check=True, cwd=tmp_path, timeout=300)

    process = subprocess.Popen([*command, "-o", str(killed), *_KILL_ARGS], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed / STATE_DIR).glob("*.parquet"))) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (killed / "manifest.parquet").exists(), "the run finished before it could be killed"

    subprocess.run([*command, "-o", str(killed), *_KILL_ARGS], check=True, cwd=tmp_path, timeout=300)
    assert not list(killed.rglob("*.tmp"))
    assert json.loads((killed / "stats.json").read_text())["resumed"]
    assert dataset_snapshot(killed) == dataset_snapshot(reference)
    # and a second full run with the same seed is byte-identical too (determinism)
    again = tmp_path / "again"
    subprocess.run(
        [*command, "-o", str(again), *_KILL_ARGS, "--workers", "2"], check=True, cwd=tmp_path, timeout=300
    )
    assert dataset_snapshot(again) == dataset_snapshot(reference)


@pytest.mark.shared
def test_real_masking_engine_pairs_are_deterministic_and_exact_outside_the_mask(
    celeba_first, tmp_path, dataset_snapshot
):
    inputs = _list_file(tmp_path, celeba_first(5))
    config = _config(mask_engine="m2u", size=96, image_format="png", variants=2)
    first = build_dataset([inputs], tmp_path / "first", config)
    second = build_dataset([inputs], tmp_path / "second", config)
    assert dataset_snapshot(tmp_path / "first") == dataset_snapshot(tmp_path / "second")
    manifest = read_manifest(tmp_path / "first")
    assert len(manifest) == 10 and set(manifest["variant"]) == {0, 1}
    assert first.stats["counts"]["by_status"]["ok"] >= 7, manifest[["key", "status", "reason"]]
    shards = [str(p) for s in SPLITS for p in split_shards(tmp_path / "first", s)]
    masks_by_input: dict[str, list[np.ndarray]] = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        masked, unmasked = decode_image(sample["masked.png"]), decode_image(sample["unmasked.png"])
        mask = decode_mask(sample["mask.png"])
        assert np.array_equal(masked[mask == 0], unmasked[mask == 0])
        assert (masked[mask > 0] != unmasked[mask > 0]).any()
        masks_by_input.setdefault(json.loads(sample["json"])["source"], []).append(mask)
    # the two variants of a face are different masks on the same aligned crop
    assert any(len(m) == 2 and not np.array_equal(*m) for m in masks_by_input.values())
    assert second.stats["counts"] == first.stats["counts"]


def test_a_file_url_is_the_local_folder_it_names(tmp_path, monkeypatch):
    """`-o file:///abs/out` made a folder named `file:` under the current folder and failed to commit its first
    shard; the loader and m2u-eval's check called `file://` datasets missing or corrupt."""
    from m2u.datasets.storage import check_dataset
    from m2u.datasets.synthetic import write_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(
        cli_main, [str(photos), "-o", f"file://{out}", "--mask-engine", "synthetic", "--quiet"]
    )
    assert result.exit_code == 1, result.output  # broken.jpg: some inputs failed, the build finished
    assert (out / "manifest.parquet").is_file() and not (tmp_path / "file:").exists()
    data = tmp_path / "data"
    write_synthetic_dataset(data, 12, size=32, seed=0)
    check_dataset(f"file://{data}")
    keys = [
        k for b in make_loader(f"file://{data}", "train", LoaderConfig.for_evaluation()) for k in b["key"]
    ]
    assert keys == [k for b in make_loader(data, "train", LoaderConfig.for_evaluation()) for k in b["key"]]
    assert keys


def test_a_dataset_still_being_built_is_said_so_where_it_is_read(tmp_path):
    """After `--partition` runs and before `--finalize`, m2u-eval and m2u-train said "not a dataset ... build one
    with m2u-make-dataset"; a dataset named without its split read as "no shards found"."""
    from m2u.core.errors import SettingError
    from m2u.datasets.storage import check_dataset
    from m2u.datasets.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 12, size=32, seed=0)
    with pytest.raises(ValueError, match="is a dataset: name the split"):
        make_loader(data, None)
    (data / "manifest.parquet").unlink()
    (data / "stats.json").unlink()  # written with the manifests, last
    (data / STATE_DIR).mkdir(exist_ok=True)
    # m2u-eval said "run the build that made it again, or finalise it (`finalize`) after its partitions", other
    # words than the loader's (and m2u-train's) for the same dataset: now one message, the loader's, for both cases.
    with pytest.raises(
        SettingError, match=r"did not finish \(it was stopped.*rerun m2u-make-dataset"
    ) as info:
        check_dataset(data)
    assert "partition" not in str(info.value)
    (data / STATE_DIR / "partition-0-of-2.lock").write_text("")  # as a --partition run leaves it
    with pytest.raises(SettingError, match="in partitions is not finalised.*same arguments and --finalize"):
        check_dataset(data)


def test_a_builds_own_files_damaged_or_edited_are_written_again_by_a_rerun(tmp_path):
    """A dataset's build files (manifests, stats, build state, shards) are m2u's by name (fileio's `by_name`):
    only m2u puts them there, and a rerun or --overwrite must replace a damaged one rather than refuse it."""
    import pyarrow.parquet as pq

    photos, out = _faceless_folder(tmp_path), tmp_path / "out"
    build_dataset([photos], out, _config())
    rows = pq.read_table(out / MANIFEST_NAME).num_rows
    (out / MANIFEST_NAME).write_bytes(b"damaged")
    (out / "stats.json").write_text("{}")
    build_dataset([photos], out, _config())
    assert pq.read_table(out / MANIFEST_NAME).num_rows == rows
    assert json.loads((out / "stats.json").read_text()) != {}
    (out / "stats.json").write_text("edited by hand")
    assert not build_dataset([photos], out, _config(overwrite=True)).stats["resumed"]
    assert json.loads((out / "stats.json").read_text()) != {}


def test_a_face_only_the_low_threshold_retry_found_is_said_so_in_its_row(tmp_path, monkeypatch):
    """The retry's false positives (a dog's "face") became ok pairs with nothing in the manifest to find them by;
    m2u-mask's report said so. Each such row's reason now says how the face was found."""
    import dataclasses

    from m2u.masking import FaceDetector
    from m2u.pipelines.demo_faces import write_demo_faces

    photos, out = tmp_path / "faces", tmp_path / "out"
    photos.mkdir()
    write_demo_faces(photos, count=2)
    build_dataset([photos], out, _config(mask_engine="m2u"))
    assert read_manifest(out)["reason"].isna().all()  # faces the first pass found: nothing to say
    found = FaceDetector.detect_many

    def only_by_the_retry(self, images, largest_only=False):
        return [
            [dataclasses.replace(f, retry=True, score=-0.3) for f in faces]
            for faces in found(self, images, largest_only)
        ]

    monkeypatch.setattr(FaceDetector, "detect_many", only_by_the_retry)
    build_dataset([photos], tmp_path / "retry", _config(mask_engine="m2u"))
    manifest = read_manifest(tmp_path / "retry")
    assert (manifest["status"] == "ok").all() and len(manifest) == 2
    assert manifest["reason"].str.startswith("found by the low-threshold retry (score -0.300)").all()
    assert manifest["reason"].str.contains("--min-score 0").all()
    # The column's meaning, as the file carries it (and README's table), says an ok row may hold that note: it
    # said "null when `ok`".
    import pyarrow.parquet as pq

    meaning = (
        pq.read_schema(tmp_path / "retry" / MANIFEST_NAME).field("reason").metadata[b"description"].decode()
    )
    assert "low-threshold retry" in meaning, meaning


def test_a_photo_whose_faces_score_below_min_score_says_so_in_the_manifest(tmp_path):
    """A build with --min-score above every face's score listed each photo as "no face found": the manifest's
    reason now names the floor (m2u.masking.detect.no_face_reason, as m2u-mask's report)."""
    from m2u.pipelines.demo_faces import write_demo_faces

    photos, out = tmp_path / "faces", tmp_path / "out"
    photos.mkdir()
    write_demo_faces(photos, count=1)
    build_dataset([photos], out, _config(mask_engine="m2u", detector_options={"min_score": 5.0}))
    manifest = read_manifest(out)
    assert (manifest["status"] == "no_face").all() and len(manifest) == 1
    assert (
        manifest["reason"] == "no face found scoring at least --min-score 5 (the detector's own score)"
    ).all()
