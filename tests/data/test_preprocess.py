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
