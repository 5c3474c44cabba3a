"""One writer per output, outputs apart from the input, parts that name their job and model version."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import threading
import time
import types
from pathlib import Path

import joblib
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.errors import ConflictError
from raymlops.model import ModelBundle
from raymlops.registry import ModelStore
from raymlops.score import JOB_FILE, SUCCESS_FILE, ScoreError, score

from . import TrainedModel, make_rows, read_scored, trained_model, write_parquet_shards

runner = CliRunner()


@pytest.fixture(scope="module")
def model(ray_session, tmp_path_factory) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp() / "score-model")


def _shards(folder: Path, seed: int = 3) -> Path:
    write_parquet_shards(make_rows(1200, seed=seed), folder, shards=2, row_group_rows=200)
    return folder


def test_a_second_writer_into_the_same_output_is_refused(model, tmp_path: Path, monkeypatch) -> None:
    src, out = _shards(tmp_path / "in"), tmp_path / "out"
    monkeypatch.setenv("RAYMLOPS_SCORE_UNIT_DELAY_S", "1.5")  # the first job stays busy a few seconds
    first: dict = {}

    def run_first() -> None:
        first["summary"] = score(
            model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False
        )

    thread = threading.Thread(target=run_first)
    thread.start()
    deadline = time.monotonic() + 60
    while not list((out / "_lock").glob("*.claim.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive(), "the first job ended before the second could start"
    with pytest.raises(ScoreError, match="another raymlops score is writing into"):
        score(model.ref, str(src), str(out), store=model.store, unit_rows=400, overwrite=True, progress=False)
    thread.join(120)
    # The refused writer deleted nothing and added nothing: the first job's output is whole.
    assert first["summary"]["rows_in"] == 1200
    assert sorted(read_scored(out)["id"]) == list(range(1200))
    # Released at the end: the next job into that output may run (here: checking it as complete).
    again = score(
        model.ref, str(src), str(out), store=model.store, unit_rows=400, resume=True, progress=False
    )
    assert again["rows_this_run"] == 0 and again["units_resumed"] == again["units"] == 4


def test_rejected_inside_the_input_is_refused_and_overwrite_keeps_the_input(model, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    # Input shards named like score's own parts: exactly what a clean-up by name would delete.
    rows = make_rows(300, seed=5)
    rows.to_parquet(src / "part-00000.parquet", index=False)
    before = (src / "part-00000.parquet").read_bytes()
    result = runner.invoke(
        app,
        [
            "score",
            model.ref,
            "--store",
            model.store,
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
            "--rejected",
            str(src),
            "--overwrite",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--rejected" in result.output and "overlaps the input" in result.output
    assert (src / "part-00000.parquet").read_bytes() == before


@pytest.mark.parametrize("where", ["same", "inside", "parent", "symlink"])
def test_an_output_overlapping_the_input_is_refused(model, tmp_path: Path, where: str) -> None:
    src = _shards(tmp_path / "data" / "in")
    shards = sorted(p.name for p in src.iterdir())
    output = {
        "same": src,
        "inside": src / "scored",
        "parent": tmp_path / "data",
        "symlink": tmp_path / "link",
    }[where]
    if where == "symlink":
        output.symlink_to(src, target_is_directory=True)
    with pytest.raises(ScoreError, match="--output .* overlaps the input"):
        score(model.ref, str(src), str(output), store=model.store, overwrite=True, progress=False)
    assert sorted(p.name for p in src.iterdir()) == shards


def test_a_clean_up_never_deletes_part_files_score_did_not_write(model, tmp_path: Path) -> None:
    src = _shards(tmp_path / "in")
    out = tmp_path / "out"
    score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    rej = tmp_path / "rej"
    rej.mkdir()
    make_rows(10).to_parquet(rej / "part-00000.parquet", index=False)  # someone else's file
    with pytest.raises(ConflictError, match="not written by raymlops score"):
        score(
            model.ref,
            str(src),
            str(out),
            store=model.store,
            rejected_uri=str(rej),
            unit_rows=400,
            overwrite=True,
            progress=False,
        )
    assert (rej / "part-00000.parquet").exists()


def test_parts_name_their_job_and_model_version(model, tmp_path: Path) -> None:
    rows = make_rows(600, seed=9)
    rows.loc[[3], "x1"] = float("nan")  # one rejected row, so the rejected part is checked too
    write_parquet_shards(rows, tmp_path / "in", shards=1, row_group_rows=200)
    out = tmp_path / "out"
    score(model.ref, str(tmp_path / "in"), str(out), store=model.store, unit_rows=200, progress=False)
    job_id = json.loads((out / JOB_FILE).read_text())["job_id"]
    parts = [*out.glob("part-*.parquet"), *(out / "_rejected").glob("part-*.parquet")]
    assert len(parts) == 4
    for part in parts:
        meta = pq.read_metadata(part).metadata
        assert meta[b"raymlops.score.job"].decode() == job_id
        assert meta[b"raymlops.score.model"].decode() == model.ref


def _interrupted(out: Path, unit: int) -> None:
    """What a killed job leaves: one unit's scored file missing, no success marker."""
    (out / f"part-{unit:05d}.parquet").unlink()
    (out / SUCCESS_FILE).unlink()


def test_a_resume_refuses_a_part_of_another_job(model, tmp_path: Path) -> None:
    a_in, b_in = _shards(tmp_path / "a-in", seed=1), _shards(tmp_path / "b-in", seed=2)
    a_out, b_out = tmp_path / "a-out", tmp_path / "b-out"
    for src, out in ((a_in, a_out), (b_in, b_out)):
        score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    _interrupted(b_out, 1)
    (b_out / "part-00002.parquet").unlink()
    shutil.copy(a_out / "part-00002.parquet", b_out / "part-00002.parquet")  # same unit, another job
    with pytest.raises(ScoreError, match="another scoring job"):
        score(model.ref, str(b_in), str(b_out), store=model.store, unit_rows=400, resume=True, progress=False)


def test_a_resume_refuses_a_part_scored_by_another_model_version(model, tmp_path: Path) -> None:
    src, out = _shards(tmp_path / "in"), tmp_path / "out"
    score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    _interrupted(out, 0)
    part = out / "part-00001.parquet"
    table = pq.read_table(part)
    meta = dict(pq.read_metadata(part).metadata)
    name = model.ref.split(":")[0]
    meta[b"raymlops.score.model"] = f"{name}:999".encode()  # as if an earlier attempt used v999
    pq.write_table(table.replace_schema_metadata(meta), part)
    with pytest.raises(ScoreError, match=f"written with model {name}:999"):
        score(model.ref, str(src), str(out), store=model.store, unit_rows=400, resume=True, progress=False)


# ---- versions written by an older raymlops (pickled files) ---------------------------------------------


def _legacy_version(model: TrainedModel, tmp_path: Path) -> str:
    """Register the test model again in the old on-disk format: model.joblib and preprocessor.pkl."""
    bundle = ModelBundle.load(model.ref, model.store)
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "schema.json").write_text(bundle.schema.to_json())
    joblib.dump(bundle.predictor.estimator, folder / "model.joblib")  # type: ignore[attr-defined]
    module = types.ModuleType("raymlops.data.preprocess")

    class FeaturePipeline:  # what the old pickles referred to
        pass

    FeaturePipeline.__module__ = module.__name__
    FeaturePipeline.__qualname__ = "FeaturePipeline"
    module.FeaturePipeline = FeaturePipeline  # type: ignore[attr-defined]
    old = FeaturePipeline()
    old.plan_ = [  # type: ignore[attr-defined]
        (
            ("onehot", (s.column, {c: i for i, c in enumerate(s.categories)}))
            if s.categories is not None
            else ("scale", (s.column, s.scale, s.shift))
        )
        for s in bundle.plan.steps
    ]
    sys.modules[module.__name__] = module
    try:
        (folder / "preprocessor.pkl").write_bytes(pickle.dumps(old))
    finally:
        del sys.modules[module.__name__]
    name = model.ref.split(":")[0]
    version = ModelStore(model.store).register(name, folder, {"kind": "random_forest"})
    return f"{name}:{version.version}"


def test_a_legacy_version_scores_only_with_allow_legacy_pickle(model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAYMLOPS_ALLOW_LEGACY_PICKLE", raising=False)
    ref = _legacy_version(model, tmp_path)
    make_rows(300, seed=4).to_csv(tmp_path / "in.csv", index=False)
    args = ["score", ref, "--store", model.store, "--input", str(tmp_path / "in.csv"), "--json"]
    refused = runner.invoke(app, [*args, "--output", str(tmp_path / "out1")])
    assert refused.exit_code == 2 and "--allow-legacy-pickle" in refused.output
    assert not (tmp_path / "out1").exists()  # refused before anything was written or started
    allowed = runner.invoke(app, [*args, "--output", str(tmp_path / "out2"), "--allow-legacy-pickle"])
    assert allowed.exit_code == 0, allowed.output
    scored = read_scored(tmp_path / "out2").sort_values("id")
    expected = ModelBundle.load(model.ref, model.store).predict_frame(make_rows(300, seed=4))
    assert scored["prediction"].tolist() == expected["prediction"].tolist()
