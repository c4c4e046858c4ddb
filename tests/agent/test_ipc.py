"""Component IPC through the OFFICIAL client: components started by a real agent, as
`nobody`, written with `awsiot.greengrasscoreipc.clientv2` (tests/agent/ipc_component.py),
exchange messages on the agent's socket — and hostile ones (forged tokens, floods of
malformed frames, a subscriber that never reads) disturb nobody else."""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import shutil
import socket
import struct
import zlib

import yaml

from . import ipc_support
from .conftest import THING, AgentProcess, rc, wait_for
from .ipc_support import policy, sdk_component, start

HERE = pathlib.Path(__file__).resolve().parent
sdk = ipc_support.sdk  # the fixture


def test_components_exchange_messages_with_wildcards_and_receive_mode(
        agent: AgentProcess, sdk: pathlib.Path) -> None:
    ops = [f"aws.greengrass#{o}" for o in ("PublishToTopic", "SubscribeToTopic")]
    a, b = start(agent,
                 sdk_component(sdk, "ipc.a", policy("ipc.a", ops, ["sensors/#", "chat/*"])),
                 sdk_component(sdk, "ipc.b", policy("ipc.b", ["*"], ["sensors/+/temp",
                                                                    "chat/#"])))
    a.command("subscribe", id="temps", topic="sensors/+/temp")
    a.command("subscribe", id="chat", topic="chat/#")
    b.command("subscribe", id="chat", topic="chat/#", mode="RECEIVE_MESSAGES_FROM_OTHERS")
    for c, n in ((a, 2), (b, 1)):
        c.wait(lambda e, n=n, c=c: len(c.events("subscribed")) == n, "subscribed")
    b.command("publish", topic="sensors/kitchen/temp", json={"celsius": 21.5})
    b.command("publish", topic="sensors/kitchen/temp", binary=base64.b64encode(
        b"\x00\xffraw").decode())
    b.command("publish", topic="chat/b", json={"from": "b"})  # b must not hear itself
    b.command("publish", topic="sensors/kitchen/humidity", json={"ignored": True},
              tag="refused")  # b's policy does not cover it
    a.command("publish", topic="chat/a", json={"from": "a"})
    a.wait(lambda e: e["event"] == "published", "a published")
    a.command("publish", topic="chat/a2", json={"from": "a", "last": True})
    b.wait(lambda e: e.get("topic") == "chat/a2", "the last chat message")
    a.wait(lambda e: e.get("topic") == "chat/a2", "a hears itself (RECEIVE_ALL_MESSAGES)")

    assert [(m["topic"], m.get("json"), m.get("binary")) for m in a.messages("temps")] == [
        ("sensors/kitchen/temp", {"celsius": 21.5}, None),
        ("sensors/kitchen/temp", None, base64.b64encode(b"\x00\xffraw").decode())]
    # two publishers: the order between them is theirs; a's own two arrive in order
    assert sorted(m["topic"] for m in a.messages("chat")) == ["chat/a", "chat/a2", "chat/b"]
    # RECEIVE_MESSAGES_FROM_OTHERS: b's own chat/b never reached it, a's did.
    assert [m["topic"] for m in b.messages("chat")] == ["chat/a", "chat/a2"]


def test_unauthorized_publish_is_refused_with_the_policy_to_write(
        agent: AgentProcess, sdk: pathlib.Path) -> None:
    """Default deny: a component without a policy for a topic gets the SDK's
    UnauthorizedError, whose message names it, the operation, the topic, and the YAML
    that would allow it; a subscription it may not make is refused too, and the topics
    it may use keep working."""
    (c,) = start(agent, sdk_component(sdk, "ipc.nosy", policy(
        "ipc.nosy", ["aws.greengrass#PublishToTopic"], ["public/*"])))
    c.command("publish", topic="factory/secrets", json={"x": 1}, tag="pub")
    c.command("subscribe", id="s", topic="factory/#")
    c.command("publish", topic="public/notice", json={"x": 1}, tag="ok")
    c.wait(lambda e: e.get("tag") == "ok", "the allowed publish")
    refused = list(c.events("failed"))
    assert [e["error"] for e in refused] == ["UnauthorizedError", "UnauthorizedError"]
    message = refused[0]["message"]
    assert "ipc.nosy is not authorized to call aws.greengrass#PublishToTopic on resource " \
           '"factory/secrets"' in message
    assert ("accessControl:\n  aws.greengrass.ipc.pubsub:\n    ipc.nosy:pubsub:1:\n"
            in message and "- aws.greengrass#PublishToTopic\n" in message
            and "- factory/secrets" in message)
    assert 'aws.greengrass#SubscribeToTopic on resource "factory/#"' in refused[1]["message"]


def test_operation_not_served_answers_service_error(agent: AgentProcess,
                                                    sdk: pathlib.Path) -> None:
    (c,) = start(agent, sdk_component(sdk, "ipc.curious"))
    c.command("call", method="create_debug_password", args={})
    c.command("publish", topic="t", json={}, tag="after")
    event = c.wait(lambda e: e["event"] == "failed" and e["op"] == "call", "the refusal")
    assert event["error"] == "ServiceError"
    assert "aws.greengrass#CreateDebugPassword is not served" in event["message"]
    # the connection is fine: the next call is answered (here: refused, no policy)
    assert c.wait(lambda e: e.get("tag") == "after", "the next call")["error"] == \
        "UnauthorizedError"


def _connect_message(payload: bytes) -> bytes:
    """A connect message by hand (no SDK can send one without a token)."""
    def header(name: str, kind: int, value: bytes) -> bytes:
        return bytes((len(name),)) + name.encode() + bytes((kind,)) + value
    headers = (header(":message-type", 4, struct.pack(">i", 4))
               + header(":message-flags", 4, struct.pack(">i", 0))
               + header(":stream-id", 4, struct.pack(">i", 0))
               + header(":version", 7, struct.pack(">H", 5) + b"0.1.0"))
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = head + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _connect_ack_flags(answer: bytes) -> int:
    flags_at = answer.index(b":message-flags") + len(":message-flags") + 1
    return int(struct.unpack_from(">i", answer, flags_at)[0])


def _raw_connect(path: pathlib.Path, payload: bytes) -> int:
    """The flags of the connect-ack to a hand-made connect (the server then closes)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(_connect_message(payload))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return _connect_ack_flags(answer) if len(answer) >= 16 else -1


def test_forged_missing_and_stale_tokens_cannot_connect(agent: AgentProcess,
                                                        sdk: pathlib.Path) -> None:
    """An attacker component (as nobody) with a token of the right shape but not its
    own cannot connect; a connect without a token gets a refusal; and a component
    reinstalled gets a new token: the old one (leaked, say) is dead, and the new process
    connects with its new one."""
    (mallory,) = start(agent, sdk_component(sdk, "ipc.mallory"))
    own = agent.record("ipc.mallory")["token"]
    forged = base64.urlsafe_b64encode(hashlib.sha256(own.encode()).digest()[:24]).decode()
    assert len(forged) == len(own) and forged != own
    mallory.command("connect", token=forged)
    event = mallory.wait(lambda e: e["event"] == "connect", "the forged connect")
    assert not event["ok"]
    assert _raw_connect(agent.root / "ipc" / "ipc.sock", b"{}") == 0  # no accepted flag
    assert _raw_connect(agent.root / "ipc" / "ipc.sock", b"") == 0
    # A connection made with the token while it was valid (a leaked token, say)...
    leaked = socket.socket(socket.AF_UNIX)
    leaked.settimeout(30)
    leaked.connect(str(agent.root / "ipc" / "ipc.sock"))
    leaked.sendall(_connect_message(json.dumps({"authToken": own}).encode()))
    assert _connect_ack_flags(leaked.recv(4096)) == 1  # accepted
    # Reinstalled (a new version; a configuration change alone keeps it running, as in
    # Greengrass): a new token, the old one refused, and the connection made with it
    # closed by the agent.
    agent.deploy(sdk_component(sdk, "ipc.mallory", version="1.0.1"))
    wait_for(lambda: agent.record("ipc.mallory")["token"] != own, 30, "a new token")
    agent.wait_states({"ipc.mallory": "RUNNING"}, timeout=30)
    mallory.wait(lambda e: e["event"] == "connected" and
                 len(mallory.events("connected")) >= 2, "the new process connected")
    mallory.command("connect", token=own)
    events = wait_for(lambda: list(mallory.events("connect"))[1:], 30, "stale")
    assert not events[0]["ok"]
    assert "connect refused" in agent.log.read_text()
    with leaked:
        assert leaked.recv(4096) == b""  # closed: its component was reinstalled


def test_a_flood_of_malformed_frames_disturbs_no_one(agent: AgentProcess,
                                                     sdk: pathlib.Path) -> None:
    """A component floods the socket with garbage, bad CRCs, frames announcing 16 MiB
    and requests before connecting, connection after connection; meanwhile two other
    components keep exchanging messages and the agent keeps converging."""
    ops = ["*"]
    evil, a, b = start(agent, sdk_component(sdk, "ipc.evil"),
                       sdk_component(sdk, "ipc.a", policy("ipc.a", ops, ["t/#"])),
                       sdk_component(sdk, "ipc.b", policy("ipc.b", ops, ["t/#"])))
    a.command("subscribe", id="t", topic="t/#")
    a.wait(lambda e: e["event"] == "subscribed", "subscribed")
    evil.command("flood", seconds=8)
    for i in range(20):
        b.command("publish", topic=f"t/{i}", json={"i": i})
    # the agent converges meanwhile: a new component comes up
    agent.deploy(sdk_component(sdk, "ipc.evil"),
                 *[sdk_component(sdk, n, policy(n, ops, ["t/#"])) for n in ("ipc.a", "ipc.b")],
                 rc("plain", "sleep 60"))
    agent.wait_states({"ipc.evil": "RUNNING", "ipc.a": "RUNNING", "ipc.b": "RUNNING",
                       "plain": "RUNNING"}, timeout=30)
    a.wait(lambda e: e.get("topic") == "t/19", "every message during the flood")
    assert [m["json"]["i"] for m in a.messages("t")] == list(range(20))
    flooded = evil.wait(lambda e: e["event"] == "flooded", "the flood's end", timeout=60)
    assert flooded["connections"] >= 10
    b.command("publish", topic="t/after", json={"i": -1})
    a.wait(lambda e: e.get("topic") == "t/after", "a message after the flood")
    log = agent.log.read_text()
    assert "bad prelude CRC" in log or "bad message CRC" in log
    assert "frame over the size bound" in log
    assert "expected a connect message" in log
    # and what it made the agent log is bounded (a burst, then about one line a second)
    assert log.count("IPC connection of") < 60 < flooded["connections"], flooded


def test_slow_subscriber_never_blocks_the_publisher_and_its_drops_are_counted(
        agent: AgentProcess, sdk: pathlib.Path) -> None:
    """A subscriber whose handler takes 1 s per message stops reading; the publisher's
    16 MiB go out undelayed by it, a fast subscriber gets every message, the slow one's
    drops are counted (`hedgerow component details`), and once it has been stuck past
    the bound it is disconnected with a logged reason."""
    ops = ["*"]
    pub, fast, slow = start(
        agent, sdk_component(sdk, "ipc.pub", policy("ipc.pub", ops, ["bulk"])),
        sdk_component(sdk, "ipc.fast", policy("ipc.fast", ops, ["bulk"])),
        sdk_component(sdk, "ipc.slow", policy("ipc.slow", ops, ["bulk"]), slow=1.0))
    for c in (fast, slow):
        c.command("subscribe", id="bulk", topic="bulk")
        c.wait(lambda e: e["event"] == "subscribed", "subscribed")
    # 200 a second: 3 MiB/s, which a subscriber that reads keeps up with even on a busy
    # machine (flat out, the publisher outran a CPU-starved "fast" one by its 4 MiB
    # buffer: 88 of 1,024 dropped at load 6), while the slow one's buffer is full in ~2 s.
    pub.command("publish_many", topic="bulk", count=1024, size=16 * 1024, rate=200)
    done = pub.wait(lambda e: e["event"] in ("published_many", "failed"), "published",
                    timeout=120)
    assert done["event"] == "published_many", done
    # Once per poll, not through Client.wait (which would read the 22 MB of events once
    # per event it looks at: quadratic, enough to miss the timeout on a busy machine).
    def dropped(name: str) -> int:
        shown = agent.cli("component", "details", name, "-o", "json")
        assert shown.returncode == 0, shown.stderr
        return int(json.loads(shown.stdout)["ipc"]["dropped"])
    try:
        wait_for(lambda: len(fast.messages()) >= 1024, 60, "ipc.fast: all 1024",
                 interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: ipc.fast has {len(fast.messages())}, the agent "
                             f"dropped {dropped('ipc.fast')} of its events") from None
    assert wait_for(lambda: dropped("ipc.slow"), 30, "drops counted") > 0
    wait_for(lambda: "slow subscriber" in agent.log.read_text(), 60,
             "the slow subscriber disconnected")
    assert len(slow.messages()) < 1024


def test_the_example_pubsub_pair_runs(agent: AgentProcess, sdk: pathlib.Path) -> None:
    """examples/ipc-pubsub.yaml through its local deployment: the listener prints what
    the publisher sends (only the SDK's location is added, as a device would)."""
    examples = HERE.parents[1] / "examples"
    deployments = agent.root / "deployments"
    shutil.copy(examples / "ipc-pubsub.yaml", deployments)
    local = yaml.safe_load((examples / "local" / "ipc-pubsub.yaml").read_text())
    local["spec"]["target"]["thing"] = THING
    for comp in local["spec"]["components"]:
        update = comp.setdefault("configurationUpdate", {}).setdefault("merge", {})
        update["pythonPath"] = str(sdk)
    (deployments / "local.yaml").write_text(yaml.safe_dump(local))
    agent.wait_states({"com.example.SensorListener": "RUNNING",
                       "com.example.SensorPublisher": "RUNNING"}, timeout=30)
    listener = agent.root / "logs" / "com.example.SensorListener.log"
    wait_for(lambda: listener.exists() and
             f"on example/sensors/{THING}" in listener.read_text(), 30, "a reading")


def test_closing_a_stream_ends_its_subscription(agent: AgentProcess,
                                                 sdk: pathlib.Path) -> None:
    """`operation.close()` (a terminate-stream message) ends that subscription and no
    other; the agent's count of open streams follows."""
    (c,) = start(agent, sdk_component(sdk, "ipc.closer", policy("ipc.closer", ["*"], ["*"])))

    def streams() -> int:
        shown = agent.cli("component", "details", "ipc.closer", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        return int(json.loads(shown.stdout)["ipc"]["streams"])
    c.command("subscribe", id="one", topic="x/#")
    c.command("subscribe", id="two", topic="x/+")
    wait_for(lambda: len(c.events("subscribed")) == 2, 30, f"{c.name}: two subscriptions")
    assert streams() == 2
    c.command("unsubscribe", id="one")
    c.wait(lambda e: e["event"] == "unsubscribed", "closed")
    wait_for(lambda: streams() == 1, 10, "one stream left")
    c.command("publish", topic="x/y", json={"after": "close"})
    c.wait(lambda e: e["event"] == "message", "the message on the open stream")
    c.command("publish", topic="x/z", json={"last": True})
    c.wait(lambda e: e.get("topic") == "x/z", "the last message")
    assert [(m["sub"], m["topic"]) for m in c.messages()] == [("two", "x/y"), ("two", "x/z")]
