"""Prometheus metrics of the controller (`hedgerow controller --metrics HOST:PORT`).

Two kinds of series:
- *Events* (publishes, status writes, passes, reports) are counted and timed where they
  happen, through the few ``observe_*`` calls the operator makes.
- *State* (devices by health, desired vs applied, queue depths, rollout counts per
  Deployment, leadership) is read from the controller's own memory at scrape time by a
  collector: nothing is kept up to date on every report, and a scrape of 10,000 devices
  costs one walk over the in-memory statuses (a few ms), on the event loop, so it never
  races the loop that owns those statuses.

Labels are bounded: never a device name (10,000 devices would be 10,000 series per
metric); health, revision state, object kind, result and refusal reason have a few
values each; Deployments are labelled by namespace/name, as many as the cluster has.

The endpoint is served by aiohttp (kopf's own HTTP library) on the operator's event
loop, and only when ``--metrics`` is given: see docs/controller.md, "Metrics".
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import prometheus_client
from prometheus_client import core as prom

from hedgerow.core import documents

if TYPE_CHECKING:
    from aiohttp import web

    from hedgerow.controller import operator

logger = logging.getLogger(__name__)

PREFIX: Final = "hedgerow_controller"
# API writes take 5 ms … seconds on a loaded server; a publish batch up to the 30 s
# PUBACK timeout; a pass 1 ms (no change) … seconds (10,000 devices re-resolved).
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                           30.0)


@dataclasses.dataclass(frozen=True)
class Address:
    host: str
    port: int


def resolve_address(text: str) -> Address:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) or ``PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif not host:
        host = "0.0.0.0"  # noqa: S104 - asked for explicitly (":PORT")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--metrics {text!r}: the port is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--metrics {text!r}: the port is out of range")
    return Address(host, number)


class Metrics:
    """The controller's registry: its own, not the process-wide default one, so tests
    that run several controllers in one process never see each other's series."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publishes = prometheus_client.Counter(
            f"{PREFIX}_desired_published", "Desired documents published and acknowledged "
            "by the broker (PUBACK); empty ones that clear a deleted device's included.",
            registry=r)
        self.publish_failures = prometheus_client.Counter(
            f"{PREFIX}_desired_publish_failures",
            "Desired documents whose PUBACK did not come in time (published again on the "
            "next pass).", registry=r)
        self.publish_seconds = prometheus_client.Histogram(
            f"{PREFIX}_publish_duration_seconds",
            "Time from handing a batch of desired documents to the broker client to the "
            "last PUBACK.", buckets=_LATENCY_BUCKETS, registry=r)
        self.writes = prometheus_client.Counter(
            f"{PREFIX}_status_writes", "Status writes to the Kubernetes API by object kind "
            "and result (ok; transient: retried with backoff; refused: a 4xx, not retried "
            "until the object changes).", ["kind", "result"], registry=r)
        self.write_seconds = prometheus_client.Histogram(
            f"{PREFIX}_status_write_duration_seconds",
            "Latency of one status write (server-side apply) to the Kubernetes API.",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.pass_seconds = prometheus_client.Histogram(
            f"{PREFIX}_pass_duration_seconds", "Duration of one reconcile pass over the "
            "fleet (observe, plan, publish, Deployment and ThingGroup status).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0), registry=r)
        self.pass_failures = prometheus_client.Counter(
            f"{PREFIX}_pass_failures", "Reconcile passes that raised (retried).", registry=r)
        self.reports = prometheus_client.Counter(
            f"{PREFIX}_reports_received", "Status reports received from devices (before "
            "rate limits and validation).", registry=r)
        self.leadership_changes = prometheus_client.Counter(
            f"{PREFIX}_leadership_acquired", "Times this replica became the active one "
            "(leader election).", registry=r)
        self.controller: operator.Controller | None = None
        self.registry.register(_StateCollector(self))

    # --- events (called by the operator) ---------------------------------------------

    def observe_publish(self, sent: int, failed: int, seconds: float) -> None:
        self.publishes.inc(sent)
        if failed:
            self.publish_failures.inc(failed)
        self.publish_seconds.observe(seconds)

    def observe_write(self, kind: str, result: str, seconds: float) -> None:
        self.writes.labels(kind, result).inc()
        self.write_seconds.labels(kind).observe(seconds)

    def observe_pass(self, seconds: float, failed: bool = False) -> None:
        self.pass_seconds.observe(seconds)
        if failed:
            self.pass_failures.inc()

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def resolve_device_counts(
        statuses: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Devices by health, and by how their applied revision compares with the desired
    one: ``current`` (applied what was published), ``pending`` (published, not applied
    yet or failed), ``none`` (nothing published to it yet)."""
    health: collections.Counter[str] = collections.Counter(
        {h.value: 0 for h in documents.Health})
    revision: collections.Counter[str] = collections.Counter(
        {"current": 0, "pending": 0, "none": 0})
    for status in statuses:
        health[str(status.health)] += 1
        if status.desired_revision is None:
            revision["none"] += 1
        elif status.applied_revision == status.desired_revision:
            revision["current"] += 1
        else:
            revision["pending"] += 1
    return dict(health), dict(revision)


class _StateCollector(prometheus_client.registry.Collector):
    """Reads the controller's memory at scrape time (on the event loop: see module doc)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[prom.Metric]:
        c = self.metrics.controller
        leader = prom.GaugeMetricFamily(
            f"{PREFIX}_leader", "1 on the active replica, 0 on a standby (leader election; "
            "always 1 without it).")
        leader.add_metric([], 1.0 if c is not None and c.leading else 0.0)
        yield leader
        if c is None:
            return
        health, revision = resolve_device_counts(list(c.devices.values()))
        by_health = prom.GaugeMetricFamily(
            f"{PREFIX}_devices", "Registered devices (CoreDevices) by reported health.",
            labels=["health"])
        for value, n in sorted(health.items()):
            by_health.add_metric([value], n)
        yield by_health
        by_revision = prom.GaugeMetricFamily(
            f"{PREFIX}_devices_by_revision", "Devices by desired vs applied revision: "
            "current (applied the published document), pending (published, not applied "
            "or failed), none (nothing published yet).", labels=["state"])
        for value, n in sorted(revision.items()):
            by_revision.add_metric([value], n)
        yield by_revision
        passes = prom.CounterMetricFamily(f"{PREFIX}_passes", "Reconcile passes run.")
        passes.add_metric([], c.passes)
        yield passes
        queue = prom.GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Work waiting: devices whose status is due to be "
            "written (status), status writes queued for the API threads (api), planning "
            "and publishing jobs queued (work).", labels=["queue"])
        queue.add_metric(["status"], c.writer.depth)
        queue.add_metric(["api"], _queued(c.api_pool))
        queue.add_metric(["work"], _queued(c.work_pool))
        yield queue
        refused = prom.CounterMetricFamily(
            f"{PREFIX}_reports_refused", "Device status reports refused, by reason "
            "(RateLimited, TooLarge, Invalid).", labels=["reason"])
        from hedgerow.controller import operator  # (imports this module: not at the top)

        totals: collections.Counter[str] = collections.Counter(dict.fromkeys(
            (operator.RATE_LIMITED, operator.REPORT_TOO_LARGE, operator.REPORT_INVALID), 0))
        for counts in list(c.refused.values()):
            totals.update(counts)
        for reason, n in sorted(totals.items()):
            refused.add_metric([reason], n)
        yield refused
        rollout = prom.GaugeMetricFamily(
            f"{PREFIX}_deployment_devices", "Devices of each Deployment by rollout state "
            "(targeted, notified, succeeded, failed, timed_out, rolled_back), as in its "
            "status.", labels=["namespace", "deployment", "state"])
        aborted = prom.GaugeMetricFamily(
            f"{PREFIX}_deployment_rollout_aborted", "1 while the Deployment's current "
            "rollout is aborted (its abort criteria were met).",
            labels=["namespace", "deployment"])
        for (namespace, name), status in sorted(c.deployment_status.items()):
            for state in ("targeted", "notified", "succeeded", "failed", "timed_out",
                          "rolled_back"):
                rollout.add_metric([namespace, name, state], getattr(status, state))
            aborted.add_metric([namespace, name], 1.0 if status.rollout is not None
                               and status.rollout.aborted_at is not None else 0.0)
        yield rollout
        yield aborted


def _queued(pool: Any) -> int:
    queue = getattr(pool, "_work_queue", None)  # ThreadPoolExecutor's (no public size)
    return queue.qsize() if queue is not None else 0


class Timer:
    """``with metrics.Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.started


async def serve(metrics: Metrics, address: Address) -> web.AppRunner:
    """Serve ``/metrics`` on the running loop; the caller cleans the runner up."""
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port)
    await site.start()
    logger.info("serving metrics on http://%s:%d/metrics", address.host, address.port)
    return runner
