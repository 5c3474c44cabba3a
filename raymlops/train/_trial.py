"""Trial machinery shared by the kinds that train with Ray Train inside Ray Tune (Keras, XGBoost).

* :func:`plan_resources`: size workers and trial concurrency so that the trials running at once,
  times their workers, fit the cluster with room left for Ray Data (on a 2-core laptop workers get
  fractional CPUs instead of waiting forever for whole ones).
* :class:`TrainRunTrial`: a Tune class trainable that drives one Ray Train run per trial in a thread
  and turns each report of the run into one Tune step. A class rather than a function trainable for
  one reason: a stopped *function* trial is torn down at once, which kills its Train controller
  before it can release its placement group, and the leaked CPUs starve every later trial. Here
  :meth:`TrainRunTrial.cleanup` (and ``reset_config`` when Tune reuses the actor) asks the workers to
  stop at their next report and waits for the run to end normally.
* Picking the candidate after a search: every trial's last model that still exists in storage
  (:func:`final_reports`), the best of them (:func:`best_result`), and removing the placement groups
  that trials killed at the experiment's end left behind.
* :func:`fast_report_polling`: Ray Train V2's controller polls its workers every 2 s by default; a
  worker blocks on its next report until then, so short epochs or boosting rounds would mostly wait.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raymlops.config import TuneConfig
from raymlops.train.tune import iter_results, trial_concurrency

__all__ = [
    "DONE",
    "MAX_CPUS_PER_WORKER",
    "RESERVE_CPUS",
    "STOP_TIMEOUT_S",
    "TRIAL_DRIVER_CPUS",
    "ResourcePlan",
    "StopFlagActor",
    "TrainRunTrial",
    "abs_storage",
    "best_result",
    "checkpoint_uri",
    "cluster_total",
    "fast_report_polling",
    "final_reports",
    "forward_reports_callback",
    "latest_checkpoint",
    "limit_data_cpus",
    "plan_resources",
    "release_placement_groups",
    "storage_fs",
    "write_run_checkpoint",
]

RESERVE_CPUS = 0.5  # left free for Ray Data (split coordinator, reads) so training never starves it
TRIAL_DRIVER_CPUS = 0.1  # a Tune trial that only launches and watches its Train run
MAX_CPUS_PER_WORKER = 8
# A one-worker Keras trial reads its Datasets inside its own actor: Ray Data then runs a read task
# and a map task at once. With one CPU free, a read blocked on its output holds it and the map
# never starts (seen at 10M rows: the validation read stalled for good), so leave it two.
IN_TRIAL_DATA_CPUS = 2.0
MIN_SHARED_CPUS = 0.5  # the smallest share per worker that lets all wanted trials run at once
STOP_TIMEOUT_S = 300.0  # how long a stopped trial waits for its Train run to end after its report
STATE_FILE = "state.json"  # every kind's checkpoint holds its metrics there (read by recovery)
KEEP_CHECKPOINTS = 2  # per run, as Ray Train's CheckpointConfig(num_to_keep=2) keeps for Train runs
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_INTERVAL_S = 0.2  # seconds between two polls of the Train controller (Ray's default: 2)
DONE = "__raymlops_train_run_done__"


@dataclass
class ResourcePlan:
    """How one model entry uses the cluster: per worker, per trial and across trials.

    ``trial_cpus`` is what the Tune trial itself reserves: the controller's small share when the
    trial launches a worker group, the worker's whole share when it trains in its own process.
    ``data_cpus`` caps the Ray Data executions of a trial that trains in its own process: Ray
    Data sizes itself from the whole cluster and does not know the trials hold most of it, so
    its reads took the few CPUs left and the maps behind them never started (a 10M-row epoch
    stalled for good). ``None``: Ray Train's worker groups tell Ray Data what they hold.
    """

    workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int
    trial_cpus: float
    max_concurrent: int
    data_cpus: float | None = None


def cluster_total(resource: str) -> float:
    return float(ray.cluster_resources().get(resource, 0.0)) if ray.is_initialized() else 0.0


def _resolve_gpu(use_gpu: bool | str, workers: int) -> bool:
    """``auto``: GPUs when the cluster has one per worker, else CPU (never wait for absent GPUs)."""
    if use_gpu == "auto":
        return cluster_total("GPU") >= workers
    return bool(use_gpu)


def plan_resources(
    workers: int,
    use_gpu: bool | str = "auto",
    tune_cfg: TuneConfig | None = None,
    *,
    in_trial: bool = False,
) -> ResourcePlan:
    """Size workers and trial concurrency so trials x workers fit the cluster and Ray Data still runs.

    Whole CPUs per worker when the cluster has them for every trial that should run at once; at
    least half a CPU each when that lets them all run at once; otherwise one trial at a time with
    fractional CPUs (down to 0.1), so that at least one trial starts on a small machine:
    2 workers x 1 CPU on a 2-CPU box leave Ray Data nothing and the run hangs. With ``in_trial``
    (one worker, trained inside the Tune trial's own process) the trial reserves the worker's CPUs.
    """
    total = cluster_total("CPU") or float(os.cpu_count() or 1)
    gpu = _resolve_gpu(use_gpu, workers)
    reserve = min(IN_TRIAL_DATA_CPUS, total / 2) if in_trial else RESERVE_CPUS
    avail = max(total - reserve, 0.2)
    wanted = 1
    if tune_cfg is not None:
        wanted = min(tune_cfg.num_samples, tune_cfg.max_concurrent_trials or tune_cfg.num_samples)
    driver = 0.0 if in_trial else TRIAL_DRIVER_CPUS
    per_worker = (avail / wanted - driver) / workers
    if per_worker >= 1:
        per_worker = float(min(math.floor(per_worker), MAX_CPUS_PER_WORKER))
    elif per_worker >= MIN_SHARED_CPUS:
        # Every wanted trial at once on shared cores: their start-ups (worker groups, TensorFlow)
        # overlap instead of queueing, and the cores stay busy while one trial waits on another.
        per_worker = math.floor(per_worker * 20) / 20
    else:
        per_worker = min(1.0, (avail - driver) / workers)
        per_worker = max(0.1, math.floor(per_worker * 20) / 20)
    concurrency = 1
    if tune_cfg is not None:
        concurrency = trial_concurrency(tune_cfg, driver + workers * per_worker, reserve_cpus=reserve)
        if gpu:
            concurrency = max(1, min(concurrency, int(cluster_total("GPU") // workers)))
    return ResourcePlan(
        workers=workers,
        use_gpu=gpu,
        cpus_per_worker=per_worker,
        gpus_per_worker=1.0 if gpu else 0.0,
        threads=max(1, int(per_worker)),
        trial_cpus=per_worker if in_trial else TRIAL_DRIVER_CPUS,
        max_concurrent=concurrency,
        data_cpus=_data_cpus(total, workers * per_worker, concurrency) if in_trial else None,
    )


def _data_cpus(total: float, trial_cpus: float, concurrency: int) -> float:
    """The CPUs each running trial's Ray Data may use: what the trials leave, shared (>= 1)."""
    return max(1.0, math.floor((total - trial_cpus * concurrency) / concurrency))


def abs_storage(storage_path: str) -> str:
    return storage_path if "://" in storage_path else os.path.abspath(storage_path)


def storage_fs(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) of a local path or a storage URI."""
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def checkpoint_uri(checkpoint: Any) -> str:
    """A checkpoint's location as a path (local storage) or a URI (``s3://...``) that loads anywhere."""
    fs = getattr(checkpoint, "filesystem", None)
    scheme = getattr(fs, "type_name", "local") if fs is not None else "local"
    path = str(checkpoint.path)
    return path if scheme == "local" or "://" in path else f"{scheme}://{path}"


@contextlib.contextmanager
def fast_report_polling() -> Iterator[None]:
    """Let the Train controller poll its workers every :data:`POLL_INTERVAL_S` instead of every 2 s.

    The controller takes one report per worker per poll and a worker blocks on its next report
    until then; an epoch on small data or a boosting round takes milliseconds, so at Ray's default
    a 20-report run would wait 40 s. Ray passes this variable from the process that calls ``fit``
    to the controller it starts; a value the user set is kept.
    """
    if POLL_ENV in os.environ:
        yield
        return
    os.environ[POLL_ENV] = str(POLL_INTERVAL_S)
    try:
        yield
    finally:
        os.environ.pop(POLL_ENV, None)


class _StopFlag:
    """Set by a Tune trial that is being stopped; read by rank 0 at every report."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


StopFlagActor: Any = ray.remote(num_cpus=0)(_StopFlag)


def forward_reports_callback(queue: Any) -> Any:
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


class TrainRunTrial(tune.Trainable):
    """One Tune trial that drives one Ray Train run, one Tune step per report of the run.

    Subclasses implement :meth:`_prepare` (the sampled params -> the function that runs the Train
    run, and how many reports mean done) and :attr:`progress_key` (the metric counting reports).
    """

    progress_key = "epoch"

    def _prepare(self, config: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], Any], int]:
        """(run(extra_kwargs) that performs the Train run, final value of progress_key)."""
        raise NotImplementedError

    def _start_run(self, config: dict[str, Any]) -> None:
        from ray.util.queue import Queue

        run, self._final = self._prepare(config)
        self._queue = Queue(actor_options={"num_cpus": 0})
        self._flag = StopFlagActor.remote()
        self._error: BaseException | None = None
        self._last: dict[str, Any] = {}
        extra = {"callbacks": [forward_reports_callback(self._queue)], "stop_flag": self._flag}
        self._thread: Any = threading.Thread(
            target=self._run, args=(run, extra, self._queue), name="raymlops-train-run", daemon=True
        )
        self._thread.start()

    def _run(self, run: Callable[[dict[str, Any]], Any], extra: dict[str, Any], queue: Any) -> None:
        try:
            run(extra)
        except BaseException as err:  # surfaced by step()
            self._error = err
        finally:
            queue.put(DONE)

    def _stop_run(self) -> None:
        """Ask the running Train run to end at its next report and wait until it has (bounded)."""
        if getattr(self, "_thread", None) is None:
            return
        # If the flag actor is gone, the workers see that and stop on their own.
        with contextlib.suppress(Exception):
            ray.get(self._flag.set.remote(), timeout=30)
        self._thread.join(timeout=STOP_TIMEOUT_S)
        self._thread = None

    def step(self) -> dict[str, Any]:
        item = self._queue.get()
        if item == DONE:
            if self._error is not None:
                raise self._error
            return {**self._last, "done": True}
        self._last = item
        if int(item.get(self.progress_key, 0)) >= self._final:
            return {**item, "done": True}
        return dict(item)

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Tune's own checkpoint holds only the last report: the model lives in the Train run's
        checkpoints, which a restored trial resumes from by itself."""
        return {"last": self._last}

    def load_checkpoint(self, checkpoint: Any) -> None:
        if isinstance(checkpoint, dict):
            self._last = dict(checkpoint.get("last") or {})

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor for the next trial (``reuse_actors``): end the old run, start the new one."""
        self._stop_run()
        self._start_run(new_config)
        return True

    def cleanup(self) -> None:
        self._stop_run()


def release_placement_groups(results: Any) -> None:
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


def latest_checkpoint(run_dir: str) -> tuple[str, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint of one run (``checkpoint_*`` folders), read from storage."""
    import pyarrow.fs as pafs

    fs, root = storage_fs(run_dir)
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
            with fs.open_input_stream(f"{info.path}/{STATE_FILE}") as fh:
                state: dict[str, Any] = json.loads(fh.read().decode())
        except (OSError, ValueError):
            continue
        prefix = run_dir.split("://", 1)[0] + "://" if "://" in run_dir else ""
        return prefix + info.path, state
    return None


def write_run_checkpoint(run_dir: str, index: int, write: Callable[[Path], None]) -> str:
    """Save one checkpoint of an in-trial run as ``<run_dir>/checkpoint_<index>``; its path or URI.

    The folder has the layout of a Ray Train run's checkpoints, so :func:`latest_checkpoint`,
    :func:`final_reports` and the loaders read both alike. ``write`` fills a local folder, which is
    then copied to the run's storage (local or a URI); the newest :data:`KEEP_CHECKPOINTS` stay.
    """
    import tempfile

    import pyarrow.fs as pafs

    fs, root = storage_fs(run_dir)
    dest = f"{root}/checkpoint_{index:06d}"
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(tmp, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    folders = sorted(
        i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    for old in folders[:-KEEP_CHECKPOINTS]:
        fs.delete_dir(old)
    prefix = run_dir.split("://", 1)[0] + "://" if "://" in run_dir else ""
    return prefix + dest


def limit_data_cpus(datasets: tuple[Any, ...], cpus: float | None) -> None:
    """Cap the CPUs these Datasets' executions plan for (see ``ResourcePlan.data_cpus``)."""
    if cpus is None:
        return
    from ray.data import ExecutionResources

    for ds in datasets:
        ds.context.execution_options.resource_limits = ExecutionResources.for_limits(cpu=float(cpus))


def _exists(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = storage_fs(path)
    try:
        return bool(fs.get_file_info(p).type != pafs.FileType.NotFound)
    except OSError:
        return False


def final_reports(results: Any, train_storage: str) -> list[tuple[Any, dict[str, Any], str]]:
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
        latest = latest_checkpoint(f"{train_storage.rstrip('/')}/train_{trial_id}") if trial_id else None
        if latest is not None:
            ckpt, state = latest
            out.append((result, {**dict(state.get("metrics") or {}), "checkpoint_path": ckpt}, ckpt))
    return out


def best_result(
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
