#!/usr/bin/env bash
# Builds the local test image hedgerow/busybox:latest with `docker import` of a rootfs
# made from Debian's busybox-static: no registry is reachable from these machines.
# Rebuilt only when the busybox binary changes (its hash is an image label).
set -euo pipefail

image=${1:-hedgerow/busybox:latest}
busybox=$(command -v busybox)
digest=$(sha256sum "$busybox" | cut -c1-16)
# One build at a time on the machine (every test worker's session checks it): waiting,
# then checking the label, finds another's build done instead of importing it again.
lock=/tmp/hedgerow-build-$(printf %s "$image" | tr -c 'A-Za-z0-9._-' '_').lock
[ -e "$lock" ] || (umask 0; : >>"$lock") 2>/dev/null || true
exec 9<"$lock"  # read-only: any user's, whoever made it (flock needs no write)
flock 9
current=$(docker image inspect -f '{{index .Config.Labels "hedgerow.dev/busybox"}}' "$image" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
  exit 0
fi
printf '==> building %s from %s\n' "$image" "$busybox" >&2
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,proc,sys,dev,var/www}
cp "$busybox" "$rootfs/bin/busybox"
chroot "$rootfs" /bin/busybox --install -s
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["/bin/sh"]' \
  --change "LABEL hedgerow.dev/busybox=$digest" \
  - "$image" >/dev/null
printf '==> built %s\n' "$image" >&2
