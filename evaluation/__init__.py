"""m2u.evaluation: metrics by kind, baselines, `evaluate` and its report. Uses inference.

Public surface::

    evaluate(data, mseg_path, generator_path, out_dir, config=EvaluateConfig()) -> report dict   # m2u-eval
    EvaluateConfig, write_report(report, out_dir)
    MetricSuite, MetricsConfig, MetricUnavailable, LPIPSConfig, FIDConfig, IdentityConfig
    BaselineConfig, run_baseline(name, masked01, mask, config), BASELINES
Modules: pixel (PSNR / SSIM / L1), lpips, fid, identity, suite, groups, baselines, evaluator (evaluate), report.
"""

from __future__ import annotations

from m2u.core.lazy import lazy_exports

# Resolved when first used: `import m2u.evaluation` (and m2u-eval's console entry, m2u.evaluation.launch) loads no
# torch, so Ctrl-C while the libraries load stops in one line.
_EXPORTS = {
    "BASELINES": "baselines",
    "BaselineConfig": "baselines",
    "run_baseline": "baselines",
    "EvaluateConfig": "evaluator",
    "evaluate": "evaluator",
    "FIDConfig": "fid",
    "IdentityConfig": "identity",
    "LPIPSConfig": "lpips",
    "write_report": "report",
    "MetricsConfig": "suite",
    "MetricSuite": "suite",
    "MetricUnavailable": "weights",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
