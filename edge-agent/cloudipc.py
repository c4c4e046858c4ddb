"""Greengrass's PublishToIoTCore and SubscribeToIoTCore (service
`aws.greengrass.ipc.mqttproxy`) on the IPC server, through the cloud proxy
(cloudproxy.py) onto the connector's one MQTT 5 session.

Field names are the SDK's (`awsiot/greengrasscoreipc/model.py`): `topicName`, `qos` as
the strings "0"/"1", `payload` and `correlationData` base64, `retain`, `userProperties`
[{key, value}], `messageExpiryIntervalSeconds`, `payloadFormat` "0" (bytes) / "1"
(UTF-8), `contentType`, `responseTopic`; events are `IoTCoreMessage {message:
MQTTMessage}`.

What a PublishToIoTCore answer means:
- success: the broker acknowledged it (QoS 1: PUBACK; QoS 0: written), or the device is
  offline and it is queued in the persisted spool (as Greengrass answers a spooled
  publish), or the broker did not answer within ANSWER_TIMEOUT_S (it stays queued);
- ServiceError naming the broker's reason code: the broker refused it (its ACL: 0x87
  Not authorized) — never silence;
- ServiceError: the spool is full and its policy is refuse-new;
- InvalidArgumentsError: a bad topic, QoS or field; UnauthorizedError: no accessControl
  policy of the component allows the operation on that topic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from typing import Any, Final

from hedgerow.agent import cloudproxy, ipcserver
from hedgerow.core import accesscontrol, cloudmessage

log = logging.getLogger("hedgerow.agent.cloudipc")

PUBLISH: Final = "aws.greengrass#PublishToIoTCore"
SUBSCRIBE: Final = "aws.greengrass#SubscribeToIoTCore"
EVENT: Final = "aws.greengrass#IoTCoreMessage"
# A connected broker that does not answer for this long is a connection about to be
# declared dead (keepalive): the caller is answered as for an offline publish.
ANSWER_TIMEOUT_S: Final = 20.0
_QOS: Final = {"0": 0, "1": 1}
_FORMAT: Final = {"0": 0, "1": 1}  # PayloadFormat.BYTES, PayloadFormat.UTF8


def _invalid(operation: str, reason: str) -> ipcserver.RefusalError:
    return ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, f"{operation}: {reason}")


def _topic(call: ipcserver.Call, *, is_filter: bool) -> str:
    topic: str = call.require("topicName")
    problem = cloudmessage.resolve_topic_problem(topic, wildcards=is_filter)
    if problem is not None:
        raise _invalid(call.operation, f"topicName: {problem}")
    return topic


def _qos(call: ipcserver.Call) -> int:
    value = call.request.get("qos", "0")
    qos = _QOS.get(str(value)) if isinstance(value, str | int) else None
    if qos is None:
        raise _invalid(call.operation, f"qos must be \"0\" or \"1\" (got {value!r}; "
                       "Hedgerow's cloud session does not do QoS 2)")
    return qos


def _b64(call: ipcserver.Call, field: str) -> bytes | None:
    value = call.request.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(call.operation, f"{field} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(call.operation, f"{field} is not base64") from None


def _text(call: ipcserver.Call, field: str) -> str | None:
    value = call.request.get(field)
    if value is not None and not isinstance(value, str):
        raise _invalid(call.operation, f"{field} must be a string")
    return value


def _message_of(call: ipcserver.Call, topic: str) -> cloudmessage.CloudMessage:
    request = call.request
    retain = request.get("retain", False)
    if not isinstance(retain, bool):
        raise _invalid(call.operation, "retain must be true or false")
    properties = request.get("userProperties") or []
    if not isinstance(properties, list) or not all(
            isinstance(p, dict) and isinstance(p.get("key"), str)
            and isinstance(p.get("value"), str) for p in properties):
        raise _invalid(call.operation, "userProperties must be a list of {key, value} "
                       "strings")
    expiry = request.get("messageExpiryIntervalSeconds")
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, int)
                               or not 0 <= expiry < 2**32):
        raise _invalid(call.operation, "messageExpiryIntervalSeconds must be a whole "
                       "number of seconds, 0 to 4294967295")
    fmt = request.get("payloadFormat")
    if fmt is not None and str(fmt) not in _FORMAT:
        raise _invalid(call.operation, f"payloadFormat must be \"0\" (bytes) or \"1\" "
                       f"(UTF-8) (got {fmt!r})")
    return cloudmessage.CloudMessage(
        topic=topic, payload=_b64(call, "payload") or b"", qos=_qos(call), retain=retain,
        user_properties=[(p["key"], p["value"]) for p in properties],
        message_expiry_s=expiry,
        payload_format=None if fmt is None else _FORMAT[str(fmt)],
        content_type=_text(call, "contentType"),
        correlation_data=_b64(call, "correlationData"),
        response_topic=_text(call, "responseTopic"))


def render_event(message: cloudmessage.CloudMessage) -> dict[str, Any]:
    """An IoTCoreMessage event for a message from the cloud."""
    body: dict[str, Any] = {
        "topicName": message.topic,
        "payload": base64.b64encode(message.payload).decode(),
        "retain": message.retain,
    }
    if message.user_properties:
        body["userProperties"] = [{"key": k, "value": v} for k, v in message.user_properties]
    if message.message_expiry_s is not None:
        body["messageExpiryIntervalSeconds"] = message.message_expiry_s
    if message.correlation_data is not None:
        body["correlationData"] = base64.b64encode(message.correlation_data).decode()
    if message.response_topic is not None:
        body["responseTopic"] = message.response_topic
    if message.payload_format is not None:
        body["payloadFormat"] = str(message.payload_format)
    if message.content_type is not None:
        body["contentType"] = message.content_type
    return {"message": body}


def _service_error(exc: Exception) -> ipcserver.RefusalError:
    return ipcserver.RefusalError(ipcserver.SERVICE_ERROR, str(exc))


def operations(proxy: cloudproxy.CloudProxy) -> list[ipcserver.Operation]:
    async def publish(call: ipcserver.Call) -> dict[str, Any]:
        topic = _topic(call, is_filter=False)
        call.authorize(accesscontrol.MQTTPROXY, topic)
        message = _message_of(call, topic)
        try:
            # Offline it writes the spool file: off the event loop.
            future = await asyncio.to_thread(proxy.publish, message)
        except cloudproxy.InvalidMessageError as exc:
            raise _invalid(call.operation, str(exc)) from None
        except cloudproxy.SpoolFullError as exc:
            raise _service_error(exc) from None
        try:
            # shield: a timeout must not cancel the proxy's future (it still resolves).
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                   ANSWER_TIMEOUT_S)
        except cloudproxy.CloudError as exc:
            log.info("%s from %s: %s", PUBLISH, call.caller.component, exc)
            raise _service_error(exc) from None
        except TimeoutError:
            log.info("%s from %s to %s: no PUBACK within %.0f s; it stays queued",
                     PUBLISH, call.caller.component, topic, ANSWER_TIMEOUT_S)
        return {}

    async def subscribe(call: ipcserver.Call) -> dict[str, Any]:
        topic = _topic(call, is_filter=True)
        call.authorize(accesscontrol.MQTTPROXY, topic)
        qos = _qos(call)
        stream = call.stream
        assert stream is not None
        loop = asyncio.get_running_loop()

        def deliver(message: cloudmessage.CloudMessage) -> None:  # the connector thread
            loop.call_soon_threadsafe(stream.send, render_event(message))

        def refused(reason: str) -> None:  # the connector thread
            log.warning("ending %s's cloud subscription to %s: %s", call.caller.component,
                        topic, reason)
            loop.call_soon_threadsafe(functools.partial(stream.close, tell=True))

        try:
            sub = proxy.subscribe(topic, qos, deliver, refused)
        except cloudproxy.InvalidMessageError as exc:
            raise _invalid(call.operation, str(exc)) from None
        stream.on_close(lambda: proxy.unsubscribe(sub))
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(sub.ready)),
                                   ANSWER_TIMEOUT_S)
        except cloudproxy.CloudError as exc:
            proxy.unsubscribe(sub)
            raise _service_error(exc) from None
        except TimeoutError:
            pass  # subscribed as soon as the broker answers
        except asyncio.CancelledError:
            if not sub.ready.cancelled():
                raise  # the agent is stopping
            # The client closed the stream (or went away) before the broker answered.
            raise ipcserver.RefusalError(ipcserver.SERVICE_ERROR, (
                f"{SUBSCRIBE}: the stream to {topic!r} was closed before the broker "
                "answered")) from None
        return {}

    return [ipcserver.Operation(PUBLISH, "aws.greengrass#PublishToIoTCoreResponse",
                                publish),
            ipcserver.Operation(SUBSCRIBE, "aws.greengrass#SubscribeToIoTCoreResponse",
                                subscribe, stream_event=EVENT)]
