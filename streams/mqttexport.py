"""The MQTT export: batches of a stream published to the cloud broker, QoS 1, on
`hedgerow/things/{thing}/streams/{topic}` (the device's own namespace; the broker ACL
lets only that device write there).

The stream manager keeps its own MQTT connection (client id `{thing}-streams`) with a
client certificate whose CN is the thing name; see docs/streams.md for why, and for the
production broker's `use_username_as_clientid`. paho is imported only when an MQTT export
is configured. A batch counts as delivered when the broker acknowledges it (PUBACK).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pathlib
import ssl
import threading
import urllib.parse
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hedgerow.core import streams as core
from hedgerow.streams import exports

log = logging.getLogger("hedgerow.streams")


def _identity_defaults() -> tuple[str, str, str, str, str]:
    """(thing, url, ca, cert, key) from the agent's identity folder and environment."""
    root = pathlib.Path(os.environ.get("HEDGEROW_ROOT", "/var/lib/hedgerow"))
    folder = root / "identity"
    url = ""
    with contextlib.suppress(OSError, ValueError):
        url = str(json.loads((folder / "connection.json").read_bytes()).get("brokerUrl", ""))
    thing = os.environ.get("AWS_IOT_THING_NAME", "")
    return (thing, url, str(folder / "ca.pem"), str(folder / "device.pem"),
            str(folder / "device.key"))


class MqttLink:
    def __init__(self, config: core.Config) -> None:
        thing, url, ca, cert, key = _identity_defaults()
        b = config.broker
        self.thing = thing
        parts = urllib.parse.urlsplit(b.url or url)
        if not parts.hostname or not thing:
            raise ValueError("MQTT export: no broker URL (mqttBroker.url or the identity's "
                             "connection.json) or no AWS_IOT_THING_NAME")
        tls = parts.scheme == "mqtts"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=b.client_id or f"{thing}-streams",
                                  protocol=mqtt.MQTTv311)
        if tls:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=b.ca_file or ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(b.cert_file or cert, b.key_file or key)
            self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 30)
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda c, u, f, rc, p: log.info("MQTT export: connected (%s)",
                                                                  rc)
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(parts.hostname, parts.port or (8883 if tls else 1883),
                                  keepalive=30)
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        with self._lock:
            waiting = self._pending.pop(mid, None)
        if waiting is not None:
            loop, fut = waiting
            loop.call_soon_threadsafe(_settle, fut, None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        log.warning("MQTT export: disconnected (%s)", rc)
        with self._lock:
            pending, self._pending = self._pending, {}
        for loop, fut in pending.values():  # not acknowledged: sent again, in order
            loop.call_soon_threadsafe(_settle, fut, exports.ExportError(
                "connection lost before the broker acknowledged"))

    def sender(self, spec: core.MqttExport) -> MqttSender:
        return MqttSender(self, core.render_mqtt_topic(self.thing, spec.topic))

    async def publish(self, topic: str, payload: bytes) -> None:
        if not self.client.is_connected():
            raise exports.ExportError("not connected to the cloud broker")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise exports.ExportError(f"publish failed: {mqtt.error_string(info.rc)}")
            self._pending[info.mid] = (loop, fut)
        try:
            await asyncio.wait_for(fut, 30)
        finally:
            with self._lock:
                self._pending.pop(info.mid, None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class MqttSender:
    def __init__(self, link: MqttLink, topic: str) -> None:
        self.link, self.topic = link, topic

    async def send(self, stream: str, batch: list[tuple[int, int, bytes]]) -> None:
        body = json.dumps([{"streamName": stream, "sequenceNumber": s, "ingestTime": t,
                            "payload": base64.b64encode(p).decode()} for s, t, p in batch])
        if len(body) > core.MAX_MQTT_BATCH_BYTES:
            raise exports.ExportError(f"batch of {len(body)} bytes exceeds the broker's "
                                      "packet limit; lower batchSize")
        await self.link.publish(self.topic, body.encode())
