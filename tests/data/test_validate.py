import numpy as np
import pandas as pd
import pytest

from raymlops.config import DataConfig, ValidationConfig
from raymlops.data._errors import DataValidationError
from raymlops.data.validate import validate_training_frame


def frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.integers(0, 5, size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
            "label": rng.choice(["yes", "no"], size=n),
        }
    )


def check(df: pd.DataFrame, checks: ValidationConfig | None = None, **data_kwargs):
    cfg = DataConfig(source="mem.csv", target=data_kwargs.pop("target", "label"), **data_kwargs)
    return validate_training_frame(df, cfg, checks or ValidationConfig(), "mem.csv")


def test_infers_schema_with_categorical_and_classes():
    _, schema = check(frame())
    assert schema.task == "classification"
    assert schema.categorical == ["color"]
    assert schema.classes == ["no", "yes"]
    assert schema.features == ["x1", "x2", "color"]


def test_missing_target_column_is_named():
    with pytest.raises(DataValidationError) as err:
        check(frame(), target="outcome")
    assert "'outcome'" in str(err.value) and "mem.csv" in str(err.value)


def test_non_numeric_value_in_numeric_column_names_row_and_value():
    df = frame()
    df["x1"] = df["x1"].astype(object)
    df.loc[7, "x1"] = "oops"
    with pytest.raises(DataValidationError) as err:
        check(df)
    msg = str(err.value)
    assert "x1" in msg and "row 7" in msg and "'oops'" in msg


def test_null_fraction_over_limit_and_constant_column_are_both_reported():
    df = frame()
    df.loc[3, "x2"] = None
    df["const"] = 1.0
    with pytest.raises(DataValidationError) as err:
        check(df, ValidationConfig(forbid_constant_columns=True))
    assert len(err.value.problems) == 2
    assert "'x2'" in str(err.value) and "'const'" in str(err.value)


def test_single_class_target_is_refused():
    df = frame()
    df["label"] = "yes"
    with pytest.raises(DataValidationError, match="single class"):
        check(df)


def test_empty_data_is_refused():
    with pytest.raises(DataValidationError, match="no rows"):
        check(frame().iloc[0:0])


def test_regression_is_inferred_for_continuous_target():
    df = frame()
    df["y"] = np.linspace(0, 1, len(df))
    _, schema = check(df.drop(columns=["label"]), target="y")
    assert schema.task == "regression" and schema.classes is None


def test_constant_column_is_left_out_with_a_warning_by_default():
    df = frame()
    df["const"] = 1.0
    _, schema = check(df)
    assert "const" not in schema.features and schema.dropped == ["const"]
    assert schema.inputs == ["x1", "x2", "color", "const"]
