"""Stage bookkeeping: a stage is skipped when its recorded fingerprint matches, re-run (and resumed) otherwise.

A stage's fingerprint is the SHA-256 of its configuration (canonical JSON) together with the fingerprints of the
stages it reads from, so changing one option re-runs that stage and every stage after it, and nothing before it.
Only what changes a stage's output is hashed: fields declared with ``m2u.core.runtime.runtime_field`` (worker
counts, progress bars, log cadence) are left out, so a finished run moved to another machine, or rerun with
``--set gan.log_every=10``, is still finished.

Finished or partial work is never deleted: when a stage has to run again under a new fingerprint, its folder and
record are moved to ``RUN/stale/<stage>-<time>/`` (the log says where), for the user to delete when sure. A stage
whose fingerprint matches a finished output kept there (its record and its output's digest intact) takes that output
back instead of running: a stage that failed after its earlier output was moved aside (a model file not found when
training started), or a setting tried and put back, never costs the finished work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2u.core.fileio import atomic_write_text as _write_atomic
from m2u.core.runtime import output_fields

# Records live beside the stage folders (RUN/stages/<name>.json), not inside them: a stage's own tool may insist
# on an empty output folder. The .pending file is written when a stage starts: partial output left by a killed run
# is resumed only if it was made by the same configuration; otherwise it is moved aside before the stage starts
# again.
RECORD_SUFFIX = ".json"
PENDING_SUFFIX = ".pending"
STALE_DIR = "stale"


def _jsonable(value: Any, outputs_only: bool = False) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        chosen = output_fields(value) if outputs_only else dataclasses.fields(value)
        return {f.name: _jsonable(getattr(value, f.name), outputs_only) for f in chosen}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, outputs_only) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, outputs_only) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def canonical_json(value: Any, outputs_only: bool = False) -> str:
    """JSON with sorted keys and no whitespace: the same configuration always hashes the same. With
    `outputs_only`, dataclass fields marked as runtime settings are left out (see the module docstring)."""
    return json.dumps(_jsonable(value, outputs_only), sort_keys=True, separators=(",", ":"))


def fingerprint(config: Any, upstream: list[str]) -> str:
    """The stage's identity: what decides its output (runtime settings excluded) and its upstream stages."""
    digest = hashlib.sha256(canonical_json(config, outputs_only=True).encode())
    for parent in upstream:
        digest.update(parent.encode())
    return digest.hexdigest()


@dataclass
class StageOutcome:
    name: str
    fingerprint: str
    skipped: bool
    seconds: float
    result: dict
    # What the later stages are made from: the fingerprint, and the digest of the output the stage made (a stage
    # run again with the same configuration need not make the same bytes: a wall-clock budget, a GPU).
    chain: str = ""
    # Not run: its finished output of this configuration taken back from RUN/stale/ (the run folder changed).
    taken_back: bool = False


def chain_of(record: dict) -> str:
    """A stage record's link in the chain its later stages record as upstream (`StageOutcome.chain`); a record of
    an m2u that kept no output digest: its fingerprint alone, as that m2u's later stages recorded it."""
    digest = record.get("output_digest")
    return f"{record.get('fingerprint', '')}:{digest[:16]}" if digest else str(record.get("fingerprint", ""))


def read_record(record_path: Path) -> dict | None:
    try:
        return json.loads(record_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def move_aside(name: str, stage_dir: Path, records_dir: Path, paths: list[Path]) -> Path | None:
    """Move `paths` (the stage folder, its record) that exist into RUN/stale/<name>-<time>/; returns that folder,
    None when there was nothing to move. Never deletes anything."""
    present = [p for p in paths if p.exists() or p.is_symlink()]
    if not present:
        return None
    stale_root = records_dir.parent / STALE_DIR
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = stale_root / f"{name}-{stamp}", 1
    while target.exists():
        n += 1
        target = stale_root / f"{name}-{stamp}-{n}"
    target.mkdir(parents=True)
    for path in present:
        os.replace(path, target / path.name)
    return target


def find_stale(
    name: str, stage_dir: Path, records_dir: Path, key: str, output_problem: Callable[[dict, Path], str]
) -> tuple[Path, dict] | None:
    """The newest folder of RUN/stale/ holding a finished output of `name` made with the fingerprint `key` whose
    output is still the one its record describes (`output_problem(record, folder)` says nothing): (that folder, its
    record); None when there is none. Only a record holding its output's digest counts (one of an older m2u is
    trusted where it lies, not taken back from stale/)."""
    stale_root = records_dir.parent / STALE_DIR
    if not stale_root.is_dir():
        return None
    found = []
    for folder in stale_root.glob(f"{name}-*"):
        record = read_record(folder / f"{name}{RECORD_SUFFIX}")
        kept = folder / stage_dir.name
        if record is None or record.get("fingerprint") != key or not record.get("output_digest"):
            continue
        if kept.is_dir() and not kept.is_symlink():
            found.append((folder.stat().st_mtime, folder, record))
    for _, folder, record in sorted(found, key=lambda item: item[0], reverse=True):
        if not output_problem(record, folder / stage_dir.name):
            return folder, record
    return None


def _flattened(tree: Any, prefix: str = "") -> dict[str, Any]:
    if (
        not isinstance(tree, dict) or not tree
    ):  # an empty mapping is a value of its own ({} where options were)
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flattened(value, f"{prefix}{key}."))
    return flat


def describe_change(
    record: dict,
    config: Any,
    upstream: list[str],
    upstream_names: Sequence[str] = (),
    config_prefix: str = "",
    most: int = 3,
    upstream_detail: Callable[[int], str] | None = None,
) -> str:
    """What differs between a stage's `record` and the run about to replace it, in the words of `--set`: the
    options changed ("gan.lr 0.0002 -> 0.0001"), then the upstream stages whose output changed (`upstream_names`
    names `upstream`'s entries in order), each with what `upstream_detail(index)` says changed in it ("the face
    inputs changed: 1 photo added: b.jpg"); "" when neither can be told (a record of an older m2u)."""
    before = _flattened(record.get("config", {}))
    now = _flattened(json.loads(canonical_json(config, outputs_only=True)))
    every = _flattened(json.loads(canonical_json(config)))  # runtime settings too: the record holds them
    keys = [*now, *(key for key in before if key not in every)]  # an option gone counts as changed too
    changed = [key for key in keys if key not in before or key not in now or before[key] != now[key]]
    words = [
        f"{config_prefix}{key} {json.dumps(before.get(key, 'unset'))} -> {json.dumps(now.get(key, 'unset'))}"
        for key in changed[:most]
    ]
    if len(changed) > most:
        words.append(f"{len(changed) - most} more options")
    earlier = record.get("upstream") or []
    for index, (what, old, new) in enumerate(zip(upstream_names, earlier, upstream, strict=False)):
        if old != new:
            detail = upstream_detail(index) if upstream_detail is not None else ""
            words.append(f"{what} changed{f': {detail}' if detail else ''}")
    return ", ".join(words)


def run_stage(
    name: str,
    stage_dir: Path,
    records_dir: Path,
    config: Any,
    upstream: list[str],
    action: Callable[[], dict],
    log: Callable[[str], None] = print,
    *,
    upstream_names: Sequence[str] = (),
    config_prefix: str = "",
    resumes_with: str = "",
    resumes_with_said: str = "on other terms",
    resumable: bool = True,
    output_problem: Callable[[dict, Path], str] | None = None,
    output_digest: Callable[[], str] | None = None,
    upstream_detail: Callable[[int], str] | None = None,
) -> StageOutcome:
    """Run `action` (which writes into `stage_dir`) unless its record says it completed with the same fingerprint.

    The record is written last (atomically), so a stage killed midway is never mistaken for a finished one; the
    action itself is expected to resume from whatever partial output it finds. `resumes_with`: what else partial
    output must have been made with to be resumed (the absolute paths a dataset build records of its inputs);
    `resumes_with_said`: how an interrupted run started otherwise is said ("on other input files ...").
    `resumable`: whether the stage's folder holds partial output to resume from (said in the log).
    `output_problem(record, folder)`: what is wrong with the stage's output in `folder` (`stage_dir`, or a copy
    kept in RUN/stale/) now ("" when nothing): a stage whose record matches but whose output was deleted or changed
    by hand runs again, instead of being skipped and failing the stages after it; with it, a finished output of the
    same fingerprint kept in RUN/stale/ is taken back instead of running the stage (`find_stale`).
    `output_digest()`: the digest of the output just made, recorded and chained downstream.
    `upstream_detail(index)`: what changed in the upstream entry `index`, said when the stage reruns for it.
    """
    records_dir.mkdir(parents=True, exist_ok=True)
    record_path = records_dir / f"{name}{RECORD_SUFFIX}"
    pending_file = records_dir / f"{name}{PENDING_SUFFIX}"
    key = fingerprint(config, upstream)
    started_as = f"{key} {resumes_with}" if resumes_with else key
    record = read_record(record_path)
    damaged = ""
    if record is not None and record.get("fingerprint") == key:
        damaged = output_problem(record, stage_dir) if output_problem is not None else ""
        if not damaged:
            log(f"[{name}] up to date ({key[:12]}), skipped")
            return StageOutcome(name, key, True, 0.0, record.get("result", {}), chain_of(record))
    pending = pending_file.read_text().strip() if pending_file.exists() else None
    kept = (
        find_stale(name, stage_dir, records_dir, key, output_problem) if output_problem is not None else None
    )
    if kept is not None:
        return _take_back(name, stage_dir, records_dir, key, kept, log)
    if record is not None or (pending is not None and pending != started_as):
        moved = move_aside(name, stage_dir, records_dir, [stage_dir, record_path])
        where = f": its earlier output is kept in {moved}" if moved else ""
        if damaged:
            log(f"[{name}] its output is not what its record says ({damaged}), re-running{where}")
        elif record is not None:
            what = describe_change(
                record, config, upstream, upstream_names, config_prefix, upstream_detail=upstream_detail
            )
            log(f"[{name}] configuration or inputs changed{f' ({what})' if what else ''}, re-running{where}")
        else:
            # No finished output, an interrupted run's partial one: "configuration or inputs changed" said of the
            # same faces copied elsewhere, and said nothing of what was set aside.
            assert pending is not None
            why = (
                f"it was started {resumes_with_said}"
                if pending.split(" ", 1)[0] == key
                else "it was of another configuration or other inputs"
            )
            partial = f": its partial output is kept in {moved}" if moved else ""
            log(f"[{name}] the interrupted run is not resumed ({why}), starting again{partial}")
    elif pending == started_as and resumable:
        log(f"[{name}] resuming an interrupted run")
    elif pending == started_as:
        log(f"[{name}] starting again: the interrupted run saved nothing to resume from")
    _write_atomic(pending_file, started_as)
    log(f"[{name}] running")
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    made = {
        "stage": name,
        "fingerprint": key,
        "upstream": upstream,
        "config": json.loads(canonical_json(config)),
        "seconds": round(seconds, 3),
        "result": result,
    }
    digest = output_digest() if output_digest is not None else ""
    if digest:
        made["output_digest"] = digest
    _write_atomic(record_path, json.dumps(made, indent=2, default=str))
    pending_file.unlink()
    log(f"[{name}] done in {seconds:.1f} s")
    return StageOutcome(name, key, False, seconds, result, chain_of(made))


def _take_back(
    name: str,
    stage_dir: Path,
    records_dir: Path,
    key: str,
    kept: tuple[Path, dict],
    log: Callable[[str], None],
) -> StageOutcome:
    """Put the finished output `kept` (a RUN/stale/ folder, its record) back as the stage's output; what is in its
    place now (another configuration's output, or what a failed run left) is moved aside first."""
    folder, record = kept
    record_path = records_dir / f"{name}{RECORD_SUFFIX}"
    moved = move_aside(name, stage_dir, records_dir, [stage_dir, record_path])
    os.replace(folder / stage_dir.name, stage_dir)
    os.replace(folder / record_path.name, record_path)
    with contextlib.suppress(OSError):  # only if nothing else was kept there
        folder.rmdir()
    # The pending mark of the run whose output was just moved aside: that run is not resumed over this output.
    (records_dir / f"{name}{PENDING_SUFFIX}").unlink(missing_ok=True)
    where = f"; what was there is kept in {moved}" if moved else ""
    log(
        f"[{name}] up to date ({key[:12]}): its finished output of this configuration was taken back from {folder}{where}"
    )
    return StageOutcome(name, key, True, 0.0, record.get("result", {}), chain_of(record), taken_back=True)
