"""Stage bookkeeping: a stage is skipped when its recorded fingerprint matches, re-run (and resumed) otherwise.

A stage's fingerprint is the SHA-256 of its configuration (canonical JSON) together with the fingerprints of the
stages it reads from, so changing one option re-runs that stage and every stage after it, and nothing before it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2u.masking.fileio import atomic_write_text as _write_atomic

# Records live beside the stage folders (RUN/stages/<name>.json), not inside them: a stage's own tool may insist
# on an empty output folder. The .pending file is written when a stage starts: partial output left by a killed run
# is resumed only if it was made by the same configuration; otherwise it is wiped before the stage starts again.
RECORD_SUFFIX = ".json"
PENDING_SUFFIX = ".pending"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same configuration always hashes the same."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def fingerprint(config: Any, upstream: list[str]) -> str:
    digest = hashlib.sha256(canonical_json(config).encode())
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


def read_record(record_path: Path) -> dict | None:
    try:
        return json.loads(record_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_stage(
    name: str,
    stage_dir: Path,
    records_dir: Path,
    config: Any,
    upstream: list[str],
    action: Callable[[], dict],
    log: Callable[[str], None] = print,
) -> StageOutcome:
    """Run `action` (which writes into `stage_dir`) unless its record says it completed with the same fingerprint.

    The record is written last (atomically), so a stage killed midway is never mistaken for a finished one; the
    action itself is expected to resume from whatever partial output it finds.
    """
    records_dir.mkdir(parents=True, exist_ok=True)
    record_path = records_dir / f"{name}{RECORD_SUFFIX}"
    pending_file = records_dir / f"{name}{PENDING_SUFFIX}"
    key = fingerprint(config, upstream)
    record = read_record(record_path)
    if record is not None and record.get("fingerprint") == key:
        log(f"[{name}] up to date ({key[:12]}), skipped")
        return StageOutcome(name, key, True, 0.0, record.get("result", {}))
    pending = pending_file.read_text().strip() if pending_file.exists() else None
    if record is not None or (pending is not None and pending != key):
        log(f"[{name}] configuration or inputs changed: clearing {stage_dir} and re-running")
        record_path.unlink(missing_ok=True)
        shutil.rmtree(stage_dir, ignore_errors=True)
    elif pending == key:
        log(f"[{name}] resuming an interrupted run")
    _write_atomic(pending_file, key)
    log(f"[{name}] running")
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    _write_atomic(
        record_path,
        json.dumps(
            {
                "stage": name,
                "fingerprint": key,
                "upstream": upstream,
                "config": json.loads(canonical_json(config)),
                "seconds": round(seconds, 3),
                "result": result,
            },
            indent=2,
            default=str,
        ),
    )
    pending_file.unlink()
    log(f"[{name}] done in {seconds:.1f} s")
    return StageOutcome(name, key, False, seconds, result)
