"""Real HTTP against a running Ray Serve application: both protocols, errors, auth, metrics, request log."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from raymlops.model import ModelBundle

from .conftest import Served, metrics_text, mixed_frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(served: Served):
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def features(served: Served) -> list[str]:
    """The served model's feature columns (training may leave constant pixels out)."""
    return ModelBundle.load("digits:1", served.store).schema.features


@pytest.fixture(scope="module")
def digits_rows(features: list[str]) -> pd.DataFrame:
    return load_digits(as_frame=True).frame[features].iloc[:7]


@pytest.fixture(scope="module")
def expected(served: Served, digits_rows: pd.DataFrame) -> pd.DataFrame:
    """What batch scoring gives for the same rows (ModelBundle.predict_frame, as `raymlops score`)."""
    return ModelBundle.load("digits:1", served.store).predict_frame(digits_rows)


def _proba(expected: pd.DataFrame) -> np.ndarray:
    return expected[[c for c in expected.columns if c.startswith("proba_")]].to_numpy()


def test_tf_rows_objects_and_columns_equal_batch_scoring(client, digits_rows, expected):
    rows = client.post("/v1/models/digits:predict", json={"instances": digits_rows.to_numpy().tolist()})
    assert rows.status_code == 200, rows.text
    assert rows.headers["x-model-version"] == "1"
    preds = rows.json()["predictions"]
    assert [p["prediction"] for p in preds] == expected["prediction"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in preds], _proba(expected), rtol=0, atol=1e-12)

    objects = client.post(
        "/v1/models/digits/versions/1:predict", json={"instances": digits_rows.to_dict("records")}
    )
    assert objects.json() == rows.json()

    columns = client.post("/v1/models/digits:predict", json={"inputs": digits_rows.to_dict("list")})
    out = columns.json()["outputs"]
    assert out["prediction"] == expected["prediction"].tolist()
    np.testing.assert_allclose(out["probabilities"], _proba(expected), rtol=0, atol=1e-12)


def test_v2_infer_equals_batch_scoring(client, digits_rows, expected):
    body = {
        "id": "req-1",
        "inputs": [
            {
                "name": "input-0",
                "shape": list(digits_rows.shape),
                "datatype": "FP64",
                "data": digits_rows.to_numpy().ravel().tolist(),
            }
        ],
    }
    r = client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "digits" and doc["model_version"] == "1" and doc["id"] == "req-1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["prediction"]["datatype"] == "INT64"
    assert outputs["prediction"]["data"] == expected["prediction"].tolist()
    assert outputs["probabilities"]["shape"] == [7, 10]
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (7, 10)), _proba(expected), atol=1e-12
    )


def test_metadata_status_and_health(client, served, features):
    status = client.get("/v1/models/digits").json()
    assert status["model_version_status"][0]["version"] == "1"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = client.get("/v1/models/digits/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert "pixel_7_7" in sig["inputs"] and set(sig["outputs"]) == {"prediction", "probabilities"}
    assert meta["metadata"]["raymlops"]["classes"] == list(range(10))

    v2 = client.get("/v2/models/digits").json()
    assert v2["name"] == "digits" and v2["versions"] == ["1"]
    assert v2["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(features)]}]
    assert client.get("/v2/models/digits/ready").json()["ready"] is True
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_categorical_regressor_through_both_protocols(client, served):
    rows = mixed_frame(n=5, seed=7).drop(columns=["target"])
    expected = ModelBundle.load("mixed", served.store).predict_frame(rows)["prediction"].to_numpy()
    tf = client.post("/v1/models/mixed:predict", json={"instances": rows.to_dict("records")})
    assert tf.status_code == 200, tf.text
    np.testing.assert_allclose(tf.json()["predictions"], expected, atol=1e-9)
    v2 = client.post(
        "/v2/models/mixed/infer",
        json={
            "inputs": [
                {"name": "colour", "shape": [5], "datatype": "BYTES", "data": rows["colour"].tolist()},
                {"name": "size", "shape": [5, 1], "datatype": "FP64", "data": rows["size"].tolist()},
                {"name": "weight", "shape": [5], "datatype": "FP32", "data": rows["weight"].tolist()},
            ]
        },
    )
    assert v2.status_code == 200, v2.text
    (out,) = v2.json()["outputs"]
    assert out["name"] == "prediction" and out["datatype"] == "FP64"
    np.testing.assert_allclose(out["data"], expected, atol=1e-4)  # FP32 weights round a little
    meta = client.get("/v2/models/mixed").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["colour"] == "BYTES"


def test_standard_oip_client_tritonclient(served, digits_rows, expected):
    http = pytest.importorskip("tritonclient.http")
    triton = http.InferenceServerClient(url=served.url.removeprefix("http://"))
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits")
    # tritonclient adds its own headers to the dict it is given: pass a fresh one each call.
    assert triton.get_model_metadata("digits", headers=served.auth)["name"] == "digits"
    data = digits_rows.to_numpy().astype(np.float32)
    for binary in (True, False):
        tensor = http.InferInput("input-0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        wanted = [
            http.InferRequestedOutput(name, binary_data=binary) for name in ("prediction", "probabilities")
        ]
        result = triton.infer("digits", [tensor], outputs=wanted, headers=served.auth)
        assert result.as_numpy("prediction").tolist() == expected["prediction"].tolist()
        np.testing.assert_allclose(result.as_numpy("probabilities"), _proba(expected), atol=1e-12)
    tensor = http.InferInput("input-0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = triton.infer("digits", [tensor], headers=served.auth)  # no outputs named: all, binary
    assert result.as_numpy("prediction").tolist() == expected["prediction"].tolist()
    with pytest.raises(Exception, match="unknown feature|wrong shape"):
        bad = http.InferInput("input-0", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        triton.infer("digits", [bad], headers=served.auth)


def _row(**changes: object) -> dict:
    row: dict[str, object] = {f"pixel_{i}_{j}": 0.0 for i in range(8) for j in range(8)}
    row.update(changes)
    return row


def GOOD(n: int) -> dict:  # noqa: N802 - a request body, built for the served feature count
    return {"instances": [[0.0] * n]}


CASES = [
    # (name, method, path, kwargs, status, words in the error)
    ("malformed json", "POST", "/v1/models/digits:predict", {"content": b"{nope"}, 400, ["malformed JSON"]),
    ("nan", "POST", "/v1/models/digits:predict", {"content": b'{"instances": [[NaN]]}'}, 400, ["NaN"]),
    (
        "wrong content type",
        "POST",
        "/v1/models/digits:predict",
        lambda n: {"content": json.dumps(GOOD(n)).encode(), "headers": {"content-type": "text/plain"}},
        415,
        ["text/plain", "application/json"],
    ),
    (
        "form post",
        "POST",
        "/v2/models/digits/infer",
        {"data": {"a": "1"}},
        415,
        ["application/x-www-form-urlencoded"],
    ),
    (
        "missing feature",
        "POST",
        "/v1/models/digits:predict",
        {"json": {"instances": [{k: v for k, v in _row().items() if k != "pixel_3_4"}]}},
        400,
        ["missing feature", "pixel_3_4"],
    ),
    (
        "extra feature",
        "POST",
        "/v1/models/digits:predict",
        {"json": {"instances": [_row(colour=1)]}},
        400,
        ["unknown feature", "colour"],
    ),
    (
        "non-numeric",
        "POST",
        "/v1/models/digits:predict",
        {"json": {"instances": [_row(), _row(pixel_2_2="abc")]}},
        400,
        ["row 1", "pixel_2_2", "'abc'", "not a number"],
    ),
    (
        "null value",
        "POST",
        "/v1/models/digits:predict",
        {"json": {"instances": [_row(pixel_0_1=None)]}},
        400,
        ["pixel_0_1", "null"],
    ),
    (
        "float32 overflow",
        "POST",
        "/v1/models/digits:predict",
        {"json": {"instances": [_row(pixel_1_1=1e300)]}},
        400,
        ["pixel_1_1", "out of range"],
    ),
    (
        "huge integer",
        "POST",
        "/v1/models/digits:predict",
        {"content": b'{"instances": [[' + b"9" * 400 + b"]]}"},
        400,
        ["too large"],
    ),
    (
        "short row",
        "POST",
        "/v1/models/digits:predict",
        lambda n: {"json": {"instances": [[1.0] * (n - 1)]}},
        400,
        lambda n: [f"{n - 1} values"],
    ),
    ("empty batch", "POST", "/v1/models/digits:predict", {"json": {"instances": []}}, 400, ["empty batch"]),
    (
        "wrong shape",
        "POST",
        "/v2/models/digits/infer",
        lambda n: {
            "json": {"inputs": [{"name": "x", "shape": [1, n, 1], "datatype": "FP32", "data": [0.0] * n}]}
        },
        400,
        lambda n: ["wrong shape", f"[N, {n}]"],
    ),
    (
        "strings in FP32",
        "POST",
        "/v2/models/digits/infer",
        lambda n: {
            "json": {"inputs": [{"name": "x", "shape": [1, n], "datatype": "FP32", "data": ["a"] * n}]}
        },
        400,
        ["FP32", "numbers"],
    ),
    (
        "oversized body",
        "POST",
        "/v1/models/digits:predict",
        lambda n: {"json": {"instances": [[0.0] * n] * 3000}},
        413,
        ["larger than the limit"],
    ),
    (
        "unknown model",
        "POST",
        "/v1/models/nope:predict",
        lambda n: {"json": GOOD(n)},
        404,
        ["'nope'", "digits"],
    ),
    (
        "unknown version",
        "POST",
        "/v1/models/digits/versions/9:predict",
        lambda n: {"json": GOOD(n)},
        404,
        ["version 9"],
    ),
    (
        "bad version",
        "POST",
        "/v2/models/digits/versions/x/infer",
        lambda n: {"json": GOOD(n)},
        400,
        ["positive integer"],
    ),
    ("get on predict", "GET", "/v1/models/digits:predict", {}, 405, ["POST"]),
    ("unknown path", "GET", "/v3/whatever", {}, 404, ["no such endpoint"]),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "kwargs", "status", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_client_mistakes_get_4xx_naming_the_problem_and_the_replica_keeps_serving(
    client, features, name, method, path, kwargs, status, words
):
    n = len(features)
    kwargs = kwargs(n) if callable(kwargs) else kwargs
    words = words(n) if callable(words) else words
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    for word in words:
        assert word in message, message
    assert client.post("/v1/models/digits:predict", json=GOOD(n)).status_code == 200


def test_gzip_request_body(client, features):
    r = client.post(
        "/v1/models/digits:predict",
        content=gzip.compress(json.dumps(GOOD(len(features))).encode()),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text


def test_auth_guards_inference_and_metadata_but_not_health(served, features):
    with httpx.Client(base_url=served.url, timeout=30) as anon:
        for method, path, body in [
            ("POST", "/v1/models/digits:predict", GOOD(len(features))),
            ("GET", "/v1/models/digits", None),
            ("GET", "/v1/models/digits/metadata", None),
            ("GET", "/v2/models/digits", None),
            ("POST", "/v2/models/digits/infer", {"inputs": []}),
        ]:
            r = anon.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert "API key" in r.json()["error"]
            wrong = anon.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
            assert anon.get(path).status_code == 200, path


def test_prometheus_metrics_per_model_and_version(client, features):
    for _ in range(3):
        assert client.post("/v1/models/digits:predict", json=GOOD(len(features))).status_code == 200
    assert client.post("/v1/models/digits:predict", json={"instances": []}).status_code == 400
    # The session's server answered other tests before: wait for this test's own series, the
    # bad request's above all (replicas flush every poll, Ray exports every report interval).
    wanted = {
        "raymlops_requests_total": 'status="200"',
        "raymlops_request_latency_ms_bucket": 'protocol="tf"',
        "raymlops_predictions_total": 'label="',
        "raymlops_errors_total": 'reason="bad_request"',
    }

    def missing(lines: list[str]) -> list[str]:
        ours = [ln for ln in lines if 'model="digits"' in ln and 'version="1"' in ln]
        return [name for name, tag in wanted.items() if not any(name in ln and tag in ln for ln in ours)]

    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [ln for ln in metrics_text().splitlines() if "raymlops_" in ln and not ln.startswith("#")]
        if not missing(lines):
            break
        time.sleep(2)
    assert not missing(lines), (missing(lines), lines[:20])


def test_request_log_is_written_as_parquet(client, served, digits_rows):
    assert (
        client.post(
            "/v1/models/digits:predict", json={"instances": digits_rows.to_numpy().tolist()}
        ).status_code
        == 200
    )
    deadline = time.monotonic() + 20
    files: list = []
    while time.monotonic() < deadline and not files:
        files = sorted((served.request_log / "digits").rglob("*.parquet"))
        time.sleep(0.5)
    assert files, "no request log written"
    time.sleep(1.5)  # let the flush that is under way finish
    logged = pd.concat(
        [pd.read_parquet(f) for f in sorted((served.request_log / "digits").rglob("*.parquet"))]
    )
    assert {"served_at", "model_name", "model_version", "prediction", "proba_0", "pixel_7_7"} <= set(
        logged.columns
    )
    assert (logged["model_name"] == "digits").all()
    assert len(logged) >= 7


def test_a_batch_rejects_only_the_request_with_a_bad_row(served, digits_rows, expected):
    from raymlops.serve import score_batch
    from raymlops.serve._protocols import parse_tf_predict

    bundle = ModelBundle.load("digits:1", served.store)
    features = bundle.schema.features
    rows = digits_rows.to_numpy().tolist()
    bad_row = list(rows[0])
    bad_row[5] = "abc"
    parts = [
        parse_tf_predict({"instances": rows[:3]}, features),
        parse_tf_predict({"instances": [rows[3], bad_row]}, features),
        parse_tf_predict({"instances": rows[4:]}, features),
    ]
    first, bad, last = score_batch(bundle, parts)
    assert first.labels is not None and last.labels is not None
    assert (
        first.labels.tolist() + last.labels.tolist()
        == expected["prediction"].iloc[[0, 1, 2, 4, 5, 6]].tolist()
    )
    np.testing.assert_allclose(last.probabilities, _proba(expected)[4:], atol=1e-12)
    assert bad.labels is None
    assert bad.error == f"1 of 2 row(s) cannot be scored: row 1: {features[5]}: 'abc' is not a number"
