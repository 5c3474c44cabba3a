#!/usr/bin/env bash
# Create the Secrets the manifests in this folder name: one Ray token per cluster and the serving
# cluster's model API key, each a fresh random value, none of them in any file under version control.
#
# Why one token per cluster: a token opens that cluster's jobs API, which runs any code with the
# cluster's cloud role. Were the serving cluster's token also the training cluster's, whoever can
# read it (an operator of the model endpoint) could register and promote models. The model API key
# is separate again: model clients hold it and never a Ray token.
#
# An existing Secret is left as it is (run this again safely; rotate by deleting the Secret first).
# Values never appear on a command line (where `ps` would show them): they go through a private
# temporary file that is removed on exit.
#
# Usage: cluster/kuberay/create-secrets.sh [-n NAMESPACE]
# Settings: KUBECTL [kubectl], PYTHON [python3]
set -euo pipefail

kubectl=${KUBECTL:-kubectl}
python=${PYTHON:-python3}
ns_args=()
while (($#)); do
  case $1 in
    -n | --namespace) ns_args=(--namespace "$2"); shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "[create-secrets] unknown argument: $1" >&2; exit 2 ;;
  esac
done

umask 077
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# create_secret NAME KEY KIND: KIND "hex" is a Ray token (64 hex digits), "urlsafe" an API key.
create_secret() {
  local name=$1 key=$2 kind=$3
  if "$kubectl" "${ns_args[@]}" get secret "$name" >/dev/null 2>&1; then
    echo "[create-secrets] $name exists, kept" >&2
    return 0
  fi
  "$python" -c "import secrets, sys; sys.stdout.write(secrets.token_$kind(32))" >"$work/$key"
  "$kubectl" "${ns_args[@]}" create secret generic "$name" --from-file="$key=$work/$key" >/dev/null
  "$kubectl" "${ns_args[@]}" label secret "$name" app.kubernetes.io/name=raymlops >/dev/null
  rm -f -- "$work/$key"
  echo "[create-secrets] $name created" >&2
}

create_secret raymlops-train-ray-token auth_token hex         # raycluster.yaml
create_secret raymlops-digits-ray-token auth_token hex        # rayjob-digits.yaml
create_secret raymlops-score-digits-ray-token auth_token hex  # rayjob-score-digits.yaml
create_secret raymlops-serve-ray-token auth_token hex         # rayservice.yaml
create_secret raymlops-serve-api-key api_key urlsafe          # rayservice.yaml: RAYMLOPS_API_KEY
