"""The agent's cloud connector: the device's only link to the cloud MQTT broker.

One thread of its own (never the agent's asyncio loop), one state machine:

    ┌──────────┐ connect ok ┌───────────┐ CONNACK ok ┌────────┐
    │ WAITING  │───────────▶│ CONNECTING│───────────▶│ ONLINE │
    └──────────┘            └───────────┘            └────────┘
         ▲   backoff (jittered, capped)   │ refused / lost  │ lost
         └────────────────────────────────┴─────────────────┘

- Outbound only, MQTT 5 over mutual TLS (paho-mqtt v2 callbacks). The client id is the
  thing name; the session is persistent (clean start off, session expiry), and the
  desired topic is subscribed again on every CONNACK (a no-op for a resumed session).
- A desired document (retained, QoS 1) arrives in a signed envelope
  (hedgerow.core.envelope). It is accepted only if the Ed25519 signature verifies with
  the key pinned by the bootstrap bundle (``identity/signing.pub``), the envelope is for
  this thing, and its counter is above the highest one seen (kept crash-safely in
  ``state/trust.json``; the same counter with the same document is the retained copy
  again). Then the document inside is validated — the DesiredState schema, the
  content-hash revision, the thing name — and written atomically to
  ``desired/desired.json`` (the plain DesiredState: the agent loop trusts its own root)
  only if it differs; the agent loop (watching ``desired/``) does the rest. A refused
  document (unsigned, forged, for another thing, replayed, invalid) is logged (reason
  only, never the payload), counted, and recorded in ``state/connector.json``; the last
  good file stays untouched. An empty retained message (the CoreDevice was deleted)
  changes nothing on the device.
- I/O errors (a full disk, EIO, too many open files) never end the thread: each is
  logged once per change, a desired document that could not be written is kept and
  written again with capped backoff, and a catch-all around each session restarts it.
- A session taken over again and again (another client with this device's certificate:
  see docs/identity.md, "Debugging a device safely") is logged loudly and backed off.
- Components' cloud messages (PublishToIoTCore, SubscribeToIoTCore) share this session
  through a CloudProxy (cloudproxy.py): the connector attaches it on each CONNACK, lets
  it send on each turn of its loop, detaches it on loss, and hands it every PUBACK,
  SUBACK and message that is not the connector's own.
- Status: the agent loop writes ``state/status.json`` each pass. The connector publishes
  it (QoS 1, not retained) when it changes in substance (anything but ``sequence`` and
  ``time``) and otherwise as a heartbeat every ``heartbeat_s``. Offline it keeps only the
  latest report and sends that one on reconnect; a publish cut off by a disconnect is
  resent only if nothing newer exists. The connector stamps each report it sends with
  ``time`` = now, ``certificateDaysLeft`` from its certificate, and the wire ``sequence``:
  ``max(last sent + 1, unix milliseconds)``, persisted, so it keeps growing across agent
  restarts (the controller drops reports whose sequence does not grow).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib
import random
import ssl
import threading
import time
import urllib.parse
from typing import Any, Final

import paho.mqtt.client as mqtt
import pydantic
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from paho.mqtt import packettypes
from paho.mqtt import properties as mqtt_properties
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hedgerow import files
from hedgerow.agent import cloudproxy
from hedgerow.agent import identity as identity_
from hedgerow.agent.layout import Layout
from hedgerow.core import backoff, broker, documents, envelope

log = logging.getLogger("hedgerow.agent.connector")

_WRITE_RETRY_MIN_S: Final = 0.5
_WRITE_RETRY_MAX_S: Final = 30.0
_UNSTAMPED: Final = ("sequence", "time", "certificate_days_left")


def _substance(report: documents.StatusReport) -> dict[str, Any]:
    return report.model_dump(mode="json", exclude=set(_UNSTAMPED))


@dataclasses.dataclass
class Stats:
    """Counters for observability and tests (written by the connector thread only)."""

    connects: int = 0
    connect_failures: int = 0
    written: int = 0
    rejected: int = 0
    published: int = 0
    last_error: str = ""
    last_rejection: str = ""
    io_errors: int = 0
    crashes: int = 0  # sessions ended by an unexpected exception (then restarted)
    takeovers: int = 0


class Connector:
    def __init__(self, root: pathlib.Path | str, thing: str, broker_url: str,
                 ca: pathlib.Path | str, cert: pathlib.Path | str, key: pathlib.Path | str,
                 *, heartbeat_s: float = 60.0, keepalive_s: int = 30,
                 session_expiry_s: int = 7 * 86400, backoff_min_s: float = 1.0,
                 backoff_max_s: float = 60.0, poll_s: float = 0.2,
                 connect_timeout_s: float = 10.0,
                 signing_key: pathlib.Path | str | None = None,
                 takeover_backoff_s: float = broker.TAKEOVER_BACKOFF_S,
                 proxy: cloudproxy.CloudProxy | None = None) -> None:
        parts = urllib.parse.urlsplit(broker_url)
        if parts.scheme != "mqtts" or not parts.hostname:
            raise ValueError(f"broker URL must be mqtts://HOST[:PORT] (got {broker_url!r}): "
                             "the connector only speaks mutual TLS")
        self.layout = Layout(pathlib.Path(root))
        self.thing = thing
        self.host, self.port = parts.hostname, parts.port or 8883
        self.ca, self.cert, self.key = pathlib.Path(ca), pathlib.Path(cert), pathlib.Path(key)
        self.desired_topic = broker.desired_topic(thing)
        self.status_topic = broker.status_topic(thing)
        self.heartbeat_s, self.keepalive_s = heartbeat_s, keepalive_s
        self.session_expiry_s = session_expiry_s
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.poll_s, self.connect_timeout_s = poll_s, connect_timeout_s
        self.stats = Stats()
        # Components' cloud messages on this session (cloudproxy.py), if the agent has any.
        self.proxy = proxy
        # The pinned key desired documents must be signed with (None: refuse them all).
        self._verifier: ed25519.Ed25519PublicKey | None = None
        self.key_id: str | None = None
        if signing_key is not None:
            self._verifier, self.key_id = _load_verifier(pathlib.Path(signing_key))
        self._seen_counter = 0
        self._seen_digest: str | None = None
        self._unwritten: tuple[bytes, int, str, str] | None = None  # doc, counter, digest, rev
        self._write_attempt = 0
        self._write_retry_at = 0.0
        self._trouble: tuple[str, str] | None = None  # (what, error) last logged
        self.takeover_backoff_s = takeover_backoff_s
        self._takeovers = broker.TakeoverWatch()
        self._takeover_loop = False
        self._taken_over = False
        self._stop = threading.Event()
        self._online = threading.Event()
        self._thread: threading.Thread | None = None
        # Status state, owned by the connector thread.
        self._status_stat: tuple[int, int, int] | None = None
        self._latest: documents.StatusReport | None = None
        self._queued_substance: dict[str, Any] | None = None
        self._pending: documents.StatusReport | None = None
        self._resend: bytes | None = None
        self._inflight: tuple[int, bytes] | None = None
        self._last_sent = 0.0
        self._sequence = 0
        self._quiet_failures = False

    @classmethod
    def from_root(cls, root: pathlib.Path | str, thing: str | None = None,
                  **options: Any) -> Connector:
        """A connector for the identity installed under ``<root>/identity``."""
        ident = identity_.load(pathlib.Path(root))
        if thing is not None and thing != ident.thing:
            raise identity_.IdentityError(
                f"the installed identity is {ident.thing!r}, not {thing!r}")
        return cls(root, ident.thing, ident.broker_url, ident.ca, ident.cert, ident.key,
                   signing_key=ident.signing_key, **options)

    # --- public ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._online.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("connector already started")
        self._sequence = self._load_state().get("lastSequence", 0)
        self._seen_counter, self._seen_digest = self._load_trust()
        if self._verifier is None:
            log.error("no desired-document signing key is pinned in %s: every desired "
                      "document will be refused; install a bundle that carries one "
                      "(hedgerow agent install-bundle)", self.layout.root / "identity")
        self._thread = threading.Thread(target=self._run, name=f"connector-{self.thing}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_connected(self, timeout: float) -> bool:
        return self._online.wait(timeout)

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                reached = self._session()
            except Exception as exc:  # the thread must outlive anything one session hits
                self.stats.crashes += 1
                self._io_trouble("the cloud session", exc, trace=True)
                self._online.clear()
                reached = False
            if reached:
                attempt = 0
            if self._stop.is_set():
                break
            delay = backoff.resolve_delay(attempt, self.backoff_min_s, self.backoff_max_s,
                                          random.random)
            if self._takeover_loop:
                delay = max(delay, self.takeover_backoff_s)
            self._pause(delay)
            attempt += 1

    def _pause(self, seconds: float) -> None:
        """Wait out a backoff, still following status.json (only the latest is kept)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            try:
                self._follow_status()
                self._retry_unwritten()
            except Exception as exc:  # as in _run: log, and keep waiting
                self._io_trouble("following the status file", exc, trace=True)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(self.poll_s, left))

    def _failed(self, what: str) -> None:
        self.stats.connect_failures += 1
        self.stats.last_error = what
        if not self._quiet_failures:  # log the change, not every retry
            log.warning("cloud broker %s:%s unreachable: %s; retrying with backoff",
                        self.host, self.port, what)
            self._quiet_failures = True
        else:
            log.debug("cloud broker still unreachable: %s", what)

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.thing,
                             protocol=mqtt.MQTTv5)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        client.tls_set_context(context)
        client.connect_timeout = self.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _session(self) -> bool:
        """One connection, from connect to loss; True if the broker accepted us."""
        props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
            packettypes.PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            # Built per attempt: a renewed certificate is picked up on the next connect.
            client = self._client()
            client.connect(self.host, self.port, keepalive=self.keepalive_s,
                           clean_start=False, properties=props)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        reached = False
        online_at = 0.0
        self._taken_over = False
        try:
            while not self._stop.is_set():
                try:
                    rc = client.loop(timeout=self.poll_s)
                except (OSError, ValueError) as exc:
                    self._failed(f"{type(exc).__name__}: {exc}")
                    break
                if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                    if not reached:
                        self._failed(mqtt.error_string(rc))
                    break
                if not reached and self.connected:
                    reached, online_at = True, time.monotonic()
                self._follow_status()
                self._retry_unwritten()
                self._send(client)
                if self.proxy is not None:
                    self.proxy.pump(client)
        finally:
            if self._stop.is_set() and self.connected:
                client.disconnect()  # DISCONNECT keeps the session (expiry > 0)
                client.loop(timeout=0.5)
            self._lost()
        if reached and not self._stop.is_set() and (
                self._taken_over or self._takeovers.is_short(online_at, time.monotonic())):
            self._lost_session()
        return reached

    def _lost(self) -> None:
        if self.proxy is not None:
            self.proxy.detach()
        if self._online.is_set():
            self._online.clear()
            log.warning("disconnected from the cloud broker; reconnecting with backoff")
        if self._inflight is not None:
            # Not acknowledged: resend it on reconnect unless something newer is queued.
            self._resend = self._inflight[1] if self._pending is None else None
            self._inflight = None

    # --- paho callbacks (run inside client.loop(), on this thread) -------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._failed(f"broker refused the connection: {reason}")
            return
        client.subscribe(self.desired_topic, options=SubscribeOptions(qos=1))
        if self.proxy is not None:
            self.proxy.attach(client)
        self.stats.connects += 1
        self._quiet_failures = False
        if self._takeover_loop and self._takeovers.quiet_since(time.monotonic()) > (
                5 * self._takeovers.window):
            self._takeover_loop = False
        self._online.set()
        log.info("connected to the cloud broker %s:%s as %s (session %s)", self.host,
                 self.port, self.thing, "resumed" if flags.session_present else "new")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f"disconnected: {reason}"
        if getattr(reason, "value", None) == broker.SESSION_TAKEN_OVER:
            self._taken_over = True  # a broker that says so; mosquitto 2.0 just closes

    def _lost_session(self) -> None:
        """An established session the broker ended: count it; say so loudly once it is
        a loop (another client with this device's certificate)."""
        self.stats.takeovers += 1
        if self._takeovers.record(time.monotonic()) and not self._takeover_loop:
            self._takeover_loop = True
            log.error(
                "TAKEOVER LOOP: the broker closed this device's session %d times in "
                "%.0f s right after accepting it; most likely another client connects "
                "with this device's certificate (%s) and takes the session over (a tool "
                "or a second agent using %s). Backing off %.0f s between reconnects "
                "(docs/identity.md: debugging a device safely)",
                len(self._takeovers.times), self._takeovers.window, self.thing,
                self.key, self.takeover_backoff_s)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[Any], properties: Any) -> None:
        if self.proxy is not None and self.proxy.on_suback(mid, reasons):
            return
        for reason in reasons:
            if reason.is_failure:
                log.error("subscription to %s refused: %s", self.desired_topic, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        if message.topic != self.desired_topic and self.proxy is not None:
            self.proxy.on_message(message)
            return
        if message.topic != self.desired_topic:
            log.warning("ignoring a message on %s (not this device's desired topic)",
                        message.topic)
            return
        self.accept_desired(bytes(message.payload))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        if self._inflight is None or self._inflight[0] != mid:
            if self.proxy is not None:
                self.proxy.on_puback(mid, reason, properties)
            return
        self._inflight = None
        if reason.is_failure:
            log.warning("status report refused by the broker: %s", reason)
            return
        self.stats.published += 1
        self._last_sent = time.monotonic()

    # --- desired ---------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self.stats.rejected += 1
        self.stats.last_rejection = reason
        log.error("REFUSED a desired document: %s; keeping the last good one", reason)
        state = self._load_state()
        state["lastRejection"] = {"reason": reason[:1024],
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self._save_state(state)
        except OSError as exc:
            self._io_trouble("recording a refusal", exc)

    def accept_desired(self, payload: bytes) -> bool:
        """Verify one signed desired document and write it; False if it was refused (or
        could not be written yet: it is then written again later)."""
        if not payload:
            log.info("the desired document was cleared on the broker; the device keeps "
                     "running its last desired state")
            return False
        if self._verifier is None or self.key_id is None:
            self._reject("no signing key is pinned on this device, so no document can be "
                         "trusted (install a bundle that carries one)")
            return False
        try:
            sealed = envelope.parse_envelope(payload)
        except envelope.EnvelopeError as exc:
            self._reject(str(exc)[:1024])
            return False
        if sealed.thing != self.thing:
            self._reject(f"signed for thing {sealed.thing!r}, this device is {self.thing!r}")
            return False
        if sealed.key_id != self.key_id:
            self._reject(f"signed with key {sealed.key_id}, this device pins {self.key_id}")
            return False
        try:
            self._verifier.verify(sealed.signature_bytes(), sealed.signing_input())
        except InvalidSignature:
            self._reject(f"the signature does not verify with the pinned key "
                         f"{self.key_id}: forged or altered (counter {sealed.counter})")
            return False
        data = sealed.document_bytes()
        digest = envelope.digest_of(data)
        verdict = envelope.resolve_verdict(sealed.counter, digest, self._seen_counter,
                                           self._seen_digest)
        if verdict is envelope.Verdict.SAME:
            return True  # the retained copy of what we already have
        if verdict is envelope.Verdict.REPLAYED:
            self._reject(f"counter {sealed.counter} is not above the highest seen "
                         f"({self._seen_counter}): a replayed or older document")
            return False
        try:
            doc = documents.DesiredState.model_validate_json(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            self._reject(f"{where}: {first['msg']}"[:1024])
            return False
        if doc.thing != self.thing:
            self._reject(f"document for thing {doc.thing!r} arrived for {self.thing!r}")
            return False
        # Seen from now on, even if the disk refuses it for a while: an older document
        # arriving meanwhile is still a replay.
        self._seen_counter, self._seen_digest = sealed.counter, digest
        self._unwritten = (data, sealed.counter, digest, doc.revision)
        self._write_attempt, self._write_retry_at = 0, 0.0
        log.info("desired revision %s accepted (counter %d, %d components)", doc.revision,
                 sealed.counter, len(doc.components))
        return self._retry_unwritten()

    def _retry_unwritten(self) -> bool:
        """Write the accepted document not yet on disk (now, or when its backoff is up);
        True once nothing is left to write."""
        if self._unwritten is None:
            return True
        if time.monotonic() < self._write_retry_at:
            return False
        data, counter, digest, revision = self._unwritten
        target = self.layout.desired_file
        try:
            try:
                unchanged = target.read_bytes() == data
            except FileNotFoundError:
                unchanged = False
            if not unchanged:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                files.write_atomic(target, data, mode=0o600)
                self.stats.written += 1
            # After the document: a crash in between re-accepts the retained copy.
            self.trust_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            files.write_json(self.trust_file, {"counter": counter, "sha256": digest})
        except OSError as exc:
            self.stats.io_errors += 1
            self._io_trouble(f"writing desired revision {revision}", exc)
            self._write_retry_at = time.monotonic() + backoff.resolve_delay(
                self._write_attempt, _WRITE_RETRY_MIN_S, _WRITE_RETRY_MAX_S, random.random)
            self._write_attempt += 1
            return False
        self._unwritten = None
        self._io_recovered()
        if not unchanged:
            log.info("desired revision %s written", revision)
        return True

    # --- I/O trouble: log the change, not every retry ----------------------------------

    def _io_trouble(self, what: str, exc: BaseException, trace: bool = False) -> None:
        problem = (what, f"{type(exc).__name__}: {exc}")
        self.stats.last_error = f"{what}: {problem[1]}"
        if problem != self._trouble:
            self._trouble = problem
            log.error("%s failed: %s; retrying with backoff", what, problem[1],
                      exc_info=exc if trace else None)
        else:
            log.debug("%s still failing: %s", what, problem[1])

    def _io_recovered(self) -> None:
        if self._trouble is not None:
            log.warning("recovered (after: %s failed: %s)", *self._trouble)
            self._trouble = None

    # --- status ----------------------------------------------------------------------

    def _follow_status(self) -> None:
        path = self.layout.status_file
        try:
            st = path.stat()
        except OSError:  # not there yet, or the disk is failing: try again next time
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._status_stat:
            return
        self._status_stat = key
        try:
            report = documents.StatusReport.model_validate_json(path.read_bytes())
        except (OSError, pydantic.ValidationError) as exc:
            log.debug("status file unreadable (%s); waiting for the next one", exc)
            return
        if report.thing != self.thing:
            log.warning("status file is for %r, not %r; not publishing it", report.thing,
                        self.thing)
            return
        self._latest = report
        substance = _substance(report)
        if substance != self._queued_substance:
            self._queued_substance = substance
            self._pending = report  # only the latest is ever kept
            self._resend = None

    def _stamp(self, report: documents.StatusReport) -> bytes:
        self._sequence = max(self._sequence + 1, time.time_ns() // 1_000_000)
        state = self._load_state()
        state["lastSequence"] = self._sequence
        try:
            self._save_state(state)
        except OSError as exc:
            # The report still goes out: the sequence is kept in memory, and is at least
            # the wall clock's milliseconds after a restart anyway.
            self.stats.io_errors += 1
            self._io_trouble("recording the status sequence", exc)
        days = report.certificate_days_left
        if days is None:
            try:
                days = identity_.certificate_days_left(self.cert)
            except (OSError, ValueError):
                days = None
        stamped = report.model_copy(update={
            "sequence": self._sequence,
            "time": datetime.datetime.now(datetime.UTC),
            "certificate_days_left": days,
        })
        return documents.render_bytes(stamped)

    def _send(self, client: mqtt.Client) -> None:
        if not self.connected or self._inflight is not None:
            return
        if (self._pending is None and self._resend is None and self._latest is not None
                and time.monotonic() - self._last_sent >= self.heartbeat_s):
            self._pending = self._latest  # heartbeat
        if self._pending is not None:
            payload, self._pending, self._resend = self._stamp(self._pending), None, None
        elif self._resend is not None:
            payload, self._resend = self._resend, None
        else:
            return
        info = client.publish(self.status_topic, payload, qos=1)
        if info.rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._resend = payload
            return
        self._inflight = (info.mid, payload)

    # --- the connector's own record --------------------------------------------------

    @property
    def state_file(self) -> pathlib.Path:
        return self.layout.state / "connector.json"

    @property
    def trust_file(self) -> pathlib.Path:
        """The highest desired-document counter accepted, and that document's SHA-256."""
        return self.layout.state / "trust.json"

    def _load_trust(self) -> tuple[int, str | None]:
        try:
            value = json.loads(self.trust_file.read_bytes())
            return int(value["counter"]), str(value["sha256"])
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s unreadable (%s): accepting from counter 0", self.trust_file, exc)
            return 0, None

    def _load_state(self) -> dict[str, Any]:
        try:
            value = json.loads(self.state_file.read_bytes())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        files.write_json(self.state_file, state)


def _load_verifier(path: pathlib.Path) -> tuple[ed25519.Ed25519PublicKey, str]:
    """The pinned signing key and its id; ValueError naming the file if it is unusable."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the pinned signing key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path}: the pinned signing key is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, envelope.key_id_of(raw)
