"""The gate end to end: fairness limits refuse a biased model, a worse candidate is not promoted.

One store is shared by the module: the first run (no fairness limit) becomes the champion, and the
later runs are judged against it, as they would be in a real project.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from raymlops.config import parse_pipeline
from raymlops.evaluate.synthetic import credit_frame, write_frame
from raymlops.pipeline import run_pipeline
from raymlops.registry import ModelStore

pytestmark = pytest.mark.slow


def _config(source: Path, **overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "name": "credit",
        "data": {"source": str(source), "target": "approved", "split": {"test_size": 0.25, "seed": 1}},
        "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 30, "max_depth": 8}}],
        "tune": {"num_samples": 1, "metric": "accuracy"},
        "gate": {"min": {"accuracy": 0.6}, "beat_champion_by": 0.0},
        "fairness": {"sensitive": "group", "use_as_feature": True},
    }
    raw.update(overrides)
    return parse_pipeline(raw)


@pytest.fixture(scope="module")
def biased(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    """A store whose champion is a model trained on labels that favour group B."""
    root = tmp_path_factory.mktemp("gate")
    source = write_frame(credit_frame(3000, seed=0, group_effect=1.8), root / "credit.csv")
    store = str(root / "store")
    summary = run_pipeline(_config(source), store=store)
    return {"source": source, "store": store, "first": summary}


def test_without_a_fairness_limit_the_biased_model_passes_and_its_bias_is_measured(
    biased: dict[str, Any],
) -> None:
    summary = biased["first"]
    assert summary["gate"]["passed"], summary["gate"]
    assert summary["promoted"] == "champion"
    fairness = summary["metrics"]["fairness"]
    assert fairness["sensitive"] == "group"
    assert {g["group"] for g in fairness["groups"]} == {"A", "B"}
    rates = {g["group"]: g["selection_rate"] for g in fairness["groups"]}
    assert rates["B"] > rates["A"] + 0.15
    assert fairness["demographic_parity_difference"] == pytest.approx(rates["B"] - rates["A"])
    assert fairness["equalized_odds_difference"] > 0


def test_a_fairness_limit_refuses_the_model_and_names_the_metric(biased: dict[str, Any]) -> None:
    cfg = _config(
        biased["source"],
        fairness={"sensitive": "group", "use_as_feature": True, "max_demographic_parity_difference": 0.1},
    )
    summary = run_pipeline(cfg, store=biased["store"])
    gate = summary["gate"]
    assert not gate["passed"]
    assert any("fairness.demographic_parity_difference" in r and "max 0.1" in r for r in gate["reasons"]), (
        gate
    )
    assert summary["promoted"] is None
    assert "fairness.demographic_parity_difference" in summary["not_promoted_because"]
    store = ModelStore(biased["store"])
    refused = store.get(f"credit:{summary['version']}")  # registered all the same...
    assert refused.metadata["gate"]["passed"] is False
    assert refused.metadata["gate"]["reasons"] == gate["reasons"]
    assert store.aliases("credit")["champion"] == biased["first"]["version"]  # ...but not promoted


def test_the_sensitive_column_can_be_left_out_of_the_features_and_still_be_measured(
    biased: dict[str, Any],
) -> None:
    cfg = _config(
        biased["source"],
        fairness={"sensitive": "group", "use_as_feature": False},
        gate={"min": {"accuracy": 0.6}},
        deploy={"promote_to": None},
    )
    summary = run_pipeline(cfg, store=biased["store"])
    version = ModelStore(biased["store"]).get(f"credit:{summary['version']}")
    schema = json.loads((Path(version.uri.removeprefix("file://")) / "schema.json").read_text())
    assert "group" not in schema["features"]
    assert {g["group"] for g in summary["metrics"]["fairness"]["groups"]} == {"A", "B"}
    assert summary["not_promoted_because"] == "deploy.promote_to is not set"


def test_a_worse_candidate_is_not_promoted_and_the_summary_says_why(biased: dict[str, Any]) -> None:
    cfg = _config(
        biased["source"],
        models=[{"name": "stump", "kind": "random_forest", "params": {"n_estimators": 1, "max_depth": 1}}],
    )
    summary = run_pipeline(cfg, store=biased["store"])
    champion = biased["first"]
    assert summary["champion"]["version"] == champion["version"]
    # The champion was re-scored on this run's held-out rows, not taken from its old metadata.
    assert summary["champion"]["metrics"]["accuracy"] == pytest.approx(champion["metrics"]["accuracy"])
    assert not summary["gate"]["passed"]
    reason = next(r for r in summary["gate"]["reasons"] if "champion" in r)
    assert re.search(
        r"accuracy 0\.\d+ vs champion v1 0\.\d+ on the same held-out rows: does not beat it", reason
    )
    assert summary["promoted"] is None and "does not beat" in summary["not_promoted_because"]
    assert ModelStore(biased["store"]).aliases("credit")["champion"] == champion["version"]


def test_each_version_has_a_report_with_its_figures_and_reference_statistics(biased: dict[str, Any]) -> None:
    folder = Path(biased["first"]["report"]).parent
    page = (folder / "report.html").read_text()
    for alt in ("confusion matrix", "permutation importance", "partial dependence", "fairness by group"):
        assert re.search(rf'<img alt="{alt}" src="data:image/png;base64,[A-Za-z0-9+/=]{{200,}}"', page), alt
    assert "Fairness: group" in page and "demographic_parity_difference" in page
    reference = json.loads((folder / "reference.json").read_text())
    assert set(reference["features"]) == {
        "income",
        "debt_ratio",
        "tenure",
        "utilization",
        "age",
        "region",
        "group",
    }
    assert reference["features"]["region"]["type"] == "categorical"
    assert len(reference["features"]["income"]["bin_edges"]) == 9
    assert (folder / "reference_sample.parquet").exists()
    explain = json.loads((folder / "explain.json").read_text())
    top = [r["feature"] for r in explain["importance"]["features"][:3]]
    assert "income" in top  # the label depends most on income
    assert len(explain["partial_dependence"]) == 5


def test_the_fairness_demo_pipeline_file_is_valid() -> None:
    from raymlops.config import load_pipeline

    cfg = load_pipeline(Path(__file__).parents[1] / "pipelines" / "fairness_demo.yaml")
    assert cfg.fairness is not None and cfg.fairness.sensitive == "group"
    assert cfg.fairness.max_demographic_parity_difference == 0.1
    assert cfg.data.source.endswith("pipelines/data/fairness_demo.csv")
