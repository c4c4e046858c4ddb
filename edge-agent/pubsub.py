"""Local publish/subscribe between components: Greengrass's PublishToTopic and
SubscribeToTopic (service `aws.greengrass.ipc.pubsub`) on the IPC server.

A publish is authorized (accessControl), encoded once, and written to each matching
subscriber's connection without waiting: a subscriber that does not read has its
connection's bounded buffer fill, then its events are dropped and counted, then (past
IPC_SUBSCRIBER_STUCK_SECONDS) it is disconnected — the publisher and the agent never
wait for anyone (see ipcserver.Stream.send_payload and Connection.pause_writing).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Final

from hedgerow.agent import ipcserver
from hedgerow.core import accesscontrol, mqtttopic
from hedgerow.core import eventstream as es

PUBLISH: Final = "aws.greengrass#PublishToTopic"
SUBSCRIBE: Final = "aws.greengrass#SubscribeToTopic"
EVENT: Final = "aws.greengrass#SubscriptionResponseMessage"
RECEIVE_ALL: Final = "RECEIVE_ALL_MESSAGES"
RECEIVE_FROM_OTHERS: Final = "RECEIVE_MESSAGES_FROM_OTHERS"


@dataclasses.dataclass(eq=False)
class Subscription:
    component: str
    topic_filter: str
    from_others: bool
    stream: ipcserver.Stream


class Bus:
    """Subscriptions by filter: exact filters in a dict (one lookup per publish), those
    with wildcards in a list matched one by one."""

    def __init__(self) -> None:
        self.exact: dict[str, list[Subscription]] = {}
        self.wild: list[Subscription] = []

    def add(self, sub: Subscription) -> None:
        if "+" in sub.topic_filter or "#" in sub.topic_filter:
            self.wild.append(sub)
        else:
            self.exact.setdefault(sub.topic_filter, []).append(sub)

    def remove(self, sub: Subscription) -> None:
        if sub in self.wild:
            self.wild.remove(sub)
        subs = self.exact.get(sub.topic_filter)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self.exact[sub.topic_filter]

    def matching(self, topic: str) -> list[Subscription]:
        return [*self.exact.get(topic, ()),
                *(s for s in self.wild if mqtttopic.is_match(s.topic_filter, topic))]

    def publish(self, sender: str, topic: str, payload: bytes) -> int:
        """Send the event `payload` to every subscriber of `topic`; how many took it."""
        sent = 0
        for sub in self.matching(topic):
            if sub.from_others and sub.component == sender:
                continue
            sent += sub.stream.send_payload(payload)
        return sent

    def count(self) -> int:
        return len(self.wild) + sum(len(s) for s in self.exact.values())


def _topic(call: ipcserver.Call, *, is_filter: bool) -> str:
    topic: str = call.require("topic")
    problem = (mqtttopic.resolve_filter_problem if is_filter
               else mqtttopic.resolve_topic_problem)(topic)
    if problem is not None:
        raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                f"{call.operation}: topic {topic!r}: {problem}")
    return topic


def _event_of(call: ipcserver.Call, topic: str) -> bytes:
    """The SubscriptionResponseMessage for a publish request (its one message, with the
    context Greengrass adds: the topic it was published to), as JSON."""
    message = call.require("publishMessage", dict)
    json_message, binary = message.get("jsonMessage"), message.get("binaryMessage")
    if (json_message is None) == (binary is None):
        raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
            f"{PUBLISH}: publishMessage needs exactly one of jsonMessage or binaryMessage"))
    context = {"topic": topic}
    if json_message is not None:
        if not isinstance(json_message, dict) or "message" not in json_message:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                    f"{PUBLISH}: jsonMessage needs a message")
        return es.render_json({"jsonMessage": {"message": json_message["message"],
                                               "context": context}})
    data = binary.get("message") if isinstance(binary, dict) else None
    if not isinstance(data, str):
        raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                f"{PUBLISH}: binaryMessage needs a message")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                f"{PUBLISH}: binaryMessage.message is not base64") from None
    # What render_json would make of {"binaryMessage": {"message": data, "context":
    # context}}, put together directly (the bulk of the traffic): base64 needs no escaping.
    return b"".join((b'{"binaryMessage":{"message":"', data.encode(),
                     b'","context":{"topic":', es.render_json(topic), b"}}}"))


def operations(bus: Bus) -> list[ipcserver.Operation]:
    def publish(call: ipcserver.Call) -> dict[str, Any]:
        topic = _topic(call, is_filter=False)
        call.authorize(accesscontrol.PUBSUB, topic)
        bus.publish(call.caller.component, topic, _event_of(call, topic))
        return {}

    def subscribe(call: ipcserver.Call) -> dict[str, Any]:
        topic = _topic(call, is_filter=True)
        call.authorize(accesscontrol.PUBSUB, topic)
        mode = call.request.get("receiveMode") or RECEIVE_ALL  # Greengrass's default
        if mode not in (RECEIVE_ALL, RECEIVE_FROM_OTHERS):
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{SUBSCRIBE}: receiveMode {mode!r} is neither {RECEIVE_ALL} nor "
                f"{RECEIVE_FROM_OTHERS}"))
        assert call.stream is not None
        sub = Subscription(call.caller.component, topic, mode == RECEIVE_FROM_OTHERS,
                           call.stream)
        bus.add(sub)
        call.stream.on_close(lambda: bus.remove(sub))
        return {}

    return [ipcserver.Operation(PUBLISH, "aws.greengrass#PublishToTopicResponse", publish),
            ipcserver.Operation(SUBSCRIBE, "aws.greengrass#SubscribeToTopicResponse",
                                subscribe, stream_event=EVENT)]
