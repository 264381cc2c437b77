"""Building a paired dataset: plan → shard tasks → commit → manifests and stats, resumable, on one machine or many.

1. **Plan** (``plan_build``): discover the inputs, give every sample its key, split, seed and shard
   (``m2u.datasets.plan``). The plan depends only on the inputs and the output arguments: never on the number of
   workers, machines or partitions, so every way of running the build writes the same shards.
2. **Shard tasks**: one task per shard not committed yet (``m2u.datasets.work.build_shard``: detect → align →
   mask → encode each sample, write the tar), run by a swappable distributor (``m2u.datasets.distributors``:
   multiprocessing on this machine, or Ray). ``--partition I/N`` keeps only the shards k with k mod N = I.
3. **Commit**: the driver commits each finished shard (its stats JSON, then its rows in
   ``OUT/.m2u-build/<split>-NNNNNN.parquet``, the commit marker; ``m2u.datasets.manifest``). A rerun with the same
   arguments verifies the committed shards (size and SHA-256 recorded at commit time), rebuilds the missing or
   damaged ones, and deletes stray temporary files, so an interrupted run plus a rerun gives byte for byte the
   result of one uninterrupted run.
4. **Manifests and stats** (a run without ``--partition``, or ``--finalize``): ``manifest.parquet``,
   ``train/val/test.parquet`` and ``stats.json`` from the committed shards.

Locks (``m2u.datasets.locks``): a whole run holds ``OUT/.m2u-build.lock`` alone; partition runs of one N share it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from m2u.core.fileio import RECORD_NAME, OutputRefusedError, atomic_write_text, remove_written
from m2u.core.inputs import (
    changes_in_words,
    input_folder_problem,
    input_list,
    output_location_problem,
    whole_folder_problem,
)
from m2u.datasets.config import MASK_ENGINES, BuildClashError, BuildConfig, BuildError, BuildLockedError
from m2u.datasets.distributors import Distributor, make_distributor
from m2u.datasets.layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    MANIFEST_STATUSES,
    SPLITS,
    STATE_DIR,
    STATS_NAME,
    is_build_file,
    is_url,
    split_manifest_name,
)
from m2u.datasets.locks import build_lock, running_partitions
from m2u.datasets.manifest import check_committed, commit_shard, marker_path, uncommit, write_manifests
from m2u.datasets.plan import InputItem, PlannedSample, group_by_shard, plan_samples
from m2u.datasets.shards import remove_stray_temp_files
from m2u.datasets.sources import find_dataset_inputs, input_items
from m2u.datasets.storage import build_at_url, local_location
from m2u.datasets.work import (
    FAULT_ENV,
    BuildJob,
    ShardTask,
    engine_version,
    make_detector,
    make_masker,
    process_input,
)
from m2u.datasets.writer import count_rows, library_versions, write_stats

BUILD_STATE_NAME = "build.json"
BUILD_TOOL = "m2u-make-dataset"  # as refusals name the command (m2u.core.inputs.whole_folder_problem)
_OWN_ENTRIES = frozenset(
    {
        *SPLITS,
        *(split_manifest_name(s) for s in SPLITS),
        MANIFEST_NAME,
        STATS_NAME,
        STATE_DIR,
        LOCK_NAME,
        RECORD_NAME,
    }
)

__all__ = [
    "MASK_ENGINES",
    "STATE_DIR",
    "BuildConfig",
    "BuildClashError",
    "BuildError",
    "BuildLockedError",
    "BuildPlan",
    "BuildResult",
    "build_dataset",
    "build_lock",
    "make_masker",
    "plan_build",
    "process_input",
]


@dataclass(frozen=True)
class BuildPlan:
    items: list[InputItem]
    samples: list[PlannedSample]
    tasks: list[ShardTask]  # every shard of the plan, in (split, index) order
    skipped: str = ""  # what the folder scans passed over (m2u.core.inputs.Discovery.describe_skipped)

    def fingerprint(self, config: BuildConfig) -> dict[str, Any]:
        """What a rerun must match to resume: the output arguments and the plan."""
        import hashlib

        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(
                f"{s.key}\x1f{s.source}\x1f{s.identity}\x1f{s.split}\x1f{s.shard_index}\n".encode(
                    "utf-8", "surrogateescape"
                )
            )
        fingerprint = {
            "arguments": config.output_arguments(),
            "plan_sha256": digest.hexdigest(),
            "samples": len(self.samples),
        }
        version = engine_version(config)
        if version is not None:
            fingerprint["render_version"] = version
        return fingerprint

    def tasks_of(self, partition: tuple[int, int] | None) -> list[ShardTask]:
        """The shards of partition (I, N): the k-th shard of the plan (in (split, index) order) when k mod N = I."""
        if partition is None:
            return list(self.tasks)
        index, count = partition
        return [task for k, task in enumerate(self.tasks) if k % count == index]


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    stats: dict[str, Any]
    skipped: str = ""  # what the input folders held that was not read, as a sentence ("" when nothing)


def plan_build(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: BuildConfig,
    out_dir: str | os.PathLike[str] | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> BuildPlan:
    """Discover the inputs (nothing under `out_dir` or an `exclude` folder) and plan every sample and shard
    (step 1)."""
    # The run's one discovery. A dataset written inside an input folder is never read back as input.
    found = find_dataset_inputs(inputs, exclude=[*([out_dir] if out_dir is not None else []), *exclude])
    # OUT one of the input folders: said so, not as a folder that "already holds other files" (the photos).
    problem = "" if out_dir is None else input_folder_problem(out_dir, found)
    if problem:
        raise BuildError(
            f"{problem}: the dataset would be written among the photos; choose another output folder"
        )
    items = input_items(
        found,
        identity_file=config.identity_file,
        identity_pattern=config.identity_pattern,
        limit=config.limit,
    )
    samples = plan_samples(
        items,
        seed=config.seed,
        fractions=config.split,
        split_by=config.split_by,
        variants=config.variants,
        shard_size=config.shard_size,
    )
    tasks = [
        ShardTask(split, index, tuple(group)) for (split, index), group in group_by_shard(samples).items()
    ]
    return BuildPlan(items, samples, sorted(tasks, key=ShardTask.sort_key), found.describe_skipped())


def _clear_outputs(out_dir: Path) -> None:
    """Remove the earlier build `overwrite` replaces: only what m2u wrote (a person's own file in a split folder
    is refused, not deleted)."""
    try:
        remove_written(
            out_dir, sorted(_OWN_ENTRIES - {LOCK_NAME, RECORD_NAME}), ours=is_build_file, by_name=True
        )
    except OutputRefusedError as exc:
        raise BuildError(f"cannot replace the build in {out_dir}: {exc}") from None


def _other_partitions_running(out_dir: Path, partition: tuple[int, int] | None) -> bool:
    if partition is None:
        return False  # a run without partitions holds OUT alone
    own = f"{partition[0]}/{partition[1]}"
    return any(running.split(" ")[0] != own for running in running_partitions(out_dir))


def foreign_entries(out_dir: Path) -> list[str]:
    """The names in the existing folder OUT that a build refuses to write beside (sorted): entries that are not a
    build's own, in a folder without a build state (an earlier build's folder may hold other files)."""
    if (out_dir / STATE_DIR / BUILD_STATE_NAME).exists():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name not in _OWN_ENTRIES)


def _other_files_error(out_dir: Path, names: Sequence[str]) -> BuildError:
    return BuildError(
        f"{out_dir} already holds other files ({', '.join(names[:5])}); choose an empty or new `out_dir`"
    )


def _held_without_state(out_dir: Path) -> list[str]:
    """The files (relative, sorted) that OUT's split folders and manifest hold, where OUT has no build state."""
    held = [MANIFEST_NAME] if (out_dir / MANIFEST_NAME).exists() else []
    for split in SPLITS:
        if (out_dir / split).is_dir():
            held += sorted(
                p.relative_to(out_dir).as_posix() for p in (out_dir / split).rglob("*") if not p.is_dir()
            )
    return held


def _inputs_changed(out_dir: Path, sources: Sequence[str]) -> str:
    """How this build's inputs (`sources`, absolute paths) differ from those of the finished build in OUT (its
    manifest): "2 photos added, 1 removed: a.jpg, ..."; "" when the same, or when OUT has no readable manifest."""
    import pyarrow.parquet as pq

    try:
        earlier = set(pq.read_table(out_dir / MANIFEST_NAME, columns=["source"]).column("source").to_pylist())
    except Exception:  # noqa: BLE001 - no manifest (a build stopped early) or not one of m2u's: nothing to say
        return ""
    now = set(sources)
    return changes_in_words({"added": sorted(now - earlier), "removed": sorted(earlier - now)})


def _prepare_out_dir(
    out_dir: Path, config: BuildConfig, fingerprint: dict[str, Any], sources: Sequence[str] = ()
) -> bool:
    """Check OUT against this build; returns True when an earlier run with the same arguments is resumed.
    `sources`: the inputs this build reads, to say which changed when the plan differs."""
    state_file = out_dir / STATE_DIR / BUILD_STATE_NAME
    foreign = foreign_entries(out_dir)
    if foreign:
        raise _other_files_error(out_dir, foreign)
    previous = json.loads(state_file.read_text()) if state_file.exists() else None
    # A state that binds nothing and no manifest: an earlier run stopped before its first commit (its split folders
    # hold nothing committed), not a finished dataset whose build state is gone.
    stopped_early = previous is not None and not (out_dir / MANIFEST_NAME).exists()
    if (
        previous is not None
        and previous != fingerprint
        and not any((out_dir / STATE_DIR).glob("*.parquet"))
        and not _other_partitions_running(out_dir, config.partition)
    ):
        # An earlier run that committed no shard (stopped or refused at once) binds nothing; a partition still
        # running binds the others before its first commit too (started together, they mixed two builds).
        previous = None
    if previous is not None and "render_version" in fingerprint:
        from m2u.masking.render import FIRST_RENDER_VERSION

        previous.setdefault("render_version", FIRST_RENDER_VERSION)
    if config.overwrite:
        _clear_outputs(out_dir)
        previous = None
    elif previous is not None and previous != fingerprint:
        changed = sorted(
            k
            for k in set(previous["arguments"]) | set(fingerprint["arguments"])
            if previous["arguments"].get(k) != fingerprint["arguments"].get(k)
        )
        # Every difference at once, so fixing one does not meet a second refusal.
        reasons = [f"different arguments ({', '.join(changed)})"] if changed else []
        if "mask_engine" not in changed and previous.get("render_version") != fingerprint.get(
            "render_version"
        ):
            reasons.append(
                f"mask engine version {previous.get('render_version')}, and this m2u draws version "
                f"{fingerprint.get('render_version')} (other pixels for the same faces and seeds)"
            )
        if not reasons:
            # Same arguments and engine, another plan: other inputs, or the same ones planned otherwise by another
            # m2u version (names outside ASCII, duplicate photos joined in one split).
            changed_inputs = _inputs_changed(out_dir, sources)
            reasons.append(
                f"other inputs (since then {changed_inputs})"
                if changed_inputs
                else "another plan of samples (other inputs or identities, or an m2u version that plans them "
                "otherwise)"
            )
        held = f"{out_dir} holds a build made with {' and '.join(reasons)}"
        if not config.finalize:
            raise BuildClashError(held)
        # `overwrite` would delete every partition's shards: a finalising run is pointed back at the build's own.
        raise BuildError(
            f"{held}; finalize with the m2u and the arguments that built it, or rebuild it with `overwrite`"
        )
    elif (
        previous is None
        and not stopped_early
        and any((out_dir / name).exists() for name in (*SPLITS, MANIFEST_NAME))
    ):
        files = _held_without_state(out_dir)
        if not any(is_build_file(PurePosixPath(name)) for name in files):
            # A person's own files in a folder named like a split (`train/notes.txt`): no dataset to `overwrite`
            # (which refuses them as not m2u's).
            raise _other_files_error(
                out_dir, files or [f"{name}/" for name in SPLITS if (out_dir / name).exists()]
            )
        raise BuildClashError(f"{out_dir} holds a dataset without build state")
    (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    if previous is None:
        atomic_write_text(state_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", by_name=True)
    return previous is not None


def _shards_to_build(
    out_dir: Path, tasks: Sequence[ShardTask], config: BuildConfig
) -> tuple[list[ShardTask], int]:
    """Verify the committed shards among ``tasks``; returns (the shards to build, how many damaged ones are
    rebuilt). Stray temporary files of these shards are removed (no other run writes them: see the locks)."""
    names = {
        name
        for t in tasks
        for name in (
            Path(t.relpath).name,
            marker_path(out_dir, t.split, t.index).name,
            Path(t.stats_relpath).name,
        )
    }
    removed = remove_stray_temp_files(out_dir, None if config.partition is None else names)
    todo, damaged = [], []
    for task in tasks:
        problem = check_committed(out_dir, task, engine_version(config))
        if problem is None:
            continue
        if problem != "not committed":
            damaged.append(f"{task.relpath}: {problem}")
            uncommit(out_dir, task)
        todo.append(task)
    if config.progress and removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted run", file=sys.stderr)
    if damaged:
        print(
            f"rebuilding {len(damaged)} shard(s) damaged or with changed inputs: {'; '.join(damaged[:5])}",
            file=sys.stderr,
        )
    return todo, len(damaged)


def _run_tasks(
    out_dir: Path,
    config: BuildConfig,
    distributor: Distributor,
    tasks: Sequence[ShardTask],
    fds: Sequence[int],
) -> dict[str, int]:
    """Step 2 and 3: run the shard tasks and commit each as it finishes; returns the status counts built."""
    from m2u.datasets.progress import BuildProgress

    if not tasks:  # everything is committed (a finalising run): no pool, no Ray
        return {status.value: 0 for status in MANIFEST_STATUSES}
    job = BuildJob(config, os.fspath(out_dir.resolve()), os.getpid(), os.environ.get(FAULT_ENV))
    planned = {t.shard_id: len(t.samples) for t in tasks}
    progress = BuildProgress(sum(planned.values()), enabled=config.progress)
    try:
        for output in distributor.run(job, tasks, progress.update, inherited_fds=fds):
            shard_id = (output.split, output.index)
            tar = out_dir / output.split / f"{output.split}-{output.index:06d}.tar"
            if output.sha256 and (not tar.is_file() or tar.stat().st_size != output.bytes):
                raise BuildError(
                    f"the worker {output.worker} wrote {tar} where this process cannot see it: with Ray on several"
                    " machines, `out_dir` must be a folder every node mounts under the same path"
                )
            if output.render_version != engine_version(config):
                # A Ray node (or a part's worker) with another m2u: its shard is not committed, so a rerun on
                # matching nodes draws it again.
                raise BuildError(
                    f"the worker {output.worker} drew {tar.name} with mask engine version {output.render_version}, "
                    f"and this build draws version {engine_version(config)}: install the same m2u on every node"
                )
            try:
                stats = commit_shard(out_dir, output, planned[shard_id])
            except OSError as exc:
                raise BuildError(
                    f"cannot commit shard {tar}: {exc.strerror or exc}; rerun to resume"
                ) from exc
            progress.update(shard_id, planned[shard_id], stats["counts"])
    finally:
        progress.close()
    return progress.counts()


def url_partition_problem(url: str) -> str:
    """Why a partition run cannot build to a URL: partitions share one folder (its locks, commit markers and
    .m2u-written records); each URL build has its own local copy, and their uploads would overwrite each other's
    records at the URL."""
    return (
        f"--partition needs OUT to be a folder every partition writes into, not a URL ({url}): build to a URL in "
        "one run (--workers, or --distributor ray), or build partitions into a shared folder"
    )


def build_dataset(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: BuildConfig = BuildConfig(),
    distributor: Distributor | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> BuildResult:
    """Build (or resume, or finalise) the dataset in ``out_dir`` from ``inputs`` (folders, globs, images, list
    files); see the module docstring. Raises BuildError (or BuildLockedError) with a message for the user."""
    if is_url(out_dir):
        # A URL (s3://...) is built in a local cache and uploaded, as m2u-make-dataset -o URL does (its lease and
        # upload record); taken as a path it made a local folder named "s3:" and uploaded nothing.
        if config.partition is not None:
            raise BuildError(url_partition_problem(os.fspath(out_dir)))
        return build_at_url(
            os.fspath(out_dir), lambda local: build_dataset(inputs, local, config, distributor, exclude)
        )
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    inputs = input_list(inputs)  # one path is one input, not its characters
    # Fail early, before touching OUT, on a missing engine or detector or on bad mask options.
    make_masker(config)
    make_detector(config)
    distributor = distributor or make_distributor(config)
    out = Path(local_location(out_dir))
    # Planned before OUT is created: a refused input (none found, identities missing) leaves no empty folder.
    # Discovery passes over OUT whether or not it exists yet, so a run writing there meanwhile changes nothing.
    plan = plan_build(inputs, config, out, exclude)
    # A file in the way, a read-only disk: one sentence, not an errno; an m2u-pipeline run folder (or one inside it).
    problem = output_location_problem(out) or whole_folder_problem(out, BUILD_TOOL)
    if problem:
        raise BuildError(problem)
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out, config.partition) as fds:
        resumed = _prepare_out_dir(
            out, config, plan.fingerprint(config), [item.source for item in plan.items]
        )
        todo, damaged = _shards_to_build(out, plan.tasks_of(config.partition), config)
        if config.finalize and todo:
            raise BuildError(
                f"`finalize`: {len(todo)} shard(s) are not committed yet ({', '.join(t.relpath for t in todo[:5])}); "
                "run their partitions again, or run without `finalize` to build them here"
            )
        planned_at = time.perf_counter()
        try:
            built = _run_tasks(out, config, distributor, todo, fds)
        except BaseException:
            # Stopped (SIGTERM, Ctrl-C, a full disk): the pool's workers are gone, so their unfinished shards'
            # temporary files are removed now; committed shards stay for the rerun to resume from.
            remove_stray_temp_files(out, {Path(t.relpath).name for t in todo})
            raise
        processed_at = time.perf_counter()
        remove_stray_temp_files(out, {Path(t.relpath).name for t in todo})  # left by killed attempts
        timings = _timings(started, planned_at, processed_at, cpu_started, todo, config)
        stats = _partition_stats(plan, config, todo, damaged, built, timings, resumed)
        if config.partition is None:
            rows = write_manifests(out, plan.tasks).rows
            stats = _stats(plan, config, inputs, rows, stats, started)
            write_stats(out, stats)
    return BuildResult(out_dir=out, stats=stats, skipped=plan.skipped)


def _cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _timings(
    started: float,
    planned_at: float,
    processed_at: float,
    cpu_started: float,
    todo: Sequence[ShardTask],
    config,
) -> dict[str, Any]:
    pairs = sum(len(t.samples) for t in todo)
    process_s = max(processed_at - planned_at, 1e-9)
    # CPU seconds of this process and its workers (reaped by now: their time is in RUSAGE_CHILDREN); unlike wall
    # time, barely affected by other load. Ray's workers are not this process's children: not counted.
    cpu = None if config.distributor == "ray" else _cpu_seconds() - cpu_started
    return {
        "plan_s": round(planned_at - started, 3),
        "process_s": round(processed_at - planned_at, 3),
        "pairs_per_s": round(pairs / process_s, 2),
        "cpu_s": None if cpu is None else round(cpu, 2),
        "pairs_per_cpu_s": None if cpu is None else round(pairs / max(cpu, 1e-9), 2),
    }


def _partition_stats(
    plan: BuildPlan,
    config: BuildConfig,
    todo: Sequence[ShardTask],
    damaged: int,
    built: dict[str, int],
    timings: dict[str, Any],
    resumed: bool,
) -> dict[str, Any]:
    """What this run did (all of a partition run's result: it writes no dataset-level file)."""
    mine = plan.tasks_of(config.partition)
    return {
        "partition": None if config.partition is None else f"{config.partition[0]}/{config.partition[1]}",
        "distributor": config.distributor,
        "shards_in_scope": len(mine),
        "shards_built": len(todo),
        "shards_kept": len(mine) - len(todo),
        "shards_rebuilt_damaged": damaged,
        "built_by_status": built,
        "processed_this_run": sum(len(t.samples) for t in todo),
        "resumed": resumed,
        "workers": config.workers,
        "timings": timings,
    }


def _stats(
    plan: BuildPlan,
    config: BuildConfig,
    inputs: Sequence[str | os.PathLike[str]],
    rows: list[dict[str, Any]],
    run: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    shards = {split: sum(1 for t in plan.tasks if t.split == split) for split in SPLITS}
    return {
        **run,
        "generator": "m2u.datasets.build",
        "counts": count_rows(rows),
        "inputs": len(plan.items),
        # What the folder scans did not read (no image suffix, hidden, ...), as the run said it; null: nothing.
        "passed_over": plan.skipped or None,
        "planned_samples": len(plan.samples),
        "shards": shards,
        "timings": {**run["timings"], "total_s": round(time.perf_counter() - started, 3)},
        "arguments": {
            **config.output_arguments(),
            "workers": config.workers,
            "inputs": [os.fspath(i) for i in inputs],
        },
        "versions": library_versions(),
        "render_version": engine_version(config),  # the mask engine that drew the pairs (None: synthetic)
    }
