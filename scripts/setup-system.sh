#!/usr/bin/env bash
# Installs what Hedgerow's tests and demo need on a fresh Debian machine, and starts
# dockerd when none answers. Idempotent: a warm machine spends well under a second here.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

# Debian packages, by the command each provides.
declare -A PACKAGES=(
  [dockerd]=docker.io
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [busybox]=busybox-static
  [openssl]=openssl
  [iptables]=iptables
  [cc]=gcc
  # A real Prometheus scrapes the controller's and agent's /metrics in tests.
  [prometheus]=prometheus
)
missing=()
for cmd in "${!PACKAGES[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/bin/$cmd" ]; then
    missing+=("${PACKAGES[$cmd]}")
  fi
done
# The C library's headers and static archive: hedgerow-gate's hosted build and the tests
# that build one (gcc alone, installed without recommends, has neither).
if ! [ -e /usr/include/errno.h ] || ! compgen -G "/usr/lib/*/libc.a" >/dev/null; then
  missing+=(libc6-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" python3-venv >/dev/null
fi

if ! command -v kubectl >/dev/null 2>&1; then
  say "kubectl is not on PATH; the API-server tests and the demo need it (any 1.30+ client)"
  exit 1
fi

# The Docker engine: tests use a real dockerd. Start one when none answers.
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    say "dockerd is not running and this user cannot start it"
    exit 1
  fi
  say "starting dockerd (log: /var/log/hedgerow-dockerd.log)"
  nohup dockerd >/var/log/hedgerow-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up:"; tail -20 /var/log/hedgerow-dockerd.log >&2; exit 1; }
fi
