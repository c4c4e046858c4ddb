"""The test component (ipc_component.py) plus cloud commands, with the official SDK's
PublishToIoTCore and SubscribeToIoTCore as a user writes them:

    {"op": "iot_publish", "topic": ..., "payload": base64, "qos": "1", "tag": ...,
     "props": true}  (props: user properties, expiry, content type, correlation data…)
    {"op": "iot_subscribe", "id": ..., "topic": ..., "qos": "1"}

Events: iot_published / failed (with the SDK exception's type and message) / iot_message.
"""

from __future__ import annotations

import base64

import ipc_component as base  # type: ignore[import-not-found]
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

_run = base.run


def on_cloud(sub_id: str):  # type: ignore[no-untyped-def]
    def handle(event: model.IoTCoreMessage) -> None:
        m = event.message
        base.note(event="iot_message", sub=sub_id, topic=m.topic_name,
                  payload=base64.b64encode(m.payload or b"").decode(),
                  user_properties=[[p.key, p.value] for p in m.user_properties or []],
                  correlation=base64.b64encode(m.correlation_data).decode()
                  if m.correlation_data else None,
                  content_type=m.content_type, response_topic=m.response_topic)
    return handle


def run(ipc: GreengrassCoreIPCClientV2, command: dict[str, object]) -> None:
    op = command["op"]
    try:
        if op == "iot_publish":
            extra: dict[str, object] = {}
            if command.get("props"):
                extra = {"user_properties": [model.UserProperty(key="unit", value="C"),
                                             model.UserProperty(key="site", value="b")],
                         "message_expiry_interval_seconds": 600,
                         "correlation_data": b"\x00corr",
                         "response_topic": str(command["topic"]) + "/reply",
                         "payload_format": model.PayloadFormat.UTF8,
                         "content_type": "application/json"}
            ipc.publish_to_iot_core(topic_name=str(command["topic"]),
                                    qos=str(command.get("qos", "1")),
                                    payload=base64.b64decode(str(command["payload"])),
                                    **extra)  # type: ignore[arg-type]
            base.note(event="iot_published", topic=command["topic"], tag=command.get("tag"))
        elif op == "iot_subscribe":
            sub_id = str(command.get("id", command["topic"]))
            _response, operation = ipc.subscribe_to_iot_core(
                topic_name=str(command["topic"]), qos=str(command.get("qos", "1")),
                on_stream_event=on_cloud(sub_id))
            base.SUBSCRIPTIONS[sub_id] = operation
            base.note(event="iot_subscribed", sub=sub_id)
        else:
            _run(ipc, command)
    except Exception as exc:
        base.note(event="failed", op=op, tag=command.get("tag"), **base.error_of(exc))


base.run = run

if __name__ == "__main__":
    base.main()
