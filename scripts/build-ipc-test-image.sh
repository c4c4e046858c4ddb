#!/usr/bin/env bash
# Builds the local image hedgerow/ipc-python:latest for the IPC tests' containerized
# component: this machine's python3 (Debian's: binary, standard library, the shared
# libraries they load) and the AWS IoT Device SDK v2 (awsiot + awscrt, from the project's
# virtualenv) in /usr/lib/python3/dist-packages, plus tests/agent/ipc_component.py as
# /opt/ipc_component.py. No registry is reachable from these machines: the rootfs is
# assembled here and loaded with `docker import` (a few seconds; debootstrap would take
# minutes and a mirror). Rebuilt only when an input changes: their hash is an image label.
#   usage: scripts/build-ipc-test-image.sh [IMAGE] [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-hedgerow/ipc-python:latest}
venv=${2:-.venv}
python=$(readlink -f /usr/bin/python3)
site=$("$venv/bin/python" -c 'import awscrt, os; print(os.path.dirname(os.path.dirname(awscrt.__file__)))')
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
component=tests/agent/ipc_component.py
# Contents only: `sha256sum FILE` would add the path as it was given, and `make image`
# (scripts/...) and the test fixture (/abs/path/scripts/...) would each find the other's
# build stale and rebuild it, every run, checkouts flip-flopping the one machine image.
digest=$( { "$python" --version; cat "$python" "$component" "$0";
            cat "$site"/awscrt-*.dist-info/RECORD "$site"/awsiotsdk-*.dist-info/RECORD; } \
          | sha256sum | cut -c1-16)
# One build at a time on the machine (the image is the machine's, not the checkout's):
# two at once would both import, and the later one remove the earlier's image as
# `previous` while a test may be starting a container from it. Waiting, then checking
# the label, finds the other's build done.
lock=/tmp/hedgerow-build-$(printf %s "$image" | tr -c 'A-Za-z0-9._-' '_').lock
[ -e "$lock" ] || (umask 0; : >>"$lock") 2>/dev/null || true
exec 9<"$lock"  # read-only: any user's, whoever made it (flock needs no write)
flock 9
current=$(docker image inspect -f '{{index .Config.Labels "hedgerow.dev/ipc-python"}}' "$image" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
  exit 0
fi
previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
printf '==> building %s (python %s, awsiotsdk from %s)\n' "$image" "$python" "$site" >&2
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{usr/bin,tmp,etc,proc,sys,dev,opt,usr/lib/python3/dist-packages}
chmod 1777 "$rootfs/tmp"
cp "$python" "$rootfs/usr/bin/python3"
tar -C / -c --exclude='__pycache__' --exclude="${stdlib#/}/test" \
    --exclude="${stdlib#/}/idlelib" --exclude="${stdlib#/}/tkinter" \
    --exclude="${stdlib#/}/ensurepip" --exclude="${stdlib#/}/lib2to3" \
    "${stdlib#/}" | tar -C "$rootfs" -x
dist="$rootfs/usr/lib/python3/dist-packages"
cp -r "$site/awsiot" "$site/awscrt" "$site"/_awscrt*.so "$dist/"
find "$dist" -name __pycache__ -prune -exec rm -rf {} +
cp "$component" "$rootfs/opt/ipc_component.py"
# Every shared library the interpreter and its extension modules load, and the loader.
find "$rootfs" -name '*.so*' -type f -print0 | xargs -0 ldd "$python" 2>/dev/null \
  | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | sort -u \
  | while read -r lib; do cp -L --parents "$lib" "$rootfs/"; done
printf 'root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["/usr/bin/python3"]' \
  --change "LABEL hedgerow.dev/ipc-python=$digest" \
  - "$image" >/dev/null
# The build it replaces would linger untagged (74 MB each): remove it unless in use.
[ -z "$previous" ] || docker image rm "$previous" >/dev/null 2>&1 || true
printf '==> built %s\n' "$image" >&2
