"""Configuration fields that change how a run goes but never what it writes (worker counts, progress bars, log
cadence). They are marked where the field is declared, so every fingerprint that decides whether finished work
is still valid (m2u-pipeline's stage records) can leave them out: moving a finished run to a machine with more
cores, or asking for a progress bar, must never look like a different run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RUNTIME_METADATA_KEY = "m2u.runtime"


def runtime_field(**kwargs: Any) -> Any:
    """``dataclasses.field(**kwargs)`` marked as a runtime setting: not part of any output fingerprint."""
    metadata = {**kwargs.pop("metadata", {}), RUNTIME_METADATA_KEY: True}
    return dataclasses.field(metadata=metadata, **kwargs)


def is_runtime_field(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get(RUNTIME_METADATA_KEY, False))


def output_fields(config: Any) -> list[dataclasses.Field]:
    """The fields of the dataclass instance or class `config` that decide its outputs (runtime ones left out)."""
    return [f for f in dataclasses.fields(config) if not is_runtime_field(f)]
