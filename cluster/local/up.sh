#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this one machine: a head node and N worker nodes, each its
# own raylet (separate ports, object store and temp dir), with token authentication on and a model
# store path that every node sees.
#
# Why a real cluster and not `ray.init()`: code that works on an embedded Ray can still break on a
# cluster (paths only the driver sees, objects too big for one node, tasks pinned to the head).
# Several raylets on one box surface those bugs without a cloud account.
#
# stdout carries only the `export` lines a user needs, so `eval "$(cluster/local/up.sh)"` works;
# progress goes to stderr and the output of `ray start` to $RAYMLOPS_CLUSTER_DIR/logs/.
#
# Settings (environment variables, defaults in brackets):
#   RAYMLOPS_CLUSTER_DIR        state folder: token, logs, Ray temp dirs, store [${TMPDIR:-/tmp}/raymlops-cluster-$UID]
#                               created with mode 0700; an existing one must be a directory of yours
#                               that group and others cannot enter (see cluster_dir.sh)
#   RAYMLOPS_NUM_WORKERS        worker nodes [2]
#   RAYMLOPS_HEAD_CPUS          CPUs the head advertises [1]
#   RAYMLOPS_WORKER_CPUS        CPUs each worker node advertises [2]
#   RAYMLOPS_OBJECT_STORE_BYTES object store per node [300000000]
#   RAYMLOPS_GCS_PORT           GCS port of the head [6390]
#   RAYMLOPS_DASHBOARD_PORT     dashboard / jobs API port [8275]
#   RAYMLOPS_DASHBOARD_HOST     interface the dashboard binds [127.0.0.1]
#   RAYMLOPS_CLIENT_PORT        Ray Client server port (cannot be turned off) [GCS port + 9]
#   RAYMLOPS_PORT_BASE          first of 10 ports per node for raylet, agents, metrics [6400]
#   RAYMLOPS_WORKER_PORT_BASE   first of 200 worker-process ports per node [21000]
#   RAYMLOPS_CLUSTER_STORE      shared model store [$RAYMLOPS_CLUSTER_DIR/store]
#   RAYMLOPS_RAY                the `ray` executable [$VIRTUAL_ENV/bin/ray, else <repo>/.venv/bin/ray, else ray]
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH  use this token instead of generating one
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=cluster_dir.sh
source "$here/cluster_dir.sh"

cluster_dir=${RAYMLOPS_CLUSTER_DIR:-$(raymlops_default_cluster_dir)}
num_workers=${RAYMLOPS_NUM_WORKERS:-2}
head_cpus=${RAYMLOPS_HEAD_CPUS:-1}
worker_cpus=${RAYMLOPS_WORKER_CPUS:-2}
object_store_bytes=${RAYMLOPS_OBJECT_STORE_BYTES:-300000000}
gcs_port=${RAYMLOPS_GCS_PORT:-6390}
dashboard_port=${RAYMLOPS_DASHBOARD_PORT:-8275}
dashboard_host=${RAYMLOPS_DASHBOARD_HOST:-127.0.0.1}
client_port=${RAYMLOPS_CLIENT_PORT:-$((gcs_port + 9))}
port_base=${RAYMLOPS_PORT_BASE:-6400}
worker_port_base=${RAYMLOPS_WORKER_PORT_BASE:-21000}

log() { echo "[up.sh] $*" >&2; }
die() { echo "[up.sh] error: $*" >&2; exit 1; }

if [[ -n "${RAYMLOPS_RAY:-}" ]]; then
  ray_exe=$RAYMLOPS_RAY
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/ray" ]]; then
  ray_exe=$VIRTUAL_ENV/bin/ray
elif [[ -x "$repo/.venv/bin/ray" ]]; then
  ray_exe=$repo/.venv/bin/ray
else
  ray_exe=$(command -v ray) || die "no 'ray' executable found; set RAYMLOPS_RAY or activate the virtualenv"
fi
bin_dir=$(cd "$(dirname "$ray_exe")" && pwd)
python_exe=$bin_dir/python
[[ -x "$python_exe" ]] || die "no python next to $ray_exe"

# The longest socket path Ray makes below the folder: <temp-dir>/session_<date>_<pid>/sockets/plasma_store,
# with the pid as long as this machine's pids can be.
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 4194304)
socket_suffix=/ray/worker$num_workers/session_0000-00-00_00-00-00_000000_${pid_max//?/9}/sockets/plasma_store
why=$(raymlops_prepare_cluster_dir "$cluster_dir" "$socket_suffix") || die "$why"
cluster_dir=$(cd "$cluster_dir" && pwd)
state_file=$cluster_dir/env.sh
if [[ -f "$state_file" ]]; then
  die "a cluster already runs from $cluster_dir (see $state_file); stop it with cluster/local/down.sh"
fi
store=${RAYMLOPS_CLUSTER_STORE:-$cluster_dir/store}
mkdir -p "$store" "$cluster_dir/logs" "$cluster_dir/ray"
store=$(cd "$store" && pwd)

# --- token -----------------------------------------------------------------------------------------
# Every node and every client must hold the same token. Keep it in a file of the cluster's own
# (not ~/.ray/auth_token) so that this cluster neither reads nor overwrites a token meant for another.
token_file=$cluster_dir/auth_token
umask 077
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
  printf '%s' "$RAY_AUTH_TOKEN" >"$token_file"
elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" && -s "${RAY_AUTH_TOKEN_PATH}" ]]; then
  [[ "$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")" == "$token_file" ]] \
    || cp "$RAY_AUTH_TOKEN_PATH" "$token_file"
elif [[ ! -s "$token_file" ]]; then
  "$python_exe" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$token_file"
fi
umask 022
chmod 600 "$token_file"

# --- environment every Ray process of this cluster inherits ----------------------------------------
api_host=$dashboard_host
[[ "$api_host" == "0.0.0.0" || "$api_host" == "::" ]] && api_host=127.0.0.1
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS RAY_AUTH_TOKEN
# Jobs that deploy Serve apps (`serve deploy`, jobs/serve_deploy.py) find the dashboard here.
export RAY_DASHBOARD_ADDRESS=http://$api_host:$dashboard_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$token_file
export RAY_USAGE_STATS_ENABLED=0
export RAYMLOPS_STORE=$store
# down.sh finds this cluster's processes (and only them) by this variable in /proc/PID/environ.
export RAYMLOPS_LOCAL_CLUSTER_DIR=$cluster_dir
# Job drivers run `python`/`raymlops` from PATH: make that the interpreter the cluster runs on.
export PATH=$bin_dir:$PATH

# Fail fast and clearly on a taken port, rather than after Ray's own start-up timeout.
ports=("$gcs_port" "$dashboard_port" "$client_port")
for i in $(seq 0 "$num_workers"); do
  for k in 0 1 2 3 4 5; do ports+=($((port_base + 10 * i + k))); done
done
"$python_exe" - "${ports[@]}" <<'PY' || die "a port this cluster needs is taken; choose others with RAYMLOPS_GCS_PORT, RAYMLOPS_DASHBOARD_PORT, RAYMLOPS_CLIENT_PORT or RAYMLOPS_PORT_BASE"
import socket, sys
taken = []
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            taken.append(port)
if taken:
    print(f"[up.sh] port(s) in use: {taken}", file=sys.stderr)
    sys.exit(1)
PY

on_error() {
  log "start failed; stopping what was started (logs in $cluster_dir/logs)"
  RAYMLOPS_CLUSTER_DIR=$cluster_dir "$here/down.sh" >&2 || true
}
trap on_error ERR

node_ports() {  # $1 = node index (0 = head): the ten ports of that node
  local base=$((port_base + 10 * $1)) wbase=$((worker_port_base + 200 * $1))
  echo --node-manager-port $((base)) --object-manager-port $((base + 1)) \
    --metrics-export-port $((base + 2)) --dashboard-agent-listen-port $((base + 3)) \
    --dashboard-agent-grpc-port $((base + 4)) --runtime-env-agent-port $((base + 5)) \
    --min-worker-port $((wbase)) --max-worker-port $((wbase + 199))
}

common=(--object-store-memory "$object_store_bytes" --disable-usage-stats --log-style record --log-color false)

log "head: GCS 127.0.0.1:$gcs_port, dashboard http://$dashboard_host:$dashboard_port, $head_cpus CPU"
# shellcheck disable=SC2046
"$ray_exe" start --head --port "$gcs_port" \
  --dashboard-host "$dashboard_host" --dashboard-port "$dashboard_port" --include-dashboard true \
  --ray-client-server-port "$client_port" --num-cpus "$head_cpus" \
  --temp-dir "$cluster_dir/ray/head" $(node_ports 0) "${common[@]}" >"$cluster_dir/logs/head.log" 2>&1 \
  || { tail -n 20 "$cluster_dir/logs/head.log" >&2; false; }

for i in $(seq 1 "$num_workers"); do
  log "worker $i: $worker_cpus CPU"
  # shellcheck disable=SC2046
  "$ray_exe" start --address "127.0.0.1:$gcs_port" --num-cpus "$worker_cpus" \
    --temp-dir "$cluster_dir/ray/worker$i" $(node_ports "$i") "${common[@]}" \
    >"$cluster_dir/logs/worker$i.log" 2>&1 \
    || { tail -n 20 "$cluster_dir/logs/worker$i.log" >&2; false; }
done

# --- wait until every node has joined and the jobs API answers with the token -----------------------
expected=$((num_workers + 1))
"$python_exe" - "$gcs_port" "$dashboard_host" "$dashboard_port" "$token_file" "$expected" <<'EOF' >&2
import sys, time, urllib.request, urllib.error, json
gcs_port, host, port, token_file, expected = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
token = open(token_file).read().strip()
deadline = time.monotonic() + 90
last = "no answer"
while time.monotonic() < deadline:
    try:
        req = urllib.request.Request(f"http://{host}:{port}/api/v0/nodes?limit=1000",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = json.load(r)
        nodes = [n for n in body["data"]["result"]["result"] if n.get("state") == "ALIVE"]
        last = f"{len(nodes)} of {expected} nodes alive"
        if len(nodes) >= expected:
            print(f"[up.sh] {last}", file=sys.stderr)
            sys.exit(0)
    except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
        last = str(err)
    time.sleep(1)
print(f"[up.sh] cluster not ready after 90 s: {last}", file=sys.stderr)
sys.exit(1)
EOF

trap - ERR
cat >"$state_file" <<EOF
export RAY_ADDRESS=127.0.0.1:$gcs_port
export RAY_API_SERVER_ADDRESS=http://$api_host:$dashboard_port
export RAY_DASHBOARD_ADDRESS=http://$api_host:$dashboard_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$token_file
export RAYMLOPS_STORE=$store
EOF
log "cluster up: $expected nodes; stop it with: RAYMLOPS_CLUSTER_DIR=$cluster_dir $here/down.sh"
log "use it from another shell with: source $state_file"
cat "$state_file"
