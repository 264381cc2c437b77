"""Scale-out: Ray, partitions (job arrays) and multiprocessing give byte-identical shards and manifests; killed
Ray tasks are retried and killed partitions resume; partition locks; per-split and per-shard manifests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from m2u.datasets.build import STATE_DIR, BuildConfig, BuildError, BuildLockedError, build_dataset, plan_build
from m2u.datasets.layout import COLUMNS, SPLITS, read_manifest, split_shards
from m2u.datasets.locks import build_lock
from m2u.datasets.work import FAULT_ENV

CONFIG = BuildConfig(
    mask_engine="synthetic", size=64, shard_size=2, image_format="png", workers=1, progress=False
)
CLI_ARGS = ["--mask-engine", "synthetic", "--size", "64", "--shard-size", "2", "--image-format", "png"]
FACES = 16


@pytest.fixture(scope="module")
def faces(demo_faces) -> Path:
    return demo_faces(FACES)


@pytest.fixture(scope="module")
def reference(faces, tmp_path_factory, dataset_snapshot) -> dict[str, bytes]:
    """A plain build in this process, one worker."""
    out = tmp_path_factory.mktemp("reference") / "out"
    build_dataset([faces], out, CONFIG)
    snapshot = dataset_snapshot(out)
    assert sum(name.endswith(".tar") for name in snapshot) >= 6, "too few shards to test the distribution"
    return snapshot


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for this module (the builds attach to it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _cli(faces: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "m2u.datasets.cli",
        str(faces),
        "-o",
        str(out),
        *CLI_ARGS,
        "--quiet",
        *extra,
    ]


def test_two_worker_processes_give_the_same_bytes(faces, reference, tmp_path, dataset_snapshot):
    out = tmp_path / "out"
    stats = build_dataset([faces], out, dataclasses.replace(CONFIG, workers=2)).stats
    assert dataset_snapshot(out) == reference
    assert stats["distributor"] == "multiprocessing" and stats["shards_built"] == stats["shards_in_scope"]


def test_ray_on_two_cpus_gives_the_same_bytes(local_ray, faces, reference, tmp_path, dataset_snapshot):
    out = tmp_path / "out"
    stats = build_dataset([faces], out, dataclasses.replace(CONFIG, distributor="ray", workers=2)).stats
    assert dataset_snapshot(out) == reference
    assert stats["distributor"] == "ray" and stats["counts"]["by_status"]["ok"] == FACES
    # the tasks ran in Ray's worker processes, not here
    workers = {json.loads(p.read_text())["worker"] for p in out.rglob("*_stats.json")}
    assert workers and not any(w.endswith(f":{os.getpid()}") for w in workers)


def test_ray_tasks_killed_mid_shard_are_retried_and_change_nothing(
    local_ray, faces, reference, tmp_path, dataset_snapshot, monkeypatch
):
    kills = tmp_path / "kills"
    kills.mkdir()
    tasks = plan_build([faces], CONFIG).tasks
    for task in tasks[2:]:  # the hook spares shards whose marker exists: only the first two are killed
        (kills / f"{task.split}-{task.index:06d}.killed").touch()
    monkeypatch.setenv(
        FAULT_ENV, str(kills)
    )  # a first attempt exits its Ray worker half-way through the shard
    out = tmp_path / "out"
    build_dataset([faces], out, dataclasses.replace(CONFIG, distributor="ray", workers=2))
    assert len(list(kills.iterdir())) == len(tasks), "the first two shards' first attempts were killed"
    assert dataset_snapshot(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_a_killed_worker_process_is_replaced_and_its_shard_rebuilt(
    faces, reference, tmp_path, dataset_snapshot, monkeypatch
):
    kills = tmp_path / "kills"
    kills.mkdir()
    monkeypatch.setenv(FAULT_ENV, str(kills))
    out = tmp_path / "out"
    build_dataset([faces], out, dataclasses.replace(CONFIG, workers=2))
    assert list(kills.iterdir()), "no worker was killed"
    assert dataset_snapshot(out) == reference and not list(out.rglob("*.tmp"))


def test_concurrent_partitions_then_finalize_give_the_same_bytes(
    faces, reference, tmp_path, dataset_snapshot
):
    out = tmp_path / "out"
    runs = [subprocess.Popen(_cli(faces, out, "--partition", f"{i}/3", "--workers", "1")) for i in range(3)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0, 0]
    assert not (out / "manifest.parquet").exists(), "a partition run writes no dataset-level file"
    committed = {p.stem for p in (out / STATE_DIR).glob("*.parquet")}
    assert len(committed) == len(plan_build([faces], CONFIG).tasks)
    subprocess.run(_cli(faces, out, "--finalize"), check=True, timeout=300)
    assert dataset_snapshot(out) == reference
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_built"] == 0 and stats["counts"]["by_status"]["ok"] == FACES


@pytest.mark.slow
@pytest.mark.shared
def test_celeba_200_ray_partitions_and_plain_give_the_same_bytes(
    local_ray, celeba_first, tmp_path, dataset_snapshot
):
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{f}\n" for f in celeba_first(200)))
    config = dataclasses.replace(CONFIG, mask_engine="m2u", shard_size=16, size=96, image_format="jpg")
    build_dataset([listing], tmp_path / "plain", dataclasses.replace(config, workers=2))
    reference = dataset_snapshot(tmp_path / "plain")
    assert sum(name.endswith(".tar") for name in reference) >= 10
    build_dataset([listing], tmp_path / "ray", dataclasses.replace(config, distributor="ray", workers=2))
    assert dataset_snapshot(tmp_path / "ray") == reference
    args = ["--size", "96", "--shard-size", "16", "--image-format", "jpg", "--quiet", "--workers", "1"]
    command = [sys.executable, "-m", "m2u.datasets.cli", str(listing), "-o", str(tmp_path / "parts"), *args]
    runs = [subprocess.Popen([*command, "--partition", f"{i}/3"]) for i in range(3)]
    assert [run.wait(timeout=900) for run in runs] == [0, 0, 0]
    subprocess.run([*command, "--finalize"], check=True, timeout=300)
    assert dataset_snapshot(tmp_path / "parts") == reference


def test_the_shard_plan_does_not_depend_on_the_partition_count(faces):
    plan = plan_build([faces], CONFIG)
    for count in (1, 2, 3, 7):
        parts = [plan.tasks_of((i, count)) for i in range(count)]
        assert sorted((t for p in parts for t in p), key=lambda t: t.sort_key()) == plan.tasks
        assert sum(len(p) for p in parts) == len(plan.tasks)


def test_a_killed_partition_resumes(faces, reference, tmp_path, dataset_snapshot):
    out = tmp_path / "out"
    plan = plan_build([faces], CONFIG)
    mine = {f"{t.split}-{t.index:06d}" for t in plan.tasks_of((0, 2))}
    killed = False
    for _attempt in range(3):
        process = subprocess.Popen(
            _cli(faces, out, "--partition", "0/2", "--workers", "1"), start_new_session=True
        )
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline and not {p.stem for p in (out / STATE_DIR).glob("*.parquet")} & mine
        ):
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        committed = {p.stem for p in (out / STATE_DIR).glob("*.parquet")} & mine
        if committed < mine:
            killed = True
            break
    assert killed, "the partition finished every time before it could be killed"
    for partition in ("0/2", "1/2"):
        subprocess.run(_cli(faces, out, "--partition", partition, "--workers", "1"), check=True, timeout=300)
    subprocess.run(_cli(faces, out, "--finalize"), check=True, timeout=300)
    assert dataset_snapshot(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_finalize_refuses_while_shards_are_missing(faces, tmp_path):
    out = tmp_path / "out"
    build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(0, 3)))
    with pytest.raises(BuildError, match=r"`finalize`: \d+ shard\(s\) are not committed yet"):
        build_dataset([faces], out, dataclasses.replace(CONFIG, finalize=True))
    assert not (out / "manifest.parquet").exists()
    # a plain run builds what the other partitions did not, and finalises
    stats = build_dataset([faces], out, CONFIG).stats
    assert 0 < stats["shards_built"] < stats["shards_in_scope"]


def test_finalize_with_overwrite_is_refused_before_the_partitions_shards_are_touched(faces, tmp_path):
    """`--finalize --overwrite` deleted every partition's committed shards, then refused to finalise as "N shard(s)
    are not committed yet": the job array's work was gone."""
    from click.testing import CliRunner

    from m2u.datasets.cli import main as cli_main

    out = tmp_path / "out"
    build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(0, 2)))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(name.endswith(".tar") for name in before)
    result = CliRunner().invoke(cli_main, _cli(faces, out, "--finalize", "--overwrite")[3:])
    assert result.exit_code == 2
    assert "Error: --finalize: cannot be combined with --overwrite" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == before
    with pytest.raises(ValueError, match="finalize: cannot be combined with `overwrite`"):
        BuildConfig(finalize=True, overwrite=True)


def test_a_reader_of_an_unfinished_build_is_told_how_to_finish_it(faces, tmp_path):
    """A build stopped before its manifests (Ctrl-C) was read as "a `partition` build: run the last partition, or
    rerun without `partition`": no such build, and no partition is "last". A build in partitions is finalised
    with --finalize; a stopped build is finished by rerunning it."""
    from m2u.datasets.distributors import make_distributor
    from m2u.datasets.loader import LoaderConfig, ShardError, make_loader

    class StoppedAfterOneShard:
        def run(self, job, tasks, progress, inherited_fds=()):
            yield next(iter(make_distributor(CONFIG).run(job, tasks, progress, inherited_fds)))
            raise KeyboardInterrupt

    stopped, partitioned = tmp_path / "stopped", tmp_path / "partitioned"
    with pytest.raises(KeyboardInterrupt):
        build_dataset([faces], stopped, CONFIG, distributor=StoppedAfterOneShard())
    assert list((stopped / STATE_DIR).glob("*.parquet")), "the stopped build committed a shard"
    build_dataset([faces], partitioned, dataclasses.replace(CONFIG, partition=(0, 2)))
    config = LoaderConfig(num_workers=0, batch_size=2)
    with pytest.raises(
        ShardError, match="did not finish.*rerun m2u-make-dataset with the same arguments"
    ) as info:
        make_loader(stopped, "train", config)
    assert "partition" not in str(info.value)
    with pytest.raises(ShardError, match=r"in partitions is not finalised.*same arguments and --finalize"):
        make_loader(partitioned, "train", config)


def test_partition_locks(faces, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with build_lock(out, (0, 3)):
        with pytest.raises(BuildLockedError, match=r"partition run\(s\) 0/3 \(pid \d+\) are writing"):
            build_dataset([faces], out, CONFIG)
        with pytest.raises(BuildLockedError, match="partition 0/3 is already being built"):
            build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(0, 3)))
        with pytest.raises(BuildLockedError, match="another partition count"):
            build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(1, 2)))
        build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(1, 3)))  # runs alongside
    with build_lock(out), pytest.raises(BuildLockedError, match="a run without `partition`"):
        build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(2, 3)))


def test_a_running_partition_binds_the_others_before_its_first_commit(faces, tmp_path):
    """Partitions started together with other arguments each found a build state that "binds nothing" (no shard
    committed yet), and a folder of mixed shard sizes came out."""
    out = tmp_path / "out"
    build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(0, 2)))
    for marker in (out / STATE_DIR).glob("*.parquet"):  # partition 0/2 as it is before its first commit
        marker.unlink()
    other = dataclasses.replace(CONFIG, partition=(1, 2), shard_size=CONFIG.shard_size + 1)
    with build_lock(out, (0, 2)), pytest.raises(BuildError, match=r"different arguments \(shard_size\)"):
        build_dataset([faces], out, other)
    build_dataset([faces], out, other)  # once it has stopped, a state that committed nothing binds nothing


def test_partition_options_are_checked():
    with pytest.raises(ValueError, match="I/N"):
        BuildConfig(partition="3")
    with pytest.raises(ValueError, match=r"0\.\.N-1"):
        BuildConfig(partition="3/3")
    with pytest.raises(ValueError, match="`overwrite`"):
        BuildConfig(partition=(0, 2), overwrite=True)
    with pytest.raises(ValueError, match="ray_address: needs `distributor` ray"):
        BuildConfig(ray_address="auto")
    assert BuildConfig(partition="1/4").partition == (1, 4)


def test_a_partitions_summary_counts_every_status(capsys):
    """A partition's line said pairs, faces not found and errors, never the faces the masking checks refused (a
    sample gone from the tars without a word until --finalize)."""
    from m2u.datasets.cli import _echo_summary

    built = {"ok": 97, "no_face": 1, "refused": 2, "error": 3}
    stats = {"partition": "1/2", "built_by_status": built, "shards_built": 10, "shards_kept": 0}
    _echo_summary("OUT", stats)
    line = capsys.readouterr().out
    assert "97 pairs; 1 without a face, 2 refused by the masking checks, 3 errors" in line, line


def test_split_manifests_and_shard_stats(faces, tmp_path):
    out = tmp_path / "out"
    build_dataset([faces], out, CONFIG)
    manifest = read_manifest(out)
    for split in SPLITS:
        table = pq.read_table(out / f"{split}.parquet")
        ok = manifest[(manifest["split"] == split) & (manifest["status"] == "ok")]
        assert sorted(table.column("key").to_pylist()) == sorted(ok["key"])
        shards = table.column("shard").to_pylist()
        assert shards == sorted(shards), "in shard order"
        assert {f"{split}/{p.name}" for p in split_shards(out, split)} == set(shards)
        # every column carries its meaning, as documented in the README's table
        meanings = {name: meaning for name, _, _, meaning, _ in COLUMNS}
        for field in table.schema:
            assert field.metadata[b"description"].decode() == meanings[field.name]
        assert table.schema.metadata[b"m2u.table"] == b"split"
    for path in split_shards(out, "train"):
        stats = json.loads(path.with_name(path.name.replace(".tar", "_stats.json")).read_text())
        assert stats["status"] == "written" and stats["bytes"] == path.stat().st_size
        assert stats["counts"]["ok"] == stats["planned"] and stats["timings"]["process_s"] >= 0
    # missing values are nulls, never empty strings (no identity was given, every sample is ok)
    assert manifest["reason"].isna().all() and manifest["identity"].isna().all()
    assert not (manifest.select_dtypes(exclude="number") == "").any().any()


def test_a_shard_that_keeps_killing_its_worker_stops_the_build_clearly(faces, tmp_path, monkeypatch):
    import m2u.datasets.work as work

    plan = plan_build([faces], CONFIG)
    poison = plan.tasks[0].samples[0].source
    driver, real = os.getpid(), work.iter_inputs

    def iter_inputs(
        inputs,
    ):  # inherited by the forked workers: the poisoned photo kills its worker every time
        if any(samples[0].source == poison for samples in inputs) and os.getpid() != driver:
            os._exit(9)
        return real(inputs)

    monkeypatch.setattr(work, "iter_inputs", iter_inputs)
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=rf"building {plan.tasks[0].relpath} died 4 times.*rerun"):
        build_dataset([faces], out, dataclasses.replace(CONFIG, workers=2))
    committed = {p.stem for p in (out / STATE_DIR).glob("*.parquet")}
    assert f"{plan.tasks[0].split}-{plan.tasks[0].index:06d}" not in committed
    assert len(committed) >= 1, "the other shards were built and committed meanwhile"
    monkeypatch.undo()
    assert build_dataset([faces], out, CONFIG).stats["shards_built"] == len(plan.tasks) - len(committed)


def test_progress_takes_the_latest_report_of_each_shard():
    from m2u.datasets.progress import BuildProgress

    progress = BuildProgress(10, enabled=False)
    progress.update(("train", 0), 4, {"ok": 3, "no_face": 1, "error": 0})
    progress.update(("train", 1), 2, {"ok": 2, "no_face": 0, "error": 0})
    progress.update(("train", 0), 1, {"ok": 1, "no_face": 0, "error": 0})  # a retried task starts again
    assert progress.counts() == {"ok": 3, "no_face": 0, "refused": 0, "error": 0}
    assert progress._bar.n == 3
    progress.close()


def test_fewer_shards_than_workers_are_built_in_parts_with_the_same_bytes(
    faces, tmp_path, dataset_snapshot, monkeypatch
):
    from m2u.datasets.distributors import split_into_parts

    config = dataclasses.replace(CONFIG, shard_size=16)  # three shards (train, val, test) for two workers
    build_dataset([faces], tmp_path / "one", config)
    plan = plan_build([faces], config)
    items = split_into_parts(plan.tasks, 2)
    assert len(plan.tasks) < 4 and len(items) > len(plan.tasks), "the shards are split into parts"
    kills = tmp_path / "kills"
    kills.mkdir()
    monkeypatch.setenv(FAULT_ENV, str(kills))  # a part's first attempt of each shard kills its worker
    stats = build_dataset([faces], tmp_path / "two", dataclasses.replace(config, workers=2)).stats
    assert len(list(kills.iterdir())) == len(plan.tasks)
    assert dataset_snapshot(tmp_path / "two") == dataset_snapshot(tmp_path / "one")
    assert stats["counts"]["by_status"]["ok"] == FACES and not list((tmp_path / "two").rglob("*.tmp"))
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "two").rglob("*_stats.json")}
    assert any("," in w for w in workers), "a shard's parts were built by both workers"


def test_progress_of_parts_is_replaced_by_the_shard_s_commit():
    from m2u.datasets.progress import BuildProgress

    progress = BuildProgress(8, enabled=False)
    progress.update((("train", 0), 0), 3, {"ok": 3, "no_face": 0, "error": 0})
    progress.update((("train", 0), 1), 2, {"ok": 1, "no_face": 1, "error": 0})
    assert progress._bar.n == 5
    progress.update(("train", 0), 8, {"ok": 7, "no_face": 1, "error": 0})
    assert progress._bar.n == 8 and progress.counts() == {"ok": 7, "no_face": 1, "refused": 0, "error": 0}
    progress.close()


def test_overwrite_replaces_a_partitioned_build_with_its_lock_files(faces, tmp_path):
    out = tmp_path / "out"
    for index in range(2):
        build_dataset([faces], out, dataclasses.replace(CONFIG, partition=(index, 2)))
    assert list((out / STATE_DIR).glob("partition-*-of-2.lock"))  # the partitions' own locks, made by m2u
    result = build_dataset([faces], out, dataclasses.replace(CONFIG, seed=CONFIG.seed + 1, overwrite=True))
    assert result.stats["arguments"]["seed"] == CONFIG.seed + 1 and not result.stats["resumed"]
