"""A user's own Keras network for ``pipelines/custom_keras.yaml`` (``builder: "digits_nets:build"``).

raymlops imports this module from the pipeline file's folder (or ``PYTHONPATH``) inside every
training worker, and ``raymlops submit`` ships it to the cluster with the pipeline. The builder
only makes the network: raymlops compiles it, trains it data-parallel, checkpoints it and saves
it as a ``.keras`` file that loads in safe mode, so only built-in (serializable) layers are used
here and serving never needs this module.
"""

from __future__ import annotations

from typing import Any

import keras


def build(n_features: int, n_outputs: int, task: str, params: dict[str, Any]) -> keras.Model:
    """A wide-and-deep network: a linear path beside a stack of dense blocks, joined at the end.

    Args:
        n_features: width of the (preprocessed) feature vector.
        n_outputs: classes for classification, 1 for regression.
        task: ``classification`` or ``regression``.
        params: the pipeline's free-form params that the training loop does not use
            (``width``, ``depth``, ``dropout`` here), sampled by Tune when searched.
    """
    width = int(params.get("width", 64))
    depth = int(params.get("depth", 2))
    dropout = float(params.get("dropout", 0.0))

    inputs = keras.Input(shape=(n_features,), name="features")
    deep = inputs
    for i in range(depth):
        deep = keras.layers.Dense(width, activation="relu", name=f"deep_{i}")(deep)
        deep = keras.layers.LayerNormalization(name=f"norm_{i}")(deep)
        if dropout > 0:
            deep = keras.layers.Dropout(dropout, name=f"dropout_{i}")(deep)
    joined = keras.layers.Concatenate(name="wide_and_deep")([inputs, deep])
    if task == "classification":
        outputs = keras.layers.Dense(n_outputs, activation="softmax", name="probabilities")(joined)
    else:
        outputs = keras.layers.Dense(1, name="standardized")(joined)
    return keras.Model(inputs, outputs, name="digits_wide_and_deep")
