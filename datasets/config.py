"""``BuildConfig``, the arguments of ``m2u-make-dataset`` (the CLI takes its defaults from here), and its errors."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from m2u.core.checks import build_checked, check_types
from m2u.core.errors import SettingError
from m2u.core.guard import UserError
from m2u.core.runtime import output_fields, runtime_field
from m2u.datasets.codecs import DEFAULT_JPEG_QUALITY, ImageFormat
from m2u.datasets.layout import DEFAULT_IMAGE_SIZE, DEFAULT_SPLIT_FRACTIONS, check_image_size
from m2u.datasets.plan import DEFAULT_SHARD_SIZE
from m2u.datasets.sources import identity_pattern_regex
from m2u.datasets.splits import SplitBy, parse_fractions

MASK_ENGINES = ("m2u", "synthetic")
DISTRIBUTORS = ("multiprocessing", "ray")


class BuildError(UserError, RuntimeError):
    """A build that cannot start or finish; the message says what to do."""

    def with_path_said_as(self, path: str, said: str) -> BuildError:
        """The same error, of the same type, with `path` written `said` (a URL build's cache folder as its URL)."""
        return type(self)(str(self).replace(path, said))


class BuildWriteError(BuildError):
    """The build ran and could not write its output (a full disk, a quota): exit code 1, not a refusal."""


class BuildLockedError(BuildError):
    pass


class BuildClashError(BuildError):
    """OUT holds a build this one would not resume (`held`: what it holds, as a sentence); the message says to
    replace it with `overwrite`."""

    def __init__(self, held: str):
        super().__init__(f"{held}; use `overwrite` to replace it")
        self.held = held

    def with_path_said_as(self, path: str, said: str) -> BuildClashError:
        # From `held`: the whole message given to __init__ said the advice twice.
        return BuildClashError(self.held.replace(path, said))


def parse_partition(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"1/3"`` (or ``(1, 3)``) -> ``(1, 3)``: partition 1 of 3, numbered from 0."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise SettingError("partition", f"must look like I/N (e.g. 0/4), got {value!r}")
        value = (int(match.group(1)), int(match.group(2)))
    index, count = (int(v) for v in value)
    if count < 1 or not 0 <= index < count:
        raise SettingError("partition", f"{index}/{count}: I must be in 0..N-1 and N >= 1")
    return (index, count)


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
    # types ("surgical, cloth, KN95 ... different shapes, colors"): a random type per sample by default, in the real
    # colour mix (dark masks first) with an occasional print and the real-mask finish (m2u.masking.realism).
    mask_options: dict[str, Any] = field(
        default_factory=lambda: {"mask_type": "random", "color": "random", "pattern": "random"}
    )
    # Keyword arguments of m2u.masking.DetectorConfig (upsample, thresholds...).
    detector_options: dict[str, Any] = field(default_factory=dict)
    # Processes on this machine (multiprocessing), or the CPUs of the local Ray instance (ray without an address).
    # Runtime settings (m2u.core.runtime) decide how and where the work runs, never the bytes written: no
    # fingerprint holds them.
    workers: int = runtime_field(default_factory=lambda: os.cpu_count() or 1)
    shard_size: int = DEFAULT_SHARD_SIZE
    # JPEG by default: ~15x faster to encode and ~3x faster to decode than PNG at 256 px (benchmarks/loader.py);
    # the pair then differs outside the mask only in JPEG blocks that touch it. png/webp are lossless.
    image_format: ImageFormat = ImageFormat.JPG
    quality: int = DEFAULT_JPEG_QUALITY
    overwrite: bool = runtime_field(default=False)
    progress: bool = runtime_field(default=True)
    # Where the shard tasks run: "multiprocessing" (this machine) or "ray" (a Ray cluster, see ray_address).
    distributor: str = runtime_field(default="multiprocessing")
    # With distributor="ray": "auto" attaches to the running cluster (`ray start`), "ray://host:10001" to a
    # remote one; None starts a local Ray instance with `workers` CPUs.
    ray_address: str | None = runtime_field(default=None)
    # (I, N): build only partition I of N (shard k belongs to partition k mod N) into a shared OUT.
    partition: tuple[int, int] | None = runtime_field(default=None)
    # Only write manifest.parquet, the split manifests and stats.json; refuse if a shard is not committed yet.
    finalize: bool = runtime_field(default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", parse_fractions(self.split))
        object.__setattr__(self, "split_by", SplitBy(self.split_by))
        object.__setattr__(self, "image_format", ImageFormat(self.image_format))
        object.__setattr__(self, "partition", parse_partition(self.partition))
        check_types(self)
        check_image_size(self.size, "size")
        if not 1 <= self.quality <= 100:
            raise SettingError("quality", f"must be within 1..100, got {self.quality}")
        if self.limit is not None and self.limit < 1:
            raise SettingError("limit", f"must be >= 1, got {self.limit}")
        if self.identity_pattern is not None:
            identity_pattern_regex(self.identity_pattern)
        # Checked here, before any work: a bad detector option used to fail in every worker's start-up, which a
        # pool answers by starting another worker, forever.
        from m2u.masking.detect import DetectorConfig

        build_checked(DetectorConfig, self.detector_options, "detector_options")
        if self.variants < 1:
            raise SettingError("variants", f"must be >= 1, got {self.variants}")
        if self.workers < 1:
            raise SettingError("workers", f"must be >= 1, got {self.workers}")
        if self.shard_size < 1:
            raise SettingError("shard_size", f"must be >= 1, got {self.shard_size}")
        if self.mask_engine not in MASK_ENGINES:
            raise SettingError(
                "mask_engine", f"unknown mask engine {self.mask_engine!r}; choose one of {MASK_ENGINES}"
            )
        if self.distributor not in DISTRIBUTORS:
            raise SettingError(
                "distributor", f"must be one of {', '.join(DISTRIBUTORS)}, got {self.distributor!r}"
            )
        if self.ray_address is not None and self.distributor != "ray":
            raise SettingError("ray_address", "needs `distributor` ray")
        if self.partition is not None and (self.overwrite or self.finalize):
            raise SettingError(
                "partition",
                "cannot be combined with `overwrite` or `finalize`: partitions share OUT; "
                "finalize with a run without `partition`",
            )
        if self.finalize and self.overwrite:
            # `overwrite` removes the build first: every partition's committed shards, which `finalize` is to
            # record, were deleted before the refusal that nothing is committed.
            raise SettingError(
                "finalize",
                "cannot be combined with `overwrite`: `finalize` writes the manifests of the shards the "
                "partitions built, which `overwrite` would delete first; finalize without `overwrite`, or "
                "rebuild everything with `overwrite` alone",
            )

    def output_arguments(self) -> dict[str, Any]:
        """The arguments that decide the output bytes (the runtime fields: workers, distributor, partition... do
        not)."""
        out = {}
        for f in output_fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if hasattr(value, "value") else value
        out["split"] = list(self.split)
        return out
