#!/usr/bin/env bash
# make demo / make demo-down: the whole fleet on this machine -- the local control plane
# (the test API server + etcd, or the cluster in $KUBECONFIG), the cloud broker with TLS
# and the per-device ACL, the controller and three device agents -- with examples/
# applied. scripts/demo-fleet.sh does the work; scripts/demo-agent.sh is the one-device,
# no-cluster variant.
set -euo pipefail
exec "$(dirname "$0")/demo-fleet.sh" "${1:-up}" "${2:-.demo}"
