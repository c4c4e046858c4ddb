"""Components' cloud messages: what `PublishToIoTCore` hands the agent, what the offline
spool keeps, and how a full spool decides. Pure: models and decisions, no I/O.

The agent multiplexes every component's cloud messages onto the cloud connector's one
MQTT 5 session (edge-agent/cloudproxy.py). A publish made while the device is offline
waits in a bounded, persisted spool (state/cloud-spool/) and is sent in order on
reconnect; a QoS 1 message stays spooled until the broker's PUBACK.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Final

import pydantic

from hedgerow.core import base, limits, mqtttopic

# MQTT 5 bounds a property string to 65,535 bytes; a component gets far less, so one
# message (topic, properties and all) always fits the broker's packet limit.
MAX_TOPIC_BYTES: Final = 1024
MAX_USER_PROPERTIES: Final = 64
MAX_PROPERTY_BYTES: Final = 1024
# What a message may carry besides its payload, counted generously: the payload gets the
# rest of the broker's packet.
_ENVELOPE_BYTES: Final = (MAX_TOPIC_BYTES * 2 + MAX_USER_PROPERTIES * 2 * MAX_PROPERTY_BYTES
                          + 4 * MAX_PROPERTY_BYTES + 64)
MAX_PAYLOAD_BYTES: Final = limits.BROKER_MAX_PACKET_BYTES - _ENVELOPE_BYTES


class SpoolPolicy(base.StrEnum):
    """What a full spool does with one more message."""

    # The default: a message once accepted (and answered with success) is never thrown
    # away to make room; the component whose publish does not fit is told, now, and
    # decides itself (retry, aggregate, drop).
    REFUSE_NEW = "refuse-new"
    # Telemetry whose newest reading matters most: the oldest spooled messages go
    # (logged and counted) to make room for the new one.
    DROP_OLDEST = "drop-oldest"


DEFAULT_SPOOL_POLICY: Final = SpoolPolicy.REFUSE_NEW


class CloudMessage(base.Model):
    """One MQTT 5 publish a component asked for (field names as the spool stores them)."""

    model_config = pydantic.ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    topic: str
    payload: bytes = b""
    qos: Annotated[int, pydantic.Field(ge=0, le=1)] = 0
    retain: bool = False
    user_properties: list[tuple[str, str]] = []
    message_expiry_s: Annotated[int, pydantic.Field(ge=0, le=2**32 - 1)] | None = None
    payload_format: Annotated[int, pydantic.Field(ge=0, le=1)] | None = None  # 1: UTF-8
    content_type: str | None = None
    correlation_data: bytes | None = None
    response_topic: str | None = None

    @property
    def size(self) -> int:
        """Bytes this message counts for against the spool's bound."""
        return (len(self.payload) + len(self.topic.encode())
                + sum(len(k.encode()) + len(v.encode()) for k, v in self.user_properties)
                + len((self.content_type or "").encode()) + len(self.correlation_data or b"")
                + len((self.response_topic or "").encode()))


def resolve_topic_problem(topic: str, *, wildcards: bool) -> str | None:
    """Why ``topic`` cannot be published to (``wildcards`` False) or subscribed to (True)."""
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"the topic is longer than {MAX_TOPIC_BYTES} bytes"
    problem = (mqtttopic.resolve_filter_problem if wildcards
               else mqtttopic.resolve_topic_problem)(topic)
    return None if problem is None else f"{topic!r}: {problem}"


def resolve_message_problem(message: CloudMessage) -> str | None:
    """Why ``message`` cannot be sent (a bad request, told to the component), or None."""
    problem = resolve_topic_problem(message.topic, wildcards=False)
    if problem is not None:
        return problem
    if message.response_topic is not None:
        problem = resolve_topic_problem(message.response_topic, wildcards=False)
        if problem is not None:
            return f"responseTopic: {problem}"
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        return (f"the payload is {len(message.payload)} bytes; at most {MAX_PAYLOAD_BYTES} "
                f"fit the cloud broker's packet limit")
    if len(message.user_properties) > MAX_USER_PROPERTIES:
        return f"more than {MAX_USER_PROPERTIES} user properties"
    texts = [("userProperties", s) for pair in message.user_properties for s in pair]
    texts += [("contentType", message.content_type or "")]
    for name, text in texts:
        if len(text.encode()) > MAX_PROPERTY_BYTES:
            return f"{name}: a value is longer than {MAX_PROPERTY_BYTES} bytes"
    if len(message.correlation_data or b"") > MAX_PROPERTY_BYTES:
        return f"correlationData is longer than {MAX_PROPERTY_BYTES} bytes"
    return None


def resolve_expiry(message: CloudMessage, waited_s: float) -> int | None:
    """The message expiry interval to send after ``waited_s`` seconds in the spool (MQTT
    counts it from the publish, so time spent queued counts too); None: no expiry. A
    message whose interval has run out is not sent at all (see is_expired)."""
    if message.message_expiry_s is None:
        return None
    return max(0, message.message_expiry_s - int(waited_s))


def is_expired(message: CloudMessage, waited_s: float) -> bool:
    return message.message_expiry_s is not None and waited_s >= message.message_expiry_s


@dataclasses.dataclass(frozen=True)
class SpoolDecision:
    accept: bool
    drop: int = 0  # how many of the oldest queued messages go first


def plan_spool(sizes: list[int], size: int, max_messages: int, max_bytes: int,
               policy: SpoolPolicy, held: tuple[int, int] = (0, 0)) -> SpoolDecision:
    """Whether one more message of ``size`` bytes fits a spool holding ``sizes`` (oldest
    first, droppable) and ``held`` = (count, bytes) that cannot be dropped (sent, not
    acknowledged yet); under drop-oldest, how many of the oldest to drop to make it fit.
    A message that cannot fit even with every droppable one gone is refused."""
    count, total = len(sizes) + held[0], sum(sizes) + held[1]
    if size + held[1] > max_bytes or held[0] + 1 > max_messages:
        return SpoolDecision(accept=False)
    if count + 1 <= max_messages and total + size <= max_bytes:
        return SpoolDecision(accept=True)
    if policy is SpoolPolicy.REFUSE_NEW:
        return SpoolDecision(accept=False)
    drop = 0
    while count - drop + 1 > max_messages or total + size > max_bytes:
        total -= sizes[drop]
        drop += 1
    return SpoolDecision(accept=True, drop=drop)
