#!/usr/bin/env bash
# Stop the local cluster that cluster/local/up.sh started, and only that one.
#
# Why not `ray stop`: it kills every Ray process of the user on the machine, including other
# clusters, notebooks and test sessions. Instead this finds the processes whose environment carries
# RAYMLOPS_LOCAL_CLUSTER_DIR=<this cluster's folder> (up.sh sets it before `ray start`) plus all
# their descendants (worker processes rewrite their environ with their title), and stops them in the
# order `ray stop` uses: raylets first, then agents/dashboard/workers, the GCS last. A raylet that
# loses its GCS first hangs in its graceful shutdown, hence the order.
#
# Usage: cluster/local/down.sh [--purge]
#   --purge  also delete the cluster folder (token, logs, Ray temp dirs and the store inside it)
# Settings: RAYMLOPS_CLUSTER_DIR [${TMPDIR:-/tmp}/raymlops-cluster-$UID, as up.sh], RAYMLOPS_STOP_GRACE_S [15]
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=cluster_dir.sh
source "$here/cluster_dir.sh"

purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "[down.sh] unknown argument: $arg" >&2; exit 2 ;;
  esac
done

cluster_dir=${RAYMLOPS_CLUSTER_DIR:-$(raymlops_default_cluster_dir)}
# A folder up.sh would refuse is not one it started a cluster in: never stop or delete by it (the
# default path is predictable, so it may be someone else's folder or a planted symlink).
if [[ -e $cluster_dir || -L $cluster_dir ]]; then
  why=$(raymlops_check_cluster_dir "$cluster_dir") || {
    echo "[down.sh] error: $why" >&2
    exit 1
  }
  cluster_dir=$(cd "$cluster_dir" && pwd)
fi
grace=${RAYMLOPS_STOP_GRACE_S:-15}
marker="RAYMLOPS_LOCAL_CLUSTER_DIR=$cluster_dir"

log() { echo "[down.sh] $*" >&2; }

ppid_of() {  # field 4 of /proc/PID/stat; the command name (field 2) may hold spaces and ')'
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo "$2"
}

alive() {  # running and not a zombie (a zombie whose parent is gone may never be reaped here)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

cluster_pids() {
  local -A member=()
  local pid changed p
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    if { tr '\0' '\n' <"$dir/environ"; } 2>/dev/null | grep -qxF -- "$marker"; then
      member[$pid]=1
    fi
  done
  # Ray processes orphaned by a crashed raylet: their title hides the environ, but they keep log
  # files of this cluster open. Only Ray's own processes count (a `less` on a log must survive).
  local link cmd
  while IFS= read -r link; do
    pid=${link#/proc/}
    pid=${pid%%/*}
    [[ -n "${member[$pid]:-}" || $pid == "$$" || $pid == "$BASHPID" ]] && continue
    cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    case $cmd in
      ray::* | *site-packages/ray/* | *ray/core/src/*) member[$pid]=1 ;;
    esac
  done < <(find /proc/[0-9]*/fd -maxdepth 1 -lname "$cluster_dir/*" 2>/dev/null)
  # Add descendants until nothing changes.
  changed=1
  while ((changed)); do
    changed=0
    for dir in /proc/[0-9]*; do
      pid=${dir#/proc/}
      [[ -n "${member[$pid]:-}" || $pid == "$$" || $pid == "$BASHPID" ]] && continue
      p=$(ppid_of "$pid") || continue
      if [[ -n "${member[$p]:-}" ]]; then
        member[$pid]=1
        changed=1
      fi
    done
  done
  for pid in "${!member[@]}"; do alive "$pid" && echo "$pid"; done
}

kind_of() {  # raylet | gcs | other
  local exe
  exe=$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | cut -d' ' -f1)
  case $exe in
    */raylet/raylet) echo raylet ;;
    */gcs/gcs_server) echo gcs ;;
    *) echo other ;;
  esac
}

stop_group() {  # $1 = label, rest = pids: SIGTERM, wait up to $grace s, then SIGKILL
  local label=$1 pid waited=0 left
  shift
  (($#)) || return 0
  log "stopping $# $label process(es): $*"
  kill -TERM "$@" 2>/dev/null
  while ((waited < grace * 10)); do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    sleep 0.1
    waited=$((waited + 1))
  done
  log "still running after ${grace}s, sending SIGKILL: ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null
  sleep 0.5
}

mapfile -t pids < <(cluster_pids)
if ((${#pids[@]} == 0)); then
  log "no process of the cluster in $cluster_dir is running"
else
  raylets=() gcs=() others=()
  for pid in "${pids[@]}"; do
    case $(kind_of "$pid") in
      raylet) raylets+=("$pid") ;;
      gcs) gcs+=("$pid") ;;
      *) others+=("$pid") ;;
    esac
  done
  stop_group raylet "${raylets[@]}"
  mapfile -t pids < <(cluster_pids)
  others=()
  for pid in "${pids[@]}"; do [[ $(kind_of "$pid") == gcs ]] || others+=("$pid"); done
  stop_group other "${others[@]}"
  stop_group gcs "${gcs[@]}"
  mapfile -t pids < <(cluster_pids)
  if ((${#pids[@]})); then
    log "processes left after the grace period, killing: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null
    sleep 0.5
    mapfile -t pids < <(cluster_pids)
    if ((${#pids[@]})); then
      log "error: could not stop: ${pids[*]}"
      exit 1
    fi
  fi
  log "all processes of the cluster in $cluster_dir stopped"
fi

rm -f "$cluster_dir/env.sh"
if ((purge)) && [[ -d "$cluster_dir" ]]; then
  rm -rf -- "$cluster_dir"
  log "removed $cluster_dir"
fi
exit 0
