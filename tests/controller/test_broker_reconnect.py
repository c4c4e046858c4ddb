"""The controller's broker client reconnects on the one jittered, capped backoff
(hedgerow.core.backoff): a broker that restarts is rejoined within the first steps, and
reports sent meanwhile (persistent session) still arrive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hedgerow.controller import broker as controller_broker
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for


def _next_suback(client: controller_broker.Broker) -> threading.Event:
    """Set once the broker acknowledges the client's next SUBSCRIBE. It subscribes in
    its on-connect callback, after connect() may have returned: a report published
    before the broker has the subscription has no subscriber and is dropped (seen on a
    loaded machine: 200 published, fewer received, the wait for them timed out)."""
    done = threading.Event()
    inner = client.client.on_subscribe

    def hook(*args: object) -> None:
        inner(*args)
        done.set()

    client.client.on_subscribe = hook
    return done


def test_the_controller_rejoins_a_restarted_broker(broker: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_report(thing: str, payload: bytes, ack: Callable[[], None]) -> None:
        got.append((thing, payload))
        ack()
        arrived.set()

    client = controller_broker.Broker(controller_broker.BrokerSettings(broker.url),
                                      on_report)
    subscribed = _next_suback(client)
    client.connect(10)
    try:
        assert subscribed.wait(30), "the controller did not subscribe"
        port = broker.port
        resubscribed = _next_suback(client)
        broker.stop()
        wait_for(lambda: not client._connected.is_set(), 10, "the client to see it gone")
        time.sleep(1.5)  # a few failed reconnects: the backoff grows, jittered
        broker.start(port=port)
        began = time.monotonic()  # the broker's own start-up is not the client's backoff
        # Attempts so far waited 0.5-1, 1-2, (2-4) s: the next one comes within 4 s.
        assert client._connected.wait(8), "no reconnect within the backoff's steps"
        assert time.monotonic() - began < 8
        assert resubscribed.wait(30), "the controller did not subscribe again"
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rc-dev",
                             protocol=mqtt.MQTTv5)
        device.connect("127.0.0.1", port)
        device.loop_start()
        device.publish("hedgerow/things/rc-dev/status", b"{}", qos=1).wait_for_publish(5)
        assert arrived.wait(10)
        assert got == [("rc-dev", b"{}")]
        device.loop_stop()
        device.disconnect()
    finally:
        client.close()


def _flow_control_broker(generated: bool) -> Mosquitto:
    """A plain listener with the flow control `hedgerow broker config` writes (or
    mosquitto's defaults)."""
    from hedgerow.core import broker as core_broker

    text = core_broker.render_mosquitto_config(core_broker.MosquittoSettings(
        cafile="c", certfile="c", keyfile="k", acl_file="a"))
    flow = [line for line in text.splitlines()
            if line.startswith(("max_inflight_messages", "max_queued_messages"))]
    assert len(flow) == 2
    return Mosquitto(config=lambda port: "\n".join(
        [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
         *(flow if generated else [])]) + "\n")


def _reports_without_acks(generated: bool, expected: int) -> int:
    """Publish 200 reports; how many reach the controller's client before it acks any
    (after it acks those, all 200 must arrive)."""
    held: list[Callable[[], None]] = []
    with _flow_control_broker(generated) as b:
        client = controller_broker.Broker(controller_broker.BrokerSettings(b.url),
                                          lambda thing, payload, ack: held.append(ack))
        subscribed = _next_suback(client)
        client.connect(10)
        assert subscribed.wait(30), "the controller did not subscribe"
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-flow",
                             protocol=mqtt.MQTTv5)
        device.connect("127.0.0.1", b.port)
        device.loop_start()
        try:
            for i in range(200):
                device.publish(f"hedgerow/things/dev-{i}/status", b"{}", qos=1)
            wait_for(lambda: len(held) >= expected, 20, f"{expected} reports without an ack")
            time.sleep(0.5)  # a window that is full stays full: nothing more arrives
            window = len(held)
            for ack in list(held):  # acknowledged: the rest flows
                ack()
            wait_for(lambda: len(held) == 200, 20, "every report")
        finally:
            device.loop_stop()
            device.disconnect()
            client.close()
    return window


def test_unacknowledged_reports_keep_flowing_with_the_generated_broker_config() -> None:
    """The controller acknowledges a report only once it is written to the API server;
    meanwhile the broker must keep sending the others (mosquitto's default in-flight
    window of 20 would throttle the whole fleet's reports to 20 per status write)."""
    assert _reports_without_acks(generated=True, expected=200) == 200
    assert _reports_without_acks(generated=False, expected=20) == 20  # why it is set
