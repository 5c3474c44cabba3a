"""Keras 3 MLPs on Ray: tuned by Ray Tune, data-parallel on Ray Train for N workers, checkpointed.

A ``kind: keras`` model with ``workers: N > 1`` trains with a Ray Train ``DataParallelTrainer`` on N
workers (backend: :mod:`raymlops.train._tf_backend`, Ray's ``TensorflowTrainer`` minus its
TensorFlow import in the trial and the controller). Each worker reads its own shard of the
training data with ``ray.train.get_dataset_shard`` and gradients are combined by a real collective
all-reduce every step (see
:mod:`raymlops.train._keras_worker` for why this is a custom loop and not ``model.fit``: Keras 3's
``fit`` breaks under ``MultiWorkerMirroredStrategy``, ray-project/ray#47464).

With ``workers: 1`` there is nothing to all-reduce, and a Ray Train worker group would cost each
trial 10-20 s of start-up here for nothing: the Tune trial trains in its own actor
(:class:`raymlops.train._keras_worker.LocalRun`), one Tune step per epoch, reading the Datasets
with ``iter_batches``. Checkpoints, metrics and resume work the same way for both.

Tune follows the Ray Train V2 pattern for N workers: each trial builds and runs its own
``DataParallelTrainer`` and forwards every epoch's report (validation metric and checkpoint path) to
Tune, so ASHA can stop weak trials early (:class:`raymlops.train._trial.TrainRunTrial`). Resources
are planned so that the trials that run at once, times their workers, fit the cluster with room
left for Ray Data: on a 2-core laptop the workers get fractional CPUs instead of waiting forever
for whole ones.

The best trial's last epoch checkpoint is the candidate model; it is saved in the native ``.keras``
format, which loads without ``safe_mode=False``.

TensorFlow is imported lazily: importing this module costs no TensorFlow start-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import tune

from raymlops.config import ModelConfig, TuneConfig
from raymlops.model.keras import KerasParams, KerasTrainingParams
from raymlops.train._trial import (
    ResourcePlan,
    TrainRunTrial,
    abs_storage,
    best_result,
    checkpoint_uri,
    fast_report_polling,
    final_reports,
    plan_resources,
    release_placement_groups,
)
from raymlops.train.base import TrainedModel, TrainingData
from raymlops.train.tune import TrainingError, iter_results, resolve_metric, run_search, summarize_trials

__all__ = [
    "KERAS_FILE",
    "KerasPlan",
    "KerasRun",
    "checkpoint_uri",
    "load_keras_checkpoint",
    "model_spec",
    "plan_keras_resources",
    "train_keras_distributed",
    "train_keras_local",
    "train",
]

KERAS_FILE = "model.keras"
KerasPlan = ResourcePlan  # the name this module used before the plan was shared with XGBoost


@dataclass
class KerasRun:
    """The outcome of one training run: its last metrics and its last epoch checkpoint."""

    metrics: dict[str, Any]
    checkpoint_path: str | None
    run_path: str | None = None


def plan_keras_resources(
    workers: int, use_gpu: bool | str = "auto", tune_cfg: TuneConfig | None = None
) -> ResourcePlan:
    """The resource plan of a Keras entry; a one-worker entry trains inside its trials' actors."""
    return plan_resources(workers, use_gpu, tune_cfg, in_trial=workers == 1)


def model_spec(
    params: KerasTrainingParams,
    data: TrainingData,
    *,
    builder: str | None = None,
    base_dir: str | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild the network, in plain JSON types (stored in every checkpoint).

    With a user ``builder`` the spec names it (``package.module:function``), where to import it
    from and the params the training loop does not use, which the builder receives.
    """
    training = set(KerasTrainingParams.model_fields)
    spec: dict[str, Any] = {
        "seed": int(params.seed),
        "n_features": int(data.n_features),
        "task": data.task,
        "n_classes": int(data.n_classes),
        "y_mean": float(data.y_mean),
        "y_std": float(data.y_std) or 1.0,
    }
    if builder is None:
        assert isinstance(params, KerasParams)
        spec.update(
            hidden=[int(h) for h in params.hidden],
            activation=params.activation,
            dropout=float(params.dropout),
        )
        return spec
    extra = {k: v for k, v in params.model_dump().items() if k not in training}
    spec.update(builder=builder, builder_path=base_dir, builder_params=extra)
    return spec


def _params(model_cfg: ModelConfig, overrides: dict[str, Any] | None = None) -> KerasTrainingParams:
    """The entry's params plus a trial's sampled values, as the built-in MLP's or a builder's."""
    cls = KerasParams if model_cfg.builder is None else KerasTrainingParams
    return cls.model_validate({**model_cfg.params, **(overrides or {})})


def train_keras_distributed(
    params: KerasTrainingParams,
    data: TrainingData,
    *,
    workers: int,
    use_gpu: bool | str,
    max_failures: int,
    storage_path: str,
    name: str,
    report_to_tune: bool,
    cpus_per_worker: float | None = None,
    threads: int | None = None,
    trace_dir: str | None = None,
    callbacks: list[Any] | None = None,
    stop_flag: Any = None,
    spec: dict[str, Any] | None = None,
    steps_per_execution: int | None = None,
) -> KerasRun:
    """One data-parallel Ray Train run of the MLP; every epoch reports and checkpoints.

    Args:
        params: the network and optimizer settings.
        data: training rows (sharded across workers) and validation rows (scored by rank 0).
        workers: Ray Train workers; gradients are all-reduced across them every step.
        use_gpu: True, False or "auto" (GPUs when the cluster has one per worker).
        max_failures: worker failures tolerated; the run restarts from the last epoch checkpoint.
        storage_path: where Ray Train keeps the run and its checkpoints (shared on a cluster).
        name: the run's name; the same (storage_path, name) resumes an interrupted run.
        report_to_tune: forward every epoch's metrics to the enclosing Tune *function* trial with
            Ray's ``TuneReportCallback`` (raymlops's own trials pass ``callbacks`` instead).
        cpus_per_worker: CPUs per worker; default from :func:`plan_keras_resources`.
        threads: TensorFlow intra-op threads per worker; default from the CPUs per worker.
        trace_dir: debugging aid on one machine: each rank writes the rows it saw per epoch and its pid.
        callbacks: extra Ray Train ``UserCallback``s (they run in the Train controller).
        stop_flag: an actor with ``is_set()``; when set, the workers end the run after the current
            epoch, so the run finishes normally and releases its placement group.
        spec: the network's spec (default: the built-in MLP's from ``params``).
        steps_per_execution: optimizer steps per compiled call (default 32).

    Returns:
        The last reported metrics (rank 0) and the last epoch checkpoint's path.
    """
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raymlops.train._keras_worker import train_loop_per_worker
    from raymlops.train._tf_backend import KerasCollectiveConfig

    if data.n_train < workers:
        raise TrainingError(f"{data.n_train} training rows cannot be split across {workers} workers")
    plan = plan_keras_resources(workers, use_gpu)
    cpus = float(cpus_per_worker if cpus_per_worker is not None else plan.cpus_per_worker)
    resources: dict[str, float] = {"CPU": cpus}
    if plan.use_gpu:
        resources["GPU"] = 1.0
    callbacks = list(callbacks or [])
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    spec = spec or model_spec(params, data)
    loop_config = _loop_config(params, spec, threads or max(1, int(cpus)), steps_per_execution)
    loop_config.update(trace_dir=trace_dir, stop_flag=stop_flag)
    trainer = DataParallelTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        backend_config=KerasCollectiveConfig(),
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
        datasets={
            # A new block order every epoch: each worker's shard differs from epoch to epoch (rows
            # within a shard are shuffled again by the worker's local buffer).
            "train": data.train.randomize_block_order(),
            "val": data.val,
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    with fast_report_polling():
        result = trainer.fit()
    return KerasRun(
        metrics=dict(result.metrics or {}),
        checkpoint_path=checkpoint_uri(result.checkpoint) if result.checkpoint is not None else None,
        run_path=str(result.path) if getattr(result, "path", None) else None,
    )


def load_keras_checkpoint(path: str) -> Any:
    """The model stored in one epoch checkpoint (a local path or a storage URI)."""
    import ray.train

    from raymlops.train._keras_worker import load_model_from_checkpoint_dir

    with ray.train.Checkpoint(path).as_directory() as folder:
        return load_model_from_checkpoint_dir(Path(folder))


def train_keras_local(
    params: KerasTrainingParams,
    data: TrainingData,
    *,
    storage_path: str,
    name: str,
    threads: int | None = None,
    spec: dict[str, Any] | None = None,
    steps_per_execution: int | None = None,
) -> KerasRun:
    """One world-size-1 run in this process: what a ``workers: 1`` trial runs, without Tune.

    Args:
        params: the network and optimizer settings.
        data: training and validation rows, streamed from their Datasets.
        storage_path: where the run keeps its checkpoints (``<storage_path>/<name>``).
        name: the run's name; the same (storage_path, name) resumes an interrupted run.
        threads: TensorFlow intra-op threads (only before TensorFlow started in this process).
        spec: the network's spec (default: the built-in MLP's from ``params``).
        steps_per_execution: optimizer steps per compiled call (default 32).
    """
    from raymlops.train._keras_worker import LocalRun

    run_dir = f"{abs_storage(storage_path).rstrip('/')}/{name}"
    run = LocalRun(
        _loop_config(params, spec or model_spec(params, data), threads, steps_per_execution),
        data.train,
        data.val,
        run_dir,
    )
    metrics: dict[str, Any] = {}
    try:
        while not run.done:
            metrics = run.next_epoch()
    finally:
        run.close()
    if not metrics and run.state:
        metrics = run.next_epoch()
    return KerasRun(metrics=metrics, checkpoint_path=metrics.get("checkpoint_path"), run_path=run_dir)


def _loop_config(
    params: KerasTrainingParams, spec: dict[str, Any], threads: int | None, steps_per_execution: int | None
) -> dict[str, Any]:
    return {
        "spec": spec,
        "learning_rate": float(params.learning_rate),
        "batch_size": int(params.batch_size),
        "epochs": int(params.epochs),
        "threads": int(threads or 1),
        "steps_per_execution": steps_per_execution,
    }


class _KerasTrial(TrainRunTrial):
    """One Tune trial of an N-worker entry: a Ray Train run for the sampled params, one step per epoch."""

    progress_key = "epoch"

    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        data: TrainingData,
        model_cfg: ModelConfig,
        plan: dict[str, Any],
        max_failures: int,
        train_storage: str,
        base_dir: str | None = None,
    ) -> None:
        self._data = data
        self._model_cfg = model_cfg
        self._base_dir = base_dir
        self._plan = plan
        self._max_failures = max_failures
        self._train_storage = train_storage
        self._start_run(config)

    def _prepare(self, config: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], Any], int]:
        params = _params(self._model_cfg, config)
        spec = model_spec(params, self._data, builder=self._model_cfg.builder, base_dir=self._base_dir)
        kwargs: dict[str, Any] = {
            "workers": int(self._plan["workers"]),
            "use_gpu": bool(self._plan["use_gpu"]),
            "max_failures": self._max_failures,
            "storage_path": self._train_storage,
            # Fixed per trial, so a restored trial resumes its Train run from its last checkpoint.
            "name": f"train_{self.trial_id}",
            "report_to_tune": False,
            "cpus_per_worker": float(self._plan["cpus_per_worker"]),
            "threads": int(self._plan["threads"]),
            "spec": spec,
        }

        def run(extra: dict[str, Any]) -> Any:
            return train_keras_distributed(params, self._data, **kwargs, **extra)

        return run, int(params.epochs)


class _LocalKerasTrial(tune.Trainable):
    """One Tune trial of a one-worker entry, trained in this trial's actor: one Tune step per epoch.

    No worker group to start (the 10-20 s that made ASHA lose to FIFO here) and none to release:
    Tune stops the trial between two epochs. A restored trial resumes from its newest checkpoint in
    ``<train_storage>/train_<trial_id>``, where Ray Train runs keep theirs too.
    """

    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        data: TrainingData,
        model_cfg: ModelConfig,
        plan: dict[str, Any],
        max_failures: int,
        train_storage: str,
        base_dir: str | None = None,
    ) -> None:
        self._data = data
        self._model_cfg = model_cfg
        self._base_dir = base_dir
        self._plan = plan
        self._train_storage = train_storage
        self._last: dict[str, Any] = {}
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        from raymlops.train._keras_worker import LocalRun

        params = _params(self._model_cfg, config)
        spec = model_spec(params, self._data, builder=self._model_cfg.builder, base_dir=self._base_dir)
        loop_config = _loop_config(params, spec, int(self._plan["threads"]), None)
        loop_config["data_cpus"] = self._plan.get("data_cpus")
        run_dir = f"{self._train_storage.rstrip('/')}/train_{self.trial_id}"
        self._run = LocalRun(loop_config, self._data.train, self._data.val, run_dir)

    def step(self) -> dict[str, Any]:
        metrics = self._run.next_epoch()
        self._last = metrics
        # Tune keeps a trainable's own timestamp: to the millisecond, not its whole-second default,
        # so that result.json tells when each epoch ended (time to a target accuracy, per trial).
        return {**metrics, "done": self._run.done, "timestamp": time.time()}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Only the last report: the model lives in the run's own checkpoints (resumed by setup)."""
        return {"last": self._last}

    def load_checkpoint(self, checkpoint: Any) -> None:
        if isinstance(checkpoint, dict):
            self._last = dict(checkpoint.get("last") or {})

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor (and its TensorFlow start-up) for the next trial."""
        self._run.close()
        self._start(new_config)
        return True

    def cleanup(self) -> None:
        self._run.close()


def _stopped_early(results: Any, model_cfg: ModelConfig) -> int:
    """Trials that ended (ASHA, interruption) before their last epoch."""
    count = 0
    for result in iter_results(results):
        planned = int(_params(model_cfg, result.config or {}).epochs)
        if result.metrics and int(result.metrics.get("epoch", 0)) < planned:
            count += 1
    return count


def _max_epochs(model_cfg: ModelConfig) -> int:
    """ASHA's max_t: the most epochs any trial can run (epochs may be searched too)."""
    base = int(_params(model_cfg).epochs)
    spec = model_cfg.search.get("epochs")
    if spec is None:
        return base
    if spec.choice is not None:
        return max(int(v) for v in spec.choice)
    bounds = spec.randint or spec.uniform or spec.loguniform
    return int(math.ceil(bounds[1])) if bounds else base


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
    """Search the MLP's space with Tune (each trial a distributed Train run); return the best trial's model.

    Every epoch reports the validation metric, so ``scheduler: asha`` stops weak trials early. With
    ``resume`` an interrupted experiment continues (``Tuner.restore``): finished trials are kept, and
    unfinished ones resume their Train runs from their last epoch checkpoint.
    """
    metric, mode = resolve_metric(tune_cfg, data.task)
    _params(model_cfg)  # fail before any Ray work on a bad params block
    plan = plan_keras_resources(model_cfg.workers, model_cfg.use_gpu, tune_cfg)
    storage = abs_storage(storage_path)
    trainable = tune.with_parameters(
        _LocalKerasTrial if model_cfg.workers == 1 else _KerasTrial,
        data=data,
        model_cfg=model_cfg,
        plan=asdict(plan),
        max_failures=model_cfg.max_failures,
        train_storage=f"{storage.rstrip('/')}/{experiment}",
        base_dir=base_dir,
    )
    results = run_search(
        trainable,
        model_cfg=model_cfg,
        tune_cfg=tune_cfg,
        metric=metric,
        mode=mode,
        resources={"cpu": plan.trial_cpus},
        max_concurrent=plan.max_concurrent,
        max_t=_max_epochs(model_cfg),
        storage_path=storage,
        experiment=experiment,
        resume=resume,
    )
    release_placement_groups(results)
    train_storage = f"{storage.rstrip('/')}/{experiment}"
    picked = best_result(final_reports(results, train_storage), metric, mode)
    if picked is None:
        errors = [str(r.error) for r in iter_results(results) if r.error]
        raise TrainingError(
            f"every trial of model {model_cfg.name!r} failed: {errors[0] if errors else 'no result'}"
        )
    best, best_metrics, best_checkpoint = picked
    model = load_keras_checkpoint(best_checkpoint)
    sampled = {k: v for k, v in (best.config or {}).items() if k in model_cfg.search}
    trials = summarize_trials(results, metric)
    return TrainedModel(
        name=model_cfg.name,
        kind="keras",
        workers=model_cfg.workers,
        best_params={**model_cfg.params, **sampled},
        val_metric=float(best_metrics[metric]),
        estimator=model,
        trials=trials,
        extra={
            "checkpoint_path": best_checkpoint,
            "epochs": int(best_metrics.get("epoch", 0)),
            "use_gpu": plan.use_gpu,
            "cpus_per_worker": plan.cpus_per_worker,
            "max_concurrent_trials": plan.max_concurrent,
            "trials_stopped_early": _stopped_early(results, model_cfg),
            "rank_weight_digests": best_metrics.get("rank_weight_digests"),
            "samples_per_s": best_metrics.get("samples_per_s"),
        },
        metadata={"builder": model_cfg.builder} if model_cfg.builder else {},
    )
