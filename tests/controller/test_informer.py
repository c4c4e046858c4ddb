"""The CoreDevice informer against the real API server: it sees what is added, changed
and deleted; it survives watches the server ends and a watch whose version expired
(410 Gone: it lists again and tells only what changed); and the controller's first pass
waits for its initial listing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from hedgerow.controller import broker, informer, kube, operator
from hedgerow.core import coredevice
from tests.controller.conftest import Cluster

pytestmark = pytest.mark.apiserver

Event = tuple[str | None, str]  # (type, name)


def _device(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
            "metadata": {"name": name, "labels": labels}, "spec": {"namespace": "default"}}


async def _until(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll a condition on the loop the informer runs on (tests/support/wait.py's
    wait_for, for a coroutine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, kind: str | None, body: Mapping[str, Any]) -> None:
        self.events.append((kind, body["metadata"]["name"]))

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def _informer(cluster: Cluster, **kwargs: Any) -> tuple[informer.Informer, Recorder]:
    kube.load_config(cluster.kubeconfig)
    recorder = Recorder()
    return informer.Informer("coredevices",
                             functools.partial(operator.parse_body, "coredevices"),
                             recorder, **kwargs), recorder


@contextlib.asynccontextmanager
async def _running(inf: informer.Informer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(inf.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> Any:
    return asyncio.to_thread(cluster.kubectl, *args, stdin=stdin)


def test_the_informer_lists_then_sees_adds_changes_and_deletes(cluster: Cluster) -> None:
    cluster.apply(*(_device(f"gw-{i}", fleet="a") for i in range(3)))
    # A page of 2: the listing is three requests, one consistent snapshot.
    inf, seen = _informer(cluster, page=2)

    async def scenario() -> None:
        async with _running(inf):
            await asyncio.wait_for(inf.listed.wait(), 30)
            assert sorted(seen.take()) == [(None, "gw-0"), (None, "gw-1"), (None, "gw-2")]
            assert set(inf.index) == {("", "gw-0"), ("", "gw-1"), ("", "gw-2")}
            assert isinstance(inf.index[("", "gw-0")], coredevice.CoreDevice)

            await asyncio.to_thread(cluster.apply, _device("gw-3", fleet="a"))
            await _until(lambda: ("", "gw-3") in inf.index, "gw-3 added")
            await asyncio.to_thread(cluster.kubectl, "label", "coredevice", "gw-1",
                                    "fleet=b", "--overwrite")
            await _until(lambda: inf.index[("", "gw-1")].metadata.labels == {"fleet": "b"},
                         "gw-1 relabelled")
            await asyncio.to_thread(cluster.kubectl, "delete", "coredevice", "gw-0")
            await _until(lambda: ("", "gw-0") not in inf.index, "gw-0 deleted")
            assert seen.take() == [("ADDED", "gw-3"), ("MODIFIED", "gw-1"),
                                   ("DELETED", "gw-0")]
            assert inf.lists == 1 and inf.expired == 0

    asyncio.run(scenario())


def test_a_watch_the_server_ends_is_opened_again_without_listing(cluster: Cluster) -> None:
    cluster.apply(_device("gw-0"))
    inf, seen = _informer(cluster, timeout_s=1)  # the server ends each watch after 1 s

    async def scenario() -> None:
        async with _running(inf):
            await _until(lambda: inf.watches >= 3, "three watches, one after the other")
            await asyncio.to_thread(cluster.apply, _device("gw-1"))
            await _until(lambda: ("", "gw-1") in inf.index, "gw-1 added")
            assert seen.take() == [(None, "gw-0"), ("ADDED", "gw-1")]
            assert inf.lists == 1 and inf.expired == 0

    asyncio.run(scenario())


def test_an_expired_watch_lists_again_and_tells_only_what_changed(cluster: Cluster) -> None:
    cluster.apply(*(_device(f"gw-{i}") for i in range(4)))
    inf, seen = _informer(cluster)

    async def scenario() -> None:
        async with _running(inf):
            await asyncio.wait_for(inf.listed.wait(), 30)
        listed_at = inf.resource_version
        seen.take()
        # While no watch is open: one device deleted, one changed, one added, one left.
        await asyncio.to_thread(cluster.kubectl, "delete", "coredevice", "gw-0")
        await asyncio.to_thread(cluster.kubectl, "label", "coredevice", "gw-1", "x=y")
        await asyncio.to_thread(cluster.apply, _device("gw-9"))
        # The version it resumes from is older than the server keeps: what compaction
        # (or a watch cache that moved on) does to a watch that was away too long. The
        # server answers 410 Gone ("too old resource version").
        inf.resource_version = "1"
        async with _running(inf):
            await _until(lambda: inf.lists == 2, "a second listing after the 410")
            assert inf.expired == 1
            events = seen.take()
            assert len(events) == 3  # gw-2 and gw-3 did not change: no event
            assert set(events) == {("DELETED", "gw-0"), (None, "gw-1"), (None, "gw-9")}
            assert set(inf.index) == {("", "gw-1"), ("", "gw-2"), ("", "gw-3"),
                                      ("", "gw-9")}
            assert inf.index[("", "gw-1")].metadata.labels == {"x": "y"}
            assert inf.resource_version not in (None, "1", listed_at)
            # And it watches again from the new listing.
            await asyncio.to_thread(cluster.kubectl, "delete", "coredevice", "gw-2")
            await _until(lambda: ("", "gw-2") not in inf.index, "gw-2 deleted")
            assert seen.take() == [("DELETED", "gw-2")]

    asyncio.run(scenario())


class FakeBroker:
    """Records what the controller knew when it connected."""

    def __init__(self, c: operator.Controller) -> None:
        self.controller = c
        self.devices_at_connect: int | None = None
        self.connected = False

    def connect(self) -> None:
        self.devices_at_connect = len(self.controller.devices)
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def publish_desired(self, docs: list[tuple[str, bytes]]) -> list[str]:
        return [thing for thing, _ in docs]

    def fetch_published(self, things: list[str]) -> dict[str, str]:
        return {}


def test_the_first_pass_waits_for_the_initial_listing(cluster: Cluster) -> None:
    n = 30
    cluster.apply(*(_device(f"gw-{i:02}") for i in range(n)))
    c = operator.Controller(operator.Settings(
        broker=broker.BrokerSettings("mqtt://127.0.0.1:1"), kubeconfig=cluster.kubeconfig))
    fake = FakeBroker(c)
    c.broker = fake  # type: ignore[assignment]

    async def scenario() -> None:
        kube.load_config(cluster.kubeconfig)
        c.kube = kube.Kube()
        c.loop = asyncio.get_running_loop()
        c.lead_task = asyncio.create_task(c._lead())
        # kopf's indexes are complete (its first event) but the informer has not listed:
        # the controller observes nothing and does not become active.
        c.poke({}, "namespaces", None, {"metadata": {"name": "default"}})
        assert c.indexed.is_set()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(c.lead_task), 0.5)
        assert fake.devices_at_connect is None and not c.leading
        c.tasks.append(asyncio.create_task(c.informer.run()))
        await _until(lambda: c.leading, "the controller to become active")
        assert fake.devices_at_connect == n  # every device was known before it connected
        await _until(lambda: c.passes >= 1, "the first pass")
        await c.stop()

    asyncio.run(scenario())
