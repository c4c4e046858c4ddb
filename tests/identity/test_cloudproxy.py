"""Components' cloud messages on the connector's one MQTT 5 session (cloudproxy.py),
against a real mosquitto with TLS and the ACL `hedgerow broker config` renders; a
cloud-side paho client (the operator's backend) on the other end."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path

import pytest

from hedgerow.agent import cloudproxy, connector
from hedgerow.agent.layout import Layout
from hedgerow.core import cloudmessage
from tests.identity.conftest import Fleet, MqttClient, wait_for

pytestmark = pytest.mark.mqtt

Message = cloudmessage.CloudMessage


class Inbox:
    """What one component's subscription received (delivered on the connector thread)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages]


def proxy_for(fleet: Fleet, thing: str, **options: object) -> cloudproxy.CloudProxy:
    return cloudproxy.CloudProxy(Layout(fleet.root(thing)).cloud_spool,
                                 **options)  # type: ignore[arg-type]


def online(fleet: Fleet, thing: str, proxy: cloudproxy.CloudProxy | None = None,
           ) -> tuple[connector.Connector, cloudproxy.CloudProxy]:
    proxy = proxy or proxy_for(fleet, thing)
    installed = (fleet.root(thing) / "identity" / "connection.json").exists()
    conn = fleet.connector(_ident(fleet, thing) if installed else fleet.device(thing),
                           proxy=proxy)
    assert conn.wait_connected(20), conn.stats.last_error
    wait_for(lambda: proxy.online, what="the proxy attached")
    return conn, proxy


def _ident(fleet: Fleet, thing: str):  # type: ignore[no-untyped-def]
    from hedgerow.agent import identity
    return identity.load(fleet.root(thing))


def sent(future: concurrent.futures.Future[cloudproxy.Outcome]) -> cloudproxy.Outcome:
    return future.result(timeout=20)


def cloud_got(app: MqttClient, topic: str) -> list[bytes]:
    return app.on(topic)


def test_publish_with_mqtt5_properties_reaches_the_cloud(fleet: Fleet) -> None:
    app = fleet.cloud_app()
    app.subscribe("devices/cp-a/#")
    _, proxy = online(fleet, "cp-a")
    message = Message(topic="devices/cp-a/telemetry", payload=b'{"t": 21.5}', qos=1,
                      user_properties=[("unit", "celsius"), ("unit", "kelvin")],
                      message_expiry_s=300, payload_format=1,
                      content_type="application/json", correlation_data=b"\x01\x02",
                      response_topic="devices/cp-a/replies")
    assert sent(proxy.publish(message)) is cloudproxy.Outcome.SENT
    assert sent(proxy.publish(Message(topic="devices/cp-a/q0", payload=b"zero"))) is \
        cloudproxy.Outcome.SENT
    wait_for(lambda: app.on("devices/cp-a/telemetry"), what="the cloud side's copy")
    got = next(m for m in app.messages if m.topic == "devices/cp-a/telemetry")
    props = got.properties
    assert (bytes(got.payload), got.qos) == (b'{"t": 21.5}', 1)
    assert props.UserProperty == [("unit", "celsius"), ("unit", "kelvin")]  # order, dups
    assert 290 <= props.MessageExpiryInterval <= 300
    assert props.PayloadFormatIndicator == 1
    assert props.ContentType == "application/json"
    assert props.CorrelationData == b"\x01\x02"
    assert props.ResponseTopic == "devices/cp-a/replies"
    wait_for(lambda: app.on("devices/cp-a/q0") == [b"zero"], what="the QoS 0 message")
    assert proxy.queued() == 0


def test_a_publish_the_broker_refuses_is_an_error_with_the_reason(fleet: Fleet) -> None:
    """A component (through the proxy) writes into another device's namespace and into
    Hedgerow's own topics: the broker's PUBACK 0x87 comes back as the error, not silence,
    and the session goes on."""
    app = fleet.cloud_app()
    app.subscribe("devices/#")
    _, proxy = online(fleet, "cp-a")
    for topic in ("devices/cp-b/commands", "hedgerow/things/cp-b/desired",
                  "hedgerow/things/cp-a/desired"):
        with pytest.raises(cloudproxy.RefusedError) as caught:
            sent(proxy.publish(Message(topic=topic, payload=b"evil", qos=1)))
        assert caught.value.code == 0x87
        assert f"refused the publish to {topic!r}: Not authorized (reason code 0x87)" \
            in str(caught.value)
    assert proxy.stats.refused == 3
    assert sent(proxy.publish(Message(topic="devices/cp-a/ok", payload=b"fine", qos=1))) \
        is cloudproxy.Outcome.SENT
    wait_for(lambda: app.on("devices/cp-a/ok"), what="the legitimate message")
    assert app.on("devices/cp-b/commands") == []


def test_invalid_requests_are_refused_before_anything_is_queued(fleet: Fleet) -> None:
    proxy = proxy_for(fleet, "cp-a")
    for bad in (Message(topic="devices/+/x"), Message(topic=""),
                Message(topic="a", payload=b"x" * (cloudmessage.MAX_PAYLOAD_BYTES + 1))):
        with pytest.raises(cloudproxy.InvalidMessageError):
            proxy.publish(bad)
    with pytest.raises(cloudproxy.InvalidMessageError):
        proxy.subscribe("a/#/b", 0, Inbox())
    assert proxy.queued() == 0


def test_subscriptions_are_shared_refcounted_and_routed_once(fleet: Fleet) -> None:
    app = fleet.cloud_app()
    _, proxy = online(fleet, "cp-a")
    one, two, narrow = Inbox(), Inbox(), Inbox()
    s1 = proxy.subscribe("devices/cp-a/#", 1, one)
    s2 = proxy.subscribe("devices/cp-a/#", 0, two)
    s3 = proxy.subscribe("devices/cp-a/+/cmd", 1, narrow)
    for sub in (s1, s2, s3):
        assert sub.ready.result(timeout=20) in (0, 1)
    app.publish("devices/cp-a/light/cmd", b"on")
    wait_for(lambda: one.payloads() and two.payloads() and narrow.payloads(),
             what="all three subscribers")
    app.publish("devices/cp-a/marker", b"m")  # after "on": everything before has arrived
    wait_for(lambda: b"m" in one.payloads(), what="the marker")
    # Overlapping filters: each subscriber gets the message exactly once.
    assert one.payloads() == [b"on", b"m"] and two.payloads() == [b"on", b"m"]
    assert narrow.payloads() == [b"on"]
    got = narrow.messages[0]
    assert (got.topic, got.retain) == ("devices/cp-a/light/cmd", False)

    proxy.unsubscribe(s1)  # two still holds the filter
    app.publish("devices/cp-a/light/cmd", b"off")
    wait_for(lambda: b"off" in two.payloads(), what="the remaining subscriber")
    assert b"off" not in one.payloads()
    proxy.unsubscribe(s2)  # the last one: UNSUBSCRIBE goes to the broker
    proxy.unsubscribe(s3)
    marker = Inbox()
    proxy.subscribe("devices/cp-a/end", 1, marker).ready.result(timeout=20)
    before = proxy.stats.unmatched
    app.publish("devices/cp-a/light/cmd", b"gone")
    app.publish("devices/cp-a/end", b"end")
    wait_for(lambda: marker.payloads() == [b"end"], what="the end marker")
    assert proxy.stats.unmatched == before  # the broker sent nothing for the old filters


def test_cloud_to_component_with_properties_and_only_its_own_namespace(fleet: Fleet) -> None:
    app = fleet.cloud_app()
    _, proxy = online(fleet, "cp-a")
    inbox = Inbox()
    proxy.subscribe("devices/cp-a/in", 1, inbox).ready.result(timeout=20)
    from paho.mqtt import packettypes
    from paho.mqtt import properties as mqtt_properties
    props = mqtt_properties.Properties(packettypes.PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("k", "v")]
    props.CorrelationData = b"c1"
    props.ContentType = "text/plain"
    props.ResponseTopic = "devices/cp-a/out"
    app.client.publish("devices/cp-a/in", b"hello", qos=1, properties=props)
    wait_for(lambda: inbox.messages, what="the cloud's message")
    got = inbox.messages[0]
    assert (got.payload, got.user_properties, got.correlation_data, got.content_type,
            got.response_topic) == (b"hello", [("k", "v")], b"c1", "text/plain",
                                    "devices/cp-a/out")
    # Another device's namespace: mosquitto 2.0 grants the SUBSCRIBE but its read ACL
    # lets nothing through (brokers that answer SUBACK 0x87 fail `ready` instead).
    other, mine = Inbox(), Inbox()
    proxy.subscribe("devices/cp-b/#", 1, other).ready.result(timeout=20)
    proxy.subscribe("devices/cp-a/marker", 1, mine).ready.result(timeout=20)
    app.publish("devices/cp-b/secret", b"not for cp-a")
    app.publish("devices/cp-a/marker", b"m")
    wait_for(lambda: mine.payloads() == [b"m"], what="the marker")
    assert other.payloads() == []


def test_offline_publishes_are_spooled_and_arrive_in_order_after_the_broker_returns(
        fleet: Fleet) -> None:
    """The broker process stops; a component keeps publishing (answered QUEUED, each on
    disk with narrow permissions); the agent even restarts meanwhile; the broker comes
    back on its port: every message arrives, in order, and the spool empties."""
    app = fleet.cloud_app()
    app.subscribe("devices/cp-a/#")  # persistent session: it keeps them for the app too
    conn, proxy = online(fleet, "cp-a")
    port = fleet.broker.port
    fleet.broker.stop()
    wait_for(lambda: not proxy.online, what="the proxy to notice")
    first = [proxy.publish(Message(topic=f"devices/cp-a/seq/{i}", payload=str(i).encode(),
                                   qos=1)) for i in range(10)]
    assert [sent(f) for f in first] == [cloudproxy.Outcome.QUEUED] * 10
    spool = Layout(fleet.root("cp-a")).cloud_spool
    assert spool.stat().st_mode & 0o777 == 0o700
    files = sorted(spool.iterdir())
    assert len(files) == 10 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    # The agent restarts while offline: a new proxy finds the spool as it was left.
    conn.stop()
    proxy2 = proxy_for(fleet, "cp-a")
    assert proxy2.queued() == 10
    more = [proxy2.publish(Message(topic=f"devices/cp-a/seq/{i}", payload=str(i).encode(),
                                   qos=1)) for i in range(10, 15)]
    assert {sent(f) for f in more} == {cloudproxy.Outcome.QUEUED}
    # One the broker will refuse: answered QUEUED now, it cannot fail its caller later.
    assert sent(proxy2.publish(Message(topic="devices/cp-b/x", payload=b"no", qos=1))) \
        is cloudproxy.Outcome.QUEUED
    fleet.connector(_ident(fleet, "cp-a"), proxy=proxy2)
    fleet.broker.start(port=port)
    expected = [str(i).encode() for i in range(15)]

    def arrived() -> list[bytes]:
        with app.lock:
            return [bytes(m.payload) for m in app.messages
                    if m.topic.startswith("devices/cp-a/seq/")]

    wait_for(lambda: arrived() == expected, timeout=60, what="15 messages in order")
    wait_for(lambda: proxy2.queued() == 0 and not list(spool.iterdir()),
             what="the spool to empty")  # QoS 1: each file went with its PUBACK
    assert proxy2.stats.refused == 1  # logged and counted, and off the spool
    assert "devices/cp-b/x" in proxy2.stats.last_refusal


def test_subscriptions_are_restored_when_the_broker_forgot_the_session(fleet: Fleet) -> None:
    app = fleet.cloud_app()
    conn, proxy = online(fleet, "cp-a")
    inbox = Inbox()
    proxy.subscribe("devices/cp-a/cmd/#", 1, inbox).ready.result(timeout=20)
    port = fleet.broker.port
    fleet.broker.stop()
    for db in (fleet.broker_dir / "data").iterdir():  # no session survives
        os.unlink(db)
    fleet.broker.start(port=port)
    wait_for(lambda: conn.stats.connects >= 2, what="the reconnect")
    assert app.connected.wait(20)

    def delivered() -> bool:  # the re-SUBSCRIBE races the first probes: publish until
        app.publish("devices/cp-a/cmd/probe", b"p")
        return bool(inbox.payloads())

    wait_for(delivered, what="a message on the restored subscription", interval=0.2)


def test_a_previous_runs_subscriptions_are_dropped(fleet: Fleet) -> None:
    """The session is persistent: what the last agent run subscribed stays on the broker
    until someone unsubscribes. The next run does, for what nobody wants any more."""
    app = fleet.cloud_app()
    conn, proxy = online(fleet, "cp-a")
    old = Inbox()
    proxy.subscribe("devices/cp-a/old", 1, old).ready.result(timeout=20)
    wait_for(lambda: (fleet.root("cp-a") / "state" / "cloud-subscriptions.json").exists(),
             what="the recorded filters")
    conn.stop()  # DISCONNECT: the broker keeps the session and its subscription
    proxy2 = proxy_for(fleet, "cp-a")
    marker = Inbox()
    proxy2.subscribe("devices/cp-a/marker", 1, marker)
    online(fleet, "cp-a", proxy2)
    marker_sub = proxy2.subscribe("devices/cp-a/marker2", 1, marker)
    marker_sub.ready.result(timeout=20)  # after the UNSUBSCRIBE (sent first, same turn)
    app.publish("devices/cp-a/old", b"stale")
    app.publish("devices/cp-a/marker2", b"m")
    wait_for(lambda: marker.payloads() == [b"m"], what="the marker")
    assert proxy2.stats.unmatched == 0  # the broker sent nothing for the old filter


@pytest.mark.parametrize("policy", list(cloudmessage.SpoolPolicy))
def test_a_full_spool_follows_its_policy(fleet: Fleet, tmp_path: Path,
                                         policy: cloudmessage.SpoolPolicy) -> None:
    app = fleet.cloud_app()
    app.subscribe("devices/cp-a/#")
    proxy = proxy_for(fleet, "cp-a", policy=policy, max_messages=3, max_bytes=1 << 20)
    futures = [proxy.publish(Message(topic="devices/cp-a/n", payload=b"%d" % i, qos=1))
               for i in range(3)]
    if policy is cloudmessage.SpoolPolicy.REFUSE_NEW:
        with pytest.raises(cloudproxy.SpoolFullError, match="policy is refuse-new"):
            proxy.publish(Message(topic="devices/cp-a/n", payload=b"3", qos=1))
        expected = [b"0", b"1", b"2"]
    else:
        for i in (3, 4):
            proxy.publish(Message(topic="devices/cp-a/n", payload=b"%d" % i, qos=1))
        assert proxy.stats.dropped == 2
        expected = [b"2", b"3", b"4"]
    assert [sent(f) for f in futures] == [cloudproxy.Outcome.QUEUED] * 3
    assert len(list(Layout(fleet.root("cp-a")).cloud_spool.iterdir())) == 3
    online(fleet, "cp-a", proxy)
    wait_for(lambda: app.on("devices/cp-a/n") == expected, what=f"{expected}")
