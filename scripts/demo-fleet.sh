#!/usr/bin/env bash
# The fleet demo (make demo / make demo-down): scripts/demo-fleet.sh up|down [DIR]
#
# up:   the local control plane (the test API server + etcd, or the cluster in $KUBECONFIG),
#       the cloud broker (mosquitto from `hedgerow broker config`: TLS, client certificates,
#       the per-device ACL) on 127.0.0.1, the controller, and three device agents
#       (gateway-1/2/3, each with its own root, a key made by `hedgerow agent init` and a
#       certificate signed by `hedgerow device register --namespace default --csr`), then applies
#       examples/ (namespace default) and
#       shows the fleet converging. Everything runs in the background; logs are in DIR.
# down: removes the examples (the agents stop their components), stops every process it
#       started (pid files in DIR) and removes what it made in DIR (DIR too, if empty).
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-up}
dir=$(realpath -m "${2:-.demo}")
py=$PWD/.venv/bin/python
hedgerow() { "$py" -m hedgerow "$@"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
things=(gateway-1 gateway-2 gateway-3)
declare -A labels=([gateway-1]="site=factory-1" [gateway-2]="site=factory-1"
                   [gateway-3]="site=factory-2 hedgerow.dev/docker=true")

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pid() {  # stop_pid PIDFILE: SIGTERM, up to 20 s, then SIGKILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
kube() { kubectl --kubeconfig "$(cat "$dir/kubeconfig.path")" "$@"; }
start_bg() {  # start_bg NAME CMD...: in its own session, log and pid file in DIR
  local name=$1; shift
  setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

down() {
  [ -d "$dir" ] || return 0
  [ -f "$dir/kubeconfig.path" ] || [ -d "$dir/devices" ] || return 0  # not ours
  if [ -f "$dir/kubeconfig.path" ] && [ -f "$dir/applied.yaml" ] \
      && kube get --raw /readyz >/dev/null 2>&1; then
    say "removing the examples: the agents stop and remove their components"
    kube delete -f "$dir/applied.yaml" --ignore-not-found >/dev/null 2>&1 || true
    for _ in $(seq 150); do
      busy=0
      for t in "${things[@]}"; do
        [ -S "$dir/devices/$t/agent.sock" ] || continue
        out=$(hedgerow component list --root "$dir/devices/$t" -o json 2>/dev/null || echo '[]')
        [ "$(tr -d '[:space:]' <<<"$out")" = "[]" ] || busy=1
      done
      [ $busy = 0 ] && break
      sleep 0.2
    done
    kube delete coredevices "${things[@]}" --ignore-not-found >/dev/null 2>&1 || true
  fi
  say "stopping the agents, the controller and the broker"
  for t in "${things[@]}"; do stop_pid "$dir/agent-$t.pid"; done
  for t in "${things[@]}"; do  # anything still running from a device root (never expected)
    for e in /proc/[0-9]*/environ; do
      if grep -qxzF "HEDGEROW_ROOT=$dir/devices/$t" "$e" 2>/dev/null; then
        p=${e#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null || true
      fi
    done
    if docker info >/dev/null 2>&1; then
      ids=$(docker ps -aq --filter "label=hedgerow.dev/thing=$t" 2>/dev/null || true)
      [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    fi
    for base in /sys/fs/cgroup /sys/fs/cgroup/memory /sys/fs/cgroup/cpu; do
      [ -d "$base/hedgerow/$t" ] || continue
      find "$base/hedgerow/$t" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
      rmdir "$base/hedgerow/$t" 2>/dev/null || true
    done
  done
  stop_pid "$dir/controller.pid"
  stop_pid "$dir/mosquitto.pid"
  if [ -d "$dir/apiserver" ]; then
    say "stopping the local control plane"
    "$py" -m tests.support.apiserver down --dir "$dir/apiserver" >/dev/null || true
  fi
  # Only what up made: DIR may also hold scripts/demo-agent.sh's device.
  rm -rf "$dir/devices" "$dir/broker" "$dir/fleet-ca" "$dir/apiserver" "$dir"/*.log \
    "$dir"/*.pid "$dir"/*.csr "$dir"/*.bundle.json "$dir/applied.yaml" "$dir/kubeconfig.path"
  rmdir "$dir" 2>/dev/null || true
}

up() {
  if alive "$dir/controller.pid"; then
    say "the fleet demo in $dir is already running (make demo-down first)"; return 0
  fi
  down
  mkdir -p "$dir/devices"
  chmod 0711 "$dir" "$dir/devices"  # components run as nobody and must reach their roots

  # --- control plane -------------------------------------------------------------------
  if [ -n "${KUBECONFIG:-}" ]; then
    say "using the cluster in KUBECONFIG=$KUBECONFIG"
    echo "$KUBECONFIG" >"$dir/kubeconfig.path"
  else
    say "starting etcd and the API server on 127.0.0.1 (the first run builds it: minutes)"
    "$py" -m tests.support.apiserver up --dir "$dir/apiserver" >"$dir/kubeconfig.path"
  fi
  say "installing the CRDs"
  kube apply -f crds/ >/dev/null
  kube wait --for condition=established --timeout=60s -f crds/ >/dev/null

  # --- the cloud broker ----------------------------------------------------------------
  port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  broker_url=mqtts://127.0.0.1:$port
  export HEDGEROW_CA_DIR=$dir/fleet-ca
  say "cloud broker: hedgerow broker config, then mosquitto on $broker_url (TLS, client certificates)"
  mkdir -p "$dir/broker/data"
  hedgerow broker config --out "$dir/broker" --port "$port" --user "$(id -un)" \
    --data-dir "$dir/broker/data" >/dev/null 2>"$dir/broker-config.log"
  sed -i "s|^log_dest stderr|log_dest file $dir/broker/mosquitto.log|" "$dir/broker/mosquitto.conf"
  start_bg mosquitto mosquitto -c "$dir/broker/mosquitto.conf"
  for _ in $(seq 100); do
    "$py" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
  done

  # --- controller ------------------------------------------------------------------------
  say "starting the controller (identity hedgerow_controller)"
  start_bg controller "$py" -m hedgerow controller --kubeconfig "$(cat "$dir/kubeconfig.path")" \
    --broker "$broker_url" --ca "$dir/broker/ca.pem" --cert "$dir/broker/controller.pem" \
    --key "$dir/broker/controller.key" --ca-dir "$HEDGEROW_CA_DIR"  # signs documents, GitOps CSRs
  for _ in $(seq 300); do
    grep -q "connected to the broker" "$dir/controller.log" 2>/dev/null && break
    alive "$dir/controller.pid" || { tail -20 "$dir/controller.log" >&2; exit 1; }
    sleep 0.1
  done

  # --- three devices ---------------------------------------------------------------------
  for t in "${things[@]}"; do
    root=$dir/devices/$t
    label_args=()
    for l in ${labels[$t]}; do label_args+=(--label "$l"); done
    say "$t: agent init (key stays on the device) → device register --namespace default ${labels[$t]} → install-bundle → agent run"
    hedgerow agent init --root "$root" --thing "$t" >"$dir/$t.csr" 2>/dev/null
    hedgerow device register "$t" --namespace default "${label_args[@]}" --csr "$dir/$t.csr" \
      --broker-url "$broker_url" --kubeconfig "$(cat "$dir/kubeconfig.path")" \
      --out "$dir/$t.bundle.json" 2>/dev/null
    hedgerow agent install-bundle --root "$root" --thing "$t" "$dir/$t.bundle.json" >/dev/null
    start_bg "agent-$t" "$py" -m hedgerow agent run --root "$root" --thing "$t"
  done

  # --- examples ----------------------------------------------------------------------------
  docker=0
  if docker info >/dev/null 2>&1 && docker image inspect hedgerow/busybox:latest >/dev/null 2>&1; then
    docker=1
  fi
  DOCKER=$docker "$py" - "$dir/applied.yaml" <<'PY'
import os, pathlib, sys, yaml
docs = []
for path in sorted(pathlib.Path("examples").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc["kind"] == "CoreDevice":  # registered for real above
            continue
        if os.environ["DOCKER"] != "1" and doc["metadata"]["name"] in (
                "com.example.webstatus-1.0.0", "docker-hosts-web"):
            continue
        docs.append(doc)
pathlib.Path(sys.argv[1]).write_text(yaml.safe_dump_all(docs))
PY
  if [ $docker = 1 ]; then
    say "applying examples/ (with the Docker component: dockerd answers)"
  else
    say "applying examples/ without web-status / docker-hosts-web (no dockerd, or no hedgerow/busybox image)"
  fi
  hedgerow validate -q examples/*.yaml
  kube apply -f "$dir/applied.yaml" >/dev/null

  # --- converge --------------------------------------------------------------------------
  say "waiting for the fleet to converge"
  read -r -d '' progress <<'PY' || true
import json, sys
items = json.load(sys.stdin)["items"]
parts, done = [], True
for d in sorted(items, key=lambda d: d["metadata"]["name"]):
    s = d.get("status") or {}
    comps = s.get("components", [])
    running = sum(c["state"] in ("RUNNING", "FINISHED") for c in comps)
    ok = (s.get("health") == "HEALTHY" and s.get("desiredRevision")
          and s.get("appliedRevision") == s.get("desiredRevision") and running == len(comps))
    done = done and bool(ok)
    parts.append(f"{d['metadata']['name']} {s.get('health', '-')} {running}/{len(comps)} running")
print(("DONE " if done and len(items) == 3 else "") + " | ".join(parts))
PY
  deadline=$((SECONDS + 180)) converged=1
  while :; do
    line=$(kube get coredevices -o json | "$py" -c "$progress")
    printf '    %s\n' "${line#DONE }" >&2
    [[ $line == DONE* ]] && break
    if [ $SECONDS -ge $deadline ]; then converged=0; break; fi
    sleep 2
  done

  kube wait --for=condition=Ready deployments.hedgerow.dev --all --timeout=30s >/dev/null 2>&1 || true
  say "the fleet"
  kube get coredevices -o custom-columns='NAME:.metadata.name,HEALTH:.status.health,DESIRED:.status.desiredRevision,APPLIED:.status.appliedRevision,COMPONENTS:.status.components[*].name,VERSIONS:.status.components[*].version,STATES:.status.components[*].state'
  echo
  kube get hedgerow
  cat >&2 <<MSG

Explore:
  export KUBECONFIG=$(cat "$dir/kubeconfig.path")
  kubectl get hedgerow                          # components, deployments, groups, devices
  kubectl get coredevices -o yaml               # health, revisions, component states, conditions
  kubectl describe deployments.hedgerow.dev factory-1-apps
  .venv/bin/hedgerow component list --root $dir/devices/gateway-1
  .venv/bin/hedgerow logs get com.example.HelloWorld --root $dir/devices/gateway-1
  .venv/bin/hedgerow agent identity --root $dir/devices/gateway-1
  kubectl label coredevice gateway-2 site=factory-2 --overwrite   # it leaves factory-1
Logs: $dir/controller.log, $dir/agent-gateway-N.log, $dir/broker/mosquitto.log
Stop it with: make demo-down
MSG
  if [ "$converged" = 0 ]; then
    # Left running on purpose: what did not converge is there to look at.
    echo "ERROR: the fleet did not converge in 180 s (left running); look for ERROR in" \
      "$dir/agent-gateway-N.log and $dir/controller.log" >&2
    exit 1
  fi
}

case "$action" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down [DIR]" >&2; exit 2 ;;
esac
