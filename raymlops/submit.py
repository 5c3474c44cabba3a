"""Run a pipeline as a Ray job on a cluster, and look after those jobs.

``raymlops run`` drives a pipeline from the machine it is typed on; on a real cluster that machine
may be a laptop behind a VPN that must not hold the driver for an hour. :func:`submit_pipeline`
hands the pipeline to the cluster's jobs API (``JobSubmissionClient``) instead: the driver runs on
the head node, the laptop only streams the logs, and the exit code follows the job's outcome.

What travels with the job (its ``runtime_env``):

- ``working_dir``: a fresh folder holding the pipeline file and any *local* data file or folder it
  names, with the data path rewritten relative to that folder. Only files the pipeline needs are
  uploaded (the jobs API caps an upload at 100 MiB), and the job never depends on paths that
  exist only on the submitting machine. Remote sources (``s3://``, ``gs://``, ``builtin://``) are
  left as they are: the cluster reads them itself.
- ``env_vars``: ``RAYMLOPS_STORE`` when a store is given (``--store`` or ``$RAYMLOPS_STORE``),
  so the driver and every worker write to the same store. A relative store path is refused: on
  the cluster it would land in the job's throw-away working directory.
- ``pip``: extra requirements, installed by Ray on the nodes for this job only.

The entrypoint is ``jobs/run_pipeline.py`` (copied into the working directory when this package
runs from a source checkout), which runs ``raymlops run --json`` and re-prints its summary on one
``RAYMLOPS_SUMMARY`` line of the job log; from an installed package without ``jobs/``, it is
``python -m raymlops.cli run`` directly. Either way ``RAY_ADDRESS`` inside a job points at the
cluster, so the pipeline trains there.

Token authentication (Ray 2.52+): the token is read the way Ray reads it (``RAY_AUTH_TOKEN``, then
the file at ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``) and
sent as ``Authorization: Bearer``. A refusal (401 no token, 403 wrong token) becomes a
:class:`SubmitError` that says which of the two happened and where the token comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from raymlops.errors import ClusterError

__all__ = [
    "SUMMARY_PREFIX",
    "SubmitError",
    "SubmitResult",
    "auth_headers",
    "job_logs",
    "job_status",
    "list_jobs",
    "resolve_address",
    "stage_working_dir",
    "stop_job",
    "submit",
    "submit_pipeline",
    "token_transport_warning",
]

SUMMARY_PREFIX = "RAYMLOPS_SUMMARY "
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: The jobs API refuses larger working_dir uploads (DASHBOARD_CLIENT_MAX_SIZE).
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: The data files a job's working directory may carry (what raymlops reads from a folder).
DATA_SUFFIXES = (".csv", ".parquet", ".pq")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
_JOB_SCRIPT = _SOURCE_ROOT / "jobs" / "run_pipeline.py"


class SubmitError(ClusterError):
    """The job could not be submitted or followed: bad address, refused token, unreadable input."""


@dataclass
class SubmitResult:
    """What became of a submitted pipeline job.

    Attributes:
        job_id: the submission id (what ``raymlops jobs status/logs/stop`` take).
        status: PENDING/RUNNING (when not waited for), SUCCEEDED, FAILED or STOPPED.
        exit_code: 0 when SUCCEEDED (or submitted without waiting), 130 when following was
            interrupted, else 1.
        address: the jobs API the job went to.
        summary: the pipeline's summary (``raymlops run --json``) when the job printed one.
        message: Ray's message for a job that did not succeed.
    """

    job_id: str
    status: str
    exit_code: int
    address: str
    summary: dict[str, Any] | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "address": self.address,
            "summary": self.summary,
            "message": self.message,
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------------------------
# address and token


def resolve_address(address: str | None = None) -> str:
    """The jobs API address: the argument, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``.

    ``RAY_API_SERVER_ADDRESS`` comes first because it is the variable Ray's own job client reads
    for the dashboard URL, while ``RAY_ADDRESS`` often holds the GCS address that ``ray.init``
    wants (``cluster/local/up.sh`` exports both). A GCS address also works: Ray looks the
    dashboard URL up from it.
    """
    addr = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not addr or addr == "auto":
        raise SubmitError(
            "no cluster to submit to: give --address http://HEAD:8265 "
            "or set RAY_API_SERVER_ADDRESS (or RAY_ADDRESS)"
        )
    return addr.rstrip("/")


def _read_token() -> tuple[str | None, str]:
    """The client token and where it came from, in Ray's own order of precedence."""
    env_token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if env_token:
        return env_token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            text = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {err.strerror or err}") from None
        if not text:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return text, f"RAY_AUTH_TOKEN_PATH={path}"
    # Like Ray, the default file is used only in token mode: a token is not sent to a cluster
    # that nobody said needs one.
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        default = Path.home() / ".ray" / "auth_token"
        with contextlib.suppress(OSError):
            text = default.read_text().strip()
            if text:
                return text, str(default)
    return None, "none"


def auth_headers(token: str | None = None) -> dict[str, str]:
    """HTTP headers that authenticate to a token-auth cluster.

    Args:
        token: the token to send; ``None`` reads it like Ray does, ``""`` adds none (Ray's own client
            still adds the default token when this process runs with ``RAY_AUTH_MODE=token``).
    """
    if token is None:
        token, _ = _read_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def token_transport_warning(url: str, has_token: bool) -> str | None:
    """A warning when a token would go in clear text over the network, else None.

    A bearer token over plain HTTP can be read by anyone on the path and lets them run code on
    the cluster. Loopback (an SSH tunnel, ``kubectl port-forward``) and ``https://`` are fine; an
    address without a scheme (``HOST:PORT``) is reached over HTTP.
    """
    if not has_token:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme.lower() not in ("http", "ws"):
        return None
    host = parts.hostname or ""
    if _loopback(host):
        return None
    return (
        f"the Ray auth token goes to {url} over plain HTTP: anyone on the network path can read it and "
        "run jobs on the cluster. Use https:// (a TLS proxy in front of the dashboard) or a tunnel to "
        "127.0.0.1 (ssh -L 8265:localhost:8265, kubectl port-forward)."
    )


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"[raymlops] warning: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _refusals(url: str, headers: dict[str, str], source: str) -> Iterator[None]:
    """Turn Ray's auth and connection failures into one clear SubmitError."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        text = str(err)
        if headers and ("403" in text or "failed" in text.lower() or "invalid" in text.lower()):
            raise SubmitError(
                f"the Ray cluster at {url} refused the token (HTTP 403): the token from {source} is not "
                "this cluster's. Use the cluster's token: RAY_AUTH_TOKEN_PATH=<its token file> "
                "(cluster/local/up.sh prints it; on KubeRay it is the auth_token key of the Secret named "
                "in authOptions) or RAY_AUTH_TOKEN."
            ) from None
        raise SubmitError(
            f"the Ray cluster at {url} requires a token and none was sent (HTTP 401). Set "
            "RAY_AUTH_TOKEN_PATH to the cluster's token file (cluster/local/up.sh prints the export "
            "line; on KubeRay it is the auth_token key of the Secret named in authOptions), or "
            "RAY_AUTH_TOKEN, or RAY_AUTH_MODE=token to use ~/.ray/auth_token."
        ) from None
    except OSError as err:  # ConnectionError, and requests' exceptions (IOError subclasses)
        raise SubmitError(f"cannot reach the Ray jobs API at {url}: {err}") from None
    except RuntimeError as err:
        if isinstance(err, SubmitError):
            raise
        raise SubmitError(f"the Ray jobs API at {url} answered: {err}") from None


class _Jobs:
    """A JobSubmissionClient bound to one address and token, with errors made readable."""

    def __init__(
        self, address: str | None, token: str | None = None, warn: Callable[[str], object] | None = None
    ) -> None:
        from ray.job_submission import JobSubmissionClient

        self.url = resolve_address(address)
        if token is None:
            token, self.token_source = _read_token()
        else:
            self.token_source = "the token argument" if token else "none"
        self.headers = auth_headers(token)
        self.warnings: list[str] = []
        insecure = token_transport_warning(self.url, bool(self.headers))
        if insecure:  # said before connecting: the first request already carries the token
            self.warnings.append(insecure)
            (warn or _stderr_warning)(insecure)
        # JobSubmissionClient prefers $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS over its argument;
        # an explicit address must win, so it is put where the client looks first.
        with _env("RAY_API_SERVER_ADDRESS", self.url), self.refusals():
            self.client = JobSubmissionClient(self.url, headers=dict(self.headers))

    def refusals(self) -> contextlib.AbstractContextManager[None]:
        return _refusals(self.url, self.headers, self.token_source)


def _details(job: Any) -> dict[str, Any]:
    """A job's details as plain JSON-able data (JobDetails is a pydantic model)."""
    keys = (
        "submission_id",
        "job_id",
        "type",
        "status",
        "entrypoint",
        "message",
        "error_type",
        "start_time",
        "end_time",
        "metadata",
        "driver_exit_code",
        "driver_node_id",
    )
    out: dict[str, Any] = {}
    for key in keys:
        value = getattr(job, key, None)
        out[key] = getattr(value, "value", value)  # enums -> their string
    return out


# --------------------------------------------------------------------------------------------------
# staging the working directory


def _local_path(source: str, base: Path) -> Path | None:
    """The local file a data source names, or None when the cluster reads it itself."""
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if "://" in source:
        return None  # builtin://, s3://, gs://, hdfs://...: nothing to upload
    path = Path(source).expanduser()
    return path if path.is_absolute() else base / path


def _hidden(relative: Path) -> bool:
    """Dotfiles (``.env``, ``.git/``) and ``_``-folders (a scoring run's ``_rejected/``) are not data."""
    return any(part.startswith((".", "_")) for part in relative.parts)


def _hidden_code(relative: Path) -> bool:
    """In a builder package: dotfiles and byte-code caches (``__init__.py`` is code, not hidden)."""
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


@dataclass
class _Upload:
    """Files to copy into the working directory: (source, path relative to the destination)."""

    files: list[tuple[Path, Path]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(src.lstat().st_size for src, _ in self.files)


def _walk(
    root: Path,
    keep: Callable[[Path], bool],
    upload: _Upload,
    dest: Path,
    hidden: Callable[[Path], bool] = _hidden,
    what: str = "/".join(DATA_SUFFIXES),
) -> None:
    """Every regular file under ``root`` that ``keep`` accepts; never follows a symbolic link.

    A link inside the folder could point anywhere on this machine (``~/.ssh``, another project's
    ``.env``); what it points to is never uploaded, and neither is anything hidden.
    """
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        for d in list(dirs):
            rel = (here / d).relative_to(root)
            if (here / d).is_symlink() or hidden(rel):
                dirs.remove(d)
                upload.left_out.append(f"{rel}/ ({'symbolic link' if (here / d).is_symlink() else 'hidden'})")
        for name in sorted(names):
            path = here / name
            rel = path.relative_to(root)
            if path.is_symlink():
                upload.left_out.append(f"{rel} (symbolic link)")
            elif hidden(rel):
                upload.left_out.append(f"{rel} (hidden)")
            elif not path.is_file():
                upload.left_out.append(f"{rel} (not a regular file)")
            elif not keep(path):
                upload.left_out.append(f"{rel} (not {what})")
            else:
                upload.files.append((path, dest / rel))


def _data_upload(local: Path, source: str, pipeline: Path) -> _Upload:
    """The data files a local source names: .csv/.parquet only, no dotfiles, no link targets."""
    target = Path("data") / local.name
    upload = _Upload()
    if local.is_symlink():
        raise SubmitError(
            f"{pipeline}: data source {source!r} is a symbolic link ({local} -> {os.readlink(local)}); "
            "submit never uploads what a link points to: name the file or folder itself"
        )
    if not local.exists():
        raise SubmitError(f"{pipeline}: data source {source!r} not found (looked at {local})")
    if local.is_file():
        if local.suffix.lower() not in DATA_SUFFIXES:
            raise SubmitError(
                f"{pipeline}: data source {source!r} is not a {'/'.join(DATA_SUFFIXES)} file; "
                "only data files are uploaded with a job"
            )
        upload.files.append((local, target))
        return upload
    _walk(local, lambda p: p.suffix.lower() in DATA_SUFFIXES, upload, target)
    if not upload.files:
        raise SubmitError(
            f"{pipeline}: data folder {local} holds no {'/'.join(DATA_SUFFIXES)} files to upload"
            + (f" (left out: {', '.join(upload.left_out[:5])})" if upload.left_out else "")
        )
    return upload


def _builder_upload(cfg: Any, base: Path, pipeline: Path) -> tuple[_Upload, list[str]]:
    """The module of every Keras ``builder`` found beside the pipeline file, shipped with it.

    On the cluster the pipeline file sits at the root of the job's working directory, which is
    where training workers import the builder from, so ``pkg.mod:build`` needs ``pkg/`` (its
    ``.py`` files) and ``mod:build`` needs ``mod.py`` there. A module that is not beside the
    pipeline must already be importable on the cluster; that is said, not guessed.
    """
    upload, warnings, seen = _Upload(), [], set()
    for model in cfg.models:
        if not getattr(model, "builder", None):
            continue
        top = str(model.builder).partition(":")[0].split(".")[0]
        if top in seen:
            continue
        seen.add(top)
        module, package = base / f"{top}.py", base / top
        for found in (module, package):
            if found.is_symlink():
                raise SubmitError(
                    f"{pipeline}: builder module {found} is a symbolic link; submit never uploads what a "
                    "link points to: put the module itself beside the pipeline file"
                )
        if module.is_file():
            upload.files.append((module, Path(module.name)))
        elif package.is_dir():
            _walk(package, lambda p: p.suffix == ".py", upload, Path(top), _hidden_code, ".py")
        else:
            warnings.append(
                f"models[{cfg.models.index(model)}].builder {model.builder!r}: no {module.name} or {top}/ "
                f"beside {pipeline.name}, so nothing is uploaded for it; the cluster must import "
                f"{top!r} itself (its PYTHONPATH or --pip)"
            )
    return upload, warnings


def _copy(src: Path, dst: Path) -> None:
    """Copy one regular file without following a link swapped in since it was checked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _left_out_warning(what: str, left_out: list[str]) -> str:
    shown = ", ".join(left_out[:10]) + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
    return f"{what}: not uploaded: {shown}"


def stage_working_dir(pipeline_path: str | Path, dest: Path) -> tuple[str, Any, list[str]]:
    """Copy the pipeline file, the local data it names and its builder modules into ``dest``.

    Only what the job needs travels, and nothing the user did not mean to send: from a data
    folder only ``.csv``/``.parquet`` files, never a dotfile (``.env``) or ``_``-folder, and never
    what a symbolic link points to; a Keras ``builder`` module beside the pipeline file goes with
    it. What was left out is listed in the warnings. Paths are made relative to ``dest``.

    Returns:
        The pipeline's file name inside ``dest``, the validated config, and warnings about settings
        that will not mean on the cluster what they mean here.

    Raises:
        SubmitError: the pipeline or its local data cannot be read, or the upload would be too big.
        raymlops.config.ConfigError: the pipeline file does not validate (checked before anything
            is sent, so a typo fails in a second rather than after the upload).
    """
    from raymlops.config import parse_pipeline, read_yaml

    path = Path(pipeline_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SubmitError(f"cannot read pipeline file {path}: {err.strerror or err}") from None
    raw = read_yaml(text, str(path))  # the same strict YAML `raymlops run` reads on the cluster
    cfg = parse_pipeline(raw, str(path))
    base = path.resolve().parent
    warnings: list[str] = []

    uploads = []
    local = _local_path(cfg.data.source, base)
    if local is not None:
        data = _data_upload(local, cfg.data.source, path)
        if data.left_out:
            warnings.append(_left_out_warning(f"data folder {local}", data.left_out))
        uploads.append(data)
        raw["data"]["source"] = f"data/{local.name}"
    modules, module_warnings = _builder_upload(cfg, base, path)
    warnings += module_warnings
    if modules.left_out:
        warnings.append(_left_out_warning("builder packages", modules.left_out))
    uploads.append(modules)

    size = sum(u.size for u in uploads)
    if size > MAX_UPLOAD_BYTES:
        raise SubmitError(
            f"{path}: the files to upload are {size / 2**20:.0f} MiB, more than the jobs API accepts "
            f"({MAX_UPLOAD_BYTES // 2**20} MiB); put the data on storage the cluster reads (s3://, gs://, "
            "a shared filesystem) and name that URI in data.source"
        )
    for upload in uploads:
        for src, rel in upload.files:
            _copy(src, dest / rel)

    for key in ("store", "storage_path"):
        value = raw.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).expanduser().is_absolute():
            warnings.append(
                f"{key}: {value!r} is relative; on the cluster it resolves inside the job's temporary "
                "working directory. Give a URI or absolute path every node shares."
            )

    name = path.name if path.suffix in (".yaml", ".yml") else "pipeline.yaml"
    (dest / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return name, cfg, warnings


# --------------------------------------------------------------------------------------------------
# submitting and following


def _check_store(store: str | None) -> str | None:
    if store is None:
        return None
    if "://" not in store and not Path(store).expanduser().is_absolute():
        raise SubmitError(
            f"store {store!r} is a relative path; on a cluster it would land inside the job's temporary "
            "working directory. Give an absolute path every node shares or a URI such as s3://bucket/store"
        )
    return store


def _entrypoint(pipeline_name: str, store: str | None, workdir: Path) -> str:
    # Only from a source checkout (pyproject.toml beside the package): in site-packages a folder
    # named jobs/ would be some other distribution's.
    if _JOB_SCRIPT.is_file() and (_SOURCE_ROOT / "pyproject.toml").is_file():
        shutil.copy2(_JOB_SCRIPT, workdir / _JOB_SCRIPT.name)
        argv = ["python", _JOB_SCRIPT.name, pipeline_name]
    else:
        argv = ["python", "-m", "raymlops.cli", "run", pipeline_name, "--json"]
    if store:
        argv += ["--store", store]
    return shlex.join(argv)


def _find_summary(text: str) -> dict[str, Any] | None:
    import json

    found = None
    for line in text.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            with contextlib.suppress(ValueError):
                found = json.loads(line[len(SUMMARY_PREFIX) :])
    return found


def _follow(jobs: _Jobs, job_id: str, stream: IO[str]) -> str:
    """Stream the job's log to ``stream`` until it ends; return the whole log text seen."""
    seen: list[str] = []

    async def tail() -> None:
        async for chunk in jobs.client.tail_job_logs(job_id):
            seen.append(chunk)
            stream.write(chunk)
            stream.flush()

    try:
        asyncio.run(tail())
    except Exception as err:  # websocket dropped, or already inside an event loop: poll instead
        stream.write(f"[raymlops] log stream interrupted ({err!r}); waiting for the job to end\n")
    return "".join(seen)


def _wait(jobs: _Jobs, job_id: str, poll_s: float, timeout_s: float | None) -> Any:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with jobs.refusals():
            info = jobs.client.get_job_info(job_id)
        status = getattr(info.status, "value", str(info.status))
        if status in TERMINAL_STATES:
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def submit(
    pipeline_path: str | Path,
    address: str | None = None,
    *,
    store: str | None = None,
    wait: bool = True,
    extra_pip: Sequence[str] | None = None,
    token: str | None = None,
    submission_id: str | None = None,
    log_stream: IO[str] | None = None,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> SubmitResult:
    """Submit a pipeline as a Ray job; optionally follow it to its end.

    Args:
        pipeline_path: the pipeline YAML file on this machine.
        address: the jobs API (``http://HEAD:8265``); default ``$RAY_API_SERVER_ADDRESS``, then
            ``$RAY_ADDRESS``.
        store: model store for the job; default ``$RAYMLOPS_STORE``; when neither is set the
            cluster's own ``RAYMLOPS_STORE`` (or the file's ``store:``) applies.
        wait: stream the logs and wait for the end; otherwise return once submitted.
        extra_pip: pip requirements to install on the nodes for this job.
        token: the auth token; ``None`` reads it like Ray does, ``""`` sends none.
        submission_id: the job's id; default ``raymlops-<pipeline>-<time>-<random>``.
        log_stream: where logs go (default stderr; stdout stays free for ``--json``).
        poll_s: status polling interval once the log stream has ended.
        timeout_s: give up waiting after this long (the job keeps running).
    """
    stream = log_stream if log_stream is not None else sys.stderr
    store = _check_store(store if store is not None else os.environ.get("RAYMLOPS_STORE") or None)
    workdir = Path(tempfile.mkdtemp(prefix="raymlops-submit-"))
    try:
        pipeline_name, cfg, warnings = stage_working_dir(pipeline_path, workdir)
        for warning in warnings:
            stream.write(f"[raymlops] warning: {warning}\n")
        jobs = _Jobs(address, token, warn=lambda m: stream.write(f"[raymlops] warning: {m}\n"))
        warnings += jobs.warnings
        runtime_env: dict[str, Any] = {"working_dir": str(workdir)}
        if store:
            runtime_env["env_vars"] = {"RAYMLOPS_STORE": store}
        if extra_pip:
            runtime_env["pip"] = list(extra_pip)
        entrypoint = _entrypoint(pipeline_name, store, workdir)
        sid = submission_id or f"raymlops-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with jobs.refusals():
            job_id = jobs.client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=sid,
                metadata={"raymlops.pipeline": cfg.name, "raymlops.kind": "pipeline"},
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # uploaded by submit_job; not needed any more
    stream.write(f"[raymlops] submitted job {job_id} to {jobs.url}: {entrypoint}\n")
    stream.flush()
    if not wait:
        return SubmitResult(job_id, "PENDING", 0, jobs.url, warnings=warnings)

    try:
        seen = _follow(jobs, job_id, stream)
        info = _wait(jobs, job_id, poll_s, timeout_s)
    except KeyboardInterrupt:
        stream.write(
            f"\n[raymlops] stopped following; job {job_id} keeps running "
            f"(raymlops jobs logs {job_id} --follow / raymlops jobs stop {job_id})\n"
        )
        return SubmitResult(job_id, "RUNNING", 130, jobs.url, warnings=warnings)
    status = getattr(info.status, "value", str(info.status))
    summary = _find_summary(seen)
    if summary is None:
        with contextlib.suppress(SubmitError), jobs.refusals():
            summary = _find_summary(jobs.client.get_job_logs(job_id))
    message = None if status == "SUCCEEDED" else (info.message or None)
    stream.write(f"[raymlops] job {job_id} {status}" + (f": {message}" if message else "") + "\n")
    if summary and "version" in summary:
        stream.write(
            f"[raymlops] registered {summary.get('pipeline')}:{summary.get('version')}"
            f" (promoted: {summary.get('promoted') or 'no'}) in {summary.get('store')}\n"
        )
    return SubmitResult(
        job_id, status, 0 if status == "SUCCEEDED" else 1, jobs.url, summary, message, warnings
    )


def submit_pipeline(
    pipeline_path: str | Path,
    address: str | None,
    *,
    store: str | None = None,
    wait: bool = True,
    extra_pip: Sequence[str] | None = None,
) -> int:
    """Submit a pipeline as a Ray job and return the exit code ``raymlops submit`` exits with.

    0 when the job SUCCEEDED (or, with ``wait=False``, was accepted; its id is then printed on
    stdout so scripts can capture it), 1 when it FAILED or was STOPPED, 130 when following was
    interrupted. Logs stream to stderr. See :func:`submit` for the arguments.
    """
    result = submit(pipeline_path, address, store=store, wait=wait, extra_pip=extra_pip)
    if not wait:
        print(result.job_id, flush=True)
    return result.exit_code


# --------------------------------------------------------------------------------------------------
# managing jobs


def list_jobs(address: str | None = None, *, token: str | None = None) -> list[dict[str, Any]]:
    """Every job the cluster knows, newest first, as plain dicts."""
    jobs = _Jobs(address, token)
    with jobs.refusals():
        found = [_details(j) for j in jobs.client.list_jobs()]
    return sorted(found, key=lambda j: j.get("start_time") or 0, reverse=True)


def job_status(job_id: str, address: str | None = None, *, token: str | None = None) -> dict[str, Any]:
    """One job's status and details (status, message, times, entrypoint, metadata)."""
    jobs = _Jobs(address, token)
    with jobs.refusals():
        return _details(jobs.client.get_job_info(job_id))


def job_logs(
    job_id: str,
    address: str | None = None,
    *,
    follow: bool = False,
    stream: IO[str] | None = None,
    token: str | None = None,
) -> str:
    """A job's log so far; with ``follow``, stream it to ``stream`` (stdout) until the job ends."""
    jobs = _Jobs(address, token)
    if follow:
        return _follow(jobs, job_id, stream if stream is not None else sys.stdout)
    with jobs.refusals():
        return str(jobs.client.get_job_logs(job_id))


def stop_job(job_id: str, address: str | None = None, *, token: str | None = None) -> bool:
    """Ask the cluster to stop a job; False when it had already ended."""
    jobs = _Jobs(address, token)
    with jobs.refusals():
        return bool(jobs.client.stop_job(job_id))
