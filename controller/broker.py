"""The controller's connection to the cloud MQTT broker (paho-mqtt v2 API).

Publishes desired documents retained at QoS 1 and hands status reports to a callback.
The session is persistent (never a clean start, one hour expiry), so QoS 1
reports sent while the controller restarts are delivered when it is back.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt import packettypes
from paho.mqtt import properties as mqtt_properties
from paho.mqtt.enums import CallbackAPIVersion

logger = logging.getLogger(__name__)

DESIRED_TOPIC: Final = "hedgerow/things/{thing}/desired"
STATUS_TOPIC: Final = "hedgerow/things/+/status"


def desired_topic(thing: str) -> str:
    return DESIRED_TOPIC.format(thing=thing)


def thing_of_status_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["hedgerow", "things"] and parts[3] == "status":
        return parts[2]
    return None


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    url: str  # mqtt://host:port or mqtts://host:port
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    client_id: str = "hedgerow_controller"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return urllib.parse.urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or (8883 if self.tls else 1883)


Report = Callable[[str, bytes], None]


class Broker:
    def __init__(self, settings: BrokerSettings, on_report: Report) -> None:
        scheme = urllib.parse.urlsplit(settings.url).scheme
        if scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"--broker must be mqtt:// or mqtts:// (got {scheme!r})")
        self.settings = settings
        self._on_report = on_report
        self._connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=mqtt.MQTTv5)
        if settings.tls:
            client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # Many publishes in flight at once: a rollout step may notify thousands of devices.
        client.max_inflight_messages_set(512)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._connected_cb
        client.on_disconnect = self._disconnected_cb
        client.on_message = self._message_cb
        self.client = client

    def connect(self, timeout: float = 30.0) -> None:
        props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
            packettypes.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=30,
                                  # Never clean: mosquitto does not persist a session
                                  # whose last CONNECT had clean start, so reports sent
                                  # while the broker restarted would be lost to us.
                                  clean_start=False,
                                  properties=props)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ConnectionError(f"no connection to the broker at {self.settings.host}:"
                                  f"{self.settings.port} within {timeout:.0f} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_desired(self, items: Sequence[tuple[str, bytes]],
                        timeout: float = 30.0) -> list[str]:
        """Publish retained at QoS 1; return the things whose PUBACK arrived in time."""
        infos = [(thing, self.client.publish(desired_topic(thing), payload, qos=1, retain=True))
                 for thing, payload in items]
        deadline = time.monotonic() + timeout
        done = []
        for thing, info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                logger.warning("publishing to %s failed: %s", thing, exc)
                continue
            if info.is_published():
                done.append(thing)
        return done

    def _connected_cb(self, client: mqtt.Client, userdata: Any, flags: Any,
                      reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection: %s", reason)
            return
        client.subscribe(STATUS_TOPIC, qos=1)
        logger.info("connected to the broker at %s:%s", self.settings.host, self.settings.port)
        self._connected.set()

    def _disconnected_cb(self, client: mqtt.Client, userdata: Any, flags: Any,
                         reason: Any, properties: Any) -> None:
        self._connected.clear()
        logger.warning("disconnected from the broker (%s); reconnecting", reason)

    def _message_cb(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        thing = thing_of_status_topic(message.topic)
        if thing is not None:
            self._on_report(thing, bytes(message.payload))
