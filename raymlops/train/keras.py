"""Keras 3 MLPs on Ray: data-parallel Ray Train runs, tuned by Ray Tune, checkpointed every epoch.

A ``kind: keras`` model trains with Ray Train's ``TensorflowTrainer`` on ``workers`` workers. Each worker
reads its own shard of the training data with ``ray.train.get_dataset_shard`` and gradients are
combined by a real collective all-reduce every step (see :mod:`raymlops.train._keras_worker` for why
this is a custom loop and not ``model.fit``: Keras 3's ``fit`` breaks under
``MultiWorkerMirroredStrategy``, ray-project/ray#47464).

Tune follows the Ray Train V2 pattern: each trial builds and runs its own ``TensorflowTrainer`` and
forwards every epoch's report (validation metric and checkpoint path) to Tune, so ASHA can stop
weak trials early. The trial is a small class trainable rather than a function (see
:class:`_KerasTrial`): a stopped trial then ends its Train run cleanly and frees its CPUs. Resources
are planned so that the trials that run at once, times their workers, fit the cluster with room
left for Ray Data: on a 2-core laptop the workers get fractional CPUs instead of waiting forever
for whole ones.

The best trial's last epoch checkpoint is the candidate model; it is saved in the native ``.keras``
format, which loads without ``safe_mode=False``.

TensorFlow is imported lazily: importing this module costs no TensorFlow start-up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raymlops.config import ModelConfig, TuneConfig
from raymlops.model.keras import KerasParams, KerasTrainingParams
from raymlops.train.base import TrainedModel, TrainingData
from raymlops.train.tune import (
    TrainingError,
    iter_results,
    resolve_metric,
    run_search,
    summarize_trials,
    trial_concurrency,
)

__all__ = [
    "KERAS_FILE",
    "KerasPlan",
    "KerasRun",
    "checkpoint_uri",
    "load_keras_checkpoint",
    "model_spec",
    "plan_keras_resources",
    "train_keras_distributed",
    "train",
]

KERAS_FILE = "model.keras"
RESERVE_CPUS = 0.5  # left free for Ray Data (split coordinator, reads) so training never starves it
TRIAL_DRIVER_CPUS = 0.1  # the Tune trial only launches and watches its Train run
MAX_CPUS_PER_WORKER = 8
STOP_TIMEOUT_S = 300.0  # how long a stopped trial waits for its Train run to end after its epoch


@dataclass
class KerasPlan:
    """How one Keras model entry uses the cluster: per worker, per trial and across trials."""

    workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int
    trial_cpus: float
    max_concurrent: int


@dataclass
class KerasRun:
    """The outcome of one Ray Train run: its last metrics and its last epoch checkpoint."""

    metrics: dict[str, Any]
    checkpoint_path: str | None
    run_path: str | None = None


def _cluster_total(resource: str) -> float:
    return float(ray.cluster_resources().get(resource, 0.0)) if ray.is_initialized() else 0.0


def _resolve_gpu(use_gpu: bool | str, workers: int) -> bool:
    """``auto``: GPUs when the cluster has one per worker, else CPU (never wait for absent GPUs)."""
    if use_gpu == "auto":
        return _cluster_total("GPU") >= workers
    return bool(use_gpu)


def plan_keras_resources(
    workers: int, use_gpu: bool | str = "auto", tune_cfg: TuneConfig | None = None
) -> KerasPlan:
    """Size workers and trial concurrency so trials x workers fit the cluster and Ray Data still runs.

    Whole CPUs per worker when the cluster has them for every trial that should run at once;
    otherwise fractional CPUs (down to 0.1) so that at least one trial starts on a small machine:
    2 workers x 1 CPU on a 2-CPU box leave Ray Data nothing and the run hangs.
    """
    total = _cluster_total("CPU") or float(os.cpu_count() or 1)
    gpu = _resolve_gpu(use_gpu, workers)
    avail = max(total - RESERVE_CPUS, 0.2)
    wanted = 1
    if tune_cfg is not None:
        wanted = min(tune_cfg.num_samples, tune_cfg.max_concurrent_trials or tune_cfg.num_samples)
    per_worker = (avail / wanted - TRIAL_DRIVER_CPUS) / workers
    if per_worker >= 1:
        per_worker = float(min(math.floor(per_worker), MAX_CPUS_PER_WORKER))
    else:
        per_worker = min(1.0, (avail - TRIAL_DRIVER_CPUS) / workers)
        per_worker = max(0.1, math.floor(per_worker * 20) / 20)
    trial_cpus = TRIAL_DRIVER_CPUS + workers * per_worker
    concurrency = 1
    if tune_cfg is not None:
        concurrency = trial_concurrency(tune_cfg, trial_cpus, reserve_cpus=RESERVE_CPUS)
        if gpu:
            concurrency = max(1, min(concurrency, int(_cluster_total("GPU") // workers)))
    return KerasPlan(
        workers=workers,
        use_gpu=gpu,
        cpus_per_worker=per_worker,
        gpus_per_worker=1.0 if gpu else 0.0,
        threads=max(1, int(per_worker)),
        trial_cpus=TRIAL_DRIVER_CPUS,
        max_concurrent=concurrency,
    )


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


def _abs_storage(storage_path: str) -> str:
    return storage_path if "://" in storage_path else os.path.abspath(storage_path)


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

    Returns:
        The last reported metrics (rank 0) and the last epoch checkpoint's path.
    """
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from raymlops.train._keras_worker import train_loop_per_worker

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
    loop_config = {
        "spec": spec,
        "learning_rate": float(params.learning_rate),
        "batch_size": int(params.batch_size),
        "epochs": int(params.epochs),
        "threads": int(threads or max(1, int(cpus))),
        "trace_dir": trace_dir,
        "stop_flag": stop_flag,
    }
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=plan.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=_abs_storage(storage_path),
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
    result = trainer.fit()
    return KerasRun(
        metrics=dict(result.metrics or {}),
        checkpoint_path=checkpoint_uri(result.checkpoint) if result.checkpoint is not None else None,
        run_path=str(result.path) if getattr(result, "path", None) else None,
    )


def checkpoint_uri(checkpoint: Any) -> str:
    """A checkpoint's location as a path (local storage) or a URI (``s3://...``) that loads anywhere."""
    fs = getattr(checkpoint, "filesystem", None)
    scheme = getattr(fs, "type_name", "local") if fs is not None else "local"
    path = str(checkpoint.path)
    return path if scheme == "local" or "://" in path else f"{scheme}://{path}"


def load_keras_checkpoint(path: str) -> Any:
    """The model stored in one epoch checkpoint (a local path or a storage URI)."""
    import ray.train

    from raymlops.train._keras_worker import load_model_from_checkpoint_dir

    with ray.train.Checkpoint(path).as_directory() as folder:
        return load_model_from_checkpoint_dir(Path(folder))


class _StopFlag:
    """Set by a Tune trial that is being stopped; read by rank 0 once per epoch."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


_StopFlagActor: Any = ray.remote(num_cpus=0)(_StopFlag)
_DONE = "__raymlops_train_run_done__"


def _forward_reports_callback(queue: Any) -> Any:
    """A Ray Train ``UserCallback`` (built lazily: ray.train is heavy) that forwards rank 0's reports."""
    from ray.train import UserCallback

    class _ForwardReports(UserCallback):  # type: ignore[misc]
        def __init__(self, q: Any) -> None:
            self._queue = q

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            item = dict(metrics[0])
            item["checkpoint_path"] = checkpoint_uri(checkpoint) if checkpoint is not None else None
            self._queue.put(item)

    return _ForwardReports(queue)


class _KerasTrial(tune.Trainable):
    """One Tune trial: a Ray Train run for the sampled params, one Tune step per epoch.

    The Train V2 pattern (the trial launches a ``TensorflowTrainer``), as a class rather than a
    function trainable for one reason: a stopped *function* trial is torn down at once, which kills
    its Train controller before it can release its placement group (its own cleaner needs the
    dashboard), and the leaked CPUs starve every later trial. Here :meth:`cleanup` (and
    :meth:`reset_config`, when Tune reuses the actor) asks the workers to stop after the current
    epoch and waits for the run to end normally.
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
        self._max_failures = max_failures
        self._train_storage = train_storage
        self._thread: Any = None
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        import threading

        from ray.util.queue import Queue

        params = _params(self._model_cfg, config)
        spec = model_spec(params, self._data, builder=self._model_cfg.builder, base_dir=self._base_dir)
        self._epochs = int(params.epochs)
        self._queue = Queue(actor_options={"num_cpus": 0})
        self._flag = _StopFlagActor.remote()
        self._error: BaseException | None = None
        self._last: dict[str, Any] = {}
        kwargs = {
            "workers": int(self._plan["workers"]),
            "use_gpu": bool(self._plan["use_gpu"]),
            "max_failures": self._max_failures,
            "storage_path": self._train_storage,
            # Fixed per trial, so a restored trial resumes its Train run from its last checkpoint.
            "name": f"train_{self.trial_id}",
            "report_to_tune": False,
            "cpus_per_worker": float(self._plan["cpus_per_worker"]),
            "threads": int(self._plan["threads"]),
            "callbacks": [_forward_reports_callback(self._queue)],
            "stop_flag": self._flag,
            "spec": spec,
        }
        self._thread = threading.Thread(
            target=self._run,
            args=(params, self._data, kwargs, self._queue),
            name="raymlops-keras-train",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self, params: KerasTrainingParams, data: TrainingData, kwargs: dict[str, Any], queue: Any
    ) -> None:
        try:
            train_keras_distributed(params, data, **kwargs)
        except BaseException as err:  # surfaced by step()
            self._error = err
        finally:
            queue.put(_DONE)

    def _stop_run(self) -> None:
        """Ask the running Train run to end after its epoch and wait until it has (bounded)."""
        if self._thread is None:
            return
        # If the flag actor is gone, the workers see that and stop on their own.
        with contextlib.suppress(Exception):
            ray.get(self._flag.set.remote(), timeout=30)
        self._thread.join(timeout=STOP_TIMEOUT_S)
        self._thread = None

    def step(self) -> dict[str, Any]:
        item = self._queue.get()
        if item == _DONE:
            if self._error is not None:
                raise self._error
            return {**self._last, "done": True}
        self._last = item
        if int(item.get("epoch", 0)) >= self._epochs:
            return {**item, "done": True}
        return item

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Tune's own checkpoint holds only the last report: the model state lives in the Train run's
        checkpoints, which a restored trial resumes from by itself."""
        return {"last": self._last}

    def load_checkpoint(self, checkpoint: Any) -> None:
        if isinstance(checkpoint, dict):
            self._last = dict(checkpoint.get("last") or {})

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor for the next trial (``reuse_actors``): end the old run, start the new one."""
        self._stop_run()
        self._start(new_config)
        return True

    def cleanup(self) -> None:
        self._stop_run()


def _release_placement_groups(results: Any) -> None:
    """Remove placement groups that trials killed at the experiment's end left behind.

    Tune gives trials only seconds to stop when an experiment ends (or is interrupted); a Train run
    still shutting down then loses its controller, and its placement group stays reserved until the
    driver exits, which would starve the next model's training. Every trial reports the placement
    group its workers ran in; none of them is in use once the search has returned.
    """
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    try:
        table = placement_group_table()
    except Exception:
        return
    for result in iter_results(results):
        pg_hex = (result.metrics or {}).get("placement_group")
        info = table.get(pg_hex) if isinstance(pg_hex, str) else None
        if info is None or info.get("state") == "REMOVED":
            continue
        assert isinstance(pg_hex, str)
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
        except Exception:  # noqa: S112 - already gone or not ours to remove
            continue


def _storage_fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _latest_checkpoint(run_dir: str) -> tuple[str, dict[str, Any]] | None:
    """(path, state) of the newest epoch checkpoint of one Train run, read from storage."""
    import pyarrow.fs as pafs

    from raymlops.train._keras_worker import CKPT_STATE

    fs, root = _storage_fs(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    for info in sorted(
        (i for i in infos if i.type == pafs.FileType.Directory), key=lambda i: i.path, reverse=True
    ):
        if not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{CKPT_STATE}") as fh:
                state: dict[str, Any] = json.loads(fh.read().decode())
        except (OSError, ValueError):
            continue
        prefix = run_dir.split("://", 1)[0] + "://" if "://" in run_dir else ""
        return prefix + info.path, state
    return None


def _final_reports(results: Any, train_storage: str) -> list[tuple[Any, dict[str, Any], str]]:
    """(result, metrics, checkpoint path) of every trial's last model that still exists.

    Normally that is Tune's last report and its checkpoint. A trial interrupted while its Train run
    still finished an epoch or two has newer checkpoints than Tune saw, and the one Tune points to
    may already be rotated away; then the run's newest checkpoint and the metrics stored in it are
    used, so the metric and the model always belong together.
    """
    out = []
    for result in iter_results(results):
        m = dict(result.metrics or {})
        path = m.get("checkpoint_path")
        if isinstance(path, str) and _exists(path):
            out.append((result, m, path))
            continue
        trial_id = m.get("trial_id") or (result.config or {}).get("trial_id")
        latest = _latest_checkpoint(f"{train_storage.rstrip('/')}/train_{trial_id}") if trial_id else None
        if latest is not None:
            ckpt, state = latest
            out.append((result, {**dict(state.get("metrics") or {}), "checkpoint_path": ckpt}, ckpt))
    return out


def _exists(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = _storage_fs(path)
    try:
        return bool(fs.get_file_info(p).type != pafs.FileType.NotFound)
    except OSError:
        return False


def _best_result(
    finals: list[tuple[Any, dict[str, Any], str]], metric: str, mode: str
) -> tuple[Any, dict[str, Any], str] | None:
    """The trial whose last model scores best on the validation metric: its model is the candidate."""
    scored = []
    for entry in finals:
        value = entry[1].get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            scored.append((float(value), entry))
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda pair: pair[0])[1]


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
    storage = _abs_storage(storage_path)
    trainable = tune.with_parameters(
        _KerasTrial,
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
    _release_placement_groups(results)
    train_storage = f"{storage.rstrip('/')}/{experiment}"
    picked = _best_result(_final_reports(results, train_storage), metric, mode)
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
