"""The IPC server's protocol edges, on a real socket, with frames no SDK would send
(compatibility with the official client is tests/agent/test_ipc.py's job): version
mismatch, oversized or early frames, pings, bad requests, the stream bound."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
from collections.abc import Awaitable, Callable

import hypothesis
import pytest
from hypothesis import strategies as st

from hedgerow.agent import ipcserver, pubsub
from hedgerow.core import accesscontrol, limits
from hedgerow.core import eventstream as es

TOKEN = "good-token"
POLICIES = accesscontrol.resolve_policies("c", {"accessControl": {accesscontrol.PUBSUB: {
    "p": {"operations": ["*"], "resources": ["*"]}}}})


def lookup(token: str) -> ipcserver.Caller | None:
    return ipcserver.Caller("c", token, POLICIES) if token == TOKEN else None


class Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = es.Decoder()
        self.pending: list[es.RpcMessage] = []

    def send(self, message: es.RpcMessage) -> None:
        self.writer.write(es.render_rpc(message))

    async def receive(self) -> es.RpcMessage | None:
        """The next message, or None once the server closed the connection."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                return None
            for item in self.decoder.feed(data):
                assert isinstance(item, es.Message), item
                rpc = es.resolve_rpc(item)
                assert isinstance(rpc, es.RpcMessage), rpc
                self.pending.append(rpc)
        return self.pending.pop(0)

    async def closed(self) -> bool:
        while (message := await self.receive()) is not None:
            pass
        return message is None

    async def connect(self, token: str = TOKEN, version: str = es.PROTOCOL_VERSION) -> int:
        self.send(es.RpcMessage(es.MessageType.CONNECT, headers=(
            es.Header.string(es.VERSION, version),), payload=json.dumps(
            {"authToken": token}).encode()))
        ack = await self.receive()
        assert ack is not None and ack.type is es.MessageType.CONNECT_ACK
        return int(ack.flags)

    def call(self, sid: int, operation: str, body: object) -> None:
        self.send(es.RpcMessage(es.MessageType.APPLICATION_MESSAGE, stream_id=sid, headers=(
            es.Header.string(es.OPERATION, operation),), payload=json.dumps(body).encode()))


def serve(test: Callable[[ipcserver.Server, Callable[[], Awaitable[Peer]]], Awaitable[None]],
          tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        server = ipcserver.Server(tmp_path / "ipc" / "ipc.sock", lookup,
                                  pubsub.operations(pubsub.Bus()))
        await server.start()

        async def peer() -> Peer:
            return Peer(*await asyncio.open_unix_connection(str(server.path)))
        try:
            await test(server, peer)
        finally:
            server.close()
    asyncio.run(main())


def test_socket_permissions(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, _peer: Callable[[], Awaitable[Peer]]) -> None:
        assert server.path.stat().st_mode & 0o777 == 0o666
        assert server.path.parent.stat().st_mode & 0o777 == 0o711
    serve(test, tmp_path)


@pytest.mark.parametrize(("token", "version", "accepted"), [
    (TOKEN, es.PROTOCOL_VERSION, True), ("forged", es.PROTOCOL_VERSION, False),
    (TOKEN, "9.9.9", False), ("", es.PROTOCOL_VERSION, False),
])
def test_handshake(tmp_path: pathlib.Path, token: str, version: str, accepted: bool) -> None:
    async def test(server: ipcserver.Server, peer: Callable[[], Awaitable[Peer]]) -> None:
        p = await peer()
        flags = await p.connect(token, version)
        assert bool(flags & es.Flag.CONNECTION_ACCEPTED) is accepted
        if not accepted:
            assert await p.closed()
        else:  # a ping is answered with its payload
            p.send(es.RpcMessage(es.MessageType.PING, payload=b"hi"))
            pong = await p.receive()
            assert pong is not None and pong.type is es.MessageType.PING_RESPONSE
            assert pong.payload == b"hi"
    serve(test, tmp_path)


@pytest.mark.parametrize("first", [
    es.render_rpc(es.RpcMessage(es.MessageType.APPLICATION_MESSAGE, stream_id=1)),
    es.render(es.Message((es.Header.string("a", "b"),))),          # no :message-type
    es.render(es.Message((), b"x" * (20 * limits.KIB))),          # over the pre-connect bound
    b"\x00" * 64,
])
def test_anything_but_a_connect_first_closes_the_connection(tmp_path: pathlib.Path,
                                                             first: bytes) -> None:
    async def test(server: ipcserver.Server, peer: Callable[[], Awaitable[Peer]]) -> None:
        p = await peer()
        p.writer.write(first)
        answer = await p.receive()
        assert answer is not None and answer.type is es.MessageType.PROTOCOL_ERROR
        assert await p.closed()
        q = await peer()  # the server is fine
        assert await q.connect() == es.Flag.CONNECTION_ACCEPTED
    serve(test, tmp_path)


def test_bad_requests_are_modelled_errors(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, peer: Callable[[], Awaitable[Peer]]) -> None:
        p = await peer()
        await p.connect()
        p.send(es.RpcMessage(es.MessageType.APPLICATION_MESSAGE, stream_id=1, headers=(
            es.Header.string(es.OPERATION, pubsub.PUBLISH),), payload=b"not json"))
        p.call(3, pubsub.PUBLISH, {"topic": "a/#", "publishMessage": {"jsonMessage": {}}})
        p.call(5, pubsub.PUBLISH, {"topic": "a", "publishMessage": {}})
        p.call(7, pubsub.SUBSCRIBE, {"topic": "a", "receiveMode": "SOMETIMES"})
        p.call(9, pubsub.PUBLISH, {"topic": "a", "publishMessage": {
            "binaryMessage": {"message": "%%%"}}})
        p.send(es.RpcMessage(es.MessageType.APPLICATION_MESSAGE, stream_id=11, headers=(
            es.Header.string(es.OPERATION, pubsub.PUBLISH),), payload=b'{"topic": "\xff"}'))
        for sid in (1, 3, 5, 7, 9, 11):
            answer = await p.receive()
            assert answer is not None and answer.stream_id == sid
            assert answer.type is es.MessageType.APPLICATION_ERROR
            assert answer.flags & es.Flag.TERMINATE_STREAM
            assert answer.header(es.SERVICE_MODEL_TYPE) == ipcserver.INVALID_ARGUMENTS
    serve(test, tmp_path)


def test_streams_per_connection_are_bounded(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, peer: Callable[[], Awaitable[Peer]]) -> None:
        p = await peer()
        await p.connect()
        bound = limits.MAX_IPC_STREAMS_PER_CONNECTION
        for i in range(bound + 1):
            p.call(2 * i + 1, pubsub.SUBSCRIBE, {"topic": f"t/{i}"})
        answers = [await p.receive() for _ in range(bound + 1)]
        assert all(a is not None and a.type is es.MessageType.APPLICATION_MESSAGE
                   for a in answers[:-1])
        last = answers[-1]
        assert last is not None and last.header(es.SERVICE_MODEL_TYPE) == \
            ipcserver.SERVICE_ERROR
        assert server.details_of("c")["streams"] == bound
    serve(test, tmp_path)


def test_json_nested_too_deep_is_invalid_arguments(tmp_path: pathlib.Path) -> None:
    async def test(server: ipcserver.Server, peer: Callable[[], Awaitable[Peer]]) -> None:
        p = await peer()
        await p.connect()
        p.send(es.RpcMessage(es.MessageType.APPLICATION_MESSAGE, stream_id=1, headers=(
            es.Header.string(es.OPERATION, pubsub.PUBLISH),), payload=b"[" * 500_000))
        answer = await p.receive()
        assert answer is not None
        assert answer.header(es.SERVICE_MODEL_TYPE) == ipcserver.INVALID_ARGUMENTS
    serve(test, tmp_path)


@hypothesis.given(st.text(min_size=1, max_size=30), st.binary(max_size=64),
                  st.none() | st.integers() | st.text(max_size=10))
def test_events_are_the_json_of_their_message(topic: str, data: bytes,
                                              value: object) -> None:
    """A binary message's event, put together without the JSON encoder, is what the
    encoder makes of it (a topic may hold quotes, backslashes, any Unicode)."""
    def event(message: dict[str, object]) -> object:
        call = ipcserver.Call(ipcserver.Caller("c", TOKEN, POLICIES), pubsub.PUBLISH,
                              {"topic": topic, "publishMessage": message})
        return json.loads(pubsub._event_of(call, topic))
    encoded = base64.b64encode(data).decode()
    assert event({"binaryMessage": {"message": encoded}}) == {
        "binaryMessage": {"message": encoded, "context": {"topic": topic}}}
    assert event({"jsonMessage": {"message": value}}) == {
        "jsonMessage": {"message": value, "context": {"topic": topic}}}


def test_authorization_decisions_are_remembered_per_connection_and_bounded() -> None:
    policies = accesscontrol.resolve_policies("c", {"accessControl": {
        accesscontrol.PUBSUB: {"p": {"operations": ["*"], "resources": ["ok/*"]}}}})
    decisions: dict[tuple[str, str, str], bool] = {}
    call = ipcserver.Call(ipcserver.Caller("c", TOKEN, policies), pubsub.PUBLISH, {},
                          decisions=decisions)
    for _ in range(2):  # the second time from what it remembered: the same answers
        call.authorize(accesscontrol.PUBSUB, "ok/1")
        with pytest.raises(ipcserver.RefusalError) as refused:
            call.authorize(accesscontrol.PUBSUB, "no/1")
        assert refused.value.model == ipcserver.UNAUTHORIZED
    assert decisions == {(accesscontrol.PUBSUB, pubsub.PUBLISH, "ok/1"): True,
                         (accesscontrol.PUBSUB, pubsub.PUBLISH, "no/1"): False}
    for i in range(3 * ipcserver._DECISIONS):
        call.authorize(accesscontrol.PUBSUB, f"ok/{i}")
        assert len(decisions) <= ipcserver._DECISIONS


def test_a_revoked_policy_ends_what_an_open_connection_remembered(
        tmp_path: pathlib.Path) -> None:
    """The attacker keeps a connection open after its access was taken away, hoping the
    connection's remembered "allowed" outlives the policy: the agent's pass (refresh)
    closes the connection, and a new one with the same token is refused."""
    allowing = accesscontrol.resolve_policies("c", {"accessControl": {accesscontrol.PUBSUB: {
        "p": {"operations": ["*"], "resources": ["ok/*"]}}}})
    policies = {"now": allowing}

    def changing(token: str) -> ipcserver.Caller | None:
        return ipcserver.Caller("c", token, policies["now"]) if token == TOKEN else None

    async def main() -> None:
        server = ipcserver.Server(tmp_path / "ipc" / "ipc.sock", changing,
                                  pubsub.operations(pubsub.Bus()))
        await server.start()
        try:
            p = Peer(*await asyncio.open_unix_connection(str(server.path)))
            await p.connect()
            p.call(1, pubsub.PUBLISH, {"topic": "ok/a", "publishMessage": {
                "jsonMessage": {"message": 1}}})
            answer = await p.receive()
            assert answer is not None and answer.type is es.MessageType.APPLICATION_MESSAGE
            policies["now"] = accesscontrol.resolve_policies("c", {})  # revoked
            server.refresh()
            assert await p.closed()
            q = Peer(*await asyncio.open_unix_connection(str(server.path)))
            await q.connect()
            q.call(1, pubsub.PUBLISH, {"topic": "ok/a", "publishMessage": {
                "jsonMessage": {"message": 2}}})
            refused = await q.receive()
            assert refused is not None and refused.type is es.MessageType.APPLICATION_ERROR
            assert refused.header(es.SERVICE_MODEL_TYPE) == ipcserver.UNAUTHORIZED
        finally:
            server.close()
    asyncio.run(main())


@pytest.mark.parametrize("forged", [
    'QUFB","context":{"topic":"someone/else"}}}',  # closes the string, forges the context
    'QUFB\\"', "QUFB\n", "QU FB",
])
def test_a_binary_message_cannot_write_into_the_event_around_it(forged: str) -> None:
    """The event of a binary message is put together by hand, not by the JSON encoder:
    what is not base64 is refused before it could close the string it lands in."""
    call = ipcserver.Call(ipcserver.Caller("c", TOKEN, POLICIES), pubsub.PUBLISH,
                          {"topic": "t", "publishMessage": {"binaryMessage": {
                              "message": forged}}})
    with pytest.raises(ipcserver.RefusalError) as refused:
        pubsub._event_of(call, "t")
    assert refused.value.model == ipcserver.INVALID_ARGUMENTS
