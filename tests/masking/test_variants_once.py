"""`m2u-mask --mask-type all` reads and detects each photo once for every type (issue 28), and writes exactly what
one run per type writes."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from m2u.masking import MASK_TYPES, MaskConfig
from m2u.masking.batch import BatchConfig, mask_files

pytestmark = pytest.mark.shared


def _files(out):
    # The writer's record (.m2u-written) lists names in the order they were written: not an output.
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".m2u-written"
    }


def test_all_types_detect_once_and_match_one_run_per_type(celeba_first, tmp_path, detect_many_groups):
    photos = celeba_first(3)
    src = tmp_path / "in"
    src.mkdir()
    for photo in photos:
        (src / photo.name).symlink_to(photo)
    config = BatchConfig(mask=MaskConfig(mask_type="all"), workers=0, progress=False, seed=5)
    result = mask_files([str(src)], tmp_path / "all", config)
    assert sum(detect_many_groups) == len(photos)  # once per photo, not once per photo and type
    assert [r["mask_type"] for r in result.rows] == [t for t in MASK_TYPES for _ in photos]
    together = _files(tmp_path / "all")
    separately = {}
    for mask_type in MASK_TYPES:
        single = dataclasses.replace(config, mask=MaskConfig(mask_type=mask_type))
        mask_files([str(src)], tmp_path / mask_type, single)
        for name, data in _files(tmp_path / mask_type).items():
            if name != "report.csv":
                separately[name] = data
    report = together.pop("report.csv")
    assert together == separately  # byte-identical outputs
    with open(tmp_path / "all" / "report.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(photos) * len(MASK_TYPES)
    assert report
