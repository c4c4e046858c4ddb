#!/usr/bin/env bash
# The edge agent demo: scripts/demo-agent.sh up|down [ROOT]   (ROOT default .demo/device)
#
# up:   runs `hedgerow agent run --root ROOT --thing gateway-1` in the background with
#       examples/hello-world.yaml + examples/telemetry.yaml + examples/local/gateway-1.yaml
#       (a local Deployment targeting the thing) in ROOT/deployments, waits until both
#       components are RUNNING, prints the table and commands to explore.
# down: stops the agent and its components (removes the deployment first, so the agent
#       runs each component's shutdown step), then removes ROOT.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-up}
root=$(realpath -m "${2:-.demo/device}")
thing=gateway-1
py=.venv/bin/python
hedgerow() { "$py" -m hedgerow "$@"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
pidfile=$(dirname "$root")/$(basename "$root").agent.pid
logfile=$(dirname "$root")/$(basename "$root").agent.log

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

down() {
  if running; then
    say "removing the local deployment (components run their shutdown steps)"
    rm -f "$root"/deployments/*.yaml
    for _ in $(seq 100); do
      [ -z "$(hedgerow component list --root "$root" -o json 2>/dev/null | tr -d '[:space:][]')" ] && break
      sleep 0.1
    done
    say "stopping the agent (pid $(cat "$pidfile"))"
    kill -TERM "$(cat "$pidfile")"
    for _ in $(seq 100); do running || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  [ -d "$root" ] && rm -rf "$root" "$logfile"
  return 0
}

up() {
  if running; then
    say "the agent for $root is already running (pid $(cat "$pidfile"))"
  else
    rm -rf "$root"
    mkdir -p "$root/deployments" "$root/desired"
    cp examples/hello-world.yaml examples/telemetry.yaml examples/local/gateway-1.yaml \
      "$root/deployments/"
    say "starting the edge agent: hedgerow agent run --root $root --thing $thing"
    setsid "$py" -m hedgerow agent run --root "$root" --thing "$thing" \
      >"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
  say "waiting for com.example.HelloWorld and com.example.Telemetry to be RUNNING"
  last=""
  for _ in $(seq 300); do
    running || { cat "$logfile" >&2; say "the agent exited"; exit 1; }
    table=$(hedgerow component list --root "$root" 2>/dev/null || true)
    states=$(echo "$table" | awk 'NR > 1 {print $1 "=" $3}' | tr '\n' ' ')
    [ "$states" != "$last" ] && [ -n "$states" ] && echo "   $states" >&2
    last=$states
    if echo "$table" | grep -q '^com.example.HelloWorld .*RUNNING' &&
       echo "$table" | grep -q '^com.example.Telemetry .*RUNNING'; then
      echo
      echo "$table"
      echo
      cat <<MSG
The agent runs in the background (pid $(cat "$pidfile"), log: $logfile). Explore:
  $py -m hedgerow component list --root $root
  $py -m hedgerow component details com.example.Telemetry --root $root
  $py -m hedgerow logs get com.example.HelloWorld --root $root
  $py -m hedgerow logs get com.example.Telemetry --follow --root $root
  $py -m hedgerow deployment list --root $root
  cat $root/work/com.example.Telemetry/samples/load.txt
Stop it with: scripts/demo-agent.sh down ${2:-.demo/device}
MSG
      return 0
    fi
    sleep 0.2
  done
  cat "$logfile" >&2
  say "timed out waiting for RUNNING"
  exit 1
}

case "$action" in
  up) up "$@" ;;
  down) down ;;
  *) echo "usage: $0 up|down [ROOT]" >&2; exit 2 ;;
esac
