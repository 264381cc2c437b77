"""Building a paired dataset: detect → align → mask → encode, in a worker pool, with resume and a lock.

Per input: its bytes (read only once the open file is known to be a regular file), their SHA-256,
``m2u.masking.imageio.decode_image``, ``FaceDetector.detect(largest_only=True)`` (the
largest face is used; ``n_faces`` in the manifest counts the faces of the detection pass that found it, a cheap
reduced-scale pass first), ``align_face`` to ``size``×``size``, then for each of the K variants ``apply_mask``
on the *aligned crop* with the sample's own seed (from the global seed and the key). The stored mask is the
masking engine's mask united with every pixel the engine changed, so outside the mask the masked and unmasked
images are the same pixels by construction (byte-exact after a lossless format; within JPEG tolerance with ``--image-format jpg``).

Work and writing: workers process inputs in plan order (``imap_unordered``, small chunks, so the pool stays
balanced to the last input); the main process collects results per shard and writes a shard as soon as all of its
planned samples are back: the tar goes to a temporary name and is renamed, then the shard's manifest rows are
written to ``OUT/.m2u-build/<split>-NNNNNN.parquet`` — that file is the shard's commit marker. A rerun with the
same arguments skips committed shards and deletes stray temporary files, so an interrupted run plus a rerun gives
byte-for-byte the result of one uninterrupted run. ``OUT/.m2u-build.lock`` (an flock, released by the kernel even
after SIGKILL) refuses a second concurrent run on the same OUT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2u.datasets.align import align_face
from m2u.datasets.codecs import DEFAULT_JPEG_QUALITY, ImageFormat
from m2u.datasets.layout import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SPLIT_FRACTIONS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    SPLITS,
    STATS_NAME,
    Status,
    check_image_size,
    manifest_table,
    shard_name,
    shard_relpath,
    write_manifest,
    write_parquet_atomic,
)
from m2u.datasets.plan import DEFAULT_SHARD_SIZE, InputItem, PlannedSample, plan_samples
from m2u.datasets.shards import ShardWriter, remove_stray_temp_files
from m2u.datasets.sources import discover_inputs, identity_pattern_regex
from m2u.datasets.splits import SplitBy, parse_fractions
from m2u.datasets.writer import count_rows, library_versions, sample_members, sample_metadata, write_stats
from m2u.datasets.writer import manifest_row as _row
from m2u.masking.fileio import atomic_write_text
from m2u.masking.options import build_checked, check_types
from m2u.masking.runtime import output_fields, runtime_field

STATE_DIR = ".m2u-build"
LOCK_NAME = ".m2u-build.lock"
BUILD_STATE_NAME = "build.json"
_OWN_ENTRIES = frozenset({*SPLITS, MANIFEST_NAME, STATS_NAME, STATE_DIR, LOCK_NAME})
# Inputs per worker round trip: small enough to balance the tail, large enough to amortise IPC.
_TASK_CHUNK = 4
MASK_ENGINES = ("m2u", "synthetic")


class BuildError(RuntimeError):
    """A build that cannot start or finish; the message says what to do."""


class BuildLockedError(BuildError):
    pass


@dataclass(frozen=True)
class BuildConfig:
    """Arguments of ``m2u-make-dataset``; defaults from the paper where it gives them."""

    size: int = DEFAULT_IMAGE_SIZE
    split: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    seed: int = 0
    split_by: SplitBy = SplitBy.SAMPLE
    identity_file: str | None = None
    identity_pattern: str | None = None
    limit: int | None = None
    variants: int = 1
    # "m2u": the masking engine (m2u.masking.apply_mask); "synthetic": the procedural stand-in of
    # m2u.datasets.synthetic (no templates needed: CI and smoke runs).
    mask_engine: str = "m2u"
    # Keyword arguments of m2u.masking.MaskConfig (mask type, colour, pattern...). The paper's dataset mixes mask
    # types ("surgical, cloth, KN95 ... different shapes, colors"): a random type per sample by default.
    mask_options: dict[str, Any] = field(default_factory=lambda: {"mask_type": "random"})
    # Keyword arguments of m2u.masking.DetectorConfig (upsample, thresholds...).
    detector_options: dict[str, Any] = field(default_factory=dict)
    # Runtime settings (m2u.masking.runtime): how the build runs, never what it writes; no fingerprint holds them.
    workers: int = runtime_field(default_factory=lambda: os.cpu_count() or 1)
    shard_size: int = DEFAULT_SHARD_SIZE
    # JPEG by default: ~15x faster to encode and ~3x faster to decode than PNG at 256 px (benchmarks/loader.py);
    # the pair then differs outside the mask only in JPEG blocks that touch it. png/webp are lossless.
    image_format: ImageFormat = ImageFormat.JPG
    quality: int = DEFAULT_JPEG_QUALITY
    overwrite: bool = runtime_field(default=False)
    progress: bool = runtime_field(default=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", parse_fractions(self.split))
        object.__setattr__(self, "split_by", SplitBy(self.split_by))
        object.__setattr__(self, "image_format", ImageFormat(self.image_format))
        check_types(self)
        check_image_size(self.size, "--size")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be within 1..100, got {self.quality}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.identity_pattern is not None:
            identity_pattern_regex(self.identity_pattern)
        # Checked here, before any work: a bad detector option used to fail in every worker's start-up, which a
        # pool answers by starting another worker, forever.
        from m2u.masking.detect import DetectorConfig

        build_checked(DetectorConfig, self.detector_options, "--detector-option")
        if self.variants < 1:
            raise ValueError(f"--variants must be >= 1, got {self.variants}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.mask_engine not in MASK_ENGINES:
            raise ValueError(f"unknown mask engine {self.mask_engine!r}; choose one of {MASK_ENGINES}")

    def output_arguments(self) -> dict[str, Any]:
        """The arguments that decide the output bytes (the runtime fields, workers and progress, do not)."""
        out = {}
        for f in output_fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if hasattr(value, "value") else value
        out["split"] = list(self.split)
        return out


# A masker maps (aligned image, Face in crop coordinates, seed) to (masked image, mask 0/255, JSON-able meta).
Masker = Callable[[np.ndarray, Any, int], tuple[np.ndarray, np.ndarray, dict[str, Any]]]


def make_masker(config: BuildConfig) -> Masker:
    """The masker ``config.mask_engine`` names, configured with ``config.mask_options``."""
    if config.mask_engine == "synthetic":
        from m2u.datasets.synthetic import synthetic_masker

        if config.mask_options not in ({}, BuildConfig().mask_options):
            raise BuildError("the synthetic mask engine takes no mask options")
        return synthetic_masker
    mask_options = config.mask_options
    try:
        from m2u.masking.render import MaskConfig, apply_mask
    except ImportError as exc:
        raise BuildError(f"the masking engine is not available (m2u.masking.apply_mask): {exc}") from exc
    known = {f.name for f in dataclasses.fields(MaskConfig)}
    unknown = sorted(set(mask_options) - known)
    if unknown:
        raise BuildError(f"unknown mask option(s) {unknown}; MaskConfig accepts {sorted(known)}")
    try:
        config = MaskConfig(**mask_options)
    except ValueError as exc:
        raise BuildError(f"mask options: {exc}") from None
    if len(config.expand()) > 1:
        raise BuildError(
            "mask type 'all' is several masks per face: use --variants K with --mask-type random"
        )

    def mask(image: np.ndarray, face: Any, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        result = apply_mask(image, face, config, seed)
        return result.image, result.mask, dict(result.meta)

    return mask


@dataclass
class _WorkerState:
    config: BuildConfig
    masker: Masker
    detector: Any


_STATE: _WorkerState | None = None


def _init_worker(config: BuildConfig, lock_fd: int | None) -> None:
    """Per process: load the detector models once; drop the inherited lock descriptor (only the parent holds it)."""
    global _STATE
    if lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)
    import cv2

    from m2u.masking import DetectorConfig, FaceDetector

    cv2.setNumThreads(1)
    detector = FaceDetector(DetectorConfig(**config.detector_options))
    _STATE = _WorkerState(config, make_masker(config), detector)


SampleResult = tuple[dict[str, Any], dict[str, bytes] | None]


def process_input(samples: Sequence[PlannedSample]) -> list[SampleResult]:
    """All variants of one input → (manifest row, tar members or None) per planned sample. Never raises for a
    bad input: anything unforeseen becomes an error row naming the exception, and the build goes on."""
    try:
        return _process_input(samples)
    except Exception as exc:  # noqa: BLE001 - one exotic file must not stop a 12,000-photo build
        reason = f"unexpected {type(exc).__name__}: {exc}"
        return [(_row(s, reason=reason), None) for s in samples]


def _process_input(samples: Sequence[PlannedSample]) -> list[SampleResult]:
    from m2u.masking import Face, ImageReadError, MaskingError
    from m2u.masking.imageio import decode_image, read_input_bytes

    if _STATE is None:
        raise RuntimeError("process_input needs _init_worker first")
    config, masker = _STATE.config, _STATE.masker
    source = samples[0].source
    try:
        # Checked on the open file before any byte is read: a FIFO or a device (/dev/zero) is an error row.
        data = read_input_bytes(source)
    except ImageReadError as exc:
        return [(_row(s, reason=exc.reason), None) for s in samples]
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, source)
    except ImageReadError as exc:
        return [(_row(s, source_sha256=digest, reason=exc.reason), None) for s in samples]
    height, width = image.shape[:2]
    common = {"source_sha256": digest, "width": width, "height": height}
    try:
        faces = _STATE.detector.detect(image, largest_only=True)
    except Exception as exc:  # noqa: BLE001 - one bad photo must not stop a 12,000-photo build
        return [(_row(s, **common, reason=f"detection failed: {exc}"), None) for s in samples]
    if not faces:
        return [
            (_row(s, **common, status=Status.NO_FACE.value, reason="no face found"), None) for s in samples
        ]
    face = faces[0]  # largest
    common["n_faces"] = len(faces)
    if face.problem:  # found, but the masking cannot be placed right on it (e.g. upside down): recorded
        return [(_row(s, **common, reason=f"masking failed: {face.problem}"), None) for s in samples]
    try:
        aligned = align_face(image, face.landmarks, config.size)
        crop_face = Face.from_landmarks(aligned.landmarks, score=face.score)
    except (ValueError, RuntimeError) as exc:
        return [(_row(s, **common, reason=f"alignment failed: {exc}"), None) for s in samples]

    results: list[SampleResult] = []
    for planned in samples:
        try:
            masked, mask, mask_meta = masker(aligned.image, crop_face, planned.seed)
        except Exception as exc:  # noqa: BLE001 - MaskingError and friends: recorded per variant
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            status = Status.REFUSED if isinstance(exc, MaskingError) else Status.ERROR
            results.append(
                (_row(planned, **common, status=status.value, reason=f"masking failed: {reason}"), None)
            )
            continue
        # Every changed pixel is part of the mask; outside it the pair is identical by construction.
        covered = (mask > 0) | (masked != aligned.image).any(axis=-1)
        mask = np.where(covered, 255, 0).astype(np.uint8)
        mask_type = str(mask_meta.get("type", ""))
        try:
            meta = sample_metadata(planned, config.size, aligned.landmarks, aligned.matrix, mask_meta)
            members = sample_members(
                masked=masked,
                unmasked=aligned.image,
                mask=mask,
                meta=meta,
                image_format=config.image_format,
                quality=config.quality,
            )
        except Exception as exc:  # noqa: BLE001 - one variant that cannot be encoded is that variant's row
            results.append(
                (_row(planned, **common, reason=f"encoding failed: {type(exc).__name__}: {exc}"), None)
            )
            continue
        shard = shard_relpath(planned.split, planned.shard_index)
        row = _row(planned, **common, status=Status.OK.value, mask_type=mask_type, shard=shard)
        results.append((row, members))
    return results


def _cpu_seconds() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[int]:
    """Hold an exclusive flock on OUT/.m2u-build.lock for the duration of a build."""
    path = out_dir / LOCK_NAME
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            raise BuildLockedError(
                f"another m2u-make-dataset run is writing {out_dir}{holder}; wait for it to finish or use another -o"
            ) from None
        locked = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        # A run refused before it wrote anything (e.g. OUT holds other files) leaves no lock file behind.
        if locked and not existed and not _state_dir(out_dir).exists():
            path.unlink(missing_ok=True)
        os.close(fd)


def _state_dir(out_dir: Path) -> Path:
    return out_dir / STATE_DIR


def _shard_rows_path(out_dir: Path, split: str, index: int) -> Path:
    return _state_dir(out_dir) / shard_name(split, index).replace(".tar", ".parquet")


def _plan_fingerprint(config: BuildConfig, plan: Sequence[PlannedSample]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for s in plan:
        digest.update(f"{s.key}\x1f{s.source}\x1f{s.identity}\x1f{s.split}\x1f{s.shard_index}\n".encode())
    return {"arguments": config.output_arguments(), "plan_sha256": digest.hexdigest(), "samples": len(plan)}


def _clear_outputs(out_dir: Path) -> None:
    for name in (*SPLITS, MANIFEST_NAME, STATS_NAME, STATE_DIR):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _prepare_out_dir(out_dir: Path, config: BuildConfig, fingerprint: dict[str, Any]) -> bool:
    """Check OUT against this build; returns True when an earlier run with the same arguments is resumed."""
    state_file = _state_dir(out_dir) / BUILD_STATE_NAME
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OWN_ENTRIES)
    if foreign and not state_file.exists():
        raise BuildError(
            f"{out_dir} already holds other files ({', '.join(foreign[:5])}); choose an empty or new -o"
        )
    previous = json.loads(state_file.read_text()) if state_file.exists() else None
    if previous is not None and previous != fingerprint and not any(_state_dir(out_dir).glob("*.parquet")):
        previous = None  # an earlier run that committed no shard (stopped or refused at once) binds nothing
    if config.overwrite:
        _clear_outputs(out_dir)
        previous = None
    elif previous is not None and previous != fingerprint:
        changed = sorted(
            k
            for k in set(previous["arguments"]) | set(fingerprint["arguments"])
            if previous["arguments"].get(k) != fingerprint["arguments"].get(k)
        )
        what = f"different arguments ({', '.join(changed)})" if changed else "a different set of inputs"
        raise BuildError(f"{out_dir} holds a build made with {what}; pass --overwrite to replace it")
    elif previous is None and any((out_dir / name).exists() for name in (*SPLITS, MANIFEST_NAME)):
        raise BuildError(f"{out_dir} holds a dataset without build state; pass --overwrite to replace it")
    _state_dir(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    removed = remove_stray_temp_files(out_dir)
    if removed and config.progress:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted run", file=sys.stderr)
    return previous is not None


def _write_shard(out_dir: Path, split: str, index: int, results: Sequence[SampleResult]) -> None:
    """Write one shard's tar (if it has any sample) and then its rows, the commit marker."""
    written = [(row, members) for row, members in results if members is not None]
    target = out_dir / split / shard_name(split, index)
    try:
        if written:
            with ShardWriter(target) as writer:
                for row, members in written:
                    writer.write(row["key"], members)
        table = manifest_table(row for row, _ in results)
        write_parquet_atomic(table, _shard_rows_path(out_dir, split, index))
    except OSError as exc:
        # A full disk or a quota: the shard is not committed (no marker), its temporary file is gone or is
        # deleted by the rerun, which then writes this shard again.
        raise BuildError(
            f"cannot write shard {target}: {exc.strerror or exc}; nothing partial was kept under a final "
            "name; free some space and rerun the same command to resume"
        ) from exc


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    stats: dict[str, Any]


def build_dataset(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: BuildConfig = BuildConfig(),
) -> BuildResult:
    """Build (or resume) the dataset in ``out_dir`` from ``inputs`` (folders, globs, images, list files);
    see the module docstring. Raises BuildError (or BuildLockedError) with a message for the user."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    make_masker(config)  # fail early, before touching OUT, on a missing engine or bad mask options
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out) as lock_fd:
        items: list[InputItem] = discover_inputs(
            inputs,
            identity_file=config.identity_file,
            identity_pattern=config.identity_pattern,
            limit=config.limit,
            exclude=[out],  # a dataset written inside an input folder is never read back as input
        )
        plan = plan_samples(
            items,
            seed=config.seed,
            fractions=config.split,
            split_by=config.split_by,
            variants=config.variants,
            shard_size=config.shard_size,
        )
        fingerprint = _plan_fingerprint(config, plan)
        resumed = _prepare_out_dir(out, config, fingerprint)
        planned_at = time.perf_counter()

        expected: dict[tuple[str, int], int] = {}
        for s in plan:
            expected[s.shard_id] = expected.get(s.shard_id, 0) + 1
        done = {sid for sid in expected if _shard_rows_path(out, *sid).is_file()}
        tasks: list[list[PlannedSample]] = []
        by_source: dict[str, list[PlannedSample]] = {}
        for s in plan:
            by_source.setdefault(s.source, []).append(s)
        for s in plan:  # tasks in plan order, one per input
            group = by_source.pop(s.source, None)
            if group is not None and any(p.shard_id not in done for p in group):
                tasks.append(group)
        todo_samples = sum(1 for s in plan if s.shard_id not in done)

        pending: dict[tuple[str, int], list[SampleResult]] = {sid: [] for sid in expected if sid not in done}
        order = {s.key: i for i, s in enumerate(plan)}
        by_key = {s.key: s for s in plan}
        status_counts = {st.value: 0 for st in Status}
        bar = tqdm(total=todo_samples, unit="pair", disable=not config.progress, desc="m2u-make-dataset")

        def collect(results: list[SampleResult]) -> None:
            for row, members in results:
                sid = by_key[row["key"]].shard_id
                if sid in done:
                    continue
                pending[sid].append((row, members))
                status_counts[row["status"]] += 1
                bar.update(1)
                if len(pending[sid]) == expected[sid]:
                    ordered = sorted(pending.pop(sid), key=lambda r: order[r[0]["key"]])
                    _write_shard(out, sid[0], sid[1], ordered)
                    done.add(sid)
            bar.set_postfix(status_counts, refresh=False)

        workers = min(config.workers, max(1, len(tasks)))
        try:
            if workers == 1:
                _init_worker(config, None)
                for task in tasks:
                    collect(process_input(task))
            else:
                from m2u.masking.parallel import worker_pool

                with worker_pool(workers, _init_worker, (config, lock_fd)) as pool:
                    for results in pool.imap_unordered(process_input, tasks, chunksize=_TASK_CHUNK):
                        collect(results)
        finally:
            bar.close()
        if pending:
            raise BuildError(f"internal error: {len(pending)} shard(s) incomplete after processing")
        processed_at = time.perf_counter()
        cpu_used = _cpu_seconds() - cpu_started  # workers are reaped by now: their time is in RUSAGE_CHILDREN

        tables = [
            pq.read_table(_shard_rows_path(out, *sid), schema=MANIFEST_SCHEMA) for sid in sorted(expected)
        ]
        rows = pa.concat_tables(tables).to_pylist() if tables else []
        write_manifest(out, rows)
        counts = count_rows(rows)
        total_s = time.perf_counter() - started
        stats = {
            "generator": "m2u.datasets.build",
            "counts": counts,
            "inputs": len(items),
            "planned_samples": len(plan),
            "shards": {split: sum(1 for (sp, _), n in expected.items() if sp == split) for split in SPLITS},
            "resumed": resumed,
            "processed_this_run": todo_samples,
            "workers": workers,
            "timings": {
                "plan_s": round(planned_at - started, 3),
                "process_s": round(processed_at - planned_at, 3),
                "total_s": round(total_s, 3),
                "pairs_per_s": round(todo_samples / max(processed_at - planned_at, 1e-9), 2),
                # CPU seconds of this process and its workers: unlike wall time, barely affected by other load.
                "cpu_s": round(cpu_used, 2),
                "pairs_per_cpu_s": round(todo_samples / max(cpu_used, 1e-9), 2),
            },
            "arguments": {
                **config.output_arguments(),
                "workers": config.workers,
                "inputs": [os.fspath(i) for i in inputs],
            },
            "versions": library_versions(),
        }
        write_stats(out, stats)
    return BuildResult(out_dir=out, stats=stats)
