"""Prometheus metrics of the agent, opt-in: `hedgerow agent run --metrics-port N`.

Off, this module costs nothing: prometheus_client is imported by :func:`serve` only (the
agent's memory is a product requirement, bench/agent_memory.py). On, it listens on
127.0.0.1 unless `--metrics-address` says otherwise (a device's process list and
resource use are nobody else's business; a node exporter or a local Prometheus agent
scrapes loopback).

Almost everything is read from the agent at scrape time by a collector (components by
state, restarts, IPC clients, each component's CPU and memory from its cgroup); only the
pass duration is observed as it happens, through ``Agent.pass_observer``. Scrapes run on
prometheus_client's HTTP thread and only read: copies of the agent's dicts (one C call
each under the GIL), cgroup and /proc files.

Labels: ``component`` (the components of one device: tens) and ``state``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from hedgerow.agent import agent as agent_

log = logging.getLogger(__name__)

PREFIX: Final = "hedgerow_agent"


def serve(agent: agent_.Agent, port: int, address: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on a thread of its own; returns the HTTP server (``shutdown()``
    stops it)."""
    import prometheus_client
    from prometheus_client import core as prom

    from hedgerow.core.documents import ComponentState

    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    passes = prometheus_client.Histogram(
        f"{PREFIX}_pass_duration_seconds", "Duration of one reconcile pass (read, observe, "
        "plan, apply, judge, status).",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0), registry=registry)
    agent.pass_observer = passes.observe

    class State(prometheus_client.registry.Collector):
        def collect(self) -> Iterator[prom.Metric]:
            recs = list(agent.records.values())
            count = prom.CounterMetricFamily(f"{PREFIX}_passes", "Reconcile passes begun.")
            count.add_metric([], agent.passes)
            yield count
            by_state = prom.GaugeMetricFamily(
                f"{PREFIX}_components", "Components on this device by lifecycle state.",
                labels=["state"])
            states = {s.value: 0 for s in ComponentState}
            for rec in recs:
                states[rec.state.value] += 1
            for state, n in states.items():
                by_state.add_metric([state], n)
            yield by_state
            restarts = prom.CounterMetricFamily(
                f"{PREFIX}_component_restarts", "Times a component was started again "
                "(after an error, a recovery, a restart command or a new revision), "
                "since the agent started.", labels=["component"])
            counts = dict(agent.restarts)
            for name in sorted({r.name for r in recs} | set(counts)):  # 0 from the start
                restarts.add_metric([name], counts.get(name, 0))
            yield restarts
            ipc = prom.GaugeMetricFamily(f"{PREFIX}_ipc_clients",
                                         "Component connections to the IPC socket.")
            ipc.add_metric([], len(agent.ipc.connections))
            yield ipc
            cpu = prom.CounterMetricFamily(
                f"{PREFIX}_component_cpu_seconds", "CPU time used by a component's "
                "processes (its cgroup; see docs/agent.md, Metrics).",
                labels=["component"])
            memory = prom.GaugeMetricFamily(
                f"{PREFIX}_component_memory_bytes", "Memory in use by a component's "
                "processes (its cgroup's memory.current; RSS without one).",
                labels=["component"])
            cgroups = agent.processes.cgroups
            for rec in sorted(recs, key=lambda r: r.name):
                if rec.process is None:
                    continue  # not a running process (a container, a finished step)
                used_cpu, used_memory = cgroups.observe_usage(rec.name)
                if used_cpu is not None:
                    cpu.add_metric([rec.name], used_cpu)
                if used_memory is not None:
                    memory.add_metric([rec.name], used_memory)
            yield cpu
            yield memory

    registry.register(State())
    server, _thread = prometheus_client.start_http_server(port, address, registry)
    log.info("serving metrics on http://%s:%d/metrics", address, port)
    return server
