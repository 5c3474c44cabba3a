"""The Ray Serve application: one ingress deployment that authenticates, routes, parses and scores.

Why one deployment: every extra deployment is another hop through Ray and the target is
single-request latency close to a bare uvicorn process. HTTP reaches the replica through HAProxy
(``_ingress``: no Python proxy and no actor call in between), and the replica is a plain Starlette
request handler. A request's path: the key is checked first; the body is read as it streams in,
up to the limit; orjson parses it and plain numbers become one float64 matrix; each loaded version
has its own batcher (``_scoring``) that merges concurrent requests, bounded in requests and bytes;
:meth:`ModelBundle.score` checks and scores the matrix (one finiteness test, the feature plan as two
numpy operations, the model's verified fast form such as ONNX); orjson writes the answer. Metric
counts are added up in memory and handed to Ray by the watcher thread. Large bodies are parsed and
large batches scored in a worker thread, so the event loop keeps answering.

Sizing on a small machine: a replica asks for 0.5 CPU by default and its model libraries run one
thread each (onnxruntime and TensorFlow are capped at one intra-op thread), so two replicas fit on
two cores next to the HAProxy process, which Ray does not count (its manager actor asks for 0 CPUs)
and which needs little. More threads per replica would only fight the replicas for the same cores.

Updates without downtime: a watcher thread in every replica polls the store's aliases; when the
followed alias (``champion`` for a bare ``NAME``) moves, the new version is fetched, verified and
loaded next to the serving one and then swapped in with one assignment. Requests already in a batch
finish on the version they started with, so no request fails. Rolling back is promoting back. A
version its own gate refused, or that fails verification, is never swapped in (and not fetched
again every poll). Batching, canary split and request-log sampling are ``user_config``: ``serve
deploy`` with new values reconfigures running replicas in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import Response

from raymlops.config import ServeOptions
from raymlops.errors import ConfigError, UserError
from raymlops.model import ModelBundle, label_dtype

from ._auth import ApiKeyCheck
from ._ingress import ingress_env, resolve_ingress
from ._metrics import ServeMetrics
from ._protocols import (
    ClientError,
    Columns,
    V2Request,
    decode_body,
    encode_json,
    format_tf_predict,
    format_v2_infer,
    parse_header_length,
    parse_json,
    parse_tf_predict,
    parse_v2_infer,
    parse_version,
    prediction_datatype,
)
from ._request_log import RequestLog
from ._scoring import DEFAULT_MAX_BATCH_BYTES, ScoreOutcome, VersionScorer

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "AppArgs",
    "CanarySpec",
    "LiveSettings",
    "ModelServer",
    "build_app",
    "parse_canary",
    "resolve_serve_options",
]

log = logging.getLogger("raymlops.serve")

APP_NAME = "raymlops"
DEPLOYMENT_NAME = "ModelServer"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
REQUEST_LOG_FLUSH_S = 10.0
#: Bodies larger than this are parsed in a worker thread, off the replica's event loop.
PARSE_OFFLOAD_BYTES = 256 * 1024
#: Metric label of every model name that is not served here (random URLs add no series).
UNKNOWN_MODEL = "unknown"
_KEEP_LOADED = 3
_CANARY_RE = re.compile(r"^(?P<name>[^:=\s]+):(?P<version>[0-9]+)=(?P<percent>[0-9]+(?:\.[0-9]+)?)%?$")
_V1 = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<op>:[a-z]+|/metadata)?/?$"
)
_V2 = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<op>/infer|/ready)?/?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanarySpec(_Strict):
    """Send ``percent`` of a model's unversioned traffic to ``version``."""

    version: int = Field(..., ge=1)
    percent: float = Field(..., gt=0, le=100)


def parse_canary(text: str) -> tuple[str, CanarySpec]:
    """``NAME:VERSION=PERCENT`` (e.g. ``digits:3=10``) to the model name and its canary.

    Raises:
        ConfigError: the text is not of that form or the percent is outside (0, 100].
    """
    m = _CANARY_RE.match(text.strip())
    if not m:
        raise ConfigError(f"invalid canary {text!r}: expected NAME:VERSION=PERCENT, e.g. digits:3=10")
    try:
        spec = CanarySpec.model_validate({"version": int(m["version"]), "percent": float(m["percent"])})
    except ValidationError as err:
        raise ConfigError(f"invalid canary {text!r}: {err.errors()[0]['msg']}") from None
    return m["name"], spec


class LiveSettings(_Strict):
    """Settings a running replica applies in place (the deployment's ``user_config``)."""

    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    max_batch_bytes: int = Field(DEFAULT_MAX_BATCH_BYTES, ge=1024)
    request_log_sample_rate: float = Field(0.0, ge=0, le=1)
    request_log_flush_s: float = Field(REQUEST_LOG_FLUSH_S, gt=0)
    poll_interval_s: float = Field(2.0, gt=0)
    canary: dict[str, CanarySpec] = Field(default_factory=dict)


class AppArgs(_Strict):
    """Arguments of :func:`build_app` (``args:`` of a Serve config); unknown keys are refused.

    Ray Serve passes a config's ``args`` through unchecked, so a misspelled key would otherwise be
    silently ignored on a cluster.
    """

    models: list[str] = Field(
        ..., min_length=1, description="Model references: NAME, NAME:VERSION, NAME@ALIAS"
    )
    store: str | None = Field(
        None, description="Model store URI (default $RAYMLOPS_STORE or ./raymlops-store)"
    )
    options: ServeOptions | None = Field(
        None,
        description="Replicas, autoscaling, batching (default: the model's pipeline serve: section)",
    )
    canary: list[str] = Field(default_factory=list, description="NAME:VERSION=PERCENT traffic splits")
    request_log: str | None = Field(
        None, description="Where sampled requests go (default <store>/request_logs)"
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_batch_bytes: int = Field(
        DEFAULT_MAX_BATCH_BYTES, ge=1024, description="Most request-body bytes merged into one scoring call"
    )
    poll_interval_s: float = Field(2.0, gt=0, description="How often replicas look for alias changes")
    request_log_flush_s: float = Field(REQUEST_LOG_FLUSH_S, gt=0, description="Request log write interval")
    api_key_sha256: str | None = Field(None, description="sha256 of the API key (default: $RAYMLOPS_API_KEY)")
    require_api_key: bool = Field(
        True,
        description="Refuse to start a replica that has no API key (fail closed); false only for an "
        "edge that is private by other means (`raymlops serve` on 127.0.0.1, or --insecure)",
    )

    @field_validator("models")
    @classmethod
    def _refs(cls, refs: list[str]) -> list[str]:
        from raymlops.registry import parse_ref

        try:
            names = [parse_ref(r).name for r in refs]
        except UserError as err:  # pydantic reports ValueErrors with their place
            raise ValueError(str(err)) from None
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"each model can be served once, repeated: {', '.join(dupes)}")
        return refs

    @model_validator(mode="after")
    def _canaries(self) -> AppArgs:
        from raymlops.registry import parse_ref

        served = {parse_ref(r).name for r in self.models}
        for text in self.canary:
            try:
                name, _ = parse_canary(text)
            except ConfigError as err:
                raise ValueError(str(err)) from None
            if name not in served:
                raise ValueError(
                    f"canary {text!r} names model {name!r}, which is not served ({', '.join(sorted(served))})"
                )
        return self

    def canary_map(self) -> dict[str, CanarySpec]:
        return dict(parse_canary(t) for t in self.canary)


class _ReplicaArgs(_Strict):
    models: list[str]
    store: str
    request_log: str
    max_body_bytes: int
    api_key_sha256: str | None = None
    require_api_key: bool = True


def resolve_serve_options(
    models: list[str],
    store: str | None,
    base: ServeOptions | None = None,
    overrides: dict[str, Any] | None = None,
) -> ServeOptions:
    """The serving options: ``base``, else the first model's pipeline ``serve:`` section, plus overrides.

    The pipeline file that trained a version is recorded in its metadata, so ``raymlops serve NAME``
    picks up that file's ``serve:`` section without being pointed at the file again.
    """
    if base is None:
        base = ServeOptions.model_validate({})
        try:
            from raymlops.registry import ModelStore

            recorded = ModelStore(store).get(models[0]).metadata.get("pipeline", {}).get("serve")
            if isinstance(recorded, dict):
                base = ServeOptions.model_validate(recorded)
        except Exception as err:  # a missing model is reported by the replica with the registry's message
            log.debug("no serve section recorded for %s: %s", models[0], err)
    if overrides:
        base = ServeOptions.model_validate(
            {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    return base


def deployment_options(options: ServeOptions, live: LiveSettings) -> dict[str, Any]:
    """Keyword arguments for ``Deployment.options`` (also written into generated Serve configs).

    The replicas get the ingress's environment variables (see ``_ingress``) in their runtime_env:
    a replica reads them when it starts, and must agree with the controller about who answers HTTP.
    """
    actor: dict[str, Any] = {"num_cpus": options.num_cpus}
    env = ingress_env(resolve_ingress(options.ingress))
    if env:
        actor["runtime_env"] = {"env_vars": env}
    return {
        "max_ongoing_requests": options.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": options.min_replicas,
            "initial_replicas": max(options.min_replicas, 1),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        },
        "ray_actor_options": actor,
        "user_config": live.model_dump(mode="json"),
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": 10.0,
        # Serve's per-request access log line costs more than a small model's prediction.
        "logging_config": {"enable_access_log": False},
    }


def live_settings(args: AppArgs, options: ServeOptions) -> LiveSettings:
    return LiveSettings.model_validate(
        {
            "max_batch_size": options.max_batch_size,
            "batch_wait_timeout_s": options.batch_wait_timeout_s,
            "max_batch_bytes": args.max_batch_bytes,
            "request_log_sample_rate": options.request_log_sample_rate,
            "poll_interval_s": args.poll_interval_s,
            "request_log_flush_s": args.request_log_flush_s,
            "canary": args.canary_map(),
        }
    )


def replica_args(args: AppArgs) -> dict[str, Any]:
    from raymlops.registry import resolve_store_uri

    store = resolve_store_uri(args.store)
    return _ReplicaArgs(
        models=args.models,
        store=store,
        request_log=args.request_log or f"{store}/request_logs",
        max_body_bytes=args.max_body_bytes,
        api_key_sha256=args.api_key_sha256,
        require_api_key=args.require_api_key,
    ).model_dump()


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run/deploy`` and RayService (``raymlops.serve.app:build_app``).

    Args:
        args: the :class:`AppArgs` fields, e.g. ``{"models": ["digits"], "store": "s3://bucket/mlops"}``.

    Raises:
        ValueError: unknown keys or invalid values in ``args`` (each problem named).
    """
    from ray import serve

    try:
        parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'args'}: "
            + ("unknown key (not an argument of build_app)" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        raise ConfigError(f"invalid raymlops serve arguments: {problems}") from None
    options = resolve_serve_options(parsed.models, parsed.store, parsed.options)
    live = live_settings(parsed, options)
    deployment: Any = serve.deployment(ModelServer)
    deployment = deployment.options(name=DEPLOYMENT_NAME, **deployment_options(options, live))
    return deployment.bind(replica_args(parsed))


# ---- the replica ----------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One served model: the version its reference resolves to now, and an optional canary."""

    name: str
    ref: str
    follows_alias: bool
    primary: VersionScorer
    canary: VersionScorer | None = None
    canary_percent: float = 0.0
    loaded: dict[int, VersionScorer] = field(default_factory=dict)

    def served(self) -> dict[int, VersionScorer]:
        out = {self.primary.version: self.primary}
        if self.canary is not None:
            out[self.canary.version] = self.canary
        return out

    def pick(self, version: str | None) -> VersionScorer:
        if version is None:
            canary = self.canary
            if canary is not None and random.random() * 100.0 < self.canary_percent:
                return canary
            return self.primary
        number = parse_version(version)
        served = self.served()
        scorer = served.get(number)
        if scorer is None:
            listed = ", ".join(str(v) for v in sorted(served))
            raise ClientError(
                404, f"version {number} of model {self.name!r} is not served; served versions: {listed}"
            )
        return scorer


class GateRefusedError(UserError):
    """The version's recorded (and, with trusted keys, signed) gate outcome is "refused"."""

    http_status = 409


def check_gate(mv: Any) -> None:
    """Refuse a version its own gate refused, whatever alias points at it.

    With trusted keys the gate outcome is covered by the version's signature, so an alias moved by
    hand (or by someone who can write the store but not sign) cannot put a refused model online.

    Raises:
        GateRefusedError: the recorded gate outcome says the version did not pass.
    """
    gate = mv.gate
    if gate is not None and gate.get("passed") is False:
        reasons = "; ".join(str(r) for r in gate.get("reasons") or []) or "no reason recorded"
        aliases = f" (aliases: {', '.join(mv.aliases)})" if mv.aliases else ""
        raise GateRefusedError(
            f"{mv.ref}{aliases} was refused by its promotion gate ({reasons}); serving refuses it. "
            "Register a version that passes the gate, or point the alias back at one that did"
        )


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_json(payload), status_code=status, headers=headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}
_HEALTH = frozenset(["/v2/health/live", "/v2/health/live/", "/v2/health/ready", "/v2/health/ready/"])


class _Refusals:
    """Versions this replica could not load, remembered so that each poll does not try (and log) again.

    The registry already refuses a re-download of a version that failed verification for a few
    minutes (``NEGATIVE_TTL_S``); this keeps the watcher from even asking, and logs each refusal
    once instead of every ``poll_interval_s``.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[tuple[str, int, str], float] = {}

    def active(self, key: tuple[str, int, str]) -> bool:
        at = self._seen.get(key)
        return at is not None and time.monotonic() - at < self.ttl_s

    def note(self, key: tuple[str, int, str]) -> None:
        self._seen[key] = time.monotonic()


class ModelServer:
    """The ingress replica: TF Serving REST and OIP v2 for every served model.

    Args:
        init: the replica arguments made by :func:`build_app` (models, store, limits, auth digest).

    Raises:
        ConfigError: the replica must require an API key and has none (it refuses to start, so
            no replica ever answers without auth by accident).
        GateRefusedError: a served version was refused by its gate.
    """

    def __init__(self, init: dict[str, Any]) -> None:
        from raymlops.registry import NEGATIVE_TTL_S, ModelStore, parse_ref

        args = _ReplicaArgs.model_validate(init)
        self.auth = ApiKeyCheck(args.api_key_sha256)
        if args.require_api_key and not self.auth.enabled:
            from ._auth import API_KEY_ENV

            raise ConfigError(
                f"this replica requires an API key and has none: set {API_KEY_ENV} (non-empty) in "
                "every replica's environment (a Kubernetes Secret on a RayService), or deploy with "
                "require_api_key: false for an edge that is private by other means"
            )
        self.store = ModelStore(args.store)
        self.max_body_bytes = args.max_body_bytes
        self.metrics = ServeMetrics()
        self.live = LiveSettings.model_validate({})
        self.request_log_uri = args.request_log
        self.request_log: RequestLog | None = None
        self._lock = threading.Lock()
        self._refusals = _Refusals(NEGATIVE_TTL_S)
        self._last_problem: dict[str, str] = {}
        self.slots: dict[str, _Slot] = {}
        for ref in args.models:
            parsed = parse_ref(ref)
            mv = self.store.get(ref)
            check_gate(mv)
            scorer = self._new_scorer(parsed.name, mv.version)
            self.slots[parsed.name] = _Slot(
                name=parsed.name,
                ref=ref,
                follows_alias=parsed.version is None,
                primary=scorer,
                loaded={mv.version: scorer},
            )
            log.info("serving %s as %s:%s", ref, parsed.name, mv.version)
        self._inflight = 0
        self._stop = threading.Event()
        self._last_flush = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name="raymlops-alias-watch", daemon=True)
        self._watcher.start()

    # ---- model management -------------------------------------------------------------------
    def _new_scorer(self, name: str, version: int) -> VersionScorer:
        mv, path = self.store.fetch(f"{name}:{version}")
        check_gate(mv)
        bundle = ModelBundle.from_dir(path, mv.metadata, threads=1)
        live = self.live
        return VersionScorer(bundle, live.max_batch_size, live.batch_wait_timeout_s, live.max_batch_bytes)

    def _scorer(self, slot: _Slot, version: int) -> VersionScorer:
        scorer = slot.loaded.get(version)
        if scorer is None:
            scorer = self._new_scorer(slot.name, version)
            with self._lock:
                slot.loaded[version] = scorer
                keep = {slot.primary.version, version, *([slot.canary.version] if slot.canary else [])}
                for old in sorted(slot.loaded):
                    if len(slot.loaded) <= _KEEP_LOADED:
                        break
                    if old not in keep:
                        del slot.loaded[old]
        return scorer

    def _refresh(self) -> None:
        """Follow alias moves: load the new version beside the old one, then swap it in."""
        for slot in list(self.slots.values()):
            if not slot.follows_alias:
                continue
            try:
                mv = self.store.get(slot.ref)
                if mv.version == slot.primary.version:
                    self._last_problem.pop(slot.name, None)
                    continue
                key = (slot.name, mv.version, mv.metadata_sha256 or "")
                if self._refusals.active(key):
                    continue
                try:
                    scorer = self._scorer(slot, mv.version)
                except Exception:
                    self._refusals.note(key)
                    raise
                previous, slot.primary = slot.primary.version, scorer
                self._last_problem.pop(slot.name, None)
                log.warning(
                    "model %s: %s now resolves to version %s (was %s)",
                    slot.name,
                    slot.ref,
                    mv.version,
                    previous,
                )
            except Exception as err:  # a broken or unreachable new version must not stop serving the old one
                message = str(err)
                if self._last_problem.get(slot.name) != message:  # once per problem, not every poll
                    self._last_problem[slot.name] = message
                    log.warning("model %s: keeping version %s: %s", slot.name, slot.primary.version, err)

    def _watch(self) -> None:
        while not self._stop.wait(self.live.poll_interval_s):
            try:
                self.metrics.flush()
                self._refresh()
                self._maybe_flush()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("alias watcher: an iteration failed; it goes on")

    def _maybe_flush(self) -> None:
        request_log = self.request_log
        if request_log is not None and (
            request_log.pending_rows >= request_log.flush_rows
            or time.monotonic() - self._last_flush >= self.live.request_log_flush_s
        ):
            self._last_flush = time.monotonic()
            request_log.flush()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply :class:`LiveSettings` in place (Serve calls this for every ``user_config`` change).

        A canary version that is not loaded yet is loaded in a worker thread: in Serve's
        throughput-optimized mode this method runs on the event loop that answers requests, and a
        model load there would hold every request for as long as it takes.
        """
        live = LiveSettings.model_validate(user_config)
        unknown = sorted(set(live.canary) - set(self.slots))
        if unknown:
            raise ConfigError(f"canary for model(s) not served here: {', '.join(unknown)}")
        canaries = {
            name: await asyncio.to_thread(self._scorer, self.slots[name], spec.version)
            for name, spec in live.canary.items()
        }
        self.live = live
        for slot in self.slots.values():
            spec = live.canary.get(slot.name)
            if spec is None:
                slot.canary, slot.canary_percent = None, 0.0
            else:
                slot.canary, slot.canary_percent = canaries[slot.name], spec.percent
            for scorer in slot.loaded.values():
                scorer.set_batching(live.max_batch_size, live.batch_wait_timeout_s, live.max_batch_bytes)
        if live.request_log_sample_rate > 0:
            if self.request_log is None:
                self.request_log = RequestLog(self.request_log_uri, live.request_log_sample_rate)
            else:
                self.request_log.sample_rate = live.request_log_sample_rate
        elif self.request_log is not None:
            self.request_log.sample_rate = 0.0

    def check_health(self) -> None:
        """Serve's health probe: a replica whose alias watcher died cannot follow promotions."""
        if not self._watcher.is_alive() and not self._stop.is_set():
            raise RuntimeError("the alias watcher thread stopped; this replica would miss promotions")

    def flush_request_log(self) -> list[str]:
        """Write the buffered request log now (tests and shutdown)."""
        return self.request_log.flush() if self.request_log is not None else []

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        if getattr(self, "request_log", None) is not None:
            with contextlib.suppress(Exception):  # nothing to tell at interpreter shutdown
                self.flush_request_log()

    # ---- HTTP -------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        path: str = request.scope["path"]
        info: dict[str, Any] = {"model": UNKNOWN_MODEL, "version": "-", "protocol": "other"}
        reason: str | None = None
        self._inflight += 1
        try:
            response = await self._route(request, path, info)
        except ClientError as err:
            response = _error(err.status, err.message)
            reason = _REASONS.get(err.status, f"http_{err.status}")
        except UserError as err:
            response = _error(err.http_status, str(err))
            reason = _REASONS.get(err.http_status, f"http_{err.http_status}")
        except Exception:
            log.exception("internal error on %s %s", request.method, path)
            response = _error(500, "internal error; see the replica log")
            reason = "internal"
        finally:
            self._inflight -= 1
        if info["protocol"] != "other":
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            self.metrics.record(
                info["model"], info["version"], info["protocol"], response.status_code, elapsed_ms, reason
            )
        return response

    async def _route(self, request: Request, path: str, info: dict[str, Any]) -> Response:
        method = request.method
        if path in _HEALTH:
            self._allow(method, "GET")
            if path.startswith("/v2/health/live"):
                return _json(200, {"live": True})
            return _json(200, {"ready": bool(self.slots)})
        m = _V2.match(path)
        if m and m["op"] == "/ready":  # open like /v2/health/*, but says no more than ready or not
            return self._v2_ready(request, method, m["name"], m["version"], info)
        if m or path.startswith(("/v1/", "/v2/")):
            info["protocol"] = "tf" if path.startswith("/v1/") else "v2"
        self._authorize(request)  # before anything else: unknown paths and models, methods, bodies
        v1 = _V1.match(path)
        if v1:
            return await self._v1(request, method, v1["name"], v1["version"], v1["op"], info)
        if m:
            return await self._v2(request, method, m["name"], m["version"], m["op"], info)
        if path in ("/v2", "/v2/"):
            self._allow(method, "GET")
            from raymlops import __version__

            return _json(
                200, {"name": "raymlops", "version": __version__, "extensions": ["binary_tensor_data"]}
            )
        if path in ("/v1/models", "/v2/models", "/v1/models/", "/v2/models/"):
            self._allow(method, "GET")
            return _json(200, {"models": sorted(self.slots)})
        raise ClientError(
            404, f"no such endpoint: {method} {path} (see /v1/models/NAME:predict and /v2/models/NAME/infer)"
        )

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise ClientError(405, f"method {method} not allowed here; use {allowed}")

    def _authorize(self, request: Request) -> None:
        if not self.auth.allows(request.headers.get("authorization")):
            raise ClientError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    def _slot(self, name: str, info: dict[str, Any]) -> _Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise ClientError(
                404, f"model {name!r} is not served here; served: {', '.join(sorted(self.slots))}"
            )
        info["model"] = name  # a served name only: metric series stay bounded
        return slot

    async def _body(self, request: Request, allow_binary: bool) -> bytes:
        content_type = request.headers.get("content-type")
        if content_type:
            mime = content_type.split(";", 1)[0].strip().lower()
            ok = mime == "application/json" or mime.endswith("+json")
            if allow_binary and mime == "application/octet-stream":
                ok = True
            if not ok:
                wanted = "application/json" + (
                    " (or application/octet-stream with binary tensors)" if allow_binary else ""
                )
                raise ClientError(415, f"unsupported content type {mime!r}; send {wanted}")
        limit = self.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
            raise ClientError(413, f"request body of {length} bytes is larger than the limit of {limit}")
        # Read as it streams in, so a chunked body (no Content-Length) stops at the limit too.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        return decode_body(body, request.headers.get("content-encoding"), limit)

    def _log_request(
        self, slot: _Slot, scorer: VersionScorer, protocol: str, request: Request, outcome: ScoreOutcome
    ) -> None:
        request_log = self.request_log
        if request_log is None or outcome.labels is None or not request_log.sampled():
            return
        inputs = outcome.inputs(scorer.bundle)
        if inputs is None:
            return
        request_log.add(
            slot.name,
            scorer.version,
            protocol,
            request.headers.get("x-request-id"),
            inputs,
            outcome.labels,
            outcome.probabilities,
            scorer.bundle.classes,
        )

    async def _score(
        self, slot: _Slot, scorer: VersionScorer, columns: Columns, protocol: str, request: Request
    ) -> ScoreOutcome:
        # One turn of the event loop before scoring: requests that reached the replica together
        # (their bytes read in the same turn) all get here first, so they are scored as one batch
        # instead of one after another, and Serve's count of ongoing requests, which it samples on
        # this loop and autoscales on, sees them; without the turn that count reads 0 under any load.
        await asyncio.sleep(0)
        outcome = await scorer.score(columns, alone=self._inflight <= 1)
        if outcome.error is not None:
            raise ClientError(400, outcome.error)
        assert outcome.labels is not None
        self.metrics.record_predictions(
            slot.name, str(scorer.version), outcome.labels, scorer.bundle.schema.task == "classification"
        )
        self._log_request(slot, scorer, protocol, request, outcome)
        return outcome

    # ---- TF Serving REST --------------------------------------------------------------------
    async def _v1(
        self,
        request: Request,
        method: str,
        name: str,
        version: str | None,
        op: str | None,
        info: dict[str, Any],
    ) -> Response:
        slot = self._slot(name, info)
        if op == ":predict":
            self._allow(method, "POST")
            scorer = slot.pick(version)
            info["version"] = str(scorer.version)
            body = await self._body(request, allow_binary=False)
            columns = await _off_loop_if_large(body, _parse_tf, body, scorer.bundle)
            outcome = await self._score(slot, scorer, columns, "tf", request)
            assert outcome.labels is not None
            payload = format_tf_predict(columns.columnar, outcome.labels, outcome.probabilities)
            return _json(200, payload, {"X-Model-Version": str(scorer.version)})
        if op is not None and op != "/metadata":
            raise ClientError(404, f"unsupported TF Serving method {op!r}; use :predict")
        self._allow(method, "GET")
        scorers = [slot.pick(version)] if version is not None else list(slot.served().values())
        if op == "/metadata":
            return _json(200, _tf_metadata(slot, scorers[0]))
        return _json(
            200,
            {
                "model_version_status": [
                    {
                        "version": str(s.version),
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                    for s in sorted(scorers, key=lambda s: s.version)
                ]
            },
        )

    # ---- Open Inference Protocol v2 ---------------------------------------------------------
    def _v2_ready(
        self, request: Request, method: str, name: str, version: str | None, info: dict[str, Any]
    ) -> Response:
        """Model readiness: open, but without the key it says only ready or not (no versions)."""
        self._allow(method, "GET")
        if not self.auth.allows(request.headers.get("authorization")):
            slot = self.slots.get(name)
            ready = slot is not None and (version is None or version in map(str, slot.served()))
            return _json(200 if ready else 404, {"ready": ready})
        info["protocol"] = "v2"
        slot = self._slot(name, info)
        scorer = slot.pick(version) if version is not None else slot.primary
        return _json(200, {"name": name, "version": str(scorer.version), "ready": True})

    async def _v2(
        self,
        request: Request,
        method: str,
        name: str,
        version: str | None,
        op: str | None,
        info: dict[str, Any],
    ) -> Response:
        slot = self._slot(name, info)
        if op is None:
            self._allow(method, "GET")
            return _json(200, _v2_metadata(slot, slot.pick(version) if version is not None else None))
        self._allow(method, "POST")
        scorer = slot.pick(version)
        info["version"] = str(scorer.version)
        header_length = request.headers.get("inference-header-content-length")
        body = await self._body(request, allow_binary=header_length is not None)
        binary: bytes | None = None
        if header_length is not None:
            cut = parse_header_length(header_length, len(body))
            body, binary = body[:cut], body[cut:]
        bundle = scorer.bundle
        parsed = await _off_loop_if_large(body, _parse_v2, body, binary, bundle)
        outcome = await self._score(slot, scorer, parsed.columns, "v2", request)
        assert outcome.labels is not None
        content, headers = format_v2_infer(
            parsed, name, str(scorer.version), outcome.labels, outcome.probabilities
        )
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, status_code=200, headers=headers, media_type=media)


async def _off_loop_if_large(body: bytes, fn: Any, *args: Any) -> Any:
    """Run a parser on the event loop for a small body, in a worker thread for a large one."""
    if len(body) > PARSE_OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _parse_tf(body: bytes, bundle: ModelBundle) -> Columns:
    schema = bundle.schema
    columns = parse_tf_predict(
        parse_json(body), schema.features, _ignorable(schema), categorical=bool(schema.categorical)
    )
    columns.n_bytes = len(body)
    return columns


def _parse_v2(body: bytes, binary: bytes | None, bundle: ModelBundle) -> V2Request:
    schema = bundle.schema
    parsed = parse_v2_infer(
        parse_json(body), binary, schema.features, _output_names(bundle), categorical=bool(schema.categorical)
    )
    parsed.columns.n_bytes = len(body) + len(binary or b"")
    return parsed


def _ignorable(schema: Any) -> list[str]:
    """Columns a client may send by name that are not features: the ones training dropped."""
    return [*schema.dropped, *schema.excluded]


# ---- metadata documents ------------------------------------------------------------------------
def _output_names(bundle: ModelBundle) -> list[str]:
    return ["prediction", "probabilities"] if bundle.schema.task == "classification" else ["prediction"]


def _label_datatype(bundle: ModelBundle) -> str:
    import numpy as np

    if bundle.schema.task != "classification":
        return "FP64"
    classes = list(bundle.classes or [])
    return prediction_datatype(np.asarray(classes[:1], dtype=label_dtype(classes)))


def _model_facts(bundle: ModelBundle) -> dict[str, Any]:
    md = bundle.metadata
    return {
        "kind": bundle.kind,
        "task": bundle.schema.task,
        "features": bundle.schema.features,
        "categorical": bundle.schema.categorical,
        "classes": bundle.classes,
        "metrics": {k: v for k, v in md.get("metrics", {}).items() if isinstance(v, (int, float))},
        "created_at": md.get("created_at"),
    }


def _tf_metadata(slot: _Slot, scorer: VersionScorer) -> dict[str, Any]:
    bundle = scorer.bundle
    categorical = set(bundle.schema.categorical)

    def spec(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        return {
            "dtype": dtype,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims]},
            "name": name,
        }

    inputs = {
        f: spec(f, "DT_STRING" if f in categorical else "DT_DOUBLE", [-1]) for f in bundle.schema.features
    }
    label_dtype = {"INT64": "DT_INT64", "FP64": "DT_DOUBLE", "BOOL": "DT_BOOL"}.get(
        _label_datatype(bundle), "DT_STRING"
    )
    outputs = {"prediction": spec("prediction", label_dtype, [-1])}
    if bundle.schema.task == "classification":
        outputs["probabilities"] = spec("probabilities", "DT_DOUBLE", [-1, len(bundle.classes or [])])
    return {
        "model_spec": {"name": slot.name, "signature_name": "", "version": str(scorer.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": inputs,
                        "outputs": outputs,
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            },
            "raymlops": _model_facts(bundle),
        },
    }


def _v2_metadata(slot: _Slot, scorer: VersionScorer | None) -> dict[str, Any]:
    shown = scorer or slot.primary
    bundle = shown.bundle
    features = bundle.schema.features
    if bundle.schema.categorical:
        categorical = set(bundle.schema.categorical)
        inputs = [
            {"name": f, "datatype": "BYTES" if f in categorical else "FP64", "shape": [-1]} for f in features
        ]
    else:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(features)]}]
    outputs = [{"name": "prediction", "datatype": _label_datatype(bundle), "shape": [-1]}]
    if bundle.schema.task == "classification":
        outputs.append(
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(bundle.classes or [])]}
        )
    versions = [str(shown.version)] if scorer is not None else [str(v) for v in sorted(slot.served())]
    return {
        "name": slot.name,
        "versions": versions,
        "platform": f"raymlops_{bundle.kind}",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            k: v for k, v in _model_facts(bundle).items() if k in ("features", "classes", "task", "kind")
        },
    }
