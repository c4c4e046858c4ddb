"""Components' cloud messaging, multiplexed onto the cloud connector's one MQTT 5 session.

The agent side (IPC handlers, on the asyncio loop or worker threads) calls ``publish``,
``subscribe`` and ``unsubscribe``; the connector thread, which alone touches the paho
client, calls ``attach`` (CONNACK), ``pump`` (each turn of its loop), ``detach``
(connection lost) and hands over PUBACKs, SUBACKs and messages. One lock guards the
shared state; it is never held while waiting on anything but a short file write, and
callbacks into the agent (``deliver``) run outside it.

Publishing
- Online: the message joins the queue, the connector's loop is woken (paho's own wake-up
  pipe, as paho's threaded mode uses it) and the message is sent in order. The caller's
  future resolves when the broker answered: PUBACK success (QoS 1) or written (QoS 0) →
  ``Outcome.SENT``; a PUBACK reason code ≥ 0x80 (0x87 Not authorized: the broker's ACL
  says no) → ``RefusedError`` with the code and the broker's reason.
- Offline (or the connection drops before the PUBACK): the message is persisted in the
  spool (cloudspool.py) and the future resolves ``Outcome.QUEUED`` — as Greengrass
  answers a spooled publish. It is sent, in order, after the reconnect, and a QoS 1
  message stays spooled until its PUBACK. A broker refusal then can no longer reach the
  component: it is logged and counted.
- Bounded (core.limits.CLOUD_SPOOL_*): a full queue refuses the new message
  (``SpoolFullError``, policy refuse-new, the default) or drops the oldest queued ones
  (drop-oldest), by the agent's setting.

Subscribing
- Subscriptions are reference-counted per topic filter across components: one MQTT
  SUBSCRIBE per filter (at the highest QoS asked), UNSUBSCRIBE when the last subscriber
  leaves. Each filter carries an MQTT 5 subscription identifier, so a message that
  matches several filters reaches each subscriber once; every delivery is checked
  against the filter too (a resumed session may hold another run's subscriptions).
- On every CONNACK all filters are subscribed again (retain handling "only if new", so a
  resumed persistent session sends no retained copies twice): subscriptions survive
  reconnects whether or not the broker kept the session.
- A SUBACK refusal (0x87) fails the subscribers waiting for it; a refusal after a
  reconnect (the ACL changed) ends those subscriptions through their ``refused`` hook.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import itertools
import json
import logging
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt import packettypes
from paho.mqtt import properties as mqtt_properties
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hedgerow import files
from hedgerow.agent import cloudspool
from hedgerow.core import cloudmessage, limits, mqtttopic

log = logging.getLogger("hedgerow.agent.cloudproxy")

_MAX_SUBSCRIPTION_ID: Final = 268_435_455  # MQTT 5 variable byte integer bound


class Outcome(enum.Enum):
    SENT = "sent"      # the broker acknowledged it (QoS 1) or it was written (QoS 0)
    QUEUED = "queued"  # in the spool: sent when the broker is reachable


class CloudError(Exception):
    """A cloud publish or subscription that did not happen; the message says why."""


class InvalidMessageError(CloudError):
    """The request itself is wrong (topic, sizes): nothing was queued."""


class SpoolFullError(CloudError):
    pass


class RefusedError(CloudError):
    def __init__(self, what: str, code: int, name: str, reason: str = "") -> None:
        self.code, self.name, self.reason = code, name, reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"the cloud broker refused {what}: {name} (reason code "
                         f"0x{code:02X}){detail}")


Deliver = Callable[[cloudmessage.CloudMessage], None]


@dataclasses.dataclass(eq=False)
class Subscription:
    topic_filter: str
    qos: int
    deliver: Deliver  # called on the connector thread: hand over, never block
    refused: Callable[[str], None] | None = None
    # Granted QoS once the broker accepted it; None when offline (subscribed on connect).
    ready: concurrent.futures.Future[int | None] = dataclasses.field(
        default_factory=concurrent.futures.Future)


@dataclasses.dataclass(eq=False)
class _Filter:
    topic_filter: str
    sub_id: int
    subscribers: list[Subscription] = dataclasses.field(default_factory=list)
    wanted_qos: int = 0
    granted: int | None = None  # QoS the broker granted on this session
    send: bool = False          # a SUBSCRIBE is due on this session
    retain_handling: int = 0    # 0: send retained messages; 1: only if new on the broker


@dataclasses.dataclass(eq=False)
class _Entry:
    seq: int
    message: cloudmessage.CloudMessage
    queued_at: float
    future: concurrent.futures.Future[Outcome]
    persisted: bool = False


@dataclasses.dataclass
class Stats:
    accepted: int = 0
    sent: int = 0
    spooled: int = 0       # persisted to wait for the broker
    refused: int = 0       # PUBACK reason code >= 0x80
    dropped: int = 0       # by the drop-oldest policy
    rejected_full: int = 0  # refused by the refuse-new policy
    expired: int = 0       # message expiry ran out while spooled
    delivered: int = 0     # messages handed to subscribers
    unmatched: int = 0     # messages for no current subscriber
    last_refusal: str = ""


class CloudProxy:
    def __init__(self, spool_dir: pathlib.Path, *,
                 policy: cloudmessage.SpoolPolicy = cloudmessage.DEFAULT_SPOOL_POLICY,
                 max_messages: int = limits.CLOUD_SPOOL_MAX_MESSAGES,
                 max_bytes: int = limits.CLOUD_SPOOL_MAX_BYTES,
                 max_inflight: int = limits.CLOUD_MAX_INFLIGHT) -> None:
        self.policy, self.max_messages, self.max_bytes = policy, max_messages, max_bytes
        self.max_inflight = max_inflight
        self.stats = Stats()
        self._files = cloudspool.SpoolFiles(spool_dir)
        self._lock = threading.RLock()  # re-entered: paho calls back inside publish()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._inflight: dict[int, _Entry] = {}
        self._early: dict[int, tuple[Any, Any]] = {}  # acks that beat publish()'s return
        self._filters: dict[str, _Filter] = {}
        self._by_id: dict[int, _Filter] = {}
        self._sub_ids = itertools.count(1)
        self._subacks: dict[int, _Filter] = {}
        self._unsubscribe: set[str] = set()
        self._client: mqtt.Client | None = None
        self._seq = 0
        # The filters this agent holds on the broker (persistent session), recorded so a
        # new run can drop those nobody wants any more (MQTT cannot list them).
        self._filters_file = spool_dir.parent / "cloud-subscriptions.json"
        self._recorded = self._load_recorded()
        for record in self._files.load():
            self._seq = max(self._seq, record.seq)
            done: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
            done.set_result(Outcome.QUEUED)  # its caller was answered in a previous run
            self._queue.append(_Entry(record.seq, record.message, record.queued_at, done,
                                      persisted=True))
        if self._queue:
            log.info("%d cloud messages spooled by a previous run wait for the broker",
                     len(self._queue))

    # --- the agent's side ------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self._client is not None

    def queued(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._inflight)

    def summary(self) -> dict[str, Any]:
        """For the control socket's status (camelCase, as the rest of it)."""
        with self._lock:
            counts = dataclasses.asdict(self.stats)
            queued = len(self._queue) + len(self._inflight)
            subscriptions = len(self._filters)
        return {"online": self.online, "queued": queued, "filters": subscriptions,
                **{_camel(k): v for k, v in counts.items()}}

    def publish(self, message: cloudmessage.CloudMessage) -> concurrent.futures.Future[Outcome]:
        """Queue ``message``; the future says what became of it (see the module doc).
        May write a file (offline): call it from a worker thread, not the event loop."""
        problem = cloudmessage.resolve_message_problem(message)
        if problem is not None:
            raise InvalidMessageError(problem)
        size = message.size
        with self._lock:
            held = [e.message.size for e in self._inflight.values()]
            decision = cloudmessage.plan_spool(
                [e.message.size for e in self._queue], size, self.max_messages,
                self.max_bytes, self.policy, (len(held), sum(held)))
            if not decision.accept:
                self.stats.rejected_full += 1
                raise SpoolFullError(
                    f"the cloud spool is full ({len(self._queue) + len(held)} messages "
                    f"waiting for the broker; bounds {self.max_messages} messages, "
                    f"{self.max_bytes} bytes) and its policy is {self.policy.value}: "
                    f"this {size}-byte message was not queued")
            for _ in range(decision.drop):
                self._drop(self._queue.popleft())
            self._seq += 1
            entry = _Entry(self._seq, message, time.time(), concurrent.futures.Future())
            self._queue.append(entry)
            self.stats.accepted += 1
            if self._client is None:
                self._persist([entry])
            else:
                self._wake()
            return entry.future

    def subscribe(self, topic_filter: str, qos: int, deliver: Deliver,
                  refused: Callable[[str], None] | None = None) -> Subscription:
        problem = cloudmessage.resolve_topic_problem(topic_filter, wildcards=True)
        if problem is not None:
            raise InvalidMessageError(problem)
        sub = Subscription(topic_filter, qos, deliver, refused)
        with self._lock:
            flt = self._filters.get(topic_filter)
            if flt is None:
                flt = _Filter(topic_filter, self._next_sub_id())
                self._filters[topic_filter] = flt
                self._by_id[flt.sub_id] = flt
                self._unsubscribe.discard(topic_filter)
            flt.subscribers.append(sub)
            if flt.granted is not None and flt.wanted_qos >= qos:
                sub.ready.set_result(flt.granted)
            elif flt.wanted_qos >= qos and flt in self._subacks.values():
                pass  # its SUBACK is on the way and answers this subscriber too
            else:
                flt.wanted_qos = max(flt.wanted_qos, qos)
                flt.send, flt.retain_handling = True, 0
                if self._client is None:
                    sub.ready.set_result(None)  # subscribed when the connection is back
                else:
                    self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            flt = self._filters.get(sub.topic_filter)
            if flt is None or sub not in flt.subscribers:
                return
            flt.subscribers.remove(sub)
            if not flt.subscribers:
                del self._filters[flt.topic_filter]
                self._by_id.pop(flt.sub_id, None)
                self._unsubscribe.add(flt.topic_filter)
                self._wake()
        if not sub.ready.done():
            sub.ready.cancel()

    # --- the connector thread's side ---------------------------------------------------

    def attach(self, client: mqtt.Client) -> None:
        """A session is up (CONNACK): subscribe every filter again and send the queue."""
        with self._lock:
            self._client = client
            self._unsubscribe |= self._recorded - set(self._filters)  # a previous run's
            for flt in self._filters.values():
                flt.granted, flt.send = None, True
                # Resumed or not: a subscription the broker kept is not re-created, so
                # its retained messages are not sent twice.
                flt.retain_handling = 1
            if self._queue:
                log.info("connected: sending %d queued cloud messages", len(self._queue))

    def detach(self) -> None:
        """The session is gone: what was sent but not acknowledged goes back to the head
        of the queue (sent again, in order, on the next session), and everything queued
        is persisted; waiting callers are answered QUEUED."""
        with self._lock:
            if self._client is None and not self._inflight:
                return
            self._client = None
            back = sorted(self._inflight.values(), key=lambda e: e.seq)
            self._inflight.clear()
            self._early.clear()
            self._subacks.clear()
            self._queue.extendleft(reversed(back))
            for flt in self._filters.values():
                flt.granted = None
            self._persist([e for e in self._queue if not e.persisted])

    def pump(self, client: mqtt.Client) -> None:
        """Send what is due: UNSUBSCRIBEs, SUBSCRIBEs, then queued messages in order while
        fewer than max_inflight wait for their PUBACK."""
        with self._lock:
            if self._client is not client:
                return
            while self._unsubscribe:
                topic_filter = self._unsubscribe.pop()
                client.unsubscribe(topic_filter)
            for flt in self._filters.values():
                if flt.send:
                    self._send_subscribe(client, flt)
            if self._recorded != set(self._filters):
                self._record_filters()
            while self._queue and len(self._inflight) < self.max_inflight:
                entry = self._queue[0]
                waited = time.time() - entry.queued_at
                if cloudmessage.is_expired(entry.message, waited):
                    self._queue.popleft()
                    self.stats.expired += 1
                    log.warning("cloud message to %s expired after %.0f s in the spool; "
                                "not sent", entry.message.topic, waited)
                    self._forget(entry)
                    self._resolve(entry, Outcome.QUEUED)
                    continue
                info = client.publish(entry.message.topic, entry.message.payload,
                                      qos=entry.message.qos, retain=entry.message.retain,
                                      properties=_publish_properties(entry.message, waited))
                if info.rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break  # the connection is going; detach() requeues
                self._queue.popleft()
                self._inflight[info.mid] = entry
                early = self._early.pop(info.mid, None)
                if early is not None:
                    self.on_puback(info.mid, *early)

    def on_puback(self, mid: int, reason: Any, properties: Any) -> None:
        """PUBACK for QoS 1, or the write of a QoS 0 message (paho's on_publish)."""
        with self._lock:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early[mid] = (reason, properties)  # publish() has not returned yet
                return
            self._forget(entry)
            if not getattr(reason, "is_failure", False):
                self.stats.sent += 1
                self._resolve(entry, Outcome.SENT)
                return
            error = RefusedError(f"the publish to {entry.message.topic!r}",
                                 int(reason.value), str(reason),
                                 str(getattr(properties, "ReasonString", "") or ""))
            self.stats.refused += 1
            self.stats.last_refusal = str(error)
            if entry.future.done():  # spooled: its component was answered long ago
                log.warning("%s (a spooled message: dropped)", error)
            else:
                log.info("%s", error)
                entry.future.set_exception(error)

    def on_suback(self, mid: int, reasons: list[Any]) -> bool:
        """False if the SUBACK is not for a component's subscription."""
        with self._lock:
            flt = self._subacks.pop(mid, None)
            if flt is None:
                return False
            reason = reasons[0] if reasons else None
            failed = reason is None or getattr(reason, "is_failure", True)
            if not failed:
                flt.granted = int(reason.value) if reason is not None else 0
                ready = [s for s in flt.subscribers if not s.ready.done()]
                for sub in ready:
                    sub.ready.set_result(flt.granted)
                return True
            error = RefusedError(f"the subscription to {flt.topic_filter!r}",
                                 int(getattr(reason, "value", 0x80)), str(reason))
            subscribers, flt.subscribers = list(flt.subscribers), []
            self._filters.pop(flt.topic_filter, None)
            self._by_id.pop(flt.sub_id, None)
        log.warning("%s", error)
        for sub in subscribers:
            if not sub.ready.done():
                sub.ready.set_exception(error)
            elif sub.refused is not None:
                sub.refused(str(error))
        return True

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        received = _received(message)
        ids = getattr(message.properties, "SubscriptionIdentifier", None) or []
        with self._lock:
            filters = ([self._by_id[i] for i in ids if i in self._by_id] if ids
                       else list(self._filters.values()))
            targets = [sub for flt in filters
                       if mqtttopic.is_match(flt.topic_filter, received.topic)
                       for sub in flt.subscribers]
            if not targets:
                self.stats.unmatched += 1
            self.stats.delivered += len(targets)
        if not targets:
            log.debug("cloud message on %s for no current subscriber", received.topic)
        for sub in targets:
            try:
                sub.deliver(received)
            except Exception:  # one subscriber's bug must not starve the others
                log.exception("delivering a cloud message on %s failed", received.topic)

    # --- internals (lock held) ---------------------------------------------------------

    def _wake(self) -> None:
        """Break the connector's select() now rather than at its next poll: paho's own
        wake-up pipe, the one its publish() uses from other threads in threaded mode."""
        pipe = getattr(self._client, "_sockpairW", None)
        if pipe is not None:
            # Full or closed: the loop's next poll comes within poll_s anyway.
            with contextlib.suppress(OSError):
                pipe.send(b"\0")

    def _next_sub_id(self) -> int:
        while True:
            sub_id = next(self._sub_ids)
            if sub_id > _MAX_SUBSCRIPTION_ID:
                self._sub_ids = itertools.count(1)
                continue
            if sub_id not in self._by_id:
                return sub_id

    def _send_subscribe(self, client: mqtt.Client, flt: _Filter) -> None:
        props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
            packettypes.PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = flt.sub_id
        options = SubscribeOptions(qos=flt.wanted_qos,
                                   retainHandling=flt.retain_handling)
        rc, mid = client.subscribe(flt.topic_filter, options=options, properties=props)
        if rc is MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            flt.send = False
            self._subacks[mid] = flt

    def _load_recorded(self) -> set[str]:
        try:
            value = json.loads(self._filters_file.read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): a previous run's cloud subscriptions stay",
                        self._filters_file, exc)
            return set()
        return {f for f in value if isinstance(f, str)} if isinstance(value, list) else set()

    def _record_filters(self) -> None:
        wanted = set(self._filters)
        try:
            files.write_json(self._filters_file, sorted(wanted))
        except OSError as exc:  # tried again on the next turn that sees a difference
            log.warning("could not record the cloud subscriptions: %s", exc)
            return
        self._recorded = wanted

    def _persist(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        try:
            self._files.write([cloudspool.Record(e.seq, e.queued_at, e.message)
                               for e in entries])
        except OSError as exc:
            # Still queued in memory and sent on reconnect; only a restart loses them.
            log.error("could not persist %d spooled cloud messages: %s", len(entries), exc)
        else:
            for entry in entries:
                entry.persisted = True
            self.stats.spooled += len(entries)
        for entry in entries:
            self._resolve(entry, Outcome.QUEUED)

    def _forget(self, entry: _Entry) -> None:
        if entry.persisted:
            try:
                self._files.remove(entry.seq)
            except OSError as exc:  # sent twice after a restart: at-least-once anyway
                log.error("could not remove spooled cloud message %d: %s", entry.seq, exc)

    def _drop(self, entry: _Entry) -> None:
        self.stats.dropped += 1
        log.warning("cloud spool full (policy drop-oldest): dropped the oldest queued "
                    "message, to %s", entry.message.topic)
        self._forget(entry)
        if not entry.future.done():
            entry.future.set_exception(SpoolFullError(
                "dropped from the full cloud spool (policy drop-oldest) before it was sent"))

    @staticmethod
    def _resolve(entry: _Entry, outcome: Outcome) -> None:
        if not entry.future.done():
            entry.future.set_result(outcome)


def _publish_properties(message: cloudmessage.CloudMessage, waited_s: float) -> Any:
    props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
        packettypes.PacketTypes.PUBLISH)
    if message.user_properties:
        props.UserProperty = list(message.user_properties)
    expiry = cloudmessage.resolve_expiry(message, waited_s)
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    if message.payload_format is not None:
        props.PayloadFormatIndicator = message.payload_format
    if message.content_type is not None:
        props.ContentType = message.content_type
    if message.correlation_data is not None:
        props.CorrelationData = message.correlation_data
    if message.response_topic is not None:
        props.ResponseTopic = message.response_topic
    return props


def _received(message: mqtt.MQTTMessage) -> cloudmessage.CloudMessage:
    props = message.properties
    user = getattr(props, "UserProperty", None) or []
    return cloudmessage.CloudMessage.model_construct(  # the broker's word: no re-checks
        topic=message.topic, payload=bytes(message.payload), qos=message.qos,
        retain=bool(message.retain), user_properties=[(str(k), str(v)) for k, v in user],
        message_expiry_s=getattr(props, "MessageExpiryInterval", None),
        payload_format=getattr(props, "PayloadFormatIndicator", None),
        content_type=getattr(props, "ContentType", None),
        correlation_data=getattr(props, "CorrelationData", None),
        response_topic=getattr(props, "ResponseTopic", None))


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)
