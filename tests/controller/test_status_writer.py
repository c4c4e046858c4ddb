"""Status that scales: a heartbeat that changes nothing costs no API write (lastSeen still
advances at its granularity), a burst of reports becomes one or two writes carrying the
latest, and under a backlog an outcome is written before cosmetic changes.

The first two run the real `hedgerow controller` against the real API server and
mosquitto and observe what a user would: the CoreDevice's resourceVersion and status."""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from hedgerow.controller import statuswriter
from hedgerow.core import liveness
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.support import passes
from tests.support.wait import wait_for

THING = "hb-scale-1"


def _device(cluster: Cluster) -> None:
    cluster.apply({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
                   "metadata": {"name": THING}, "spec": {"namespace": "default"}})


def _report(devices: Devices, sequence: int, at: str, version: str = "1.0.0") -> None:
    report = {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "StatusReport", "thing": THING,
        "sequence": sequence, "time": at, "agentVersion": "0.1.0-test",
        "platform": {"os": "linux", "arch": "amd64"}, "health": "HEALTHY",
        "components": [{"name": "com.example.A", "version": version, "state": "RUNNING"}]}
    devices.client.publish(f"hedgerow/things/{THING}/status", json.dumps(report),
                           qos=1).wait_for_publish(10)


def _status(cluster: Cluster) -> tuple[str, dict[str, Any]]:
    obj = cluster.get("coredevice", THING, None)
    return obj["metadata"]["resourceVersion"], obj.get("status") or {}


def _api_writes(stats: pathlib.Path) -> int:
    """CoreDevice status writes the controller sent to the API server."""
    writes = passes.controller_stats(stats).get("apiWrites") or {}
    assert isinstance(writes, dict)
    return int(writes.get("CoreDevice", 0))


def _folded(stats: pathlib.Path, pid: int, count: int) -> None:
    """Until the controller has accepted ``count`` reports and completed a pass since."""
    def done() -> bool:
        passes.wait_controller_passes(stats, pid, 1)
        return int(str(passes.controller_stats(stats).get("reportsAccepted", 0))) >= count

    wait_for(done, 30, f"{count} reports accepted")


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_a_heartbeat_writes_nothing_until_last_seen_is_due(
    cluster: Cluster, devices: Devices, tmp_path: pathlib.Path,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    _device(cluster)
    stats = tmp_path / "stats.json"
    c = controller_factory("--stats-file", str(stats), "--last-seen-interval", "60")
    wait_for(lambda: passes.controller_passes(stats) >= 1, 60, "the first pass")
    assert c.proc is not None
    _report(devices, 1, "2026-01-01T00:00:00Z")
    wait_for(lambda: _status(cluster)[1].get("lastSeen") == "2026-01-01T00:00:00Z", 30,
             "the first report written")
    version, _ = _status(cluster)
    # Heartbeats: the same state, a newer time within the granularity.
    _report(devices, 2, "2026-01-01T00:00:30Z")
    _report(devices, 3, "2026-01-01T00:00:59Z")
    _folded(stats, c.proc.pid, 3)
    passes.wait_controller_passes(stats, c.proc.pid)  # the writer had its chance
    assert _status(cluster)[0] == version  # no write at all
    assert int(str(passes.controller_stats(stats)["heartbeatsSkipped"])) >= 2
    # A minute after the lastSeen written: lastSeen is due, and written.
    _report(devices, 4, "2026-01-01T00:01:00Z")
    wait_for(lambda: _status(cluster)[1].get("lastSeen") == "2026-01-01T00:01:00Z", 30,
             "lastSeen advanced at its granularity")
    # A change a user sees is written at once, whatever the granularity.
    _report(devices, 5, "2026-01-01T00:01:01Z", version="2.0.0")
    wait_for(lambda: _status(cluster)[1].get("components", [{}])[0].get("version")
             == "2.0.0", 30, "the new component version written")
    assert _status(cluster)[1]["lastSeen"] == "2026-01-01T00:01:01Z"  # carried along


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_a_burst_of_reports_is_one_or_two_writes_of_the_latest(
    cluster: Cluster, devices: Devices, tmp_path: pathlib.Path,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    _device(cluster)
    stats = tmp_path / "stats.json"
    # A per-device interval far above the burst: everything after the first write waits.
    c = controller_factory("--stats-file", str(stats), "--status-interval", "3")
    wait_for(lambda: passes.controller_passes(stats) >= 1, 60, "the first pass")
    assert c.proc is not None
    before = _api_writes(stats)
    for i in range(1, 9):  # within the report rate limit's burst (limits.REPORT_BURST)
        _report(devices, i, f"2026-01-01T00:00:0{i}Z", version=f"1.0.{i}")
    wait_for(lambda: _status(cluster)[1].get("components", [{}])[0].get("version")
             == "1.0.8", 30, "the latest report written")
    _folded(stats, c.proc.pid, 8)
    writes = _api_writes(stats) - before
    assert 1 <= writes <= 2, writes
    assert _status(cluster)[1]["lastSeen"] == "2026-01-01T00:00:08Z"


def test_an_outcome_is_written_before_cosmetic_changes_under_a_backlog() -> None:
    order: list[str] = []

    async def scenario() -> None:
        async def write(thing: str) -> None:
            order.append(thing)
            await asyncio.sleep(0.01)  # a slow API server: a backlog builds

        w = statuswriter.StatusWriter(write, interval=1.0, workers=1)
        for i in range(20):
            w.offer(f"cosmetic-{i:02}", liveness.Priority.LIVENESS)
        for i in range(5):
            w.offer(f"visible-{i}", liveness.Priority.VISIBLE)
        w.offer("applied", liveness.Priority.COUNTING)
        w.offer("cosmetic-10", liveness.Priority.COUNTING)  # an outcome for a queued one
        w.start()
        await asyncio.wait_for(w.drain(), 10)
        await w.stop()
        assert w.writes == 26 and w.coalesced == 1

    asyncio.run(scenario())
    assert order[:2] == ["applied", "cosmetic-10"]
    assert order[2:7] == [f"visible-{i}" for i in range(5)]
    assert sorted(order) == sorted(set(order))  # one write each


def test_one_device_is_never_written_twice_within_its_interval() -> None:
    times: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def write(thing: str) -> None:
            times.append(loop.time())
            await asyncio.sleep(0.05)

        w = statuswriter.StatusWriter(write, interval=0.3, workers=4)
        w.start()
        for _ in range(10):  # offered again and again, also while being written
            w.offer("gw-1", liveness.Priority.VISIBLE)
            await asyncio.sleep(0.04)
        await asyncio.wait_for(w.drain(), 10)
        await w.stop()

    asyncio.run(scenario())
    assert 2 <= len(times) <= 3  # 0.4 s of offers, one write per 0.3 s
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(times))


def test_an_outcome_does_not_wait_out_the_interval_but_a_second_one_does() -> None:
    """A device's success right after its Notified write is written at once (the rollout
    latency); a device cannot use that to be written more than twice per interval."""
    times: list[tuple[str, float]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def write(thing: str) -> None:
            times.append((thing, loop.time() - start))

        w = statuswriter.StatusWriter(write, interval=1.0, workers=4)
        w.start()
        w.offer("gw-1", liveness.Priority.VISIBLE)  # notified
        await asyncio.sleep(0.2)
        w.offer("gw-1", liveness.Priority.COUNTING)  # succeeded: at once
        await asyncio.sleep(0.2)
        w.offer("gw-1", liveness.Priority.COUNTING)  # again: waits for its interval
        w.offer("gw-2", liveness.Priority.VISIBLE)
        await asyncio.sleep(0.1)
        w.offer("gw-2", liveness.Priority.VISIBLE)  # not an outcome: waits
        await asyncio.wait_for(w.drain(), 10)
        await w.stop()

    asyncio.run(scenario())
    gw1 = [t for thing, t in times if thing == "gw-1"]
    gw2 = [t for thing, t in times if thing == "gw-2"]
    assert len(gw1) == 3 and len(gw2) == 2, times
    assert gw1[1] - gw1[0] < 0.5  # the outcome did not wait out the interval
    assert gw1[2] - gw1[1] >= 0.99  # the second outcome did
    assert gw2[1] - gw2[0] >= 0.99


def test_writes_stay_within_the_budget() -> None:
    times: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def write(thing: str) -> None:
            times.append(loop.time())

        w = statuswriter.StatusWriter(write, interval=1.0, workers=8, qps=50)
        start = loop.time()
        for i in range(100):
            w.offer(f"gw-{i}", liveness.Priority.VISIBLE)
        w.start()
        await asyncio.wait_for(w.drain(), 10)
        await w.stop()
        times[:] = [t - start for t in times]
        assert w.throttled_seconds > 0

    asyncio.run(scenario())
    assert len(times) == 100
    # A burst of one second's worth (50), then 50 per second: the last about 1 s later.
    assert times[-1] >= 0.9
    assert all(sum(1 for t in times if t < s) <= 50 + 50 * s + 1 for s in (0.2, 0.5, 0.8))
