from pathlib import Path

import pytest
import yaml

from raymlops.config import ConfigError, load_pipeline, pipeline_json_schema

MINIMAL = {
    "name": "demo",
    "data": {"source": "builtin://iris", "target": "target"},
    "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 10}}],
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_demo_pipeline_file_loads():
    cfg = load_pipeline(Path(__file__).parents[1] / "pipelines" / "digits.yaml")
    assert cfg.name == "digits"
    assert {m.kind for m in cfg.models} >= {"random_forest"}


def test_misspelled_top_level_key_is_named(tmp_path):
    raw = {**MINIMAL, "modles": []}
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, raw))
    assert "modles" in str(err.value)
    assert "pipeline.yaml" in str(err.value)


def test_misspelled_model_param_is_named_with_its_place(tmp_path):
    raw = {**MINIMAL, "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimatorz": 5}}]}
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, raw))
    assert "models[0]" in str(err.value)
    assert "n_estimatorz" in str(err.value)


def test_search_over_unknown_parameter_is_refused(tmp_path):
    raw = {
        **MINIMAL,
        "models": [{"name": "rf", "kind": "random_forest", "search": {"depth": {"choice": [1, 2]}}}],
    }
    with pytest.raises(ConfigError, match="depth"):
        load_pipeline(write(tmp_path, raw))


def test_search_space_with_two_kinds_is_refused(tmp_path):
    raw = {
        **MINIMAL,
        "models": [
            {
                "name": "rf",
                "kind": "random_forest",
                "search": {"max_depth": {"choice": [2], "randint": [1, 3]}},
            }
        ],
    }
    with pytest.raises(ConfigError, match="exactly one"):
        load_pipeline(write(tmp_path, raw))


def test_metric_and_mode_must_agree(tmp_path):
    raw = {**MINIMAL, "tune": {"metric": "rmse", "mode": "max"}}
    with pytest.raises(ConfigError, match="rmse"):
        load_pipeline(write(tmp_path, raw))


def test_relative_data_path_resolves_next_to_the_pipeline_file(tmp_path):
    (tmp_path / "data.csv").write_text("a,target\n1,0\n")
    raw = {**MINIMAL, "data": {"source": "data.csv", "target": "target"}}
    cfg = load_pipeline(write(tmp_path, raw))
    assert cfg.data.source == str(tmp_path / "data.csv")


def test_json_schema_is_exported_and_forbids_extras():
    schema = pipeline_json_schema()
    assert schema["additionalProperties"] is False
    assert "models" in schema["properties"]
