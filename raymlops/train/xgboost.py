"""XGBoost on Ray: data-parallel boosting with Ray Train's XGBoostTrainer, tuned by Ray Tune.

A ``kind: xgboost`` model trains with Ray Train V2's ``XGBoostTrainer`` on ``workers`` workers. Each
worker builds its DMatrix from its own shard of the training data
(``ray.train.get_dataset_shard("train")``) and Ray's XGBoost backend joins them in one collective, so
every tree is grown from histograms summed across all shards.

Every ``report_every`` boosting rounds rank 0 scores the whole validation split with the booster
so far, computes raymlops's metrics (:func:`raymlops.evaluate.metrics.compute_metrics`: accuracy,
log loss, ..., rmse, r2), checkpoints the booster in XGBoost's own UBJSON format and reports both
with ``ray.train.report``. Inside a Tune trial every report is one Tune step, so ``tune.metric`` and
ASHA work exactly as for the other kinds, and a stopped trial ends its Train run at its next report
(all ranks agree through XGBoost's own all-reduce) so that its workers' CPUs come back.

A ``workers: 1`` entry on CPUs needs no collective: each trial boosts in its own Tune actor
(:class:`_LocalXGBoostTrial`), with the same reports, checkpoints and metrics, and skips the ~20 s
a Ray Train run takes here to start its actors (a 2-trial digits search: 53-56 s -> 10-12 s).

The best trial's last checkpoint is the candidate model: an ``xgboost.Booster``, saved by
:mod:`raymlops.model.xgboost`. Nothing is pickled.

The Tune side (a class trainable that drives one Train run per trial, forwarding its reports, and
the resource plan that keeps room for Ray Data on a 2-core machine) is shared with Keras; see
:mod:`raymlops.train._trial` for why it is built that way.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import xgboost as xgb
from ray import tune

from raymlops.config import ModelConfig, TuneConfig
from raymlops.errors import ConfigError
from raymlops.evaluate.metrics import compute_metrics
from raymlops.model.xgboost import (
    XGBOOST_FILE,
    XGBoostParams,
    booster_params,
    scores_from_output,
    tree_methods,
)
from raymlops.train._trial import (
    STATE_FILE,
    TrainRunTrial,
    abs_storage,
    best_result,
    checkpoint_uri,
    fast_report_polling,
    final_reports,
    latest_checkpoint,
    limit_data_cpus,
    plan_resources,
    release_placement_groups,
    write_run_checkpoint,
)
from raymlops.train.base import X_COLUMN, Y_COLUMN, TrainedModel, TrainingData
from raymlops.train.tune import TrainingError, iter_results, resolve_metric, run_search, summarize_trials

__all__ = [
    "MAX_REPORTS",
    "XGBoostRun",
    "load_booster_checkpoint",
    "report_every",
    "train",
    "train_loop_per_worker",
    "train_xgboost_distributed",
]

#: At most this many reports (Tune steps) per trial: a report scores the validation split and
#: writes a checkpoint, which costs more than a boosting round on small data.
MAX_REPORTS = 20


@dataclass
class XGBoostRun:
    """The outcome of one Ray Train run: its last metrics (rank 0) and its last checkpoint."""

    metrics: dict[str, Any]
    checkpoint_path: str | None
    run_path: str | None = None


def _params(model_cfg: ModelConfig, overrides: dict[str, Any] | None = None) -> XGBoostParams:
    """The entry's params plus a trial's sampled values."""
    return XGBoostParams.model_validate({**model_cfg.params, **(overrides or {})})


def _max_rounds(model_cfg: ModelConfig) -> int:
    """The most boosting rounds any trial can run (``num_boost_round`` may be searched too)."""
    base = int(_params(model_cfg).num_boost_round)
    spec = model_cfg.search.get("num_boost_round")
    if spec is None:
        return base
    if spec.choice is not None:
        return max(int(v) for v in spec.choice)
    bounds = spec.randint or spec.uniform or spec.loguniform
    return int(math.ceil(bounds[1])) if bounds else base


def report_every(model_cfg: ModelConfig) -> int:
    """Rounds between two reports, the same for every trial of the entry so ASHA compares like
    with like: every round when the longest trial has at most :data:`MAX_REPORTS` rounds."""
    return max(1, math.ceil(_max_rounds(model_cfg) / MAX_REPORTS))


# ---- the Ray Train worker ------------------------------------------------------------------------


def _read_split(shard: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """One dataset shard as (X float32, y) arrays (an empty shard gives zero rows)."""
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=65536, batch_format="numpy"):
        xs.append(np.asarray(batch[X_COLUMN], dtype=np.float32))
        ys.append(np.asarray(batch[Y_COLUMN]))
    if not xs:
        return np.zeros((0, n_features), np.float32), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def _train_matrix(X: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> Any:
    """The worker's training matrix; ``hist`` gets a QuantileDMatrix (quantized: a fraction of the
    float rows' memory). Building it is collective: the quantile sketches of all shards are merged."""
    threads = int(params.get("nthread") or 0) or None  # this worker's share of the cores
    if params.get("tree_method", "hist") == "hist":
        return xgb.QuantileDMatrix(X, label=y, max_bin=int(params.get("max_bin", 256)), nthread=threads)
    return xgb.DMatrix(X, label=y, nthread=threads)


def _restore(checkpoint: Any) -> tuple[Any, dict[str, Any]]:
    """(booster, state) from the run's latest checkpoint, or (None, {}) for a fresh run."""
    if checkpoint is None:
        return None, {}
    with checkpoint.as_directory() as folder:
        booster = xgb.Booster(model_file=str(Path(folder) / XGBOOST_FILE))
        state: dict[str, Any] = json.loads((Path(folder) / STATE_FILE).read_text())
    return booster, state


def _report(booster: Any, metrics: dict[str, Any], rank: int) -> None:
    """Report on every rank (a barrier); rank 0 attaches the booster as the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(str(Path(tmp) / XGBOOST_FILE))
        (Path(tmp) / STATE_FILE).write_text(json.dumps({"rounds": metrics["rounds"], "metrics": metrics}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _ReportCallback(xgb.callback.TrainingCallback):
    """Every ``every`` rounds (and after the last): validation metrics, checkpoint, report, stop check.

    Only rank 0 predicts (prediction is local, no collective); every rank reports and then joins one
    all-reduce on the stop request, so all ranks leave the boosting loop at the same round.
    """

    def __init__(
        self, config: dict[str, Any], rank: int, world: int, dval: Any, y_val: np.ndarray | None
    ) -> None:
        super().__init__()
        self.total = int(config["num_boost_round"])
        self.every = int(config["every"])
        self.task = str(config["task"])
        self.n_classes = int(config["n_classes"])
        self.stop_flag = config.get("stop_flag")
        self.rank, self.world = rank, world
        self.dval, self.y_val = dval, y_val
        pg = ray.util.get_current_placement_group()
        self.placement_group = pg.id.hex() if pg is not None else None
        self._t0 = time.perf_counter()
        self._rounds_at_t0: int | None = None

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        rounds = int(model.num_boosted_rounds())
        if self._rounds_at_t0 is None:
            self._rounds_at_t0 = rounds - 1
        if rounds % self.every and rounds < self.total:
            return False
        elapsed = time.perf_counter() - self._t0
        metrics: dict[str, Any] = {
            "rounds": rounds,
            "world_size": self.world,
            "placement_group": self.placement_group,
            "rounds_per_s": (rounds - self._rounds_at_t0) / max(elapsed, 1e-9),
        }
        if self.y_val is not None:  # rank 0
            scores = scores_from_output(model.predict(self.dval), self.task)
            metrics.update(compute_metrics(self.task, self.y_val, scores, self.n_classes))
        _report(model, metrics, self.rank)
        return rounds < self.total and self._stop_requested()

    def _stop_requested(self) -> bool:
        """Whether the owner asked the run to end (ASHA stopped the trial); every rank gets one answer."""
        if self.stop_flag is None:
            return False
        flag = np.zeros(1, np.float64)
        if self.rank == 0:
            try:
                flag[0] = float(bool(ray.get(self.stop_flag.is_set.remote(), timeout=30)))
            except Exception:  # the owner is gone: nobody wants the rest of this run
                flag[0] = 1.0
        if self.world > 1:
            flag = xgb.collective.allreduce(flag, xgb.collective.Op.MAX)
        return bool(flag[0] > 0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train loop: build the shard's matrix, restore, boost, report every few rounds.

    Args:
        config: ``params`` (the ``xgboost.train`` parameter dict, device and threads included),
            ``num_boost_round``, ``every`` (rounds between reports), ``task``, ``n_classes``,
            ``n_features`` and an optional ``stop_flag`` actor (when set, the run ends at its next
            report).
    """
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    params = dict(config["params"])
    n_features = int(config["n_features"])
    X, y = _read_split(ray.train.get_dataset_shard("train"), n_features)
    dtrain = _train_matrix(X, y, params)
    del X, y
    # Every rank builds a validation matrix (DMatrix construction is collective: the column count is
    # agreed across workers); only rank 0 holds the rows and predicts on them.
    X_val, y_val = _read_split(ray.train.get_dataset_shard("val"), n_features) if rank == 0 else (None, None)
    dval = xgb.DMatrix(
        X_val if X_val is not None else np.zeros((0, n_features), np.float32), nthread=params.get("nthread")
    )
    booster, state = _restore(ray.train.get_checkpoint())
    done = int(booster.num_boosted_rounds()) if booster is not None else 0
    total = int(config["num_boost_round"])
    if booster is not None and done >= total:
        # Restored after the last round was checkpointed: report it again so that a resumed Tune
        # trial still sees the final metrics and checkpoint.
        _report(booster, dict(state.get("metrics") or {"rounds": done}), rank)
        return
    callback = _ReportCallback(config, rank, world, dval, np.asarray(y_val) if y_val is not None else None)
    xgb.train(
        params,
        dtrain,
        num_boost_round=total - done,
        xgb_model=booster,
        callbacks=[callback],
        verbose_eval=False,
    )


# ---- one Train run -------------------------------------------------------------------------------


def _check_device(gpu: bool, methods: set[str]) -> None:
    """XGBoost's exact method has no GPU implementation: say so before any worker starts."""
    if gpu and "exact" in methods:
        raise ConfigError(
            "tree_method 'exact' does not run on a GPU, and this cluster gives each worker one "
            "(use_gpu: auto); use 'hist', or set use_gpu: false"
        )


def train_xgboost_distributed(
    params: XGBoostParams,
    data: TrainingData,
    *,
    workers: int,
    use_gpu: bool | str = "auto",
    storage_path: str,
    name: str,
    every: int = 1,
    max_failures: int = 0,
    cpus_per_worker: float | None = None,
    threads: int | None = None,
    callbacks: list[Any] | None = None,
    stop_flag: Any = None,
) -> XGBoostRun:
    """One data-parallel Ray Train run of XGBoost; every ``every`` rounds it reports and checkpoints.

    Args:
        params: the boosting parameters.
        data: training rows (sharded across workers) and validation rows (scored by rank 0).
        workers: Ray Train workers, joined in one XGBoost collective.
        use_gpu: True, False or "auto" (``device: cuda`` when the cluster has a GPU per worker).
        storage_path: where Ray Train keeps the run and its checkpoints (shared on a cluster).
        name: the run's name; the same (storage_path, name) resumes an interrupted run.
        every: boosting rounds between two reports.
        max_failures: worker failures tolerated; the run continues from its last checkpoint.
        cpus_per_worker: CPUs per worker; default from the resource plan.
        threads: XGBoost threads per worker; default from the CPUs per worker.
        callbacks: Ray Train ``UserCallback``s (they run in the Train controller).
        stop_flag: an actor with ``is_set()``; when set, the run ends at its next report.
    """
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    if data.n_train < workers:
        raise TrainingError(f"{data.n_train} training rows cannot be split across {workers} workers")
    plan = plan_resources(workers, use_gpu)
    _check_device(plan.use_gpu, {params.tree_method})
    cpus = float(cpus_per_worker if cpus_per_worker is not None else plan.cpus_per_worker)
    resources: dict[str, float] = {"CPU": cpus, **({"GPU": 1.0} if plan.use_gpu else {})}
    booster = booster_params(params, data.task, data.n_classes, gpu=plan.use_gpu)
    booster["nthread"] = int(threads or max(1, int(cpus)))
    loop_config = {
        "params": booster,
        "num_boost_round": int(params.num_boost_round),
        "every": int(every),
        "task": data.task,
        "n_classes": int(data.n_classes),
        "n_features": int(data.n_features),
        "stop_flag": stop_flag,
    }
    trainer = XGBoostTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=plan.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=abs_storage(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
        ),
        datasets={"train": data.train, "val": data.val},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    with fast_report_polling():
        result = trainer.fit()
    return XGBoostRun(
        metrics=dict(result.metrics or {}),
        checkpoint_path=checkpoint_uri(result.checkpoint) if result.checkpoint is not None else None,
        run_path=str(result.path) if getattr(result, "path", None) else None,
    )


def load_booster_checkpoint(path: str) -> Any:
    """The booster stored in one checkpoint (a local path or a storage URI), set to predict on CPU."""
    import ray.train

    with ray.train.Checkpoint(path).as_directory() as folder:
        booster = xgb.Booster(model_file=str(Path(folder) / XGBOOST_FILE))
    booster.set_param({"device": "cpu"})
    return booster


# ---- Tune ----------------------------------------------------------------------------------------


class _XGBoostTrial(TrainRunTrial):
    """One Tune trial: a Ray Train run for the sampled params, one Tune step per report.

    See :class:`raymlops.train._trial.TrainRunTrial`: a stopped trial asks its Train run to end at
    the next report and waits for it, so the run releases its placement group instead of leaking
    its workers' CPUs.
    """

    progress_key = "rounds"

    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        data: TrainingData,
        model_cfg: ModelConfig,
        plan: dict[str, Any],
        every: int,
        train_storage: str,
    ) -> None:
        self._data = data
        self._model_cfg = model_cfg
        self._plan = plan
        self._every = every
        self._train_storage = train_storage
        self._start_run(config)

    def _prepare(self, config: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], Any], int]:
        params = _params(self._model_cfg, config)
        kwargs: dict[str, Any] = {
            "workers": int(self._plan["workers"]),
            "use_gpu": bool(self._plan["use_gpu"]),
            "storage_path": self._train_storage,
            # Fixed per trial, so a restored trial resumes its Train run from its last checkpoint.
            "name": f"train_{self.trial_id}",
            "every": self._every,
            "max_failures": self._model_cfg.max_failures,
            "cpus_per_worker": float(self._plan["cpus_per_worker"]),
            "threads": int(self._plan["threads"]),
        }

        def run(extra: dict[str, Any]) -> Any:
            return train_xgboost_distributed(params, self._data, **kwargs, **extra)

        return run, int(params.num_boost_round)


class _LocalXGBoostTrial(tune.Trainable):
    """One Tune trial of a one-worker entry on CPUs, boosted in this trial's actor: one step per report.

    A Ray Train run starts its controller, worker, dataset and coordinator actors one after another
    (~20 s per trial here, against ~1 s of boosting on digits); a world of one needs none of them.
    The trial reads its rows from the Datasets itself (in its actor, never in the driver), keeps one
    booster across steps (its prediction cache too) and checkpoints every report into
    ``<train_storage>/train_<trial_id>`` in the Train runs' format, so a restored trial resumes from
    there. Tune stops it between two steps, so ASHA needs no stop flag.
    """

    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        data: TrainingData,
        model_cfg: ModelConfig,
        plan: dict[str, Any],
        every: int,
        train_storage: str,
    ) -> None:
        self._data = data
        self._model_cfg = model_cfg
        self._plan = plan
        self._every = every
        self._train_storage = train_storage.rstrip("/")
        limit_data_cpus((data.train, data.val), plan.get("data_cpus"))
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        data = self._data
        params = _params(self._model_cfg, config)
        booster = booster_params(params, data.task, data.n_classes, gpu=False)
        booster["nthread"] = int(self._plan["threads"])
        self._total = int(params.num_boost_round)
        X, y = _read_split(data.train, int(data.n_features))
        self._dtrain = _train_matrix(X, y, booster)
        del X, y
        X_val, y_val = _read_split(data.val, int(data.n_features))
        self._dval, self._y_val = xgb.DMatrix(X_val, nthread=booster["nthread"]), np.asarray(y_val)
        self._run_dir = f"{self._train_storage}/train_{self.trial_id}"
        self._last: dict[str, Any] = {}
        saved: bytearray | None = None
        latest = latest_checkpoint(self._run_dir)
        if latest is not None:
            import ray.train

            with ray.train.Checkpoint(latest[0]).as_directory() as folder:
                saved = bytearray((Path(folder) / XGBOOST_FILE).read_bytes())
            self._last = {**dict(latest[1].get("metrics") or {}), "checkpoint_path": latest[0]}
        self._booster = xgb.Booster(booster, [self._dtrain], model_file=saved)

    def step(self) -> dict[str, Any]:
        done = int(self._booster.num_boosted_rounds())
        if done >= self._total and self._last:  # restored after its last report
            return {**self._last, "done": True}
        end = min(self._total, (done // self._every + 1) * self._every)  # the Train runs' report rounds
        started = time.perf_counter()
        for i in range(done, end):
            self._booster.update(self._dtrain, i)
        metrics: dict[str, Any] = {
            "rounds": end,
            "world_size": 1,
            "rounds_per_s": (end - done) / max(time.perf_counter() - started, 1e-9),
        }
        scores = scores_from_output(self._booster.predict(self._dval), self._data.task)
        metrics.update(compute_metrics(self._data.task, self._y_val, scores, self._data.n_classes))
        metrics["checkpoint_path"] = write_run_checkpoint(self._run_dir, end, self._writer(metrics))
        self._last = metrics
        return {**metrics, "done": end >= self._total, "timestamp": time.time()}  # sub-second, as Keras

    def _writer(self, metrics: dict[str, Any]) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            self._booster.save_model(str(folder / XGBOOST_FILE))
            (folder / STATE_FILE).write_text(json.dumps({"rounds": metrics["rounds"], "metrics": metrics}))

        return write

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Only the last report: the booster lives in the run's own checkpoints (resumed by setup)."""
        return {"last": self._last}

    def load_checkpoint(self, checkpoint: Any) -> None:
        if isinstance(checkpoint, dict) and checkpoint.get("last"):
            self._last = dict(checkpoint["last"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor for the next trial (its rows are read again for the new params)."""
        self._start(new_config)
        return True


def _rounds_in_search(results: Any) -> int:
    """Boosting rounds the trials reported in total (ASHA makes it smaller than num_samples x rounds)."""
    return int(sum(int((r.metrics or {}).get("rounds") or 0) for r in iter_results(results)))


def _stopped_early(results: Any, model_cfg: ModelConfig) -> int:
    """Trials that ended (ASHA, interruption) before their last round."""
    count = 0
    for result in iter_results(results):
        planned = int(_params(model_cfg, result.config or {}).num_boost_round)
        if result.metrics and int(result.metrics.get("rounds", 0)) < planned:
            count += 1
    return count


def train(
    model_cfg: ModelConfig,
    tune_cfg: TuneConfig,
    data: TrainingData,
    *,
    storage_path: str,
    experiment: str,
    resume: bool = False,
    base_dir: str | None = None,
) -> TrainedModel:
    """Search the booster's space with Tune (each trial a data-parallel Train run, or for one CPU
    worker a booster in the trial's actor); return the best.

    Every report carries the validation metric, so ``scheduler: asha`` stops weak trials early. With
    ``resume`` an interrupted experiment continues: finished trials are kept, unfinished ones resume
    their Train runs from their last checkpoint. The candidate is the best trial's last booster.
    """
    metric, mode = resolve_metric(tune_cfg, data.task)
    _params(model_cfg)  # fail before any Ray work on a bad params block
    if data.n_train < model_cfg.workers:
        raise TrainingError(
            f"model {model_cfg.name!r}: {data.n_train} training rows cannot be split across "
            f"{model_cfg.workers} workers"
        )
    plan = plan_resources(model_cfg.workers, model_cfg.use_gpu, tune_cfg, in_trial=model_cfg.workers == 1)
    if plan.use_gpu and model_cfg.workers == 1:  # a GPU worker keeps its Ray Train run
        plan = plan_resources(model_cfg.workers, model_cfg.use_gpu, tune_cfg)
    in_trial = model_cfg.workers == 1 and not plan.use_gpu
    _check_device(plan.use_gpu, tree_methods(model_cfg))
    every = report_every(model_cfg)
    storage = abs_storage(storage_path)
    train_storage = f"{storage.rstrip('/')}/{experiment}"
    trainable = tune.with_parameters(
        _LocalXGBoostTrial if in_trial else _XGBoostTrial,
        data=data,
        model_cfg=model_cfg,
        plan=asdict(plan),
        every=every,
        train_storage=train_storage,
    )
    results = run_search(
        trainable,
        model_cfg=model_cfg,
        tune_cfg=tune_cfg,
        metric=metric,
        mode=mode,
        resources={"cpu": plan.trial_cpus},
        max_concurrent=plan.max_concurrent,
        max_t=math.ceil(_max_rounds(model_cfg) / every),
        storage_path=storage,
        experiment=experiment,
        resume=resume,
    )
    release_placement_groups(results)
    picked = best_result(final_reports(results, train_storage), metric, mode)
    if picked is None:
        errors = [str(r.error) for r in iter_results(results) if r.error]
        raise TrainingError(
            f"every trial of model {model_cfg.name!r} failed: {errors[0] if errors else 'no result'}"
        )
    best, best_metrics, best_checkpoint = picked
    booster = load_booster_checkpoint(best_checkpoint)
    sampled = {k: v for k, v in (best.config or {}).items() if k in model_cfg.search}
    return TrainedModel(
        name=model_cfg.name,
        kind="xgboost",
        workers=model_cfg.workers,
        best_params={**model_cfg.params, **sampled},
        val_metric=float(best_metrics[metric]),
        estimator=booster,
        trials=summarize_trials(results, metric),
        extra={
            "checkpoint_path": best_checkpoint,
            "rounds": int(booster.num_boosted_rounds()),
            "report_every": every,
            "rounds_in_search": _rounds_in_search(results),
            "trials_stopped_early": _stopped_early(results, model_cfg),
            "use_gpu": plan.use_gpu,
            "cpus_per_worker": plan.cpus_per_worker,
            "max_concurrent_trials": plan.max_concurrent,
            "rounds_per_s": best_metrics.get("rounds_per_s"),
        },
    )
