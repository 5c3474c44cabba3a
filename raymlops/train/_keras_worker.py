"""What runs inside each Ray Train worker: a Keras 3 MLP trained data-parallel with a real all-reduce.

Why a custom loop instead of ``model.fit`` under ``MultiWorkerMirroredStrategy``: with Keras 3,
``fit`` on two workers fails with ``Attempt to convert a value (PerReplica...)``
(ray-project/ray#47464), and the known workaround (legacy tf-keras) ran at 0.21x the speed of plain
``fit`` here. So the model and its optimizer are ordinary Keras 3 objects created outside any strategy
scope, and ``MultiWorkerMirroredStrategy`` (configured from the ``TF_CONFIG`` that
:mod:`raymlops.train._tf_backend` sets on every worker) is used for one thing only: the collective all-reduce.

One chunk of training on every worker (:class:`KerasLoop`):

1. take the worker's next chunk of ``steps_per_execution`` batches from its Ray Data shard (Ray
   prefetches the next one while this one trains; an empty chunk once the shard ran out);
2. at world size N, agree on the chunk's step count with one small all-reduce;
3. run the chunk's steps in one compiled ``tf.while_loop``: per step, the gradient of the *summed*
   loss of the batch, all-reduced SUM as one packed vector ``[gradients..., loss_sum, rows]``,
   divided by the global row count and applied with the local Keras optimizer. At world size 1
   there is no collective at all.

Summing per-row gradients and dividing by the global row count gives exactly the gradient of the
mean loss over the global batch, even when shards differ in size; agreeing on the step count lets
every worker leave the epoch together, so no worker waits forever in a collective that the others
never join. Because every worker starts from rank 0's weights (broadcast by an all-reduce of rank
0's weights and zeros elsewhere) and applies the same reduced gradient, all workers keep identical
weights; each epoch's report carries every rank's weight digest to prove it.

A world-size-1 run needs no Ray Train worker group at all: :class:`LocalRun` trains in the calling
process (a Tune trial's actor) on the Datasets themselves and checkpoints into the same layout.

This module imports TensorFlow and Keras at call time only: the driver imports ``raymlops.train``
without paying for TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CKPT_OPTIMIZER",
    "CKPT_STATE",
    "CKPT_WEIGHTS",
    "STEPS_PER_EXECUTION",
    "KerasLoop",
    "LocalRun",
    "build_model",
    "load_model_from_checkpoint_dir",
    "train_loop_per_worker",
    "weights_digest",
]

CKPT_WEIGHTS = "model.weights.h5"
CKPT_OPTIMIZER = "optimizer.npz"
CKPT_STATE = "state.json"
STEPS_PER_EXECUTION = 32  # optimizer steps per compiled call (Keras fit's steps_per_execution)


def build_model(spec: dict[str, Any]) -> Any:
    """The MLP that the pipeline file describes, as a plain Keras 3 ``Sequential``.

    Classification ends in a softmax, so the saved model outputs probabilities. Regression ends in
    ``Rescaling(std, mean)``: the layers learn a standardized target (MLPs train badly on raw
    targets of large scale) while the model that is saved and served predicts in original units.

    Args:
        spec: ``hidden``, ``activation``, ``dropout``, ``seed``, ``n_features``, ``task``,
            ``n_classes``, ``y_mean`` and ``y_std``.
    """
    import keras

    keras.utils.set_random_seed(int(spec["seed"]))
    if spec.get("builder"):
        return _build_user_model(spec)
    layers: list[Any] = [keras.Input(shape=(int(spec["n_features"]),), name="features")]
    for i, width in enumerate(spec["hidden"]):
        layers.append(keras.layers.Dense(int(width), activation=spec["activation"], name=f"dense_{i}"))
        if spec["dropout"] > 0:
            layers.append(keras.layers.Dropout(float(spec["dropout"]), name=f"dropout_{i}"))
    if spec["task"] == "classification":
        layers.append(keras.layers.Dense(int(spec["n_classes"]), activation="softmax", name="probabilities"))
    else:
        layers.append(keras.layers.Dense(1, name="standardized"))
        scale, offset = float(spec["y_std"]), float(spec["y_mean"])
        layers.append(keras.layers.Rescaling(scale=scale, offset=offset, name="prediction"))
    return keras.Sequential(layers, name="raymlops_mlp")


def _build_user_model(spec: dict[str, Any]) -> Any:
    """The user's network from ``builder(n_features, n_outputs, task, params)``.

    A classifier must end in class probabilities (softmax). A regressor's single output learns the
    standardized target; the saved model rescales it to original units, like the built-in MLP.
    """
    import keras

    from raymlops.model.keras import resolve_builder

    builder = resolve_builder(str(spec["builder"]), spec.get("builder_path"))
    task = str(spec["task"])
    n_outputs = int(spec["n_classes"]) if task == "classification" else 1
    model = builder(int(spec["n_features"]), n_outputs, task, dict(spec.get("builder_params") or {}))
    if not isinstance(model, keras.Model):
        raise TypeError(f"builder {spec['builder']!r} returned {type(model).__name__}, not a keras.Model")
    out_shape = tuple(model.outputs[0].shape)
    if out_shape[-1] != n_outputs:
        raise ValueError(
            f"builder {spec['builder']!r} makes {out_shape[-1]} outputs; {task} needs {n_outputs}"
        )
    if task == "classification":
        return model
    inputs = keras.Input(shape=(int(spec["n_features"]),), name="features")
    scaled = keras.layers.Rescaling(float(spec["y_std"]), float(spec["y_mean"]), name="prediction")(
        model(inputs)
    )
    return keras.Model(inputs, scaled, name=f"{model.name}_rescaled")


def weights_digest(model: Any) -> tuple[float, int]:
    """(sum of all weights, 24-bit digest of their bytes): equal digests mean bit-identical weights.

    24 bits keep the digest exact in the float collectives that gather it from every rank.
    """
    arrays = [np.asarray(w) for w in model.get_weights()]
    total = float(sum(float(np.sum(a, dtype=np.float64)) for a in arrays))
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return total, int(h.hexdigest()[:6], 16)


def _save_checkpoint(folder: Path, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    model.save_weights(str(folder / CKPT_WEIGHTS))
    np.savez(folder / CKPT_OPTIMIZER, *[np.asarray(v) for v in optimizer.variables])
    (folder / CKPT_STATE).write_text(json.dumps(state))


def _restore_checkpoint(folder: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    model.load_weights(str(folder / CKPT_WEIGHTS))
    with np.load(folder / CKPT_OPTIMIZER) as arrays:
        values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    if len(values) != len(optimizer.variables):
        raise RuntimeError(
            f"checkpoint has {len(values)} optimizer variables, the optimizer has {len(optimizer.variables)}"
        )
    for var, value in zip(optimizer.variables, values, strict=True):
        var.assign(value)
    state: dict[str, Any] = json.loads((folder / CKPT_STATE).read_text())
    return state


def load_model_from_checkpoint_dir(folder: Path) -> Any:
    """The trained model from one epoch checkpoint (weights plus the spec it was built from)."""
    state = json.loads((Path(folder) / CKPT_STATE).read_text())
    model = build_model(state["spec"])
    model.load_weights(str(Path(folder) / CKPT_WEIGHTS))
    return model


def _make_optimizer(learning_rate: float) -> Any:
    import keras

    return keras.optimizers.Adam(learning_rate=learning_rate)


class _Collective:
    """SUM all-reduce of one float vector across the Ray Train workers (identity on one worker)."""

    def __init__(self, world_size: int) -> None:
        import tensorflow as tf

        self.world_size = world_size
        self.strategy: Any = None
        self._eager_fns: dict[str, Any] = {}
        if world_size > 1:
            # Reads TF_CONFIG (set by Ray's TensorflowConfig backend) and starts this worker's
            # collective server. Used only for its cross-worker all-reduce, never as a scope.
            # AUTO: ring all-reduce over gRPC between CPU workers, NCCL between GPU workers.
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()

    def sum(self, vec: Any) -> Any:
        """All-reduce SUM of a 1-D tensor; call it inside a ``tf.function`` (eagerly it is slow)."""
        if self.strategy is None:
            return vec
        import tensorflow as tf

        def _reduce(t: Any) -> Any:
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, t)

        # Pin the value to this worker's device: a graph tensor without a device gives the
        # strategy no destination for the reduced value ("destinations can not be empty").
        with tf.device(self.strategy.extended.worker_devices[0]):
            vec = tf.identity(vec)
        out = self.strategy.run(_reduce, args=(vec,))
        return self.strategy.experimental_local_results(out)[0]

    def sum_numpy(self, vec: np.ndarray) -> np.ndarray:
        """All-reduce SUM of a 1-D float32/float64 array, through a cached ``tf.function``."""
        if self.strategy is None:
            return vec
        import tensorflow as tf

        key = str(vec.dtype)
        fn = self._eager_fns.get(key)
        if fn is None:
            fn = tf.function(self.sum, input_signature=[tf.TensorSpec([None], tf.as_dtype(vec.dtype))])
            self._eager_fns[key] = fn
        return np.asarray(fn(tf.constant(vec)))


def _configure_threads(threads: int) -> None:
    import tensorflow as tf

    # Must run before TensorFlow's context starts; each worker owns only its share of the cores.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass  # context already initialized in this process (e.g. a reused actor): keep its settings


def _next_or_none(it: Any) -> Any:
    try:
        return next(it)
    except StopIteration:
        return None


class _Prefetch:
    """An iterator whose first item is fetched by a background thread from the moment it is made."""

    def __init__(self, it: Any) -> None:
        import threading

        self._it = it
        self._first: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="raymlops-prefetch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = _next_or_none(self._it)
        except BaseException as err:  # raised again in the training thread
            self._error = err

    def close(self) -> None:
        """Stop the epoch's Ray Data execution (a trial stopped before the epoch it prefetched)."""
        self._thread.join()
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            yield self._first
        yield from self._it


class KerasLoop:
    """The model, its optimizer and the compiled training and scoring functions of one worker.

    One call of the compiled ``train_chunk`` runs up to ``steps_per_execution`` optimizer steps
    (Keras ``fit``'s ``steps_per_execution``, as a ``tf.while_loop``): Python and the Ray Data
    iterator are visited once per chunk of ``steps_per_execution x batch`` rows, not once per step.
    At world size 1 a step applies its own gradient, with no collective; at world size N every step
    all-reduces one packed vector ``[gradients..., loss_sum, rows]`` inside the loop.

    Args:
        config: ``spec`` (see :func:`build_model`), ``learning_rate``, ``batch_size`` (global: each
            of the N workers takes batch_size // N rows per step), ``epochs``, optional
            ``steps_per_execution`` (default :data:`STEPS_PER_EXECUTION`) and ``trace_dir``.
        rank, world: this worker's rank and the number of workers.
    """

    def __init__(self, config: dict[str, Any], rank: int, world: int) -> None:
        import tensorflow as tf

        self.config = config
        self.rank, self.world = rank, world
        self.spec = spec = config["spec"]
        self.task = str(spec["task"])
        self.epochs = int(config["epochs"])
        self.batch = max(1, int(config["batch_size"]) // world)
        self.steps_per_execution = max(1, int(config.get("steps_per_execution") or STEPS_PER_EXECUTION))
        self.seed = int(spec["seed"])
        self.n_features = int(spec["n_features"])
        self.trace_dir = Path(config["trace_dir"]) if config.get("trace_dir") else None
        self.collective = _Collective(world)
        self.model = build_model(spec)
        self.optimizer = _make_optimizer(float(config["learning_rate"]))
        self.optimizer.build(self.model.trainable_variables)
        self.start_epoch = 0
        self.y_dtype = np.int32 if self.task == "classification" else np.float32
        self.epoch_times: list[float] = []  # this run's epochs, so callers can take a steady state
        self.X_val: np.ndarray | None = None
        self.y_val: np.ndarray | None = None
        self._train_chunk = self._compile_train_chunk(tf)
        self._predict = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, self.n_features], tf.float32)],
        )

    def _compile_train_chunk(self, tf: Any) -> Any:
        import keras

        model, optimizer, collective = self.model, self.optimizer, self.collective
        variables = model.trainable_variables
        sizes = [int(np.prod(v.shape)) for v in variables]
        shapes = [tuple(v.shape) for v in variables]
        task, b, world = self.task, self.batch, self.world
        y_var = float(self.spec.get("y_std", 1.0)) ** 2

        def loss_sum_of(y: Any, out: Any) -> Any:
            if task == "classification":
                return tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, out))
            return tf.reduce_sum(tf.square(tf.reshape(out, [-1]) - y)) / y_var

        def one_step(x: Any, y: Any) -> tuple[Any, Any]:
            rows = tf.cast(tf.shape(x)[0], tf.float32)
            with tf.GradientTape() as tape:
                loss_sum = loss_sum_of(y, model(x, training=True))
            grads = tape.gradient(loss_sum, variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)]
            if world == 1:  # no collective: the batch's mean gradient is the global one
                optimizer.apply([g / tf.maximum(rows, 1.0) for g in grads], variables)
                return loss_sum, rows
            # Summed gradients / the global row count = the mean-loss gradient of the global batch,
            # even when a worker's slice is short or empty.
            packed = tf.concat([tf.reshape(g, [-1]) for g in grads] + [tf.stack([loss_sum, rows])], 0)
            total = collective.sum(packed)
            parts = tf.split(total[:-2] / tf.maximum(total[-1], 1.0), sizes)
            optimizer.apply([tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)], variables)
            return total[-2], total[-1]

        y_dtype = tf.int32 if task == "classification" else tf.float32

        # An explicit tf.while_loop and no AutoGraph: tracing does not depend on reading this
        # file's source (which AutoGraph does, and which fails if the file changed on disk).
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, self.n_features], tf.float32),
                tf.TensorSpec([None], y_dtype),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32),
            ],
            autograph=False,
        )
        def train_chunk(x: Any, y: Any, steps: Any, shuffle_seed: Any) -> tuple[Any, Any]:
            n = tf.shape(x)[0]
            # A fresh order of the chunk's rows (seeded per epoch and chunk): with the dataset's new
            # block order every epoch, every epoch sees different batches.
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([shuffle_seed, 7]))
            x, y = tf.gather(x, order), tf.gather(y, order)

            def body(i: Any, loss_total: Any, rows_total: Any) -> tuple[Any, Any, Any]:
                lo = tf.minimum(i * b, n)
                hi = tf.minimum(lo + b, n)
                loss, rows = one_step(x[lo:hi], y[lo:hi])
                return i + 1, loss_total + loss, rows_total + rows

            zero = tf.constant(0.0)
            _, loss_total, rows_total = tf.while_loop(
                lambda i, *_: i < steps, body, (tf.constant(0), zero, zero), parallel_iterations=1
            )
            return loss_total, rows_total

        return train_chunk

    # ---- state -----------------------------------------------------------------------------

    def restore(self, folder: Path) -> dict[str, Any]:
        """Weights, optimizer state and epochs done from a checkpoint folder."""
        state = _restore_checkpoint(folder, self.model, self.optimizer)
        self.start_epoch = int(state["epoch"])
        return state

    def save(self, folder: Path, metrics: dict[str, Any], epoch: int) -> None:
        _save_checkpoint(
            folder, self.model, self.optimizer, {"epoch": epoch, "spec": self.spec, "metrics": metrics}
        )

    def broadcast(self) -> None:
        """Every worker takes rank 0's weights: all-reduce SUM of rank 0's weights and zeros elsewhere."""
        if self.world == 1:
            return
        weights = self.model.get_weights()
        flat = np.concatenate([w.reshape(-1) for w in weights]).astype(np.float32)
        if self.rank != 0:
            flat = np.zeros_like(flat)
        flat = self.collective.sum_numpy(flat)
        out, offset = [], 0
        for w in weights:
            out.append(flat[offset : offset + w.size].reshape(w.shape).astype(w.dtype))
            offset += w.size
        self.model.set_weights(out)

    # ---- data ------------------------------------------------------------------------------

    def load_validation(self, source: Any) -> None:
        """The validation rows (a Dataset or a Train shard), held by the worker that scores them."""
        xs, ys = [], []
        for b in source.iter_batches(batch_size=65536, batch_format="numpy"):
            xs.append(np.asarray(b["x"], dtype=np.float32))
            ys.append(np.asarray(b["y"]))
        self.X_val = np.concatenate(xs) if xs else np.zeros((0, self.n_features), np.float32)
        self.y_val = np.concatenate(ys) if ys else np.zeros(0)

    def _chunks(self, source: Any) -> Any:
        """Chunks of ``steps_per_execution`` batches, prefetched by Ray Data while a chunk trains."""
        batches = source.iter_batches(
            batch_size=self.batch * self.steps_per_execution, batch_format="numpy", prefetch_batches=2
        )
        return iter(batches)

    # ---- one epoch -------------------------------------------------------------------------

    def start_chunks(self, source: Any) -> Any:
        """The chunks of one epoch with the first one already fetched, by a thread started now.

        Ray Data starts an execution for every epoch; started while the previous epoch is still
        being scored and checkpointed, that start-up is hidden instead of waited for.
        """
        return _Prefetch(self._chunks(source))

    def train_epoch(self, source: Any, epoch: int, chunks: Any = None) -> dict[str, Any]:
        """Train one epoch over ``source`` (this worker's shard); every rank returns the same stats.

        At world size N every chunk starts with one small all-reduce of each worker's step count,
        so all workers run the same number of steps (a worker whose shard ran out contributes
        empty slices) and all leave the epoch together.
        """
        import tensorflow as tf

        t0 = time.perf_counter()
        it = iter(chunks) if chunks is not None else self._chunks(source)
        seen: list[np.ndarray] = []
        loss_total, rows_total, rows_local, steps_total, chunk = 0.0, 0.0, 0, 0, 0
        empty_x = np.zeros((0, self.n_features), np.float32)
        empty_y = np.zeros((0,), self.y_dtype)
        data_s = 0.0
        while True:
            t_data = time.perf_counter()
            batch = _next_or_none(it)
            data_s += time.perf_counter() - t_data
            if batch is not None:
                x = np.asarray(batch["x"], dtype=np.float32)
                y = np.asarray(batch["y"]).astype(self.y_dtype, copy=False)
                if self.trace_dir is not None and "row" in batch:
                    seen.append(np.asarray(batch["row"]))
            else:
                x, y = empty_x, empty_y
            local_steps = -(-len(x) // self.batch)
            if self.world > 1:
                counts = np.zeros(self.world, np.float32)
                counts[self.rank] = local_steps
                steps = int(self.collective.sum_numpy(counts).max())
            else:
                steps = local_steps
            if steps == 0:
                break
            rows_local += len(x)
            seed = (self.seed * 100003 + epoch * 1009 + chunk * 31 + self.rank) % (2**31 - 1)
            loss, rows = self._train_chunk(x, y, tf.constant(steps, tf.int32), tf.constant(seed, tf.int32))
            loss_total += float(loss)
            rows_total += float(rows)
            steps_total += steps
            chunk += 1
        elapsed = time.perf_counter() - t0
        self.epoch_times.append(elapsed)
        checksum, digest = weights_digest(self.model)
        world = self.world
        stats = np.zeros(3 * world, np.float64)
        stats[self.rank], stats[world + self.rank], stats[2 * world + self.rank] = (
            rows_local,
            checksum,
            digest,
        )
        stats = self.collective.sum_numpy(stats)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_total / max(rows_total, 1.0),
            "rows": int(rows_total),
            "steps": steps_total,
            "epoch_time_s": elapsed,
            "epoch_times_s": list(self.epoch_times),
            "samples_per_s": rows_total / max(elapsed, 1e-9),
            "data_wait_s": data_s,  # this rank's wait for its next chunk, part of epoch_time_s
            "start_epoch": self.start_epoch,
            "world_size": world,
            "rank_rows": [int(v) for v in stats[:world]],
            "rank_weight_checksums": [float(v) for v in stats[world : 2 * world]],
            "rank_weight_digests": [int(v) for v in stats[2 * world :]],
        }
        if self.trace_dir is not None:
            self._write_trace(epoch, seen, metrics["loss"], checksum, digest)
        return metrics

    def _write_trace(
        self, epoch: int, seen: list[np.ndarray], loss: float, checksum: float, digest: int
    ) -> None:
        assert self.trace_dir is not None
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        rows_seen = np.concatenate(seen).tolist() if seen else []
        (self.trace_dir / f"rank{self.rank}_epoch{epoch + 1}.json").write_text(
            json.dumps(
                {
                    "rows": rows_seen,
                    "pid": os.getpid(),
                    "start_epoch": self.start_epoch,
                    "digest": digest,
                    "checksum": checksum,
                    "loss": loss,
                }
            )
        )

    def evaluate(self) -> dict[str, float]:
        """raymlops's validation metrics of the current weights (the worker holding X_val)."""
        import tensorflow as tf

        from raymlops.evaluate.metrics import compute_metrics

        assert self.X_val is not None and self.y_val is not None
        scores = np.asarray(self._predict(tf.constant(self.X_val)), dtype=np.float64)
        if self.task == "regression":
            scores = scores.reshape(-1)
        else:  # float32 softmax rows sum to 1 only up to rounding; sklearn warns on that
            scores /= scores.sum(axis=1, keepdims=True)
        return compute_metrics(self.task, self.y_val, scores, int(self.spec.get("n_classes") or 0))


def _stop_requested(stop_flag: Any, rank: int, collective: _Collective) -> bool:
    """Whether the owner asked the run to stop (e.g. ASHA stopped the trial); all ranks agree.

    Ending the loop on request lets the Train run finish normally, so Ray Train releases its
    placement group; a run killed from outside can leave it behind and starve the next trial.
    """
    if stop_flag is None:
        return False
    flag = np.zeros(1, np.float32)
    if rank == 0:
        import ray

        try:
            flag[0] = float(bool(ray.get(stop_flag.is_set.remote(), timeout=30)))
        except Exception:  # the owner is gone: nobody wants the rest of this run
            flag[0] = 1.0
    return bool(collective.sum_numpy(flag)[0] > 0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train loop: restore, broadcast, train epochs, report and checkpoint every epoch.

    Args:
        config: what :class:`KerasLoop` takes, plus ``threads`` (intra-op threads per worker),
            optional ``stop_flag`` (an actor; when set, the run ends after the current epoch) and
            ``trace_dir`` (each rank writes the row ids it saw, its weight digest and its pid there:
            a debugging aid on one machine, used by the tests).
    """
    import ray.train

    _configure_threads(int(config.get("threads", 1)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    loop = KerasLoop(config, rank, world)
    state: dict[str, Any] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = loop.restore(Path(folder))
    loop.broadcast()
    if rank == 0:
        loop.load_validation(ray.train.get_dataset_shard("val"))
    shard = ray.train.get_dataset_shard("train")
    stop_flag = config.get("stop_flag")
    pg = ray.util.get_current_placement_group()
    placement_group = pg.id.hex() if pg is not None else None

    if loop.start_epoch >= loop.epochs and checkpoint is not None:
        # Restored after the last epoch was checkpointed: report it again so the caller (a resumed
        # Tune trial) still sees the final metrics and checkpoint.
        last = dict(state.get("metrics") or {})
        last.update(start_epoch=loop.start_epoch, placement_group=placement_group)
        ray.train.report(last, checkpoint=checkpoint if rank == 0 else None)
        return

    for epoch in range(loop.start_epoch, loop.epochs):
        if epoch > loop.start_epoch and _stop_requested(stop_flag, rank, loop.collective):
            break
        metrics = loop.train_epoch(shard, epoch)
        metrics["placement_group"] = placement_group
        if rank == 0:
            metrics.update(loop.evaluate())
            with tempfile.TemporaryDirectory() as tmp:
                loop.save(Path(tmp), metrics, epoch + 1)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if loop.trace_dir is not None:
            # Written after the report, so a test that kills this pid knows a checkpoint exists.
            (loop.trace_dir / f"rank{rank}.pid").write_text(
                json.dumps({"pid": os.getpid(), "epoch": epoch + 1})
            )


class LocalRun:
    """A world-size-1 run in this process (a Tune trial's own actor): no worker group, no collective.

    It reads the Datasets directly (``iter_batches``, streamed: nothing is collected into the
    driver) and checkpoints every epoch into ``run_dir`` (local or a storage URI) as
    ``checkpoint_<epoch>`` folders, the two newest kept, in the format of the Train runs' checkpoints;
    a run started again on the same ``run_dir`` resumes from its newest checkpoint.
    """

    def __init__(self, config: dict[str, Any], train: Any, val: Any, run_dir: str) -> None:
        from raymlops.train._trial import limit_data_cpus

        _configure_threads(int(config.get("threads", 1)))
        self.loop = KerasLoop(config, 0, 1)
        self.run_dir = run_dir.rstrip("/")
        self.state: dict[str, Any] = {}
        self.last_checkpoint: str | None = None
        self._restore_latest()
        limit_data_cpus((train, val), config.get("data_cpus"))
        self.loop.load_validation(val)
        # A new block order every epoch: each epoch's chunks differ (rows are shuffled in a chunk).
        self.train = train.randomize_block_order()  # shares train's context, so its limit too
        self.epoch = self.loop.start_epoch
        self._next_chunks: Any = self.loop.start_chunks(self.train) if not self.done else None

    @property
    def done(self) -> bool:
        return self.epoch >= self.loop.epochs

    def _restore_latest(self) -> None:
        import ray.train

        from raymlops.train._trial import latest_checkpoint

        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            return
        with ray.train.Checkpoint(latest[0]).as_directory() as folder:
            self.state = self.loop.restore(Path(folder))
        self.last_checkpoint = latest[0]

    def next_epoch(self) -> dict[str, Any]:
        """Train the next epoch, score it, checkpoint it; the epoch's metrics with ``checkpoint_path``.

        Called after the last epoch (a restored, finished run), it reports the last epoch again.
        """
        if self.done and self.state:
            return {
                **dict(self.state.get("metrics") or {}),
                "start_epoch": self.loop.start_epoch,
                "checkpoint_path": self.last_checkpoint,
            }
        chunks, self._next_chunks = self._next_chunks, None
        metrics = self.loop.train_epoch(self.train, self.epoch, chunks)
        self.epoch += 1
        if not self.done:
            self._next_chunks = self.loop.start_chunks(self.train)
        metrics.update(self.loop.evaluate())
        metrics["checkpoint_path"] = self._checkpoint(metrics)
        self.state = {"epoch": self.epoch, "metrics": metrics}
        self.last_checkpoint = metrics["checkpoint_path"]
        return metrics

    def close(self) -> None:
        """Drop the prefetched next epoch (the trial stops here)."""
        if self._next_chunks is not None:
            self._next_chunks.close()
            self._next_chunks = None

    def _checkpoint(self, metrics: dict[str, Any]) -> str:
        from raymlops.train._trial import write_run_checkpoint

        kept = {k: v for k, v in metrics.items() if k != "checkpoint_path"}
        return write_run_checkpoint(self.run_dir, self.epoch, lambda d: self.loop.save(d, kept, self.epoch))
