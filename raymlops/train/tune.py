"""Ray Tune plumbing shared by every model kind: search spaces, schedulers, sizing, resume.

Trials report the validation metric once per step (a block of trees, an epoch), so ASHA can stop
weak trials early whatever the model kind.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raymlops._progress import search_callbacks
from raymlops.config import ModelConfig, SearchSpace, TuneConfig, resolve_metric
from raymlops.errors import UserError


class TrainingError(UserError):
    """Every trial of a model failed; the message carries the first trial's error."""


__all__ = [
    "TrainingError",
    "best_or_raise",
    "experiment_path",
    "make_scheduler",
    "resolve_metric",
    "iter_results",
    "run_search",
    "summarize_trials",
    "to_param_space",
    "trial_concurrency",
]


def to_param_space(search: dict[str, SearchSpace]) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for key, spec in search.items():
        if spec.choice is not None:
            space[key] = tune.choice(spec.choice)
        elif spec.uniform is not None:
            space[key] = tune.uniform(*spec.uniform)
        elif spec.loguniform is not None:
            space[key] = tune.loguniform(*spec.loguniform)
        elif spec.randint is not None:
            low, high = spec.randint
            space[key] = tune.randint(low, high + 1)  # inclusive upper bound, as written in the file
    return space


def make_scheduler(tune_cfg: TuneConfig, max_t: int) -> TrialScheduler:
    if tune_cfg.scheduler == "asha" and max_t > 1:
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=min(tune_cfg.grace_period, max_t),
            reduction_factor=tune_cfg.reduction_factor,
        )
    return FIFOScheduler()


def trial_concurrency(tune_cfg: TuneConfig, cpus_per_trial: float, reserve_cpus: float = 0.5) -> int:
    """How many trials fit at once, leaving room for Ray Data so nothing waits on a CPU forever."""
    total = float(ray.cluster_resources().get("CPU", 1.0))
    fit = max(1, math.floor((total - reserve_cpus) / cpus_per_trial))
    if tune_cfg.max_concurrent_trials:
        fit = min(fit, tune_cfg.max_concurrent_trials)
    return min(fit, tune_cfg.num_samples)


def experiment_path(storage_path: str, pipeline: str, model: str) -> tuple[str, str]:
    """(storage_path, experiment name): one fixed place per pipeline and model, so --resume finds it."""
    return storage_path, f"{pipeline}__{model}"


def _clear_experiment(storage_path: str, name: str) -> None:
    fs, root = (
        pafs.FileSystem.from_uri(storage_path)
        if "://" in storage_path
        else (pafs.LocalFileSystem(), os.path.abspath(storage_path))
    )
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def run_search(
    trainable: Callable[..., Any],
    *,
    model_cfg: ModelConfig,
    tune_cfg: TuneConfig,
    metric: str,
    mode: str,
    resources: dict[str, float] | tune.PlacementGroupFactory,
    max_concurrent: int,
    max_t: int,
    storage_path: str,
    experiment: str,
    resume: bool,
    callbacks: list[tune.Callback] | None = None,
) -> tune.ResultGrid:
    """Run (or resume) one model entry's search and return Tune's results.

    ``callbacks`` go to Tune's RunConfig; by default, those of the MLflow tracking session in
    progress (one child run per trial; none when tracking is off).
    """
    if callbacks is None:  # [tracking]
        from raymlops.tracking import tune_callbacks

        callbacks = tune_callbacks(model_cfg.name)
    # [console] the live view's trial rows
    progress = search_callbacks(model_cfg.name, model_cfg.kind, metric, mode, tune_cfg.num_samples)
    callbacks = [*callbacks, *progress]
    wrapped = tune.with_resources(trainable, resources)
    path = f"{storage_path.rstrip('/')}/{experiment}"
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
    else:
        _clear_experiment(storage_path, experiment)
        tuner = tune.Tuner(
            wrapped,
            param_space=to_param_space(model_cfg.search),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=tune_cfg.num_samples,
                scheduler=make_scheduler(tune_cfg, max_t),
                reuse_actors=tune_cfg.reuse_actors,
                search_alg=BasicVariantGenerator(random_state=tune_cfg.seed, max_concurrent=max_concurrent),
            ),
            run_config=tune.RunConfig(
                name=experiment, storage_path=storage_path, verbose=1, callbacks=callbacks
            ),
        )
    with _signal_handlers_kept():
        return tuner.fit()


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put back the SIGINT/SIGUSR1 handlers Tune installs for its run and never restores.

    Without this, a program that runs a search and goes on (the pipeline's gate, a notebook, a
    library user) has its next Ctrl-C swallowed by Tune's "stop the experiment" handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


def iter_results(results: tune.ResultGrid) -> list[tune.Result]:
    """Every trial's result (ResultGrid supports indexing but declares no iterator)."""
    return [results[i] for i in range(len(results))]


def summarize_trials(results: tune.ResultGrid, metric: str) -> list[dict[str, Any]]:
    trials = []
    for result in iter_results(results):
        m = result.metrics or {}
        trials.append(
            {
                "params": {k: v for k, v in (result.config or {}).items() if not k.startswith("_")},
                metric: m.get(metric),
                "iterations": m.get("training_iteration"),
                "error": str(result.error) if result.error else None,
            }
        )
    return trials


def best_or_raise(results: tune.ResultGrid, metric: str, mode: str, model: str) -> tune.Result:
    """The best trial's last result; TrainingError with the first trial error when all failed."""
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="last")
    except RuntimeError:
        best = None
    if best is None or best.metrics is None or best.error is not None or metric not in best.metrics:
        errors = [str(r.error) for r in iter_results(results) if r.error]
        raise TrainingError(f"every trial of model {model!r} failed: {errors[0] if errors else 'no result'}")
    return best
