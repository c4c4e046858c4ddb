"""The controller's connection to the cloud MQTT broker (paho-mqtt v2 API).

Publishes desired documents retained at QoS 1 and hands status reports to a callback.
The session is persistent (never a clean start, one hour expiry), so QoS 1
reports sent while the controller restarts are delivered when it is back.

With a signing key (``BrokerSettings.signing_key``, by default ``signing.key`` in the
fleet CA folder) every desired document is published inside a signed envelope
(hedgerow.core.envelope) with a per-thing counter from a hybrid logical clock: signing
happens here, at the one place documents leave the controller, so nothing upstream can
forget it. Without one documents go out unsigned (tests, and fleets whose devices pin
no key), and the controller says so at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import random
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt import packettypes
from paho.mqtt import properties as mqtt_properties
from paho.mqtt import subscribeoptions as paho_subscribe
from paho.mqtt.enums import CallbackAPIVersion

from hedgerow.controller import pki
from hedgerow.core import backoff, envelope
from hedgerow.core import broker as core_broker

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    url: str  # mqtt://host:port or mqtts://host:port
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    client_id: str = "hedgerow_controller"
    signing_key: str | None = None  # Ed25519 key file (made on first use); None: unsigned

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return urllib.parse.urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or (8883 if self.tls else 1883)


Report = Callable[[str, bytes, Callable[[], None]], None]  # thing, payload, ack


class Broker:
    def __init__(self, settings: BrokerSettings, on_report: Report) -> None:
        scheme = urllib.parse.urlsplit(settings.url).scheme
        if scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"--broker must be mqtt:// or mqtts:// (got {scheme!r})")
        self.settings = settings
        self._on_report = on_report
        self.signer: pki.DocumentSigner | None = None
        if settings.signing_key:
            self.signer, made = pki.DocumentSigner.load_or_create(
                pathlib.Path(settings.signing_key))
            logger.info("%s the desired-document signing key %s (key id %s)",
                        "created" if made else "signing with", settings.signing_key,
                        self.signer.key_id)
        else:
            logger.warning("no signing key: desired documents are published UNSIGNED; "
                           "devices that pin a signing key refuse them")
        self._counters: dict[str, int] = {}  # thing -> last counter issued (work thread)
        self._too_large: set[tuple[str, int]] = set()  # logged once per thing and size
        self._takeovers = core_broker.TakeoverWatch()
        self._connected_at: float | None = None
        self._attempt = 0  # reconnects since the last accepted connection
        self._takeover_loop = False
        self._connected = threading.Event()
        self._retained: dict[str, bytes] | None = None  # during fetch_published
        self._acked: set[int] = set()  # SUBACKs seen during fetch_published
        # Reports are acknowledged (PUBACK) only once they are in CoreDevice status (the
        # operator calls the ack it is handed): a report the controller received but
        # had not written when it died is delivered again to the next one.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if settings.tls:
            client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # Many publishes in flight at once: a rollout step may notify thousands of devices.
        client.max_inflight_messages_set(512)
        self._schedule_reconnect(client)
        client.on_connect = self._connected_cb
        client.on_connect_fail = lambda client, userdata: self._schedule_reconnect(client)
        client.on_disconnect = self._disconnected_cb
        client.on_message = self._message_cb
        client.on_subscribe = self._subscribed_cb
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

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def seal(self, thing: str, payload: bytes) -> bytes | None:
        """The bytes to publish for ``thing``: the document in a signed envelope under a
        new counter (an empty payload, which clears the retained document, stays empty);
        None for a document too large to ever publish (logged once)."""
        if not payload:
            return payload
        if len(payload) > envelope.MAX_DOCUMENT_BYTES:
            # Signed or not, it must stay under the broker's packet limit (core.limits):
            # over it mosquitto drops the whole session and paho resends on every
            # reconnect. The resolver should have refused it already; never hand such a
            # payload to paho.
            if (thing, len(payload)) not in self._too_large:
                self._too_large.add((thing, len(payload)))
                logger.error("not publishing the desired document of %s: %d bytes, over "
                             "the %d-byte bound", thing, len(payload),
                             envelope.MAX_DOCUMENT_BYTES)
            return None
        if self.signer is None:
            return payload
        counter = envelope.resolve_counter(self._counters.get(thing, 0),
                                           time.time_ns() // 1_000_000)
        self._counters[thing] = counter
        signature = self.signer.sign(envelope.render_signing_input(
            thing, counter, self.signer.key_id, payload))
        return envelope.render_envelope(thing, counter, self.signer.key_id, payload,
                                        signature)

    def publish_desired(self, items: Sequence[tuple[str, bytes]],
                        timeout: float = 30.0) -> list[str]:
        """Publish retained at QoS 1 (signed, when there is a key); return the things
        whose PUBACK arrived in time."""
        infos = []
        for thing, payload in items:
            if not core_broker.is_thing_name(thing):
                # Never a topic level of its own: no document was rendered for it (the
                # DesiredState schema holds things to the same pattern).
                logger.error("not publishing for %r: not a thing name", thing)
                continue
            sealed = self.seal(thing, payload)
            if sealed is not None:
                infos.append((thing, self.client.publish(
                    core_broker.desired_topic(thing), sealed, qos=1, retain=True)))
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

    def fetch_published(self, things: Sequence[str], timeout: float = 10.0) -> dict[str, str]:
        """What the broker holds: thing -> revision of its retained desired document (for
        the things that have one). After a takeover the previous active replica may have
        published documents it had no time to record in CoreDevice status; the broker is
        the truth of what was published. Signed envelopes also move this replica's
        counters past the ones issued before (the next counter is newer even if this
        node's clock is behind the other's).

        On the controller's own connection (the broker forces the client id to the
        certificate's identity: a second connection would take the session over): QoS 0,
        no-local subscriptions to the desired topics, removed again at once. The broker
        sends a subscription's retained messages before it handles the next packet of
        the same connection, so the SUBACK of a last subscription (the fence) marks the
        end. Not thread-safe: one fetch at a time (the controller's work thread)."""
        names = [t for t in things if core_broker.is_thing_name(t)]
        if not names:
            return {}
        self._retained = {}
        topics = [core_broker.desired_topic(t) for t in names]
        fence_topic = f"hedgerow/_fence/{uuid.uuid4().hex}"  # no thing's topic
        options = paho_subscribe.SubscribeOptions(qos=0, noLocal=True)
        try:
            for i in range(0, len(topics), 500):  # well under the broker's packet limit
                self.client.subscribe([(t, options) for t in topics[i:i + 500]])
            fence = self.client.subscribe([(fence_topic, options)])[1]
            deadline = time.monotonic() + timeout
            while fence not in self._acked:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the broker did not answer within {timeout:.0f} s")
                time.sleep(0.01)
            got = self._retained or {}
        finally:
            self._retained = None
            self._acked.clear()
            for i in range(0, len(topics), 500):
                self.client.unsubscribe(topics[i:i + 500])
            self.client.unsubscribe(fence_topic)
        revisions = {}
        for thing, payload in got.items():
            try:
                document = payload
                if envelope.is_envelope(payload):
                    sealed = envelope.parse_envelope(payload)
                    self._counters[thing] = max(self._counters.get(thing, 0), sealed.counter)
                    document = sealed.document_bytes()
                revision = json.loads(document).get("revision")
            except (ValueError, AttributeError):
                continue  # not a document of ours: published again
            if isinstance(revision, str):
                revisions[thing] = revision
        return revisions

    def _connected_cb(self, client: mqtt.Client, userdata: Any, flags: Any,
                      reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection: %s", reason)
            return
        client.subscribe(core_broker.STATUS_SUBSCRIPTION, qos=1)
        logger.info("connected to the broker at %s:%s", self.settings.host, self.settings.port)
        now = time.monotonic()
        if self._takeovers.quiet_since(now) > 5 * self._takeovers.window:
            self._takeover_loop = False
        self._attempt = 0
        self._connected_at = now
        self._connected.set()

    def _disconnected_cb(self, client: mqtt.Client, userdata: Any, flags: Any,
                         reason: Any, properties: Any) -> None:
        self._connected.clear()
        now = time.monotonic()
        lost = getattr(reason, "value", None) == core_broker.SESSION_TAKEN_OVER or (
            getattr(reason, "is_failure", False) and self._connected_at is not None
            and self._takeovers.is_short(self._connected_at, now))
        self._connected_at = None
        if lost and self._takeovers.record(now):
            # Another client holds the controller's certificate (a second replica,
            # or a tool run with controller.pem): we would kick each other forever.
            logger.error(
                "TAKEOVER LOOP: the broker closed this session %d times in %.0f s right "
                "after accepting it; most likely another client connects with the "
                "controller's identity and takes the session over (a second controller, "
                "or a tool using controller.pem). Backing off %.0f s between reconnects "
                "(docs/identity.md: debugging safely)",
                len(self._takeovers.times), self._takeovers.window,
                core_broker.TAKEOVER_BACKOFF_S)
            self._takeover_loop = True
            self._schedule_reconnect(client)
            return
        logger.warning("disconnected from the broker (%s); reconnecting", reason)
        self._schedule_reconnect(client)

    def _schedule_reconnect(self, client: mqtt.Client) -> None:
        """The wait before paho's next reconnect: the one jittered, capped backoff
        (1 … 30 s; in a takeover loop 60 … 300 s, never under 60 s). Set before each
        wait, as one fixed delay: paho's own doubling has no jitter, and a controller
        restarted with thousands of others behind one broker must not retry in step."""
        if self._takeover_loop:
            delay = max(core_broker.TAKEOVER_BACKOFF_S, backoff.resolve_delay(
                self._attempt, core_broker.TAKEOVER_BACKOFF_S,
                5 * core_broker.TAKEOVER_BACKOFF_S, random.random))
        else:
            delay = backoff.resolve_delay(self._attempt, 1.0, 30.0, random.random)
        self._attempt += 1
        # paho annotates int seconds; it computes with floats (time arithmetic).
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _subscribed_cb(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                       properties: Any) -> None:
        if self._retained is not None:
            self._acked.add(mid)

    def _message_cb(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        thing = core_broker.resolve_thing_of_status_topic(message.topic)
        if thing is None:
            retained = self._retained
            parts = message.topic.split("/")
            if retained is not None and message.retain and len(parts) == 4 and (
                    message.payload):
                retained[parts[2]] = bytes(message.payload)
            if message.qos:
                client.ack(message.mid, message.qos)
            return
        if not message.qos:
            self._on_report(thing, bytes(message.payload), _no_ack)
            return
        mid, qos = message.mid, message.qos
        self._on_report(thing, bytes(message.payload), lambda: self._ack(mid, qos))

    def _ack(self, mid: int, qos: int) -> None:
        """PUBACK a report (any thread; after a reconnect the broker sent it again with
        the same packet id, so the ack still names it)."""
        with contextlib.suppress(Exception):  # not connected: it is delivered again
            self.client.ack(mid, qos)


def _no_ack() -> None:
    """QoS 0 reports need no acknowledgement."""
