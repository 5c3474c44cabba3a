"""The deployment gate: a candidate is promoted only when every configured check passes.

The champion is re-scored on the candidate's held-out split rather than trusting the number
recorded when it was trained: an old number measured on other data proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raymlops.config import METRIC_MODES, GateConfig

__all__ = ["GateResult", "evaluate_gate"]


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": self.checks}


def _lookup(metrics: dict[str, Any], key: str) -> float | None:
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def evaluate_gate(
    gate: GateConfig,
    metrics: dict[str, Any],
    *,
    metric: str,
    champion: dict[str, Any] | None = None,
) -> GateResult:
    """Check the candidate's held-out metrics against the gate.

    Args:
        gate: the pipeline file's ``gate`` section.
        metrics: the candidate's held-out metrics (``fairness.*`` nested dicts allowed).
        metric: the metric compared with the champion (gate.metric or the tuning metric).
        champion: ``{"version": int, "metrics": {...}}`` re-scored on the same split, or None.
    """
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []

    def record(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "passed": ok, "detail": detail})
        if not ok:
            reasons.append(detail)

    for key, bound in gate.min.items():
        value = _lookup(metrics, key)
        if value is None:
            record(f"min.{key}", False, f"{key} is not available for this model, so min {bound} cannot be checked")
        else:
            record(f"min.{key}", value >= bound, f"{key} {value:.4f} {'>=' if value >= bound else '<'} min {bound}")
    for key, bound in gate.max.items():
        value = _lookup(metrics, key)
        if value is None:
            record(f"max.{key}", False, f"{key} is not available for this model, so max {bound} cannot be checked")
        else:
            record(f"max.{key}", value <= bound, f"{key} {value:.4f} {'<=' if value <= bound else '>'} max {bound}")
    if gate.beat_champion_by is not None:
        gate_metric = gate.metric or metric
        if champion is None:
            record("champion", True, "no champion yet: nothing to beat")
        else:
            ours = _lookup(metrics, gate_metric)
            theirs = _lookup(champion.get("metrics", {}), gate_metric)
            if ours is None or theirs is None:
                record("champion", False, f"cannot compare {gate_metric} with champion v{champion.get('version')}")
            else:
                margin = gate.beat_champion_by
                better = (
                    ours >= theirs + margin if METRIC_MODES.get(gate_metric, "max") == "max" else ours <= theirs - margin
                )
                record(
                    "champion",
                    better,
                    f"{gate_metric} {ours:.4f} vs champion v{champion.get('version')} {theirs:.4f} on the same "
                    f"held-out rows: {'beats' if better else 'does not beat'} it by the required {margin}",
                )
    if not reasons:
        reasons_out = [c["detail"] for c in checks]
        return GateResult(True, reasons_out, checks)
    return GateResult(False, reasons, checks)
