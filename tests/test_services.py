"""The real services the suite depends on answer as the tests expect."""

from __future__ import annotations

import threading

import docker
import paho.mqtt.client as mqtt

from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for


def test_the_local_image_runs_busybox(docker_client: docker.DockerClient, test_image: str) -> None:
    output = docker_client.containers.run(
        test_image, ["sh", "-c", "echo ready; httpd --help 2>&1 | head -1"], remove=True,
    )
    assert output.decode().startswith("ready\n")
    assert "BusyBox" in output.decode()
    image = docker_client.images.get(test_image)
    assert image.labels.get("hedgerow.dev/busybox")


def _client(broker: Mosquitto, cn: str | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if cn is not None:
        cert, key = broker.client_cert(cn)
        client.tls_set(ca_certs=str(broker.ca), certfile=str(cert), keyfile=str(key))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _retained(broker: Mosquitto, topic: str, cn: str | None = None, *,
              barrier: str, barrier_cn: str | None = None) -> list[bytes]:
    """Subscribe, and collect every retained message the broker sends for it.

    Not "what arrives within a moment" (a loaded machine takes longer than any moment):
    mosquitto queues the retained messages when it handles the SUBSCRIBE, so a live
    message published to ``barrier`` (a topic the subscription reads; ``barrier_cn`` may
    write it) after the SUBACK arrives after all of them.
    """
    got: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    client = _client(broker, cn)

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg)

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(30), "no SUBACK"
    writer = _client(broker, barrier_cn)
    writer.publish(barrier, b"barrier", qos=1).wait_for_publish(30)
    writer.loop_stop()
    writer.disconnect()
    wait_for(lambda: any(not m.retain and m.payload == b"barrier" for m in got), 30,
             "the barrier message")
    client.loop_stop()
    client.disconnect()
    return [bytes(m.payload) for m in got if m.retain]


def test_a_plain_broker_keeps_retained_messages() -> None:
    with Mosquitto() as broker:
        publisher = _client(broker)
        publisher.publish("hedgerow/things/gw-1/desired", b"doc", qos=1,
                          retain=True).wait_for_publish(5)
        publisher.loop_stop()
        publisher.disconnect()
        topic = "hedgerow/things/gw-1/desired"
        assert _retained(broker, topic, barrier=topic) == [b"doc"]


def test_the_tls_broker_lets_a_device_read_only_its_own_desired_topic() -> None:
    with Mosquitto(tls=True) as broker:
        controller = _client(broker, "hedgerow_controller")
        for thing in ("gw-1", "gw-2"):
            controller.publish(f"hedgerow/things/{thing}/desired", thing.encode(), qos=1,
                               retain=True).wait_for_publish(5)
        controller.loop_stop()
        controller.disconnect()
        assert _retained(broker, "hedgerow/things/+/desired", cn="gw-1",
                         barrier="hedgerow/things/gw-1/desired",
                         barrier_cn="hedgerow_controller") == [b"gw-1"]
