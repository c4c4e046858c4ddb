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


def test_the_controller_rejoins_a_restarted_broker(broker: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_report(thing: str, payload: bytes, ack: Callable[[], None]) -> None:
        got.append((thing, payload))
        ack()
        arrived.set()

    client = controller_broker.Broker(controller_broker.BrokerSettings(broker.url),
                                      on_report)
    client.connect(10)
    try:
        port = broker.port
        broker.stop()
        wait_for(lambda: not client._connected.is_set(), 10, "the client to see it gone")
        time.sleep(1.5)  # a few failed reconnects: the backoff grows, jittered
        began = time.monotonic()
        broker.start(port=port)
        # Attempts so far waited 0.5-1, 1-2, (2-4) s: the next one comes within 4 s.
        assert client._connected.wait(8), "no reconnect within the backoff's steps"
        assert time.monotonic() - began < 8
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
