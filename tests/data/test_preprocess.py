import numpy as np
import pandas as pd

from raymlops.config import DataConfig, PreprocessStep, ValidationConfig
from raymlops.data.preprocess import FeaturePipeline
from raymlops.data.validate import validate_training_frame


def test_scaler_is_fitted_on_training_rows_only_and_categories_are_one_hot(ray_session):
    raw = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 4.0, 100.0, 200.0],
            "c": ["a", "b", "a", "b", "c", "c"],
            "y": [0, 1, 0, 1, 0, 1],
        }
    )
    df, schema = validate_training_frame(
        raw, DataConfig(source="m", target="y"), ValidationConfig(min_rows=1), "m"
    )
    train = df.iloc[:4]
    steps = [PreprocessStep.model_validate({"standard_scaler": {"columns": "numeric"}})]
    pipe = FeaturePipeline(steps).fit(train, schema)
    X = pipe.transform(train)
    assert abs(X[:, 0].mean()) < 1e-6  # centred on the training rows, not on the outliers kept out
    assert pipe.feature_names_ == ["x", "c=a", "c=b"]
    unseen = pipe.transform(df.iloc[4:])
    assert np.all(unseen[:, 1:] == 0)  # category 'c' never seen in training: encoded as all zeros
    assert X.dtype == np.float32


def test_fast_transform_equals_ray_transform_batch(ray_session):
    rng = np.random.default_rng(1)
    n = 300
    raw = pd.DataFrame(
        {
            "a": rng.normal(5, 3, n),
            "b": rng.integers(0, 100, n).astype(float),
            "c": rng.choice(["x", "y", "z"], n),
            "d": rng.uniform(-1, 1, n),
            "y": rng.integers(0, 2, n),
        }
    )
    df, schema = validate_training_frame(raw, DataConfig(source="m", target="y"), ValidationConfig(), "m")
    steps = [
        PreprocessStep.model_validate({"standard_scaler": {"columns": "numeric"}}),
        PreprocessStep.model_validate({"min_max_scaler": {"columns": ["d"]}}),
    ]
    pipe = FeaturePipeline(steps).fit(df.iloc[:200], schema)
    new = df.iloc[200:].copy()
    new.loc[new.index[:5], "c"] = "never-seen"
    assert np.allclose(pipe.transform(new), pipe.transform_with_ray(new), atol=1e-5)
    one_row = pipe.transform(new.iloc[:1])
    assert one_row.shape == (1, pipe.n_features_out)
