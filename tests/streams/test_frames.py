"""The server's transport and read path against a real stream manager process: frames that
arrive in pieces (the SDK sends a header and its payload apart; a large append spans many
TCP segments), several frames in one segment, and batch reads that span segment files —
with the read fd of an old segment kept, and let go when that segment is dropped."""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time

import cbor2
from stream_manager import MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull

from hedgerow.core import streams as core
from tests.streams.conftest import StreamManager
from tests.streams.test_sdk import _connect, _exactly

# Records of 256 bytes (header included): 4 fill a 1 KiB segment.
SMALL = 256 - core.RECORD_OVERHEAD


def _frame(op: core.Operation, body: dict[str, object]) -> bytes:
    payload = cbor2.dumps(body)
    return core.render_frame_header(op, len(payload)) + payload


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    length, op = struct.unpack(">iB", _exactly(sock, 5))
    body: dict[str, object] = cbor2.loads(_exactly(sock, length - 1))
    return op, body


def _append(name: str, request_id: str, payload: bytes) -> bytes:
    return _frame(core.Operation.APPEND_MESSAGE,
                  {"requestId": request_id, "name": name, "payload": payload})


def _in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """Send `data` cut at `cuts`, each piece its own TCP segment (no Nagle; the pause lets
    the server's kernel take each piece before the next is sent)."""
    last = 0
    for cut in [*cuts, len(data)]:
        sock.sendall(data[last:cut])
        last = cut
        time.sleep(0.02)


def test_frames_in_pieces_and_frames_together_are_each_answered_once(
        manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="pieces", strategy_on_full=StrategyOnFull.RejectNewData))
    sock = _connect(manager.port, manager.token)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The SDK's way (header, then payload), then a header cut in two and a payload in
    # three, then a payload past the server's low-water cap (64 KiB) in many segments.
    big = bytes(range(256)) * 1024  # 256 KiB
    frames = [(_append("pieces", "a0", b"zero"), [5]),
              (_append("pieces", "a1", b"one"), [2, 5, 9, 12]),
              (_append("pieces", "a2", big), [5, *range(4096, len(big), 50_000)])]
    for i, (frame, cuts) in enumerate(frames):
        _in_pieces(sock, frame, cuts)
        op, body = _answer(sock)
        assert (op, body) == (core.Operation.APPEND_MESSAGE_RESPONSE,
                              {"requestId": f"a{i}", "status": 0, "sequenceNumber": i})
    # Two whole frames and the start of a third in one segment, then the rest.
    three = _append("pieces", "b3", b"three") + _append("pieces", "b4", b"four")
    five = _frame(core.Operation.READ_MESSAGES, {
        "requestId": "r5", "streamName": "pieces", "readMessagesOptions": {
            "desiredStartSequenceNumber": 0, "minMessageCount": 5, "maxMessageCount": 5}})
    _in_pieces(sock, three + five, [len(three) + 3])
    assert [_answer(sock)[1]["sequenceNumber"] for _ in range(2)] == [3, 4]
    op, read = _answer(sock)
    assert op == core.Operation.READ_MESSAGES_RESPONSE and read["status"] == 0
    messages = read["messages"]
    assert isinstance(messages, list)
    assert [(m["sequenceNumber"], m["payload"]) for m in messages] == [
        (0, b"zero"), (1, b"one"), (2, big), (3, b"three"), (4, b"four")]
    sock.close()


def _stream_fds(pid: int, folder: pathlib.Path) -> list[str]:
    """Where the stream manager's open fds into `folder` point."""
    out = []
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_batch_reads_span_segment_files_and_hold_at_most_one_old_one_open(
        manager: StreamManager) -> None:
    def payload(i: int) -> bytes:
        return f"{i:06d}".encode().ljust(SMALL, b".")

    def read(start: int, count: int) -> list[tuple[int, bytes]]:
        got = client.read_messages("spans", ReadMessagesOptions(
            desired_start_sequence_number=start, min_message_count=1,
            max_message_count=count))
        return [(m.sequence_number, m.payload) for m in got]

    assert manager.proc is not None
    folder = manager.storage / b"spans".hex()
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="spans", max_size=40 * 256, stream_segment_size=1024,
            strategy_on_full=StrategyOnFull.OverwriteOldestData))
        for i in range(40):  # 10 segment files of 4 records
            assert client.append_message("spans", payload(i)) == i
        assert len(list(folder.glob("*.seg"))) == 10
        # From the middle of one file to the middle of another, then every start.
        assert read(2, 30) == [(i, payload(i)) for i in range(2, 32)]
        for start in range(40):
            assert read(start, 7) == [(i, payload(i)) for i in range(start, min(start + 7, 40))]
        # The newest segment's append fd and at most one older segment's read fd.
        assert len(_stream_fds(manager.proc.pid, folder)) <= 2
        assert read(1, 2) == [(1, payload(1)), (2, payload(2))]  # holds file 0 open
        for i in range(40, 44):  # the stream is full: file 0 (0-3) is dropped
            client.append_message("spans", payload(i))
        assert not (folder / f"{0:020d}.seg").exists()
        fds = _stream_fds(manager.proc.pid, folder)
        assert len(fds) <= 2 and not any(f.endswith("(deleted)") for f in fds), fds
        assert read(0, 6) == [(i, payload(i)) for i in range(4, 10)]
        assert read(38, 10) == [(i, payload(i)) for i in range(38, 44)]
