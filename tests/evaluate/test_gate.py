"""The gate's checks and the reasons it gives, one limit at a time."""

from __future__ import annotations

from raymlops.config import FairnessConfig, GateConfig
from raymlops.evaluate.gate import evaluate_gate

FAIR = {
    "demographic_parity_difference": 0.30,
    "equalized_odds_difference": 0.05,
    "groups": [{"group": "A", "selection_rate": 0.4}, {"group": "B", "selection_rate": 0.7}],
}


def test_absolute_limits_pass_and_fail_with_the_numbers_in_the_reason() -> None:
    gate = GateConfig(min={"accuracy": 0.9}, max={"log_loss": 0.3})
    ok = evaluate_gate(gate, {"accuracy": 0.95, "log_loss": 0.2}, metric="accuracy")
    assert ok.passed and "accuracy 0.9500 >= min 0.9" in ok.reasons
    bad = evaluate_gate(gate, {"accuracy": 0.85, "log_loss": 0.2}, metric="accuracy")
    assert not bad.passed and bad.reasons == ["accuracy 0.8500 < min 0.9"]


def test_a_fairness_limit_names_the_metric_the_column_and_the_group_rates() -> None:
    fairness = FairnessConfig(sensitive="sex", max_demographic_parity_difference=0.1)
    result = evaluate_gate(
        GateConfig(), {"accuracy": 0.9, "fairness": FAIR}, metric="accuracy", fairness=fairness
    )
    assert not result.passed
    (reason,) = result.reasons
    assert reason.startswith("fairness.demographic_parity_difference 0.3000 > max 0.1 across groups of 'sex'")
    assert "A: selection rate 0.40" in reason and "B: selection rate 0.70" in reason


def test_fairness_limits_that_hold_pass_and_unset_limits_are_not_checked() -> None:
    fairness = FairnessConfig(sensitive="sex", max_equalized_odds_difference=0.1)
    result = evaluate_gate(GateConfig(), {"fairness": FAIR}, metric="accuracy", fairness=fairness)
    assert result.passed
    assert [c["check"] for c in result.checks] == ["fairness.equalized_odds_difference"]


def test_a_fairness_limit_that_cannot_be_measured_refuses_the_model() -> None:
    fairness = FairnessConfig(sensitive="age", max_demographic_parity_difference=0.1)
    metrics = {"fairness": {"demographic_parity_difference": None, "note": "defined for classification only"}}
    result = evaluate_gate(GateConfig(), metrics, metric="rmse", fairness=fairness)
    assert (
        not result.passed
        and "cannot be checked" in result.reasons[0]
        and "classification only" in result.reasons[0]
    )


def test_fairness_keys_work_in_plain_max_limits_too() -> None:
    gate = GateConfig(max={"fairness.equalized_odds_difference": 0.01})
    result = evaluate_gate(gate, {"fairness": FAIR}, metric="accuracy")
    assert not result.passed and result.reasons == ["fairness.equalized_odds_difference 0.0500 > max 0.01"]


def test_the_champion_must_be_beaten_by_the_margin_in_the_metric_direction() -> None:
    gate = GateConfig(beat_champion_by=0.01)
    champion = {"version": 3, "metrics": {"accuracy": 0.90, "rmse": 2.0}}
    assert evaluate_gate(gate, {"accuracy": 0.92}, metric="accuracy", champion=champion).passed
    worse = evaluate_gate(gate, {"accuracy": 0.905}, metric="accuracy", champion=champion)
    assert not worse.passed
    assert (
        "accuracy 0.9050 vs champion v3 0.9000 on the same held-out rows: does not beat it"
        in worse.reasons[0]
    )
    # rmse: lower is better, so beating means at least 0.01 lower.
    assert evaluate_gate(gate, {"rmse": 1.9}, metric="rmse", champion=champion).passed
    assert not evaluate_gate(gate, {"rmse": 1.995}, metric="rmse", champion=champion).passed


def test_no_champion_passes_and_an_incomparable_one_refuses_with_its_note() -> None:
    gate = GateConfig(beat_champion_by=0.0)
    assert evaluate_gate(gate, {"accuracy": 0.5}, metric="accuracy", champion=None).passed
    odd = {"version": 2, "metrics": {}, "note": "champion was trained on other classes"}
    result = evaluate_gate(gate, {"accuracy": 0.9}, metric="accuracy", champion=odd)
    assert not result.passed and "other classes" in result.reasons[0]
