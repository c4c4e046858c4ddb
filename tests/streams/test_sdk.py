"""Every stream operation through the official Stream Manager SDK (stream-manager 1.1.2),
against a real stream manager process; a wrong token and a hostile client."""

from __future__ import annotations

import socket
import struct
import threading
import time

import cbor2
import pytest
from stream_manager import (
    ExportDefinition,
    HTTPConfig,
    KinesisConfig,
    MessageStreamDefinition,
    Persistence,
    ReadMessagesOptions,
    StrategyOnFull,
)
from stream_manager.exceptions import (
    ConnectFailedException,
    InvalidRequestException,
    NotEnoughMessagesException,
    ResourceNotFoundException,
    UpdateNotAllowedException,
)

from tests.streams.conftest import StreamManager
from tests.support.net import LOOPBACK


def definition(name: str, **kw: object) -> MessageStreamDefinition:
    kw.setdefault("strategy_on_full", StrategyOnFull.RejectNewData)
    return MessageStreamDefinition(name=name, **kw)


@pytest.mark.parametrize("persistence", [Persistence.File, Persistence.Memory])
def test_every_operation(manager: StreamManager, persistence: Persistence) -> None:
    with manager.client() as client:
        client.create_message_stream(definition("sensor readings, v1", persistence=persistence,
                                                flush_on_write=True))
        client.create_message_stream(definition("other", persistence=persistence))
        assert client.list_streams() == ["other", "sensor readings, v1"]
        with pytest.raises(InvalidRequestException, match="already exists"):
            client.create_message_stream(definition("other"))

        seqs = [client.append_message("sensor readings, v1", f"m{i}".encode())
                for i in range(10)]
        assert seqs == list(range(10))

        got = client.read_messages("sensor readings, v1", ReadMessagesOptions(
            desired_start_sequence_number=3, min_message_count=2, max_message_count=4))
        assert [(m.sequence_number, m.payload) for m in got] == [
            (3, b"m3"), (4, b"m4"), (5, b"m5"), (6, b"m6")]
        assert all(m.stream_name == "sensor readings, v1" and m.ingest_time > 0 for m in got)
        # No options: one message, from the start.
        assert [m.sequence_number for m in client.read_messages("sensor readings, v1")] == [0]

        with pytest.raises(NotEnoughMessagesException):
            client.read_messages("sensor readings, v1", ReadMessagesOptions(
                desired_start_sequence_number=8, min_message_count=5))

        info = client.describe_message_stream("sensor readings, v1")
        assert info.storage_status.oldest_sequence_number == 0
        assert info.storage_status.newest_sequence_number == 9
        assert info.storage_status.total_bytes > 20
        assert info.definition.flush_on_write is True
        assert info.definition.persistence == persistence

        client.update_message_stream(definition("other", persistence=persistence,
                                                max_size=4096))
        assert client.describe_message_stream("other").definition.max_size == 4096
        other = Persistence.Memory if persistence == Persistence.File else Persistence.File
        with pytest.raises(UpdateNotAllowedException, match="persistence"):
            client.update_message_stream(definition("other", persistence=other))

        client.delete_message_stream("other")
        assert client.list_streams() == ["sensor readings, v1"]
        for call in (lambda: client.append_message("other", b"x"),
                     lambda: client.read_messages("other"),
                     lambda: client.describe_message_stream("other"),
                     lambda: client.delete_message_stream("other")):
            with pytest.raises(ResourceNotFoundException, match="'other' does not exist"):
                call()  # type: ignore[no-untyped-call]


def test_read_waits_for_new_data_without_polling(manager: StreamManager) -> None:
    with manager.client() as client, manager.client() as writer:
        client.create_message_stream(definition("wait"))
        started = time.monotonic()
        threading.Timer(0.5, lambda: writer.append_message("wait", b"late")).start()
        got = client.read_messages("wait", ReadMessagesOptions(
            min_message_count=1, read_timeout_millis=20_000))
        waited = time.monotonic() - started
        assert [m.payload for m in got] == [b"late"]
        assert 0.4 < waited < 10  # answered when the append came, not at the timeout

        started = time.monotonic()
        with pytest.raises(NotEnoughMessagesException):
            client.read_messages("wait", ReadMessagesOptions(
                desired_start_sequence_number=1, read_timeout_millis=300))
        assert time.monotonic() - started >= 0.29


def test_unsupported_export_is_accepted_and_says_so(manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(definition("to-aws", export_definition=ExportDefinition(
            kinesis=[KinesisConfig(identifier="k1", kinesis_stream_name="x")],
            http=[HTTPConfig(identifier="h1", uri="http://127.0.0.1:9/", disabled=True)])))
        client.append_message("to-aws", b"kept")
        statuses = client.describe_message_stream("to-aws").export_statuses
        assert [(s.export_config_identifier, s.error_message) for s in statuses] == [
            ("k1", "Kinesis export is not supported by Hedgerow, use http or mqtt")]
        assert client.read_messages("to-aws")[0].payload == b"kept"


def test_wrong_token_is_refused(manager: StreamManager) -> None:
    for token in ("not-the-token", ""):
        with pytest.raises(ConnectFailedException):
            manager.client(token=token)
    assert "wrong or missing auth token" in manager.log.read_text()
    assert manager.token not in manager.log.read_text()
    with manager.client() as client:  # the rightful owner goes on
        client.create_message_stream(definition("after"))
        assert client.list_streams() == ["after"]


def _connect(port: int, token: str) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    body = cbor2.dumps({"requestId": "r", "protocolVersion": "1.1.0", "authToken": token})
    sock.sendall(b"\x01" + struct.pack(">iB", len(body) + 1, 1) + body)
    reply = _exactly(sock, 6)
    assert reply[:1] == b"\x01"
    _exactly(sock, struct.unpack(">i", reply[1:5])[0] - 1)  # the ConnectResponse
    return sock


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True


def test_hostile_frames_close_only_that_connection(manager: StreamManager) -> None:
    """An attacker who holds a token sends garbage: its connection is closed, the server
    and every other client carry on."""
    with manager.client() as client:
        client.create_message_stream(definition("steady"))
        # A frame is judged once its header and first payload byte are in: the server is
        # not woken for a header alone (SO_RCVLOWAT), as the SDK sends the two apart.
        hostile = [
            struct.pack(">iB", 2**31 - 1, 4) + b"\xa0",  # 2 GiB: refused, not allocated
            struct.pack(">iB", -5, 4) + b"\xa0",  # a negative length
            struct.pack(">iB", 6, 4) + b"\xff\xff\xff\xff\xff",  # not CBOR
            struct.pack(">iB", 3, 4) + cbor2.dumps([1]),  # CBOR, not a map
        ]
        for frame in hostile:
            sock = _connect(manager.port, manager.token)
            sock.sendall(frame)
            assert _closed(sock)
            sock.close()
            assert client.append_message("steady", b"still") >= 0
        # Wrong connect version: closed before any stream is touched.
        sock = socket.create_connection((LOOPBACK, manager.port), timeout=10)
        sock.sendall(b"\x07garbage")
        assert _closed(sock)
        assert len(client.read_messages("steady", ReadMessagesOptions(
            min_message_count=4, max_message_count=10))) == 4
        assert manager.proc is not None and manager.proc.poll() is None


def _connect_answer(port: int, body: dict[str, object]) -> dict[str, object]:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    data = cbor2.dumps(body)
    sock.sendall(b"\x01" + struct.pack(">iB", len(data) + 1, 1) + data)
    head = b""
    while len(head) < 6:
        head += sock.recv(6 - len(head))
    assert head[:1] == b"\x01" and head[5] == 6  # connect version, ConnectResponse
    length = struct.unpack(">i", head[1:5])[0] - 1
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    sock.close()
    answer: dict[str, object] = cbor2.loads(payload)
    return answer


def test_protocol_version_negotiation(manager: StreamManager) -> None:
    """A newer client that also speaks 1.0.0 gets 1.0.0; one that speaks nothing we know
    gets UnsupportedProtocolVersion (10)."""
    older = _connect_answer(manager.port, {
        "requestId": "a", "protocolVersion": "9.0.0", "authToken": manager.token,
        "otherSupportedProtocolVersions": ["1.0.0"]})
    assert (older["status"], older["protocolVersion"]) == (0, "1.0.0")
    assert older["requestId"] == "a"
    unknown = _connect_answer(manager.port, {
        "requestId": "b", "protocolVersion": "9.0.0", "authToken": manager.token})
    assert unknown["status"] == 10


def test_a_definition_that_cannot_be_stored_is_refused_and_changes_nothing(
        manager: StreamManager) -> None:
    sock = _connect(manager.port, manager.token)
    body = cbor2.dumps({"requestId": "x", "definition": {
        "name": "odd", "strategyOnFull": 0, "unknownField": b"\x00\x01"}})
    sock.sendall(struct.pack(">iB", len(body) + 1, 2) + body)
    head = _exactly(sock, 5)
    assert head[4] == 7  # CreateMessageStreamResponse
    answer = cbor2.loads(_exactly(sock, struct.unpack(">i", head[:4])[0] - 1))
    assert answer["status"] == 3 and "cannot be stored" in answer["errorMessage"]
    sock.close()
    with manager.client() as client:
        assert client.list_streams() == []
