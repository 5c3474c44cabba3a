"""Drift and data-quality checks of new data against a version's training reference; the feedback loop.

``monitor(ref, input_uri)`` reads a batch or the serving request log with Ray Data, so it scales like
scoring, and compares it with the ``reference.json`` saved with the version: per-feature PSI and
Kolmogorov-Smirnov (chi-square for categories), schema skew, null-rate changes and prediction
drift. With labels that arrived later (``labels=``, ``key=``) it also reports live metrics against
the version's held-out metrics, and says which pipeline to rerun when something is off.
"""

from raymlops.monitor._drift import Thresholds, decide, psi
from raymlops.monitor._run import DRIFT_EXIT_CODE, monitor, thresholds_for

__all__ = ["DRIFT_EXIT_CODE", "Thresholds", "decide", "monitor", "psi", "thresholds_for"]
