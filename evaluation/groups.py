"""Metrics per mask type, colour and pattern: each evaluated sample's mask from its per-sample JSON.

The loader yields each sample's `key`; the shards' `<key>.json` members (m2u.datasets.writer.MASK_META_SCHEMA)
say which mask it wears. Grouping the per-image values by those fields shows which masks the model handles badly.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from m2u.masking.appearance import pattern_family

__all__ = ["GROUP_FIELDS", "GROUP_METRICS", "group_means", "sample_mask_attributes"]

GROUP_FIELDS = ("type", "color", "pattern")
GROUP_METRICS = ("psnr", "ssim", "psnr_masked", "ssim_masked")
NONE_LABEL = "none"  # a mask without a colour or pattern (the JSON's "")


def sample_mask_attributes(data: str | Path, split: str, keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """{key: {"type", "color", "pattern"}} for the wanted keys, read from the split's shards of a dataset
    folder. Empty for sources that are not a local dataset folder (a glob or URL): the table is then left out."""
    from m2u.datasets.layout import split_shards

    wanted = set(keys)
    folder = Path(data)
    if not folder.is_dir():
        return {}
    found: dict[str, dict[str, str]] = {}
    for shard in split_shards(folder, split):
        with tarfile.open(shard) as tar:
            for member in tar:
                name = Path(member.name).name
                key, _, field = name.partition(".")
                if field != "json" or key not in wanted:
                    continue
                handle = tar.extractfile(member)
                mask = json.loads(handle.read()).get("mask", {}) if handle else {}
                found[key] = {f: str(mask.get(f) or NONE_LABEL) for f in GROUP_FIELDS}
                # Each face's print has a name of its own (its seed): they are one group.
                found[key]["pattern"] = pattern_family(found[key]["pattern"])
    return found


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def group_means(
    keys: Sequence[str],
    per_image: Mapping[str, Sequence[float]],
    attributes: Mapping[str, Mapping[str, str]],
    metrics: Sequence[str] = GROUP_METRICS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{field: {value: {"n": count, metric: mean of per-image values}}} for each of GROUP_FIELDS, groups sorted
    by name; samples without attributes are counted under "unknown". PSNR is the mean of per-image PSNR, as in
    the main table."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for field in GROUP_FIELDS:
        members: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            value = attributes.get(key, {}).get(field, "unknown")
            members.setdefault(value, []).append(index)
        table = {}
        for value in sorted(members):
            indices = members[value]
            row: dict[str, Any] = {"n": len(indices)}
            for metric in metrics:
                if metric in per_image:
                    row[metric] = _mean([float(per_image[metric][i]) for i in indices])
            table[value] = row
        out[field] = table
    return out
