#!/usr/bin/env bash
# make demo / make demo-down. Starts a local control plane (the project's test API server
# + etcd on 127.0.0.1, or the cluster in $KUBECONFIG when one is set), installs crds/,
# applies examples/ and shows what the cluster now holds.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-up}
dir=$(realpath -m "${2:-.demo}")
py=.venv/bin/python
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

down() {
  if [ -d "$dir" ]; then
    say "stopping the local control plane in $dir"
    "$py" -m tests.support.apiserver down --dir "$dir" || true
    rm -rf "$dir"
  fi
}

up() {
  if [ -n "${KUBECONFIG:-}" ]; then
    say "using the cluster in KUBECONFIG=$KUBECONFIG"
    kubeconfig=$KUBECONFIG
  else
    if [ -f "$dir/kubeconfig" ] && kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
      say "the local control plane in $dir is already running"
    else
      down
      say "starting etcd and the API server on 127.0.0.1 (first run builds the server: a few minutes)"
      "$py" -m tests.support.apiserver up --dir "$dir" >/dev/null
    fi
    kubeconfig=$dir/kubeconfig
  fi
  export KUBECONFIG=$kubeconfig
  say "installing the CRDs"
  kubectl apply -f crds/ >/dev/null
  kubectl wait --for condition=established --timeout=60s -f crds/ >/dev/null
  say "validating and applying examples/"
  .venv/bin/hedgerow validate -q examples/*.yaml
  kubectl apply -f examples/
  say "kubectl get hedgerow"
  kubectl get hedgerow -o wide
  cat >&2 <<MSG

Explore:
  export KUBECONFIG=$kubeconfig
  kubectl get hedgerow                  # everything Hedgerow defines
  kubectl get components,deployments    # short names: hcomp, hdep, tg, cd
  kubectl explain deployments.spec.rollout
  .venv/bin/hedgerow validate examples/*.yaml
Stop it with: make demo-down
MSG
}

case "$action" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down [DIR]" >&2; exit 2 ;;
esac
