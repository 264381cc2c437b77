"""m2u.training.evaluation: metrics by kind, baselines, `evaluate` and its report. Uses inference.

Public surface::

    evaluate(data, mseg_path, generator_path, out_dir, config=EvaluateConfig()) -> report dict   # m2u-eval
    EvaluateConfig, write_report(report, out_dir)
    MetricSuite, MetricsConfig, MetricUnavailable, LPIPSConfig, FIDConfig, IdentityConfig
    BaselineConfig, run_baseline(name, masked01, mask, config), BASELINES
Modules: pixel (PSNR / SSIM / L1), lpips, fid, identity, suite, baselines, evaluate, report.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "evaluate",
    "EvaluateConfig": "evaluate",
    "write_report": "report",
    "MetricSuite": "suite",
    "MetricsConfig": "suite",
    "MetricUnavailable": "weights",
    "LPIPSConfig": "lpips",
    "FIDConfig": "fid",
    "IdentityConfig": "identity",
    "BaselineConfig": "baselines",
    "run_baseline": "baselines",
    "BASELINES": "baselines",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm2u.training.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"m2u.training.evaluation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
