"""m2u.training.evaluation: metrics by kind, baselines, `evaluate` and its report. Uses inference.

Public surface::

    evaluate(data, mseg_path, generator_path, out_dir, config=EvaluateConfig()) -> report dict   # m2u-eval
    EvaluateConfig, write_report(report, out_dir)
    MetricSuite, MetricsConfig, MetricUnavailable, LPIPSConfig, FIDConfig, IdentityConfig
    BaselineConfig, run_baseline(name, masked01, mask, config), BASELINES
Modules: pixel (PSNR / SSIM / L1), lpips, fid, identity, suite, baselines, evaluate, report.
"""

from __future__ import annotations

from m2u.masking.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
