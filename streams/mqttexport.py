"""The MQTT export: batches of a stream published to the cloud broker, QoS 1, through the
agent's cloud connection — the stream manager asks the agent over Greengrass IPC
(`PublishToIoTCore`, streams/ipcclient.py) as any component does, and the agent carries
the publish on its one MQTT session (edge-agent/cloudproxy.py).

Why not a connection of its own: the device's private key is root's alone, and the
broker takes the device's certificate CN as the client id (`use_username_as_clientid`),
so a second connection as the device would take the agent's session over.

A batch counts as delivered when the agent answers success: the broker acknowledged it
(PUBACK), or the device is offline and the publish is in the agent's persisted spool,
which sends it in order on reconnect (docs/streams.md, Exports). A refusal — the broker's
ACL (ServiceError naming reason code 0x87), no accessControl policy (UnauthorizedError) —
fails the batch: the export shows it in its status and retries with backoff.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os

from hedgerow.core import streams as core
from hedgerow.streams import exports, ipcclient

log = logging.getLogger("hedgerow.streams")

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"


class MqttLink:
    """The stream manager's one IPC connection to the agent, opened on first use and
    again after it is lost (an agent restart)."""

    def __init__(self, config: core.Config) -> None:
        self.thing = os.environ.get("AWS_IOT_THING_NAME", "")
        self.path = os.environ.get(SOCKET_ENV, "")
        self.token = os.environ.get("SVCUID", "")
        missing = [name for name, value in (("AWS_IOT_THING_NAME", self.thing),
                                            (SOCKET_ENV, self.path),
                                            ("SVCUID", self.token)) if not value]
        if missing:
            raise ValueError(f"MQTT export: no {', '.join(missing)} in the environment: the "
                             "stream manager must run as a component of the agent to reach "
                             "the cloud broker")
        self.client: ipcclient.Client | None = None
        self._lock = asyncio.Lock()

    def sender(self, spec: core.MqttExport) -> MqttSender:
        return MqttSender(self, core.render_mqtt_topic(self.thing, spec.topic))

    async def _connected(self) -> ipcclient.Client:
        async with self._lock:
            if self.client is None or not self.client.connected:
                client = ipcclient.Client(self.path, self.token)
                try:
                    await client.connect()
                except (OSError, TimeoutError) as exc:
                    raise exports.ExportError(f"cannot reach the agent's IPC socket "
                                              f"{self.path}: {exc}") from None
                log.info("MQTT export: connected to the agent's IPC server")
                self.client = client
            return self.client

    async def publish(self, topic: str, payload: bytes) -> None:
        client = await self._connected()
        try:
            await client.publish_to_iot_core(topic, payload, qos=1)
        except ipcclient.IpcError as exc:
            raise exports.ExportError(str(exc)) from None
        except ipcclient.ConnectionLostError as exc:
            raise exports.ExportError(f"the agent's IPC connection: {exc}") from None

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()


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
