"""API server: CoreDevice status writes per second by writes in flight (sizes the pool).

Real parts: the test API server (etcd + apiextensions-apiserver) with 400 CoreDevices.
Each round writes 800 statuses as the controller does (server-side apply of `/status`,
field manager hedgerow-controller, a ~1 KB status with conditions and components, each
write a change) from a pool of T threads, T = 1, 2, 4, 8, 16. The controller's
`--status-workers` default comes from here: the smallest T past which writes/s stop
growing. Baseline: the same writes from one thread (ratio = speed-up).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import time
from collections.abc import Iterator
from typing import Any

from bench import _fleet, harness

N = 400
WRITES = 800
POOLS = (1, 2, 4, 8, 16)


def _status(i: int) -> dict[str, Any]:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=i)
    stamp = now.isoformat().replace("+00:00", "Z")
    return {
        "health": "HEALTHY", "lastSeen": stamp, "agentVersion": "bench",
        "platform": {"os": "linux", "arch": "amd64"},
        "desiredRevision": f"{i:032x}", "appliedRevision": f"{i:032x}",
        "desiredGenerations": {"default/bench": 1 + i % 7},
        "components": [{"name": f"com.example.C{k}", "version": "1.0.0", "state": "RUNNING"}
                       for k in range(4)],
        "conditions": [{"type": "Applied", "status": "True", "reason": "Succeeded",
                        "message": "", "lastTransitionTime": stamp}],
    }


def run() -> Iterator[harness.Figure]:
    from kubernetes import client, config

    from hedgerow.controller import kube

    with _fleet.cluster(N) as (server, _broker, _tmp):
        new_client: Any = config.new_client_from_config  # the kubernetes client is untyped
        api_client = new_client(str(server.kubeconfig))
        api_client.configuration.connection_pool_maxsize = max(POOLS)
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = max(POOLS)
        custom = client.CustomObjectsApi(api_client)
        rates: dict[int, float] = {}
        offset = 0
        for threads in POOLS:
            def write(i: int, base: int = offset) -> None:
                kube.apply_status(custom, "CoreDevice", None, _fleet.thing_name(i % N),
                                  _status(base + i), kube.CONTROLLER)

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                start = time.perf_counter()
                list(pool.map(write, range(WRITES)))
                rates[threads] = WRITES / (time.perf_counter() - start)
            offset += WRITES
    for threads, rate in rates.items():
        yield harness.Figure(f"status_writes_per_s_{threads}", rate, "writes/s", rates[1],
                             "highest (baseline: one thread)")


if __name__ == "__main__":
    for figure in run():
        print(figure.to_json())
