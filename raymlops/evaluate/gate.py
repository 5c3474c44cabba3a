"""The deployment gate: a candidate is promoted only when every configured check passes.

The champion is re-scored on the candidate's held-out split rather than trusting the number
recorded when it was trained: an old number measured on other data proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raymlops.config import METRIC_MODES, FairnessConfig, GateConfig

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
    fairness: FairnessConfig | None = None,
) -> GateResult:
    """Check the candidate's held-out metrics against the gate.

    Args:
        gate: the pipeline file's ``gate`` section.
        metrics: the candidate's held-out metrics (``fairness.*`` nested dicts allowed).
        metric: the metric compared with the champion (gate.metric or the tuning metric).
        champion: ``{"version": int, "metrics": {...}}`` re-scored on the same split, or None.
        fairness: the pipeline file's ``fairness`` section; its ``max_*_difference`` limits are
            checked against ``metrics["fairness"]`` (see :func:`raymlops.evaluate.fairness.fairness_report`).
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
            record(
                f"min.{key}",
                False,
                f"{key} is not available for this model, so min {bound} cannot be checked",
            )
        else:
            record(
                f"min.{key}",
                value >= bound,
                f"{key} {value:.4f} {'>=' if value >= bound else '<'} min {bound}",
            )
    for key, bound in gate.max.items():
        value = _lookup(metrics, key)
        if value is None:
            record(
                f"max.{key}",
                False,
                f"{key} is not available for this model, so max {bound} cannot be checked",
            )
        else:
            record(
                f"max.{key}",
                value <= bound,
                f"{key} {value:.4f} {'<=' if value <= bound else '>'} max {bound}",
            )
    if fairness is not None:
        _fairness_checks(fairness, metrics.get("fairness") or {}, record)
    if gate.beat_champion_by is not None:
        gate_metric = gate.metric or metric
        if champion is None:
            record("champion", True, "no champion yet: nothing to beat")
        else:
            ours = _lookup(metrics, gate_metric)
            theirs = _lookup(champion.get("metrics", {}), gate_metric)
            if ours is None or theirs is None:
                why = f" ({champion['note']})" if champion.get("note") else ""
                record(
                    "champion",
                    False,
                    f"cannot compare {gate_metric} with champion v{champion.get('version')}{why}; "
                    "promote by hand if this version should replace it",
                )
            else:
                margin = gate.beat_champion_by
                better = (
                    ours >= theirs + margin
                    if METRIC_MODES.get(gate_metric, "max") == "max"
                    else ours <= theirs - margin
                )
                record(
                    "champion",
                    better,
                    f"{gate_metric} {ours:.4f} vs champion v{champion.get('version')} {theirs:.4f} "
                    "on the same "
                    f"held-out rows: {'beats' if better else 'does not beat'} it by the required {margin}",
                )
    if not reasons:
        reasons_out = [c["detail"] for c in checks]
        return GateResult(True, reasons_out, checks)
    return GateResult(False, reasons, checks)


_FAIRNESS_LIMITS = (
    ("demographic_parity_difference", "max_demographic_parity_difference"),
    ("equalized_odds_difference", "max_equalized_odds_difference"),
)


def _fairness_checks(cfg: FairnessConfig, report: dict[str, Any], record: Any) -> None:
    """One check per configured fairness limit; a limit that cannot be measured refuses the model.

    Refusing rather than skipping matters: a gate that quietly passes a model because the fairness
    number was missing would promote exactly the model nobody checked.
    """
    for key, limit_name in _FAIRNESS_LIMITS:
        bound = getattr(cfg, limit_name)
        if bound is None:
            continue
        value = report.get(key)
        name = f"fairness.{key}"
        if not isinstance(value, (int, float)):
            why = report.get("note") or "not measured"
            record(name, False, f"{name} for {cfg.sensitive!r} cannot be checked against max {bound}: {why}")
            continue
        ok = value <= bound
        record(
            name,
            ok,
            f"{name} {value:.4f} {'<=' if ok else '>'} max {bound} across groups of {cfg.sensitive!r}"
            + ("" if ok else f" ({_group_rates(report, key)})"),
        )


def _group_rates(report: dict[str, Any], key: str) -> str:
    """The per-group numbers behind a difference, so a reader sees who is treated differently."""
    fields = (
        ("selection_rate",)
        if key == "demographic_parity_difference"
        else ("true_positive_rate", "false_positive_rate")
    )
    short = {"selection_rate": "selection rate", "true_positive_rate": "TPR", "false_positive_rate": "FPR"}
    parts = []
    for row in report.get("groups", [])[:8]:
        values = [f"{short[f]} {row[f]:.2f}" for f in fields if isinstance(row.get(f), (int, float))]
        if values:
            parts.append(f"{row['group']}: {', '.join(values)}")
    return "; ".join(parts) or "per-class numbers in metrics.fairness"
