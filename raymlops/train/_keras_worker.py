"""What runs inside each Ray Train worker: a Keras 3 MLP trained data-parallel with a real all-reduce.

Why a custom loop instead of ``model.fit`` under ``MultiWorkerMirroredStrategy``: with Keras 3,
``fit`` on two workers fails with ``Attempt to convert a value (PerReplica...)``
(ray-project/ray#47464), and the known workaround (legacy tf-keras) ran at 0.21x the speed of plain
``fit`` here. So the model and its optimizer are ordinary Keras 3 objects created outside any strategy
scope, and ``MultiWorkerMirroredStrategy`` (configured from the ``TF_CONFIG`` that Ray's
``TensorflowTrainer`` sets on every worker) is used for one thing only: the collective all-reduce.

One training step on every worker:

1. take the worker's next batch from its Ray Data shard (possibly empty once the shard ran out);
2. compute the gradient of the *summed* loss of that batch with ``GradientTape``;
3. all-reduce SUM one packed vector ``[gradients..., loss_sum, rows, more]`` across workers, where
   ``more`` says whether this worker holds another batch;
4. divide by the global row count and apply the result with the local Keras optimizer.

Summing per-row gradients and dividing by the global row count gives exactly the gradient of the
mean loss over the global batch, even when shards differ in size; ``more`` lets every worker agree
when the epoch ends, so no worker waits forever in a collective that the others never join.
Because every worker starts from rank 0's weights (broadcast by an all-reduce of rank 0's weights
and zeros elsewhere) and applies the same reduced gradient, all workers keep identical weights;
each epoch's report carries every rank's weight digest to prove it.

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
    "build_model",
    "load_model_from_checkpoint_dir",
    "train_loop_per_worker",
    "weights_digest",
]

CKPT_WEIGHTS = "model.weights.h5"
CKPT_OPTIMIZER = "optimizer.npz"
CKPT_STATE = "state.json"


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
        pass  # context already initialized in this process (e.g. a reused worker): keep its settings


def _next_or_none(it: Any) -> Any:
    try:
        return next(it)
    except StopIteration:
        return None


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
        config: ``spec`` (see :func:`build_model`), ``learning_rate``, ``batch_size`` (global: each
            of the N workers takes batch_size // N rows per step), ``epochs``, ``threads`` (intra-op
            threads per worker), optional ``stop_flag`` (an actor; when set, the run ends after the
            current epoch) and ``trace_dir`` (each rank writes the row ids it saw, its weight digest
            and its pid there: a debugging aid on one machine, used by the tests).
    """
    import ray.train

    _configure_threads(int(config.get("threads", 1)))
    import keras
    import tensorflow as tf

    from raymlops.evaluate.metrics import compute_metrics

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    collective = _Collective(world)
    spec = config["spec"]
    task = spec["task"]
    epochs = int(config["epochs"])
    per_worker_batch = max(1, int(config["batch_size"]) // world)
    trace_dir = Path(config["trace_dir"]) if config.get("trace_dir") else None

    model = build_model(spec)
    optimizer = _make_optimizer(float(config["learning_rate"]))
    variables = model.trainable_variables
    optimizer.build(variables)

    start_epoch = 0
    state: dict[str, Any] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = _restore_checkpoint(Path(folder), model, optimizer)
        start_epoch = int(state["epoch"])  # epochs completed

    # Broadcast rank 0's weights: all-reduce SUM of rank 0's weights and zeros elsewhere.
    weights = model.get_weights()
    if world > 1:
        flat = np.concatenate([w.reshape(-1) for w in weights]).astype(np.float32)
        if rank != 0:
            flat = np.zeros_like(flat)
        flat = collective.sum_numpy(flat)
        out, offset = [], 0
        for w in weights:
            out.append(flat[offset : offset + w.size].reshape(w.shape).astype(w.dtype))
            offset += w.size
        model.set_weights(out)

    sizes = [int(np.prod(v.shape)) for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    y_dtype = tf.int32 if task == "classification" else tf.float32
    y_var = float(spec.get("y_std", 1.0)) ** 2

    def _loss_sum(y: Any, out: Any) -> Any:
        if task == "classification":
            return tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, out))
        return tf.reduce_sum(tf.square(tf.reshape(out, [-1]) - y)) / y_var

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, int(spec["n_features"])], tf.float32),
            tf.TensorSpec([None], y_dtype),
            tf.TensorSpec([], tf.float32),
        ],
        reduce_retracing=True,
    )
    def train_step(x: Any, y: Any, more: Any) -> Any:
        rows = tf.cast(tf.shape(x)[0], tf.float32)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss_sum = _loss_sum(y, out)
        grads = tape.gradient(loss_sum, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)]
        packed = tf.concat([tf.reshape(g, [-1]) for g in grads] + [tf.stack([loss_sum, rows, more])], 0)
        total = collective.sum(packed)
        n_total = total[-2]
        mean_grads = total[:-3] / tf.maximum(n_total, 1.0)
        parts = tf.split(mean_grads, sizes)
        optimizer.apply([tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)], variables)
        return total[-3:]

    @tf.function(input_signature=[tf.TensorSpec([None, int(spec["n_features"])], tf.float32)])
    def predict(x: Any) -> Any:
        return model(x, training=False)

    X_val = y_val = None
    if rank == 0:
        val_shard = ray.train.get_dataset_shard("val")
        val_batches = list(val_shard.iter_batches(batch_size=65536, batch_format="numpy"))
        X_val = np.concatenate([b["x"] for b in val_batches]).astype(np.float32)
        y_val = np.concatenate([b["y"] for b in val_batches])

    shard = ray.train.get_dataset_shard("train")
    n_features = int(spec["n_features"])
    empty_x = np.zeros((0, n_features), np.float32)
    empty_y = np.zeros((0,), np.int32 if task == "classification" else np.float32)
    seed = int(spec["seed"])

    stop_flag = config.get("stop_flag")
    pg = ray.util.get_current_placement_group()
    placement_group = pg.id.hex() if pg is not None else None

    if start_epoch >= epochs and checkpoint is not None:
        # Restored after the last epoch was checkpointed: report it again so the caller (a resumed
        # Tune trial) still sees the final metrics and checkpoint.
        last = dict(state.get("metrics") or {})
        last.update(start_epoch=start_epoch, placement_group=placement_group)
        ray.train.report(last, checkpoint=checkpoint if rank == 0 else None)
        return

    for epoch in range(start_epoch, epochs):
        if epoch > start_epoch and _stop_requested(stop_flag, rank, collective):
            break
        t0 = time.perf_counter()
        batches = iter(
            shard.iter_batches(
                batch_size=per_worker_batch,
                batch_format="numpy",
                local_shuffle_buffer_size=max(4 * per_worker_batch, 256),
                local_shuffle_seed=seed * 100003 + epoch * 1009 + rank,
                prefetch_batches=2,
            )
        )
        seen: list[np.ndarray] = []
        rows_local, loss_total, rows_total, steps = 0, 0.0, 0.0, 0
        t_data = time.perf_counter()
        batch = _next_or_none(batches)
        data_s = time.perf_counter() - t_data
        while True:
            t_data = time.perf_counter()
            nxt = _next_or_none(batches) if batch is not None else None
            data_s += time.perf_counter() - t_data
            if batch is not None:
                x = batch["x"].astype(np.float32, copy=False)
                y = batch["y"].astype(empty_y.dtype, copy=False)
                rows_local += len(x)
                if trace_dir is not None and "row" in batch:
                    seen.append(np.asarray(batch["row"]))
            else:
                x, y = empty_x, empty_y
            loss_sum, n_step, more = train_step(x, y, tf.constant(float(nxt is not None)))
            loss_total += float(loss_sum)
            rows_total += float(n_step)
            steps += 1
            batch = nxt
            if float(more) == 0.0:
                break
        elapsed = time.perf_counter() - t0

        # Every rank's rows and weight digest, gathered by one small all-reduce.
        checksum, digest = weights_digest(model)
        stats = np.zeros(3 * world, np.float64)
        stats[rank], stats[world + rank], stats[2 * world + rank] = rows_local, checksum, digest
        stats = collective.sum_numpy(stats)

        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_total / max(rows_total, 1.0),
            "rows": int(rows_total),
            "steps": steps,
            "epoch_time_s": elapsed,
            "samples_per_s": rows_total / max(elapsed, 1e-9),
            "data_wait_s": data_s,  # this rank's wait for its next batch, part of epoch_time_s
            "start_epoch": start_epoch,
            "world_size": world,
            "rank_rows": [int(v) for v in stats[:world]],
            "rank_weight_checksums": [float(v) for v in stats[world : 2 * world]],
            "rank_weight_digests": [int(v) for v in stats[2 * world :]],
            "placement_group": placement_group,
        }
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
            rows_seen = np.concatenate(seen).tolist() if seen else []
            (trace_dir / f"rank{rank}_epoch{epoch + 1}.json").write_text(
                json.dumps(
                    {
                        "rows": rows_seen,
                        "pid": os.getpid(),
                        "start_epoch": start_epoch,
                        "digest": digest,
                        "checksum": checksum,
                        "loss": metrics["loss"],
                    }
                )
            )
        if rank == 0:
            assert X_val is not None and y_val is not None
            scores = np.asarray(predict(tf.constant(X_val)), dtype=np.float64)
            if task == "regression":
                scores = scores.reshape(-1)
            else:  # float32 softmax rows sum to 1 only up to rounding; sklearn warns on that
                scores /= scores.sum(axis=1, keepdims=True)
            metrics.update(compute_metrics(task, y_val, scores, int(spec.get("n_classes") or 0)))
            with tempfile.TemporaryDirectory() as tmp:
                state = {"epoch": epoch + 1, "spec": spec, "metrics": metrics}
                _save_checkpoint(Path(tmp), model, optimizer, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if trace_dir is not None:
            # Written after the report, so a test that kills this pid knows a checkpoint exists.
            (trace_dir / f"rank{rank}.pid").write_text(json.dumps({"pid": os.getpid(), "epoch": epoch + 1}))
