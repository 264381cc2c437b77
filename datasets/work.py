"""The work of one shard task, wherever it runs (this process, a multiprocessing worker, a Ray worker).

Per input: the file's SHA-256, ``m2u.masking.read_image``, its faces found with the other inputs of its group
(``FaceDetector.detect_many(largest_only=True)``: the largest face is used; ``n_faces`` in the manifest counts the
faces of the detection pass that found it, a cheap reduced-scale pass first), ``align_face`` to ``size``×``size``,
then for each of the K variants ``apply_mask`` on the *aligned crop* with the sample's own seed (from the global
seed and the key). The stored mask is the masking engine's mask united with every pixel the engine changed, so
outside the mask the masked and unmasked images are the same pixels by construction (byte-exact after a lossless
format; within JPEG tolerance with ``--image-format jpg``).

``build_shard`` processes the planned samples of one shard in plan order and writes the shard's tar (temporary
name, fsync, rename): the bytes depend only on the plan, never on which process or machine ran the task or how
often it was attempted. It returns the shard's manifest rows; the driver commits them (``m2u.datasets.manifest``).
Any failure of one sample (unreadable, no face, a masking or encoding error, a key or member the tar refuses)
becomes that sample's row; only a failure to write the shard at all (a full disk) fails the task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2u.core.errors import SettingError
from m2u.datasets.align import AlignedFace, align_face, photo_outline
from m2u.datasets.config import BuildConfig, BuildError, BuildWriteError
from m2u.datasets.layout import MANIFEST_STATUSES, Status, shard_name, shard_relpath

# ShardTask and ShardOutput live with the plan (manifest and synthetic use them without the work itself).
from m2u.datasets.plan import PlannedSample, ShardOutput, ShardTask
from m2u.datasets.shards import ShardWriter
from m2u.datasets.writer import manifest_row as _row
from m2u.datasets.writer import sample_members, sample_metadata

# Test hook: with this variable naming a folder, the first attempt of every shard task that runs outside the
# driver process exits its worker process half-way through the shard (os._exit, as a killed worker would), leaving
# "<folder>/<split>-NNNNNN.killed"; retries then run normally. The driver reads it and passes it with the job.
FAULT_ENV = "M2U_TEST_KILL_FIRST_ATTEMPT_DIR"

# A masker maps (aligned image, Face in crop coordinates, seed) to (masked image, mask 0/255, JSON-able meta); a
# keyword `photo` may say where the photo lies in the crop (align.photo_outline: the rest is border fill).
Masker = Callable[..., tuple[np.ndarray, np.ndarray, dict[str, Any]]]
SampleResult = tuple[dict[str, Any], dict[str, bytes] | None]
# progress(samples done in this shard, counts per status so far)
Progress = Callable[[int, dict[str, int]], None]


@dataclass(frozen=True)
class BuildJob:
    """What every shard task of one build shares: the arguments, OUT (a path every worker can write) and the
    driver's pid (work in the driver itself is never fault-injected)."""

    config: BuildConfig
    out_dir: str
    driver_pid: int
    fault_dir: str | None = None


def engine_version(config: BuildConfig) -> int | None:
    """The render version of the masks this process draws for ``config`` (None for the synthetic engine)."""
    if config.mask_engine != "m2u":
        return None
    from m2u.masking.render import RENDER_VERSION

    return RENDER_VERSION


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
        mask_config = MaskConfig(**mask_options)
    except SettingError:
        raise  # names its own setting (`pattern`, `color`): every command offers it under that name
    except ValueError as exc:
        raise BuildError(f"mask options: {exc}") from None
    if len(mask_config.expand()) > 1:
        raise BuildError(
            "mask type 'all' is several masks per face: use `variants` K with `mask_type` random"
        )

    def mask(
        image: np.ndarray, face: Any, seed: int, photo: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        result = apply_mask(image, face, mask_config, seed, photo=photo)
        return result.image, result.mask, dict(result.meta)

    return mask


def pair_mask(masked: np.ndarray, unmasked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The stored mask (0/255) of a rendered pair: the engine's mask united with every pixel it changed, so
    outside the mask the pair is identical by construction (also used by the trainer's on-the-fly pairs)."""
    covered = (mask > 0) | (masked != unmasked).any(axis=-1)
    return np.where(covered, 255, 0).astype(np.uint8)


@dataclass
class _WorkerState:
    config: BuildConfig
    masker: Masker
    detector: Any


_STATE: _WorkerState | None = None


def init_worker(config: BuildConfig, inherited_fds: Sequence[int] = ()) -> None:
    """Per process: load the detector models once; drop inherited lock descriptors (only the driver holds them)."""
    global _STATE
    for fd in inherited_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    import cv2

    cv2.setNumThreads(1)
    _STATE = _WorkerState(config, make_masker(config), make_detector(config))


def make_detector(config: BuildConfig) -> Any:
    """The FaceDetector ``config.detector_options`` configure; one this install cannot run (BlazeFace's files
    missing) raises at once."""
    from m2u.masking import DetectorConfig, FaceDetector
    from m2u.masking.blazeface import BlazeFaceUnavailable, check_available

    detector = DetectorConfig(**config.detector_options)
    if detector.needs_blazeface:
        try:
            check_available()
        except BlazeFaceUnavailable as exc:  # how to do without, in the build's own setting (the CLI's flag)
            raise BlazeFaceUnavailable(
                f"{exc}; or give `detector_options` blazeface_first=false (dlib's detectors alone)"
            ) from None
    return FaceDetector(detector)


def ensure_worker(config: BuildConfig) -> None:
    """Initialise this process for ``config`` unless it already is (Ray reuses worker processes)."""
    if _STATE is None or _STATE.config != config:
        init_worker(config)


def process_input(samples: Sequence[PlannedSample]) -> list[SampleResult]:
    """All variants of one input → (manifest row, tar members or None) per planned sample. Never raises for a
    bad input: anything unforeseen becomes an error row naming the exception, and the build goes on."""
    return next(iter_inputs([samples]))


# Inputs whose faces are found together (iter_inputs): at most GROUP_INPUTS, and beyond the first, GROUP_PIXELS
# decoded pixels (~24 MB of RGB).
GROUP_INPUTS = 64
GROUP_PIXELS = 8_000_000


def iter_inputs(inputs: Sequence[Sequence[PlannedSample]]) -> Iterator[list[SampleResult]]:
    """`process_input` of each input, in order: the inputs are read and decoded a group at a time, the group's
    faces found together (FaceDetector.detect_many: each model's work in one run, which keeps dlib's predictor in
    the CPU caches), then each input aligned, masked and yielded. The results are those of `process_input` on
    each input alone."""
    if _STATE is None:
        raise RuntimeError("iter_inputs needs init_worker first")
    group: list[tuple[Sequence[PlannedSample], Any]] = []
    pixels = 0
    for samples in inputs:
        read = _guarded(samples, _read_input, samples)
        group.append((samples, read))
        if not isinstance(read, list):
            pixels += read[0].shape[0] * read[0].shape[1]
        if pixels >= GROUP_PIXELS or len(group) >= GROUP_INPUTS:
            yield from _finish_group(group)
            group, pixels = [], 0
    yield from _finish_group(group)


def _finish_group(group: list[tuple[Sequence[PlannedSample], Any]]) -> Iterator[list[SampleResult]]:
    """The results of a group of read inputs (finished results, or (image, common fields)), in order."""
    decoded = [read for _, read in group if not isinstance(read, list)]
    found = iter(_faces_of([image for image, _ in decoded]))
    for samples, read in group:
        if isinstance(read, list):
            yield read
        else:
            yield _guarded(samples, _from_faces, samples, *read, next(found))


def _guarded(samples: Sequence[PlannedSample], work: Callable[..., Any], *args: Any) -> Any:
    """`work(*args)`, or an error row per sample naming the exception: one exotic file must not stop a
    12,000-photo build."""
    try:
        return work(*args)
    except Exception as exc:  # noqa: BLE001
        reason = f"unexpected {type(exc).__name__}: {exc}"
        return [(_row(s, reason=reason), None) for s in samples]


def _read_input(samples: Sequence[PlannedSample]) -> tuple[np.ndarray, dict[str, Any]] | list[SampleResult]:
    """(image, the rows' common fields) of a readable input, else its finished results."""
    from m2u.core.imageio import decode_image, read_input_bytes
    from m2u.masking import ImageReadError

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
    return image, {"source_sha256": digest, "width": width, "height": height}


def _faces_of(images: list[np.ndarray]) -> list[list[Any] | Exception]:
    """The faces of each image (largest first), or the exception its detection raised."""
    assert _STATE is not None
    if not images:
        return []
    try:
        return list(_STATE.detector.detect_many(images, largest_only=True))
    except Exception:  # noqa: BLE001 - found again one by one, so that the failure stays with its photo
        pass
    found: list[list[Any] | Exception] = []
    for image in images:
        try:
            found.append(_STATE.detector.detect(image, largest_only=True))
        except Exception as exc:  # noqa: BLE001 - one bad photo must not stop a 12,000-photo build
            found.append(exc)
    return found


def _from_faces(
    samples: Sequence[PlannedSample], image: np.ndarray, common: dict[str, Any], faces: list[Any] | Exception
) -> list[SampleResult]:
    """The results of one decoded input from its detection."""
    from m2u.masking import Face
    from m2u.masking.detect import no_face_reason, retry_note

    assert _STATE is not None
    if isinstance(faces, Exception):
        return [(_row(s, **common, reason=f"detection failed: {faces}"), None) for s in samples]
    if not faces:
        no_face = {
            "status": Status.NO_FACE.value,
            "reason": no_face_reason(_STATE.detector.config),
            "n_faces": 0,
        }
        return [(_row(s, **common, **no_face), None) for s in samples]
    face = faces[0]  # largest
    common = {**common, "n_faces": len(faces)}
    if face.problem:  # found, but the masking cannot be placed right on it (e.g. upside down): recorded
        refused = {"status": Status.REFUSED.value, "reason": f"masking failed: {face.problem}"}
        return [(_row(s, **common, **refused), None) for s in samples]
    try:
        aligned = align_face(image, face.landmarks, _STATE.config.size)
        crop_face = Face.from_landmarks(aligned.landmarks, score=face.score)
    except (ValueError, RuntimeError) as exc:
        return [(_row(s, **common, reason=f"alignment failed: {exc}"), None) for s in samples]
    # The pair is built, and its row says how the face was found: the retry's false positives (a dog's "face")
    # were ok rows no one could find again (--min-score 0 leaves such faces out).
    note = f"{retry_note(face.score)}: it may be no face (--min-score 0 leaves it out)" if face.retry else ""
    photo = photo_outline(aligned.matrix, image.shape)
    return [_mask_variant(_STATE, planned, aligned, crop_face, common, note, photo) for planned in samples]


def _mask_variant(
    state: _WorkerState,
    planned: PlannedSample,
    aligned: AlignedFace,
    crop_face: Any,
    common: dict[str, Any],
    note: str = "",
    photo: np.ndarray | None = None,
) -> SampleResult:
    """One planned variant of an aligned face: masked and encoded into its tar members, or its error row. `note`:
    what the row's reason says of the face whatever becomes of it (how it was found); `photo`: where the photo lies
    in the crop (align.photo_outline; the rest is border fill, on which the mask's body may not lie)."""
    from m2u.masking import MaskingError

    def said(reason: str | None) -> str | None:
        return "; ".join(filter(None, [reason, note])) or None

    config, masker = state.config, state.masker
    try:
        masked, mask, mask_meta = masker(aligned.image, crop_face, planned.seed, photo=photo)
    except Exception as exc:  # noqa: BLE001 - MaskingError and friends: recorded per variant
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        status = Status.REFUSED if isinstance(exc, MaskingError) else Status.ERROR
        return (_row(planned, **common, status=status.value, reason=said(f"masking failed: {reason}")), None)
    mask = pair_mask(masked, aligned.image, mask)
    mask_type = str(mask_meta.get("type", "")) or None
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
        return (_row(planned, **common, reason=said(f"encoding failed: {type(exc).__name__}: {exc}")), None)
    shard = shard_relpath(planned.split, planned.shard_index)
    row = _row(planned, **common, status=Status.OK.value, mask_type=mask_type, shard=shard, reason=said(None))
    return (row, members)


def _inputs_of(task: ShardTask) -> list[list[PlannedSample]]:
    """The task's samples grouped per input (an input's variants are processed together), in plan order."""
    groups: dict[str, list[PlannedSample]] = {}
    for sample in task.samples:
        groups.setdefault(sample.source, []).append(sample)
    return list(groups.values())


def _maybe_die(job: BuildJob, task: ShardTask) -> None:
    if job.fault_dir is None or os.getpid() == job.driver_pid:
        return
    marker = Path(job.fault_dir) / f"{shard_name(task.split, task.index).removesuffix('.tar')}.killed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # a retry: run normally
    os.close(fd)
    os._exit(70)


def build_shard(
    job: BuildJob, task: ShardTask, progress: Progress | None = None, part: tuple[int, int] = (0, 1)
) -> ShardOutput:
    """Process one shard's samples and write its tar as they come (plan order); see the module docstring. With
    ``part=(i, n)``, only the i-th of n runs of consecutive inputs, into a part file (``ShardOutput.part_file``)."""
    ensure_worker(job.config)
    started = time.perf_counter()
    target = Path(job.out_dir) / task.split / shard_name(task.split, task.index)
    rows: list[dict[str, Any]] = []
    counts = {status.value: 0 for status in MANIFEST_STATUSES}
    groups = _inputs_of(task)
    index, parts = part
    groups = groups[index * len(groups) // parts : (index + 1) * len(groups) // parts]
    try:
        with ShardWriter(target, part=parts > 1) as writer:
            for number, results in enumerate(iter_inputs(groups)):
                if number == len(groups) // 2:
                    _maybe_die(job, task)
                for row, members in results:
                    rows.append(_written(writer, row, members))
                    counts[rows[-1]["status"]] += 1
                if progress is not None:
                    progress(len(rows), dict(counts))
            closing = time.perf_counter()
            if writer.count == 0:
                writer.discard()  # no sample to write: no tar at all
    except OSError as exc:
        # A full disk or a quota: the shard is not committed and its temporary file is removed (or by the rerun,
        # which writes this shard again).
        raise BuildWriteError(
            f"cannot write shard {target}: {exc.strerror or exc}; nothing partial was kept under a final "
            "name; free some space and rerun the same command to resume"
        ) from exc
    import socket

    written = writer.count > 0
    return ShardOutput(
        render_version=engine_version(job.config),
        split=task.split,
        index=task.index,
        rows=rows,
        bytes=writer.size if written and parts == 1 else None,
        sha256=writer.sha256 if written and parts == 1 else None,
        process_s=round(closing - started, 3),
        write_s=round(time.perf_counter() - closing, 3),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        part=index,
        parts=parts,
        part_file=str(writer.part_path) if written and parts > 1 else None,
    )


def _written(writer: ShardWriter, row: dict[str, Any], members: dict[str, bytes] | None) -> dict[str, Any]:
    """Add the sample to the tar when it has members; one the tar refuses becomes an error row."""
    if members is None:
        return row
    try:
        writer.write(row["key"], members)
    except ValueError as exc:
        return {**row, "status": Status.ERROR.value, "shard": None, "reason": str(exc)}
    return row
