"""The cloud connector against a real mosquitto with TLS and the generated ACL."""

from __future__ import annotations

import datetime
import json

import pytest

from hedgerow import files
from hedgerow.agent.layout import Layout
from hedgerow.controller import pki
from hedgerow.core import component, documents
from hedgerow.core import identity as core_identity
from tests.identity.conftest import Fleet, wait_for

pytestmark = pytest.mark.mqtt


def desired(thing: str, version: str = "1.0.0") -> documents.DesiredState:
    comp = documents.ResolvedComponent(
        name="com.example.Hello", version=version,
        lifecycle=component.Lifecycle(run=component.Step(script="sleep 60")))
    return documents.render_desired_state(thing, [], [comp])


def status(thing: str, sequence: int = 1,
           health: documents.Health = documents.Health.HEALTHY) -> documents.StatusReport:
    return documents.StatusReport(
        thing=thing, sequence=sequence, time=datetime.datetime.now(datetime.UTC),
        agent_version="0.1.0", platform=documents.PlatformInfo(os="linux", arch="amd64"),
        health=health)


def write_status(root: object, report: documents.StatusReport) -> None:
    layout = Layout(root)  # type: ignore[arg-type]
    layout.state.mkdir(parents=True, exist_ok=True)
    files.write_atomic(layout.status_file, documents.render_bytes(report))


def topic(thing: str, kind: str) -> str:
    return f"hedgerow/things/{thing}/{kind}"


def test_valid_desired_document_is_written_atomically(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()
    doc = desired("dev-a")
    controller.publish(topic("dev-a", "desired"), fleet.seal(doc), retain=True)
    conn = fleet.connector(dev)
    target = Layout(fleet.root("dev-a")).desired_file
    wait_for(lambda: target.exists(), what="desired.json")
    assert documents.DesiredState.model_validate_json(target.read_bytes()) == doc
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["desired.json"]  # no temp files
    # A new revision replaces it; the same one again is not rewritten.
    doc2 = desired("dev-a", "1.1.0")
    controller.publish(topic("dev-a", "desired"), fleet.seal(doc2), retain=True)
    wait_for(lambda: conn.stats.written == 2, what="second document")
    assert documents.DesiredState.model_validate_json(target.read_bytes()) == doc2


def test_tampered_and_foreign_documents_are_rejected(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()
    good = documents.render_bytes(desired("dev-a"))
    controller.publish(topic("dev-a", "desired"), fleet.seal(good), retain=True)
    conn = fleet.connector(dev)
    target = Layout(fleet.root("dev-a")).desired_file
    wait_for(lambda: conn.stats.written == 1, what="the good document")

    tampered = json.loads(good)
    tampered["components"][0]["version"] = "6.6.6"  # revision no longer matches
    foreign = fleet.seal(desired("dev-b", "2.0.0"))  # signed, but for another thing
    for n, payload in enumerate([fleet.seal(json.dumps(tampered).encode()), foreign,
                                 b"{not json"], 1):
        controller.publish(topic("dev-a", "desired"), payload, retain=True)
        wait_for(lambda n=n: conn.stats.rejected == n,  # type: ignore[misc]
                 what=f"rejection {n}")
        assert target.read_bytes() == good
    record = json.loads((fleet.root("dev-a") / "state" / "connector.json").read_text())
    assert record["lastRejection"]["reason"]  # the last one: not JSON
    assert conn.stats.written == 1


def test_status_published_on_change_not_on_repeats(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()
    conn = fleet.connector(dev, heartbeat_s=3600)
    root = fleet.root("dev-a")
    write_status(root, status("dev-a", 1))
    wait_for(lambda: controller.on(topic("dev-a", "status")), what="first report")
    # The agent rewrites the file every pass; same substance → no publish.
    write_status(root, status("dev-a", 2))
    wait_for(lambda: conn._latest is not None and conn._latest.sequence == 2,
             what="connector saw the repeat")
    write_status(root, status("dev-a", 3, documents.Health.UNHEALTHY))
    wait_for(lambda: len(controller.on(topic("dev-a", "status"))) == 2, what="changed report")
    reports = [documents.StatusReport.model_validate_json(p)
               for p in controller.on(topic("dev-a", "status"))]
    assert [r.health for r in reports] == [documents.Health.HEALTHY,
                                           documents.Health.UNHEALTHY]
    assert reports[0].sequence < reports[1].sequence
    assert reports[1].sequence > 1_000_000_000_000  # wire sequence: grows across restarts
    assert reports[0].certificate_days_left in (core_identity.DEVICE_CERT_DAYS - 1,
                                                core_identity.DEVICE_CERT_DAYS)
    # The counter moves after paho hands the message over, which can be after the
    # broker already delivered it: wait for it rather than race it.
    wait_for(lambda: conn.stats.published == 2, 20, "the connector to count two publishes")


def test_status_heartbeat(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()
    write_status(fleet.root("dev-a"), status("dev-a", 1))
    fleet.connector(dev, heartbeat_s=0.3)
    wait_for(lambda: len(controller.on(topic("dev-a", "status"))) >= 3, what="heartbeats")
    reports = [documents.StatusReport.model_validate_json(p)
               for p in controller.on(topic("dev-a", "status"))]
    assert sorted({r.sequence for r in reports}) == [r.sequence for r in reports]
    assert all(r.health is documents.Health.HEALTHY for r in reports)


def test_offline_keeps_only_the_latest_and_sends_it_on_reconnect(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()
    desired_doc = documents.render_bytes(desired("dev-a"))
    controller.publish(topic("dev-a", "desired"), fleet.seal(desired_doc), retain=True)
    conn = fleet.connector(dev, heartbeat_s=3600)
    root = fleet.root("dev-a")
    write_status(root, status("dev-a", 1))
    wait_for(lambda: len(controller.on(topic("dev-a", "status"))) == 1, what="first report")
    # QoS 1 is at-least-once: a report whose PUBACK had not arrived when the broker went
    # down is sent again (DUP) after the reconnect. Wait for it, so only the offline
    # reports are in question below.
    wait_for(lambda: conn.stats.published == 1, what="PUBACK of the first report")

    port = fleet.broker.port
    fleet.broker.stop()
    wait_for(lambda: not conn.connected, what="connector notices the outage")
    for seq, health in ((2, documents.Health.UNHEALTHY), (3, documents.Health.UNKNOWN),
                        (4, documents.Health.UNHEALTHY)):
        report = status("dev-a", seq, health)
        report = report.model_copy(update={"applied_revision": f"r{seq}"})
        write_status(root, report)
        wait_for(lambda seq=seq: (conn._latest is not None  # type: ignore[misc]
                                  and conn._latest.sequence == seq),
                 what=f"connector saw report {seq}")
    assert Layout(root).desired_file.read_bytes() == desired_doc  # kept while offline
    published = conn.stats.published

    fleet.broker.start(port=port)
    wait_for(lambda: len(controller.on(topic("dev-a", "status"))) >= 2, timeout=20,
             what="the report after reconnect")
    wait_for(lambda: conn.stats.published == published + 1, what="PUBACK")
    reports = [documents.StatusReport.model_validate_json(p)
               for p in controller.on(topic("dev-a", "status"))]
    assert [r.applied_revision for r in reports] == [None, "r4"]
    assert conn.stats.connects == 2


def test_a_device_reaches_only_its_own_topics(fleet: Fleet) -> None:
    dev_a, dev_b = fleet.device("dev-a"), fleet.device("dev-b")
    controller = fleet.controller()
    controller.publish(topic("dev-a", "desired"), fleet.seal(desired("dev-a")), retain=True)
    controller.publish(topic("dev-b", "desired"), fleet.seal(desired("dev-b")), retain=True)
    # dev-a's certificate, trying everything, even with dev-b's client id.
    spy = fleet.client(dev_a, client_id="dev-b")
    for t in (topic("dev-b", "desired"), "hedgerow/things/+/desired", "#"):
        spy.subscribe(t)
    spy.publish(topic("dev-b", "status"), documents.render_bytes(status("dev-b", 99)))
    spy.publish(topic("dev-b", "desired"), b"forged", retain=True)
    spy.publish(topic("dev-a", "status"), documents.render_bytes(status("dev-a", 7)))
    # The marker (dev-a's own status) arrives; the forged dev-b status, sent before it on
    # the same connection, never does.
    wait_for(lambda: controller.on(topic("dev-a", "status")), what="dev-a's own report")
    assert controller.on(topic("dev-b", "status")) == []
    wait_for(lambda: spy.on(topic("dev-a", "desired")), what="dev-a's own retained doc")
    assert {m.topic for m in spy.messages} == {topic("dev-a", "desired")}
    # dev-b still gets its real document, not the forgery, through its own connector.
    conn_b = fleet.connector(dev_b)
    wait_for(lambda: conn_b.stats.written == 1, what="dev-b's document")
    assert conn_b.stats.rejected == 0


def test_client_id_cannot_take_over_another_session(fleet: Fleet) -> None:
    dev_a, dev_b = fleet.device("dev-a"), fleet.device("dev-b")
    controller = fleet.controller()
    conn_b = fleet.connector(dev_b)
    assert conn_b.wait_connected(10)
    fleet.client(dev_a, client_id="dev-b")  # the broker makes its client id "dev-a"
    write_status(fleet.root("dev-b"), status("dev-b", 1))
    wait_for(lambda: controller.on(topic("dev-b", "status")), what="dev-b's report")
    assert conn_b.connected and conn_b.stats.connects == 1


def test_unknown_certificate_cannot_connect(fleet: Fleet, tmp_path: object) -> None:
    fleet.controller().publish(topic("dev-a", "desired"), fleet.seal(desired("dev-a")),
                               retain=True)
    rogue = pki.FleetCA.create(fleet.dir / "rogue-ca")
    dev = fleet.device("dev-a", ca=rogue)
    # The device trusts the real broker (the real fleet CA) but presents a rogue cert.
    (fleet.root("dev-a") / "identity" / "ca.pem").write_text(fleet.ca.pem)
    conn = fleet.connector(dev)
    wait_for(lambda: conn.stats.connect_failures >= 2, what="refused attempts")
    assert not conn.connected and conn.stats.connects == 0
    assert not Layout(fleet.root("dev-a")).desired_file.exists()
