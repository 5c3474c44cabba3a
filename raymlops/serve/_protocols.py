"""Wire formats: TF Serving REST and the Open Inference Protocol v2 (KServe, Triton).

Everything here is a pure function from bytes/JSON to columns and back, with no Ray in sight, so the
Serve replica and the bare FastAPI baseline in ``benchmarks/serve_load.py`` run the same parsing code
and a parsing bug can be unit-tested in milliseconds. Every problem a client can cause is raised as
:class:`ClientError` with the HTTP status and a message that names the offending field; the caller
turns it into ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # several times faster than the standard library both ways; optional
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency, the fallback keeps serving alive
    orjson = None  # type: ignore[assignment]

__all__ = [
    "ClientError",
    "Columns",
    "V2Request",
    "decode_body",
    "encode_json",
    "format_tf_predict",
    "format_v2_infer",
    "parse_header_length",
    "parse_json",
    "parse_tf_predict",
    "parse_v2_infer",
    "parse_version",
    "prediction_datatype",
]

#: Numpy dtypes of the OIP v2 tensor types (binary data is little-endian).
V2_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
V2_DATATYPES = frozenset([*V2_DTYPES, "BYTES"])
_MAX_NAMES_IN_MESSAGE = 8
_MAX_SHOWN_VALUE = 40
#: Model versions and byte counts are ASCII digits only (``str.isdigit`` accepts ``²``, which
#: ``int`` refuses) and short enough that ``int`` never hits its 4,300-digit limit.
_ASCII_NUMBER = re.compile(r"[0-9]{1,18}")


class ClientError(Exception):
    """A request the client got wrong: answered with ``status`` and ``{"error": message}``.

    Args:
        status: the HTTP status (4xx).
        message: what is wrong, naming the field, feature or value.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Columns:
    """Parsed input rows as one array or list per feature, in the model's feature order.

    Attributes:
        data: feature -> values (a 1-D numpy array or a list of raw JSON values).
        n_rows: the number of rows.
        columnar: whether the client sent columns (TF ``inputs``) rather than rows (``instances``);
            the answer uses the same layout.
        matrix: the same rows as one (n_rows, n_features) float64 matrix in feature order, when the
            client sent plain numbers (the fast path: one finiteness test checks every value).
        n_bytes: the request body's size, so that a batch can be bounded in bytes as well as rows.
    """

    data: Mapping[str, Any]
    n_rows: int
    columnar: bool = False
    matrix: np.ndarray | None = None
    n_bytes: int = 0


@dataclass
class V2Request:
    """A parsed OIP v2 inference request.

    Attributes:
        columns: the input rows.
        request_id: the client's ``id``, echoed back.
        outputs: requested output names (None: all).
        binary_outputs: output names to return in the binary tensor extension.
    """

    columns: Columns
    request_id: str | None = None
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)


# ---- shared helpers -----------------------------------------------------------------------------
def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE])
    more = len(names) - _MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= _MAX_SHOWN_VALUE else text[: _MAX_SHOWN_VALUE - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (send null for a missing value)")


def _parse_int(text: str) -> int | float:
    if len(text.lstrip("-")) > 300:  # beyond float64: pandas and numpy would overflow on it
        raise ValueError(f"integer {text[:20]}... is too large")
    return int(text)


def decode_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate), never inflating past ``max_bytes``.

    Triton's client compresses requests on request; a bomb must not exhaust the replica's memory.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ClientError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as err:
        raise ClientError(400, f"body is not valid {encoding} data: {err}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise ClientError(413, f"decompressed body is larger than the limit of {max_bytes} bytes")
    return out


def parse_json(body: bytes) -> Any:
    """JSON from bytes, refusing NaN/Infinity (not JSON, and not scorable anyway).

    orjson parses the common case; when it refuses a body, the standard library parses it again
    only to produce a message that names the problem (``NaN``, a too large integer), and nesting
    deeper than Python's recursion limit is a client error too, not a crash.
    """
    if not body:
        raise ClientError(400, "malformed JSON: the request body is empty")
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            if "recursion" in str(err).lower():
                raise ClientError(400, "malformed JSON: nested too deeply") from None
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_int=_parse_int)
    except UnicodeDecodeError:
        raise ClientError(400, "malformed JSON: the body is not UTF-8 text") from None
    except RecursionError:
        raise ClientError(400, "malformed JSON: nested too deeply") from None
    except ValueError as err:
        raise ClientError(400, f"malformed JSON: {err}") from None


def parse_version(text: str) -> int:
    """A model version from a URL: ASCII digits, at least 1 (``²``, ``-1`` and 4,300 digits are 400)."""
    if not _ASCII_NUMBER.fullmatch(text) or int(text) < 1:
        raise ClientError(400, f"version must be a positive integer, got {_show_text(text)}")
    return int(text)


def parse_header_length(text: str, body_length: int) -> int:
    """``Inference-Header-Content-Length``: ASCII digits no larger than the body (else 400)."""
    if not _ASCII_NUMBER.fullmatch(text.strip()) or int(text) > body_length:
        raise ClientError(400, f"Inference-Header-Content-Length {_show_text(text)} does not fit the body")
    return int(text)


def _show_text(text: str) -> str:
    return repr(text) if len(text) <= _MAX_SHOWN_VALUE else repr(text[: _MAX_SHOWN_VALUE - 3]) + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def encode_json(payload: Any) -> bytes:
    """Compact JSON bytes; numpy values become plain numbers and lists, NaN and infinity null."""
    if orjson is not None:
        try:
            return orjson.dumps(payload, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. a non-string key or an integer beyond 64 bits: the slow path
            pass
    return json.dumps(_finite(payload), separators=(",", ":"), default=_jsonable).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _check_features(
    given: Sequence[str], features: Sequence[str], what: str, ignored: frozenset[str] = frozenset()
) -> None:
    known = set(features)
    present = set(given)
    extra = [c for c in given if c not in known and c not in ignored]
    missing = [c for c in features if c not in present]
    problems = []
    if missing:
        problems.append(f"missing feature(s): {_names(missing)}")
    if extra:
        problems.append(f"unknown feature(s): {_names(extra)}")
    if problems:
        raise ClientError(400, f"{what}: {'; '.join(problems)} (the model expects {len(features)} features)")


def _rows_to_columns(
    rows: list[Any], features: Sequence[str], what: str
) -> tuple[Mapping[str, Any], np.ndarray | None]:
    """List rows (each one value per feature, in feature order) to columns (and the numeric matrix)."""
    n_features = len(features)
    matrix: np.ndarray | None = None
    try:
        candidate = np.asarray(rows)
        if candidate.ndim == 2 and candidate.dtype.kind in "fiu":
            matrix = candidate.astype(np.float64, copy=False)
    except (ValueError, TypeError):  # ragged or mixed: checked row by row below
        matrix = None
    if matrix is not None and matrix.shape[1] == n_features:
        return _matrix_data(matrix, features), matrix
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ClientError(
                400, f"{what}[{i}] must be a list of {n_features} values or an object keyed by feature name"
            )
        if len(row) != n_features:
            raise ClientError(
                400,
                f"{what}[{i}] has {len(row)} values, the model expects {n_features}: {_names(features)}",
            )
    transposed = list(zip(*rows, strict=True))
    return {f: list(transposed[j]) for j, f in enumerate(features)}, None


class _MatrixColumns(Mapping[str, np.ndarray]):
    """A matrix seen as feature -> column, without making 64 column views for every request."""

    def __init__(self, matrix: np.ndarray, features: Sequence[str]) -> None:
        self._matrix = matrix
        self._features = list(features)
        self._index: dict[str, int] | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        if self._index is None:
            self._index = {f: j for j, f in enumerate(self._features)}
        return self._matrix[:, self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


def _matrix_data(matrix: np.ndarray, features: Sequence[str]) -> Mapping[str, Any]:
    return _MatrixColumns(matrix, features)


def _numeric_matrix(columns: list[list[Any]]) -> np.ndarray | None:
    """Columns as one (n, k) float64 matrix (null -> NaN, caught by the row checks); None when a
    value is no number at all (the row checks then name it)."""
    try:
        return np.array(columns, dtype=np.float64).T
    except (ValueError, TypeError, OverflowError):
        return None


def _objects_to_columns(
    rows: list[Any], features: Sequence[str], what: str, ignored: frozenset[str]
) -> dict[str, Any]:
    first_keys: list[str] | None = None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ClientError(400, f"{what}[{i}] must be an object like {what}[0]")
        keys = list(row)
        if keys != first_keys:
            _check_features(keys, features, f"{what}[{i}]", ignored)
            first_keys = keys
    return {f: [row[f] for row in rows] for f in features}


# ---- TF Serving REST ----------------------------------------------------------------------------
def parse_tf_predict(
    payload: Any, features: Sequence[str], ignored: Sequence[str] = (), categorical: bool = False
) -> Columns:
    """``{"instances": [...]}`` (rows) or ``{"inputs": ...}`` (columns) to columns.

    Rows may be lists (one value per feature, in the order the metadata lists) or objects keyed by
    feature name. ``inputs`` may be an object of equal-length columns or, like TF Serving for a
    single-input model, a list of rows.

    Args:
        payload: the parsed JSON body.
        features: the model's feature columns, in order.
        ignored: columns a client may send by name and that are not features (the constant
            columns training left out): accepted and dropped, so a row of the full table scores.
        categorical: whether the model has categorical features (no numeric matrix then).
    """
    if not isinstance(payload, dict):
        raise ClientError(400, 'the body must be a JSON object with "instances" or "inputs"')
    has_instances = "instances" in payload
    has_inputs = "inputs" in payload
    if has_instances == has_inputs:
        raise ClientError(400, 'give exactly one of "instances" (rows) or "inputs" (columns)')
    extra = sorted(set(payload) - {"instances", "inputs", "signature_name"})
    if extra:
        raise ClientError(400, f"unknown key(s) in the request: {_names(extra)}")
    key = "instances" if has_instances else "inputs"
    body = payload[key]
    skip = frozenset(ignored)
    if isinstance(body, dict) and has_inputs:
        return _columns_from_mapping(body, features, key, skip)
    if not isinstance(body, list):
        raise ClientError(
            400, f'"{key}" must be a list of rows' + (" or an object of columns" if has_inputs else "")
        )
    if not body:
        raise ClientError(400, f'empty batch: "{key}" has no rows')
    matrix: np.ndarray | None = None
    data: Mapping[str, Any]
    if isinstance(body[0], dict):
        data = _objects_to_columns(body, features, key, skip)
        if not categorical:
            matrix = _numeric_matrix([data[f] for f in features])
            if matrix is not None:
                data = _matrix_data(matrix, features)
    else:
        data, matrix = _rows_to_columns(body, features, key)
        if categorical:
            matrix = None
    return Columns(data=data, n_rows=len(body), columnar=has_inputs, matrix=matrix)


def _columns_from_mapping(
    body: dict[str, Any], features: Sequence[str], key: str, ignored: frozenset[str]
) -> Columns:
    _check_features(list(body), features, f'"{key}"', ignored)
    lengths = {}
    for name in features:
        column = body[name]
        if not isinstance(column, list):
            raise ClientError(400, f'"{key}"."{name}" must be a list with one value per row')
        lengths[name] = len(column)
    distinct = sorted(set(lengths.values()))
    if len(distinct) > 1:
        first = features[0]
        odd = next(n for n in features if lengths[n] != lengths[first])
        raise ClientError(
            400,
            f'"{key}" columns differ in length: {first} has {lengths[first]} rows, {odd} has {lengths[odd]}',
        )
    if distinct[0] == 0:
        raise ClientError(400, f'empty batch: "{key}" has no rows')
    return Columns(data={n: body[n] for n in features}, n_rows=distinct[0], columnar=True)


def format_tf_predict(columnar: bool, labels: np.ndarray, probabilities: np.ndarray | None) -> dict[str, Any]:
    """``predictions`` (one entry per row) or ``outputs`` (one entry per output), as TF Serving does.

    A classifier has two outputs, ``prediction`` (the label) and ``probabilities`` (in the class order
    listed by the metadata endpoint); a regressor has one, so its rows are plain numbers.
    """
    label_list = labels.tolist()
    if probabilities is None:
        return {"outputs": label_list} if columnar else {"predictions": label_list}
    proba_list = probabilities.tolist()
    if columnar:
        return {"outputs": {"prediction": label_list, "probabilities": proba_list}}
    return {
        "predictions": [
            {"prediction": lab, "probabilities": pr} for lab, pr in zip(label_list, proba_list, strict=True)
        ]
    }


# ---- Open Inference Protocol v2 -----------------------------------------------------------------
def _shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise ClientError(400, f"{where}: shape must be a list of integers, got {_show(raw)}")
    if any(d < 0 for d in raw):
        raise ClientError(400, f"{where}: shape {raw} has a negative dimension")
    return raw


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(v, list) for v in data):
            raise ClientError(400, f"{where}: data mixes nested lists and values")
        return data
    out: list[Any] = []
    for part in data:
        out.extend(_flatten(part, where))
    return out


def _decode_bytes_tensor(raw: bytes, count: int, where: str) -> list[str]:
    values: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ClientError(400, f"{where}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ClientError(400, f"{where}: BYTES element of {length} bytes runs past the data")
        try:
            values.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ClientError(400, f"{where}: BYTES element {len(values)} is not UTF-8 text") from None
        offset += length
    if len(values) != count:
        raise ClientError(400, f"{where}: shape needs {count} values, the binary data holds {len(values)}")
    return values


def _tensor_values(
    tensor: dict[str, Any], where: str, binary: bytes | None, offset: int
) -> tuple[np.ndarray | list[Any], list[int], int]:
    """Values of one input tensor (flat, row-major), its shape, and the binary bytes it used."""
    extra = sorted(set(tensor) - {"name", "shape", "datatype", "data", "parameters"})
    if extra:
        raise ClientError(400, f"{where}: unknown key(s) {_names(extra)}")
    for key in ("shape", "datatype"):
        if key not in tensor:
            raise ClientError(400, f"{where}: {key!r} is required")
    shape = _shape(tensor["shape"], where)
    datatype = tensor["datatype"]
    if datatype not in V2_DATATYPES:
        raise ClientError(
            400, f"{where}: unknown datatype {_show(datatype)}; known: {_names(sorted(V2_DATATYPES))}"
        )
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ClientError(400, f"{where}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None:
            raise ClientError(
                400,
                f"{where}: binary_data_size is set but the request has no Inference-Header-Content-Length",
            )
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ClientError(400, f"{where}: binary_data_size {_show(size)} runs past the end of the body")
        raw = binary[offset : offset + size]
        if datatype == "BYTES":
            return _decode_bytes_tensor(raw, count, where), shape, size
        dtype = np.dtype(V2_DTYPES[datatype])
        if size != count * dtype.itemsize:
            raise ClientError(
                400, f"{where}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}"
            )
        return np.frombuffer(raw, dtype=dtype), shape, size
    if "data" not in tensor:
        raise ClientError(400, f"{where}: 'data' is required (or binary data with binary_data_size)")
    flat = _flatten(tensor["data"], where)
    if len(flat) != count:
        raise ClientError(400, f"{where}: shape {shape} needs {count} values, data holds {len(flat)}")
    if datatype == "BYTES":
        bad = next((v for v in flat if not isinstance(v, str) and v is not None), _NOTHING)
        if bad is not _NOTHING:
            raise ClientError(400, f"{where}: datatype BYTES needs strings, got {_show(bad)}")
        return flat, shape, 0
    if datatype == "BOOL":
        bad = next((v for v in flat if not isinstance(v, bool)), _NOTHING)
        if bad is not _NOTHING:
            raise ClientError(400, f"{where}: datatype BOOL needs true/false, got {_show(bad)}")
        return flat, shape, 0
    bad = next((v for v in flat if isinstance(v, bool) or not isinstance(v, (int, float))), _NOTHING)
    if bad is not _NOTHING:
        raise ClientError(400, f"{where}: datatype {datatype} needs numbers, got {_show(bad)}")
    if datatype.startswith(("INT", "UINT")):
        odd = next((v for v in flat if isinstance(v, float) and not v.is_integer()), _NOTHING)
        if odd is not _NOTHING:
            raise ClientError(400, f"{where}: datatype {datatype} needs integers, got {_show(odd)}")
    return np.asarray(flat, dtype=np.float64), shape, 0


_NOTHING = object()


def parse_v2_infer(
    payload: Any,
    binary: bytes | None,
    features: Sequence[str],
    output_names: Sequence[str],
    categorical: bool = False,
) -> V2Request:
    """An OIP v2 ``infer`` request to columns.

    Two input layouts are accepted: one tensor of shape ``[N, F]`` holding the features in the order
    the model metadata lists (any name, e.g. ``input-0``), or one tensor per feature named after it,
    of shape ``[N]`` or ``[N, 1]`` (the layout for categorical/string features). ``data`` is
    row-major, flat or nested; Triton's binary tensor extension is accepted too.

    Args:
        payload: the JSON header.
        binary: bytes after the JSON header when ``Inference-Header-Content-Length`` was given.
        features: the model's feature columns, in order.
        output_names: the outputs the model can return.
        categorical: whether the model has categorical features (no numeric matrix then).
    """
    if not isinstance(payload, dict):
        raise ClientError(400, 'the body must be a JSON object with "inputs"')
    extra = sorted(set(payload) - {"id", "inputs", "outputs", "parameters"})
    if extra:
        raise ClientError(400, f"unknown key(s) in the request: {_names(extra)}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(400, '"inputs" must be a non-empty list of tensors')
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ClientError(400, '"id" must be a string')
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise ClientError(400, '"parameters" must be an object')

    parsed: list[tuple[str, np.ndarray | list[Any], list[int]]] = []
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ClientError(400, f"inputs[{i}] must be an object with a string 'name'")
        where = f"input {tensor['name']!r}"
        values, shape, used = _tensor_values(tensor, where, binary, offset)
        offset += used
        parsed.append((tensor["name"], values, shape))
    names = [name for name, _, _ in parsed]
    if len(set(names)) != len(names):
        raise ClientError(400, "inputs repeat a tensor name")

    feature_set = set(features)
    if len(parsed) == 1 and names[0] not in feature_set:
        columns = _matrix_columns(*parsed[0], features, numeric=not categorical)
    else:
        columns = _feature_columns(parsed, features)

    outputs, binary_outputs = _requested_outputs(payload.get("outputs"), params, output_names)
    return V2Request(columns=columns, request_id=request_id, outputs=outputs, binary_outputs=binary_outputs)


def _matrix_columns(
    name: str, values: np.ndarray | list[Any], shape: list[int], features: Sequence[str], numeric: bool
) -> Columns:
    n_features = len(features)
    if len(shape) != 2 or shape[1] != n_features:
        raise ClientError(
            400,
            f"input {name!r}: wrong shape {shape}; send shape [N, {n_features}] with the features in "
            "the order the model metadata lists, or one tensor per feature named after it",
        )
    n_rows = shape[0]
    if n_rows == 0:
        raise ClientError(400, f"empty batch: input {name!r} has no rows")
    if isinstance(values, np.ndarray):
        matrix = values.reshape(n_rows, n_features)
        fast = matrix if numeric and matrix.dtype.kind in "fiu" else None
        return Columns(_matrix_data(matrix, features), n_rows, matrix=fast)
    return Columns({f: values[j::n_features] for j, f in enumerate(features)}, n_rows)


def _feature_columns(
    parsed: list[tuple[str, np.ndarray | list[Any], list[int]]], features: Sequence[str]
) -> Columns:
    _check_features([name for name, _, _ in parsed], features, "inputs")
    n_rows: int | None = None
    data: dict[str, Any] = {}
    for name, values, shape in parsed:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ClientError(
                400, f"input {name!r}: wrong shape {shape}; a per-feature tensor has shape [N] or [N, 1]"
            )
        if n_rows is None:
            n_rows = shape[0]
        elif shape[0] != n_rows:
            raise ClientError(400, f"input {name!r} has {shape[0]} rows, {parsed[0][0]!r} has {n_rows}")
        data[name] = values
    if not n_rows:
        raise ClientError(400, "empty batch: the inputs have no rows")
    return Columns({f: data[f] for f in features}, n_rows)


def _requested_outputs(
    raw: Any, params: dict[str, Any], output_names: Sequence[str]
) -> tuple[list[str] | None, set[str]]:
    all_binary = bool(params.get("binary_data_output", False))
    if raw is None:
        return None, set(output_names) if all_binary else set()
    if not isinstance(raw, list):
        raise ClientError(400, '"outputs" must be a list of {"name": ...}')
    names: list[str] = []
    binary: set[str] = set()
    for i, out in enumerate(raw):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ClientError(400, f"outputs[{i}] must be an object with a string 'name'")
        name = out["name"]
        if name not in output_names:
            raise ClientError(400, f"unknown output {name!r}; this model has: {_names(list(output_names))}")
        out_params = out.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise ClientError(400, f"outputs[{i}].parameters must be an object, got {_show(out_params)}")
        if out_params.get("binary_data", all_binary):
            binary.add(name)
        names.append(name)
    return names, binary


def prediction_datatype(labels: np.ndarray) -> str:
    """The OIP v2 datatype of a label array."""
    kind = labels.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def _binary_tensor(values: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values.reshape(-1).tolist():
            raw = str(v).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=np.dtype(V2_DTYPES[datatype])).tobytes()


def format_v2_infer(
    request: V2Request,
    model_name: str,
    model_version: str,
    labels: np.ndarray,
    probabilities: np.ndarray | None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary tensor extension when any output asked for it)."""
    n = len(labels)
    tensors: dict[str, tuple[np.ndarray, list[int], str]] = {
        "prediction": (labels, [n], prediction_datatype(labels)),
    }
    if probabilities is not None:
        tensors["probabilities"] = (probabilities, [n, probabilities.shape[1]], "FP64")
    wanted = request.outputs if request.outputs is not None else list(tensors)
    outputs = []
    chunks = []
    for name in wanted:
        values, shape, datatype = tensors[name]
        tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
        if name in request.binary_outputs:
            raw = _binary_tensor(values, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = values.reshape(-1)
            tensor["data"] = [str(v) for v in flat.tolist()] if datatype == "BYTES" else flat.tolist()
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.request_id is not None:
        body["id"] = request.request_id
    header = encode_json(body)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}
