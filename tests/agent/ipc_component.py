"""A component written with the official Greengrass IPC SDK, as a user writes one.

It runs as the agent starts it (as `nobody`, or in a container), connects with
`GreengrassCoreIPCClientV2()` — the socket and token from the environment the agent
gave it — and carries out the commands a test drops into $HOME/commands/ (JSON files,
taken in name order), writing what happened to $HOME/events.jsonl. Stdlib + awsiotsdk.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import pathlib
import socket
import struct
import sys
import time
import zlib

from awsiot.greengrasscoreipc import connect, model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

HOME = pathlib.Path(os.environ.get("IPC_TEST_HOME") or os.environ["HOME"])
COMMANDS = HOME / "commands"
EVENTS = HOME / "events.jsonl"
SLOW = float(os.environ.get("IPC_TEST_SLOW", "0"))


def note(**fields: object) -> None:
    line = json.dumps(fields)
    with EVENTS.open("a") as out:
        out.write(line + "\n")
    print(line, flush=True)  # the component's log too (what a container test reads)


def error_of(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(getattr(exc, "message", "") or exc)}


def on_event(sub_id: str):  # type: ignore[no-untyped-def]
    def handle(event: model.SubscriptionResponseMessage) -> None:
        if event.json_message is not None:
            note(event="message", sub=sub_id, topic=event.json_message.context.topic,
                 json=event.json_message.message)
        else:
            message = event.binary_message
            note(event="message", sub=sub_id, topic=message.context.topic,
                 binary=base64.b64encode(message.message).decode(),
                 size=len(message.message))
        if SLOW:
            time.sleep(SLOW)  # on the SDK's own thread: it stops reading the socket
    return handle


def frame(headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = head + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def flood(seconds: float) -> int:
    """What a hostile component does: connection after connection of garbage, bad CRCs,
    frames announcing 16 MiB, requests before connecting. How many connections it made."""
    path = os.environ["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"]
    big = struct.pack(">II", 16 << 20, 0)
    attacks = [os.urandom(4096), big + struct.pack(">I", zlib.crc32(big)) + os.urandom(4096),
               frame(b"", b"x")[:-1] + b"\0", frame(b"\x01a\x0a", b""),
               frame(b"\x0d:message-type\x04\x00\x00\x00\x00", b"{}") * 100]
    made, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for attack in attacks:
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(path)
                    sock.sendall(attack)
                    sock.settimeout(1)
                    sock.recv(4096)
                except OSError:
                    pass
                made += 1
    return made


def run(ipc: GreengrassCoreIPCClientV2, command: dict[str, object]) -> None:
    op = command["op"]
    try:
        if op == "subscribe":
            sub_id = str(command.get("id", command["topic"]))
            _response, operation = ipc.subscribe_to_topic(
                topic=str(command["topic"]), receive_mode=command.get("mode"),
                on_stream_event=on_event(sub_id))
            SUBSCRIPTIONS[sub_id] = operation
            note(event="subscribed", sub=sub_id)
        elif op == "unsubscribe":
            SUBSCRIPTIONS.pop(str(command["id"])).close().result(10)
            note(event="unsubscribed", sub=command["id"])
        elif op == "publish":
            message = (model.PublishMessage(json_message=model.JsonMessage(
                message=command["json"])) if "json" in command else model.PublishMessage(
                binary_message=model.BinaryMessage(
                    message=base64.b64decode(str(command["binary"])))))
            ipc.publish_to_topic(topic=str(command["topic"]), publish_message=message)
            note(event="published", topic=command["topic"], tag=command.get("tag"))
        elif op == "publish_many":
            count, size = int(command["count"]), int(command["size"])  # type: ignore[call-overload]
            rate = float(command.get("rate") or 0)  # type: ignore[arg-type]  # per second; 0: flat out
            began = time.monotonic()
            futures = []
            for i in range(count):
                if rate and (ahead := began + i / rate - time.monotonic()) > 0:
                    time.sleep(ahead)
                data = i.to_bytes(4, "big") + b"x" * (size - 4)
                futures.append(ipc.publish_to_topic_async(
                    topic=str(command["topic"]), publish_message=model.PublishMessage(
                        binary_message=model.BinaryMessage(message=data))))
                if len(futures) >= 64:
                    for f in futures:
                        f.result(30)
                    futures = []
            for f in futures:
                f.result(30)
            note(event="published_many", count=count, seconds=time.monotonic() - began)
        elif op == "connect":  # another token than mine: a forged or stale one
            try:
                other = connect(authtoken=str(command["token"]), timeout=10)
            except Exception as exc:
                note(event="connect", ok=False, **error_of(exc))
            else:
                other.close()
                note(event="connect", ok=True)
        elif op == "call":  # an operation by name, e.g. one not served
            method = getattr(ipc, str(command["method"]))
            method(**dict(command.get("args", {})))  # type: ignore[call-overload]
            note(event="called", method=command["method"])
        elif op == "flood":
            note(event="flooded", connections=flood(float(command["seconds"])))  # type: ignore[arg-type]
        elif op == "exit":
            note(event="exiting")
            sys.exit(0)
    except Exception as exc:
        note(event="failed", op=op, tag=command.get("tag"), **error_of(exc))


SUBSCRIPTIONS: dict[str, object] = {}


def main() -> None:
    COMMANDS.mkdir(exist_ok=True)
    try:
        # One handler thread: events are handled in the order they arrive (the SDK's
        # default pool may run two handlers at once); a slow one runs on the SDK's own
        # thread, so that it stops reading the socket.
        ipc = GreengrassCoreIPCClientV2(
            executor=None if SLOW else concurrent.futures.ThreadPoolExecutor(1))
    except Exception as exc:
        note(event="connected", ok=False, **error_of(exc))
        ipc = None
    else:
        note(event="connected", ok=True)
    for command in json.loads(os.environ.get("IPC_TEST_COMMANDS") or "[]"):
        run(ipc, command)  # type: ignore[arg-type]
    done: set[str] = set()
    while True:
        for path in sorted(COMMANDS.glob("*.json")):
            if path.name not in done:
                done.add(path.name)
                command = json.loads(path.read_text())
                if ipc is None and command["op"] not in ("connect", "flood", "exit"):
                    note(event="failed", op=command["op"], error="not connected")
                    continue
                run(ipc, command)  # type: ignore[arg-type]
        time.sleep(0.05)


if __name__ == "__main__":
    main()
