"""Model training: random forests (tree-parallel) and Keras (Ray Train), both searched with Ray Tune."""

from raymlops.train.base import TrainedModel, TrainingData

__all__ = ["TrainedModel", "TrainingData"]
