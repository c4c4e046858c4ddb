"""A real fleet in miniature: a fleet CA (hedgerow.controller.pki), mosquitto started from
the configuration and ACL `hedgerow broker config` renders (hedgerow.core.broker), device
identities made the way `hedgerow agent init` / `install-bundle` make them, connectors,
and a controller stand-in (a plain paho client with the controller's certificate)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import packettypes
from paho.mqtt import properties as mqtt_properties
from paho.mqtt.enums import CallbackAPIVersion

from hedgerow.agent import connector as connector_
from hedgerow.agent import identity
from hedgerow.controller import broker as controller_broker
from hedgerow.controller import pki
from hedgerow.core import broker as broker_
from hedgerow.core import documents, topicrule
from hedgerow.core import identity as core_identity
from tests.support.mosquitto import LOOPBACK, Mosquitto
from tests.support.wait import wait_for

CLOUD_APP = "cloud_app"  # a CN no device can have ('_')


class MqttClient:
    """A paho client with a certificate; collects what it receives."""

    def __init__(self, url: str, ca: Path, cert: Path, key: Path, client_id: str,
                 persistent: bool = False) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        # A CONNACK came / the broker closed the connection: how connect() tells an
        # accepted client from a refused one without sitting out its timeout (under TLS
        # 1.3 a refused certificate is a closed connection after the handshake).
        self.acked, self.closed = threading.Event(), threading.Event()
        self.subacks: list[list[Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: (
            None if rc.is_failure else (self.connected.set(), self.acked.set()))
        self.client.on_disconnect = lambda c, u, f, rc, p: (
            self.connected.clear(), self.closed.set())
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append(rcs)
        self.url, self.persistent = url, persistent

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def connect(self) -> MqttClient:
        port = int(self.url.rsplit(":", 1)[1])
        props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
            packettypes.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if self.persistent else 0
        self.client.connect(LOOPBACK, port, keepalive=10,
                            clean_start=not self.persistent, properties=props)
        self.client.loop_start()
        wait_for(lambda: self.acked.is_set() or self.closed.is_set(), 10, "a CONNACK")
        if not self.acked.is_set():
            self.client.loop_stop()  # refused: no reconnecting behind the test's back
            raise AssertionError("no CONNACK: the broker closed the connection")
        return self

    def subscribe(self, topic: str) -> None:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: len(self.subacks) > before, what=f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [bytes(m.payload) for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclasses.dataclass
class Fleet:
    dir: Path
    ca: pki.FleetCA
    broker: Mosquitto
    controller_cert: Path
    controller_key: Path
    broker_dir: Path = Path()  # what the broker reads: its config, CRL, certificates
    cleanups: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    _sealer: controller_broker.Broker | None = None

    @property
    def signing_key(self) -> Path:
        return self.dir / "ca" / pki.SIGNING_KEY

    def seal(self, doc: documents.DesiredState | bytes) -> bytes:
        """What the controller publishes for ``doc``: the real controller code
        (controller.broker.Broker.seal) with the fleet's signing key, a new counter."""
        if self._sealer is None:  # paho client made, never connected
            self._sealer = controller_broker.Broker(controller_broker.BrokerSettings(
                self.broker.url, signing_key=str(self.signing_key)), lambda t, p, a: None)
        data = doc if isinstance(doc, bytes) else documents.render_bytes(doc)
        thing = json.loads(data)["thing"]  # not validated: tests seal bad documents too
        sealed = self._sealer.seal(thing, data)
        assert sealed is not None
        return sealed

    def device(self, thing: str, ca: pki.FleetCA | None = None, root: Path | None = None,
               ) -> identity.DeviceIdentity:
        """init on the device → CSR → signed by the CA → bundle installed on the device
        (in ``root``, an agent's root, if given)."""
        root = root or self.dir / "devices" / thing
        csr = identity.init(root, thing)
        cert = (ca or self.ca).sign_device_csr(csr.read_bytes(), thing)
        signer, _ = pki.signing_key_of(self.dir / "ca")
        bundle = core_identity.Bundle(
            thing=thing, broker_url=self.broker.url, ca_pem=(ca or self.ca).pem,
            certificate_pem=pki.cert_pem(cert).decode(), signing_key_pem=signer.public_pem)
        return identity.install_bundle(root, bundle.model_dump_json(by_alias=True).encode())

    def root(self, thing: str) -> Path:
        return self.dir / "devices" / thing

    def connector(self, ident: identity.DeviceIdentity, **options: Any,
                  ) -> connector_.Connector:
        options = {"backoff_min_s": 0.1, "backoff_max_s": 0.5, "poll_s": 0.05,
                   "heartbeat_s": 60.0, **options}
        options.setdefault("signing_key", ident.signing_key)
        conn = connector_.Connector(self.root(ident.thing), ident.thing, ident.broker_url,
                                    ident.ca, ident.cert, ident.key, **options)
        conn.start()
        self.cleanups.append(conn.stop)
        return conn

    def client(self, ident: identity.DeviceIdentity, client_id: str | None = None,
               ) -> MqttClient:
        c = MqttClient(self.broker.url, ident.ca, ident.cert, ident.key,
                       client_id or ident.thing).connect()
        self.cleanups.append(c.close)
        return c

    def controller(self) -> MqttClient:
        c = MqttClient(self.broker.url, self.ca_path, self.controller_cert,
                       self.controller_key, "ignored", persistent=True).connect()
        c.subscribe("hedgerow/things/+/status")
        self.cleanups.append(c.close)
        return c

    def cloud_app(self) -> MqttClient:
        """A cloud-side client (persistent session) that may use every devices/… topic."""
        issued = self.ca.issue_client(CLOUD_APP)
        cert, key = self.dir / "cloud_app.pem", self.dir / "cloud_app.key"
        issued.write(cert, key)
        c = MqttClient(self.broker.url, self.ca_path, cert, key, CLOUD_APP,
                       persistent=True).connect()
        self.cleanups.append(c.close)
        return c

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca" / pki.CA_CERT


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = pki.FleetCA.create(tmp_path / "ca")
    etc = tmp_path / "broker"
    etc.mkdir()
    ca_file = etc / "ca.pem"
    ca_file.write_text(ca.pem)
    ca.issue_server([LOOPBACK, "localhost"]).write(etc / "server.pem", etc / "server.key")
    controller = ca.issue_controller()
    controller.write(tmp_path / "controller" / "controller.pem",
                     tmp_path / "controller" / "controller.key")
    # What `hedgerow broker config` writes by default (each device also gets its own
    # devices/<thing>/# namespace), plus a cloud-side application that reads and writes
    # every device's namespace, as an operator would add for their backend.
    (etc / "acl").write_text(topicrule.render_acl() + f"\nuser {CLOUD_APP}\n"
                             "topic readwrite devices/#\n")
    (etc / "crl.pem").write_bytes(ca.render_crl())  # empty until a test revokes
    (etc / "data").mkdir()
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None

    def render(port: int) -> str:
        return broker_.render_mosquitto_config(broker_.MosquittoSettings(
            cafile=str(ca_file), certfile=str(etc / "server.pem"),
            keyfile=str(etc / "server.key"), acl_file=str(etc / "acl"), port=port,
            crlfile=str(etc / "crl.pem"),
            bind=LOOPBACK, persistence_location=str(etc / "data"),
            log_dest=f"file {etc / 'mosquitto.log'}", user=user))

    with Mosquitto(tls=True, directory=etc, config=render) as mosq:
        f = Fleet(tmp_path, ca, mosq, tmp_path / "controller" / "controller.pem",
                  tmp_path / "controller" / "controller.key", broker_dir=etc)
        try:
            yield f
        finally:
            for cleanup in reversed(f.cleanups):
                cleanup()
