"""m2u.evaluation: metrics by kind, baselines, `evaluate` and its report. Uses inference.

Public surface::

    evaluate(data, mseg_path, generator_path, out_dir, config=EvaluateConfig()) -> report dict   # m2u-eval
    EvaluateConfig, write_report(report, out_dir)
    MetricSuite, MetricsConfig, MetricUnavailable, LPIPSConfig, FIDConfig, IdentityConfig
    BaselineConfig, run_baseline(name, masked01, mask, config), BASELINES
Modules: pixel (PSNR / SSIM / L1), lpips, fid, identity, suite, groups, baselines, evaluator (evaluate), report.
"""

from __future__ import annotations

from m2u.evaluation.baselines import BASELINES, BaselineConfig, run_baseline
from m2u.evaluation.evaluator import EvaluateConfig, evaluate
from m2u.evaluation.fid import FIDConfig
from m2u.evaluation.identity import IdentityConfig
from m2u.evaluation.lpips import LPIPSConfig
from m2u.evaluation.report import write_report
from m2u.evaluation.suite import MetricsConfig, MetricSuite
from m2u.evaluation.weights import MetricUnavailable

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "EvaluateConfig",
    "FIDConfig",
    "IdentityConfig",
    "LPIPSConfig",
    "MetricSuite",
    "MetricUnavailable",
    "MetricsConfig",
    "evaluate",
    "run_baseline",
    "write_report",
]
