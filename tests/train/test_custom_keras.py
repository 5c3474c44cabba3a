"""``kind: keras`` with the user's own ``builder``: ``pipelines/custom_keras.yaml`` end to end.

The builder (``pipelines/digits_nets.py``, beside the pipeline file) makes the network; raymlops
searches its free-form params with Tune, trains, gates and registers it. The registered model is
the user's architecture, and it loads (safe mode) where the builder module is not importable:
serving never needs the user's code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.config import parse_pipeline
from raymlops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"
runner = CliRunner()


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("digits_nets_under_test", PIPELINES / "digits_nets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


def _doc(model: dict[str, Any]) -> dict[str, Any]:
    return {"name": "p", "data": {"source": "builtin://digits"}, "models": [{"name": "m", **model}]}


@pytest.mark.slow
def test_custom_keras_pipeline_trains_and_registers_the_users_network(
    ray_session: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["run", str(PIPELINES / "custom_keras.yaml"), "--store", str(store), "--json"]
    )
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    (model,) = summary["models"]
    assert model["kind"] == "keras" and model["workers"] == 1
    assert len(model["trials"]) == 2 and all(t["error"] is None for t in model["trials"])
    # The builder's own params were searched and handed to it.
    best = model["best_params"]
    assert best["width"] in (32, 96) and 0.0 <= best["dropout"] <= 0.3 and best["depth"] == 2
    assert summary["metrics"]["accuracy"] >= 0.9, summary["metrics"]
    assert summary["gate"]["passed"] and summary["promoted"] == "champion"
    version = store / "models" / "digits_custom_keras" / str(summary["version"])
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["builder"] == "digits_nets:build" and "model.keras" in metadata["files"]

    # A fresh process without pipelines/ on its path: the model loads in safe mode all the same,
    # and it is the builder's wide-and-deep network with the searched width.
    probe = (
        "import json, sys\n"
        "import numpy as np\n"
        "from raymlops.data.ingest import load_builtin\n"
        "from raymlops.model import ModelBundle\n"
        f"b = ModelBundle.load('digits_custom_keras', {str(store)!r})\n"
        "net = b.predictor.model\n"
        "frame = load_builtin('digits')\n"
        "scored = b.score(frame[b.schema.features])\n"
        "print(json.dumps({'name': net.name, 'layers': [l.name for l in net.layers],\n"
        "    'width': net.get_layer('deep_0').units, 'n_features': len(b.schema.features),\n"
        "    'inputs': int(net.inputs[0].shape[-1]), 'builder_imported': 'digits_nets' in sys.modules,\n"
        "    'accuracy': float(np.mean(scored.labels == frame['target'].to_numpy()))}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["name"] == "digits_wide_and_deep" and "wide_and_deep" in loaded["layers"]
    assert loaded["width"] == best["width"] and not loaded["builder_imported"]
    assert loaded["inputs"] == loaded["n_features"]  # however many features the data path kept
    assert loaded["accuracy"] >= 0.9


def test_the_builder_makes_what_the_contract_asks() -> None:
    import keras

    build = _builder()
    clf = build(13, 10, "classification", {"width": 8, "depth": 3, "dropout": 0.2})
    assert isinstance(clf, keras.Model) and tuple(clf.outputs[0].shape) == (None, 10)
    probs = np.asarray(clf(np.random.default_rng(0).normal(size=(5, 13)).astype("float32")))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [layer.name for layer in clf.layers].count("norm_2") == 1
    reg = build(13, 1, "regression", {})
    assert tuple(reg.outputs[0].shape) == (None, 1)


def test_builder_params_are_free_form_but_the_spec_and_kind_are_checked() -> None:
    cfg = parse_pipeline(
        _doc({"kind": "keras", "builder": "digits_nets:build", "params": {"width": 8, "anything": [1, 2]}})
    )
    assert cfg.models[0].params == {"width": 8, "anything": [1, 2]}
    with pytest.raises(ConfigError, match=r"models\[0\].*must look like 'package.module:function'"):
        parse_pipeline(_doc({"kind": "keras", "builder": "digits_nets.build"}))
    with pytest.raises(ConfigError, match=r"models\[0\].*builder is only for kind keras"):
        parse_pipeline(_doc({"kind": "random_forest", "builder": "digits_nets:build"}))
    # The training loop's own params stay typed: a bad epoch count is refused with its place.
    with pytest.raises(ConfigError, match=r"models\[0\].*epochs"):
        parse_pipeline(_doc({"kind": "keras", "builder": "digits_nets:build", "params": {"epochs": 0}}))
    # Without a builder the built-in MLP's params are strict.
    with pytest.raises(ConfigError, match="width"):
        parse_pipeline(_doc({"kind": "keras", "params": {"width": 8}}))


def test_the_shipped_pipeline_names_the_module_beside_it() -> None:
    raw = yaml.safe_load((PIPELINES / "custom_keras.yaml").read_text())
    (entry,) = raw["models"]
    module = entry["builder"].partition(":")[0]
    assert (PIPELINES / f"{module}.py").is_file()
    assert parse_pipeline(raw).models[0].builder == "digits_nets:build"
