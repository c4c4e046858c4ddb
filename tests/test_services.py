"""The real services the suite depends on answer as the tests expect."""

from __future__ import annotations

import threading

import docker
import paho.mqtt.client as mqtt

from tests.support.mosquitto import Mosquitto


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


def _retained(broker: Mosquitto, topic: str, cn: str | None = None) -> list[bytes]:
    """Subscribe, and collect what arrives within a short window (retained messages)."""
    got: list[bytes] = []
    arrived = threading.Event()
    client = _client(broker, cn)

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        arrived.set()

    client.on_message = on_message
    client.subscribe(topic, qos=1)
    arrived.wait(1.5)
    client.loop_stop()
    client.disconnect()
    return got


def test_a_plain_broker_keeps_retained_messages() -> None:
    with Mosquitto() as broker:
        publisher = _client(broker)
        publisher.publish("hedgerow/things/gw-1/desired", b"doc", qos=1,
                          retain=True).wait_for_publish(5)
        publisher.loop_stop()
        publisher.disconnect()
        assert _retained(broker, "hedgerow/things/gw-1/desired") == [b"doc"]


def test_the_tls_broker_lets_a_device_read_only_its_own_desired_topic() -> None:
    with Mosquitto(tls=True) as broker:
        controller = _client(broker, "hedgerow_controller")
        for thing in ("gw-1", "gw-2"):
            controller.publish(f"hedgerow/things/{thing}/desired", thing.encode(), qos=1,
                               retain=True).wait_for_publish(5)
        controller.loop_stop()
        controller.disconnect()
        assert _retained(broker, "hedgerow/things/+/desired", cn="gw-1") == [b"gw-1"]
