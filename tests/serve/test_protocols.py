"""The wire formats, auth and config parsing on their own: no Ray, milliseconds per test."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from raymlops.errors import ConfigError
from raymlops.serve import AppArgs, ClientError, parse_canary
from raymlops.serve._auth import ApiKeyCheck, key_digest
from raymlops.serve._metrics import value_bucket
from raymlops.serve._protocols import (
    V2Request,
    decode_body,
    format_tf_predict,
    format_v2_infer,
    parse_json,
    parse_tf_predict,
    parse_v2_infer,
)

FEATURES = ["a", "b", "c"]
OUTPUTS = ["prediction", "probabilities"]


def _client_error(fn, *args) -> ClientError:
    with pytest.raises(ClientError) as info:
        fn(*args)
    assert 400 <= info.value.status < 500
    return info.value


def test_tf_rows_objects_and_columns_give_the_same_columns():
    rows = parse_tf_predict({"instances": [[1, 2, 3], [4, 5, 6]]}, FEATURES)
    objects = parse_tf_predict({"instances": [{"c": 3, "a": 1, "b": 2}, {"a": 4, "b": 5, "c": 6}]}, FEATURES)
    columns = parse_tf_predict({"inputs": {"a": [1, 4], "b": [2, 5], "c": [3, 6]}}, FEATURES)
    for parsed in (rows, objects, columns):
        assert parsed.n_rows == 2
        assert [list(parsed.data[f]) for f in FEATURES] == [[1, 4], [2, 5], [3, 6]]
    assert not rows.columnar and columns.columnar


def test_tf_rows_with_mixed_values_keep_them_for_the_row_checks():
    parsed = parse_tf_predict({"instances": [[1, "x", None]]}, FEATURES)
    assert parsed.data == {"a": [1], "b": ["x"], "c": [None]}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"instances": []}, ["empty batch"]),
        ({"inputs": {"a": [], "b": [], "c": []}}, ["empty batch"]),
        ({"instances": [[1, 2]]}, ["instances[0]", "2 values", "expects 3"]),
        ({"instances": [{"a": 1, "b": 2}]}, ["missing feature", "c"]),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "zz": 4}]}, ["unknown feature", "zz"]),
        ({"inputs": {"a": [1], "b": [2], "c": [3, 4]}}, ["differ in length"]),
        ({"instances": [[1, 2, 3]], "inputs": {}}, ["exactly one"]),
        ({"rows": [[1, 2, 3]]}, ["instances"]),
        ([[1, 2, 3]], ["JSON object"]),
        ({"instances": [[1, 2, 3]], "extra": 1}, ["unknown key", "extra"]),
    ],
)
def test_tf_client_mistakes_are_400_naming_the_problem(payload, words):
    err = _client_error(parse_tf_predict, payload, FEATURES)
    assert err.status == 400
    for word in words:
        assert word in err.message, err.message


def test_tf_answer_layouts():
    labels = np.array([1, 0])
    proba = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert format_tf_predict(False, labels, proba) == {
        "predictions": [
            {"prediction": 1, "probabilities": [0.2, 0.8]},
            {"prediction": 0, "probabilities": [0.9, 0.1]},
        ]
    }
    assert format_tf_predict(True, labels, proba) == {
        "outputs": {"prediction": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]]}
    }
    assert format_tf_predict(False, np.array([1.5, 2.5]), None) == {"predictions": [1.5, 2.5]}


def test_json_refuses_nan_empty_and_garbage():
    assert "NaN" in _client_error(parse_json, b'{"instances": [[NaN]]}').message
    assert "empty" in _client_error(parse_json, b"").message
    assert "malformed JSON" in _client_error(parse_json, b"{nope").message
    assert "UTF-8" in _client_error(parse_json, b'{"a": "\xc3\x28"}').message


def test_compressed_bodies_are_inflated_within_the_limit():
    body = b'{"instances": [[1, 2, 3]]}'
    assert decode_body(gzip.compress(body), "gzip", 1000) == body
    bomb = gzip.compress(b"0" * 100_000)
    assert _client_error(decode_body, bomb, "gzip", 1000).status == 413
    assert _client_error(decode_body, body, "br", 1000).status == 415
    assert _client_error(decode_body, b"not gzip", "gzip", 1000).status == 400


def _v2(inputs, **extra):
    return {"inputs": inputs, **extra}


def test_v2_matrix_and_per_feature_tensors():
    matrix = parse_v2_infer(
        _v2([{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]),
        None,
        FEATURES,
        OUTPUTS,
    )
    nested = parse_v2_infer(
        _v2([{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6]]}]),
        None,
        FEATURES,
        OUTPUTS,
    )
    per_feature = parse_v2_infer(
        _v2(
            [
                {"name": f, "shape": [2, 1], "datatype": "INT64", "data": [i + 1, i + 4]}
                for i, f in enumerate(FEATURES)
            ]
        ),
        None,
        FEATURES,
        OUTPUTS,
    )
    for parsed in (matrix, nested, per_feature):
        assert parsed.columns.n_rows == 2
        assert [list(parsed.columns.data[f]) for f in FEATURES] == [[1, 4], [2, 5], [3, 6]]


def test_v2_binary_tensor_extension():
    values = np.arange(6, dtype="<f4")
    words = ["red", "blue"]
    raw_words = b"".join(struct.pack("<I", len(w)) + w.encode() for w in words)
    header = _v2(
        [
            {"name": "input-0", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        ]
    )
    parsed = parse_v2_infer(header, values.tobytes(), FEATURES, OUTPUTS)
    assert list(parsed.columns.data["c"]) == [2.0, 5.0]
    strings = parse_v2_infer(
        _v2(
            [
                {
                    "name": "colour",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw_words)},
                }
            ]
        ),
        raw_words,
        ["colour"],
        ["prediction"],
    )
    assert list(strings.columns.data["colour"]) == words


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (
            [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            ["wrong shape", "[N, 3]"],
        ),
        ([{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}], ["wrong shape"]),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}], ["needs 3 values", "holds 2"]),
        (
            [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "two", 3]}],
            ["needs numbers", '"two"'],
        ),
        ([{"name": "x", "shape": [1, 3], "datatype": "FLOAT", "data": [1, 2, 3]}], ["unknown datatype"]),
        ([{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}], ["empty batch"]),
        ([{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2.5, 3]}], ["integers"]),
        ([{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], ["missing feature", "b, c"]),
        (
            [{"name": f, "shape": [1], "datatype": "FP32", "data": [1]} for f in [*FEATURES, "zz"]],
            ["unknown feature", "zz"],
        ),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP32"}], ["'data' is required"]),
        ([{"name": "x", "datatype": "FP32", "data": [1, 2, 3]}], ["'shape' is required"]),
        ([], ["non-empty list"]),
    ],
)
def test_v2_client_mistakes_are_400_naming_the_problem(inputs, words):
    err = _client_error(parse_v2_infer, _v2(inputs), None, FEATURES, OUTPUTS)
    assert err.status == 400
    for word in words:
        assert word in err.message, err.message


def test_v2_unknown_output_and_binary_size_past_the_body():
    ok = [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
    assert (
        "unknown output"
        in _client_error(
            parse_v2_infer, _v2(ok, outputs=[{"name": "logits"}]), None, FEATURES, OUTPUTS
        ).message
    )
    past = [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 99}}]
    assert "past the end" in _client_error(parse_v2_infer, _v2(past), b"\0" * 12, FEATURES, OUTPUTS).message


def test_v2_answer_json_and_binary():
    labels = np.array([3, 1], dtype=np.int64)
    proba = np.array([[0.1, 0.9], [0.6, 0.4]])
    parsed = V2Request(columns=None, request_id="r1")  # type: ignore[arg-type]
    body, headers = format_v2_infer(parsed, "m", "2", labels, proba)
    assert headers == {}
    doc = json.loads(body)
    assert doc["id"] == "r1" and doc["model_version"] == "2"
    assert doc["outputs"][0] == {"name": "prediction", "shape": [2], "datatype": "INT64", "data": [3, 1]}
    assert doc["outputs"][1]["shape"] == [2, 2] and doc["outputs"][1]["data"] == [0.1, 0.9, 0.6, 0.4]
    binary = V2Request(columns=None, outputs=["prediction"], binary_outputs={"prediction"})  # type: ignore[arg-type]
    body, headers = format_v2_infer(binary, "m", "2", labels, proba)
    cut = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:cut])
    assert [o["name"] for o in head["outputs"]] == ["prediction"]
    assert np.frombuffer(body[cut:], dtype="<i8").tolist() == [3, 1]


def test_api_key_check_is_bearer_and_exact():
    check = ApiKeyCheck(key_digest("s3cret"))
    assert check.enabled
    assert check.allows("Bearer s3cret")
    assert check.allows("bearer s3cret")
    assert not check.allows("Bearer s3cre")
    assert not check.allows("Basic s3cret")
    assert not check.allows(None)
    assert ApiKeyCheck("").allows(None)


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("RAYMLOPS_API_KEY", "k")
    assert not ApiKeyCheck().allows(None)
    assert ApiKeyCheck().allows("Bearer k")
    monkeypatch.delenv("RAYMLOPS_API_KEY")
    assert not ApiKeyCheck().enabled


def test_canary_and_app_args_refuse_mistakes():
    name, spec = parse_canary("digits:3=10")
    assert (name, spec.version, spec.percent) == ("digits", 3, 10.0)
    for bad in ("digits=10", "digits:x=10", "digits:3=0", "digits:3=150"):
        with pytest.raises(ConfigError):
            parse_canary(bad)
    with pytest.raises(ValueError, match="modles"):
        AppArgs.model_validate({"modles": ["digits"]})
    with pytest.raises(ValueError, match="not served"):
        AppArgs.model_validate({"models": ["digits"], "canary": ["other:2=5"]})
    with pytest.raises(ValueError, match="repeated"):
        AppArgs.model_validate({"models": ["digits", "digits:2"]})


def test_regression_prediction_buckets_are_bounded():
    assert value_bucket(0.0) == "0"
    assert value_bucket(123.0) == "+1e2"
    assert value_bucket(-0.05) == "-1e-2"
    assert value_bucket(float("nan")) == "nan"


# ---- client input that used to give a 500 (issue 15) ------------------------------------------
@pytest.mark.parametrize("text", ["²", "١", "9" * 4300, "0", "-1", "1.5", ""])
def test_a_version_that_is_not_ascii_digits_is_a_400_not_a_crash(text):
    from raymlops.serve._protocols import parse_version

    err = _client_error(parse_version, text)
    assert err.status == 400 and "positive integer" in err.message
    assert len(err.message) < 200  # a 4,300-digit version is not echoed back whole


def test_a_version_of_ascii_digits_parses():
    from raymlops.serve._protocols import parse_version

    assert parse_version("12") == 12


@pytest.mark.parametrize("text", ["²", "١٢", "12x", "99"])
def test_inference_header_length_must_be_ascii_digits_within_the_body(text):
    from raymlops.serve._protocols import parse_header_length

    err = _client_error(parse_header_length, text, 10)
    assert "Inference-Header-Content-Length" in err.message


def test_output_parameters_that_are_not_an_object_are_a_400():
    payload = {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}],
        "outputs": [{"name": "prediction", "parameters": "x"}],
    }
    err = _client_error(parse_v2_infer, payload, None, FEATURES, OUTPUTS)
    assert "outputs[0].parameters" in err.message


@pytest.mark.parametrize("depth", [2000, 200_000])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(depth):
    err = _client_error(parse_json, b"[" * depth + b"]" * depth)
    assert err.status == 400 and "malformed JSON" in err.message


def test_json_errors_still_name_the_problem():
    assert "NaN" in _client_error(parse_json, b'{"a": [NaN]}').message
    assert "too large" in _client_error(parse_json, b'{"a": [' + b"9" * 400 + b"]}").message
    assert parse_json(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


# ---- the fast path: numbers go straight into one matrix ----------------------------------------
def test_numeric_rows_and_objects_carry_one_matrix_in_feature_order():
    rows = parse_tf_predict({"instances": [[1, 2, 3], [4, 5, 6]]}, FEATURES)
    objects = parse_tf_predict({"instances": [{"c": 3, "b": 2, "a": 1}, {"a": 4, "b": 5, "c": 6}]}, FEATURES)
    for parsed in (rows, objects):
        assert parsed.matrix is not None
        np.testing.assert_array_equal(parsed.matrix, [[1, 2, 3], [4, 5, 6]])
    v2 = parse_v2_infer(
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]},
        None,
        FEATURES,
        OUTPUTS,
    )
    assert v2.columns.matrix is not None and v2.columns.matrix.shape == (2, 3)


def test_mixed_values_or_categorical_models_keep_columns_for_the_row_checks():
    assert parse_tf_predict({"instances": [[1, "x", None]]}, FEATURES).matrix is None
    assert parse_tf_predict({"instances": [[1, 2, 3]]}, FEATURES, categorical=True).matrix is None


def test_a_row_may_carry_the_columns_training_dropped_but_not_unknown_ones():
    dropped = ["pixel_0_0"]
    parsed = parse_tf_predict({"instances": [{"a": 1, "b": 2, "c": 3, "pixel_0_0": 0}]}, FEATURES, dropped)
    assert list(parsed.data) == FEATURES
    columns = parse_tf_predict(
        {"inputs": {"a": [1], "b": [2], "c": [3], "pixel_0_0": [0]}}, FEATURES, dropped
    )
    assert columns.n_rows == 1
    err = _client_error(
        parse_tf_predict, {"instances": [{"a": 1, "b": 2, "c": 3, "zz": 0}]}, FEATURES, dropped
    )
    assert "unknown feature" in err.message and "zz" in err.message


def test_encode_json_writes_numpy_and_non_finite_values_as_json():
    from raymlops.serve._protocols import encode_json

    out = json.loads(encode_json({"a": np.array([1.5, np.nan]), "b": np.int64(3), "c": float("inf")}))
    assert out == {"a": [1.5, None], "b": 3, "c": None}
