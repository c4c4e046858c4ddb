"""The Stream Manager SDK's protocol on a loopback TCP port.

One connection: the client's connect version byte, a Connect frame (CBOR) with its
protocol versions and auth token; we answer our version byte and a ConnectResponse. Then
request frames, each answered by the response operation carrying the same requestId;
requests run concurrently (a read that waits does not hold up an append on the same
connection). Connections are asyncio Protocols: an append costs one callback from the
socket's readiness to its answer (or to its sync round), no task, future or stream
reader in between. A frame that is not the protocol (a bad length, CBOR that does not decode,
a payload that is not a map) closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import pathlib
import socket
from typing import Any

import cbor2

from hedgerow.core import streams as core
from hedgerow.streams import store as store_

log = logging.getLogger("hedgerow.streams")

# Connect must arrive quickly: a client that opens a socket and says nothing holds a slot.
_CONNECT_TIMEOUT_S = 10.0
# Requests one connection may have in progress (reads that wait, appends that sync); more
# are not read from the socket until one finishes.
_MAX_IN_FLIGHT = 256
# The SDK writes a frame's 5-byte header and its payload with two sends, so a request
# arrives as two TCP segments and woke the server twice: once for a header it can do
# nothing with. SO_RCVLOWAT (Linux) keeps the socket unreadable until the rest of the
# frame being read is there (between frames: a header and a payload's first byte), up to
# this many bytes, so whole requests wake it once. The kernel still reports end of file,
# errors and memory pressure at once, whatever the mark.
_LOW_WATER_CAP = 64 * 1024
_FRAME_HEAD = core.FRAME_HEADER.size


class Tokens:
    """The SHA-256 of every token allowed to connect, read from the file the agent keeps
    (one hex digest a line), re-read when the file changes."""

    def __init__(self, path: pathlib.Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._digests: frozenset[str] = frozenset()

    def _refresh(self) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            self._seen, self._digests = None, frozenset()
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._seen:
            try:
                text = self.path.read_text()
            except OSError:
                return
            self._digests = frozenset(line.strip() for line in text.splitlines()
                                      if line.strip())
            self._seen = key

    def is_allowed(self, token: Any) -> bool:
        if self.path is None:
            return True  # `--no-auth`, for a developer's machine only
        if not isinstance(token, str) or not token:
            return False
        self._refresh()
        return hashlib.sha256(token.encode()).hexdigest() in self._digests


class Server:
    def __init__(self, store: store_.Store, tokens: Tokens) -> None:
        self.store, self.tokens = store, tokens
        self.describe_exports: Any = lambda stream: []  # set by the export manager

    def protocol(self) -> Connection:
        """A new connection's protocol (for `loop.create_server`)."""
        return Connection(self)

    def connect(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        """The ConnectResponse to a Connect request: status SUCCESS lets it in."""
        answer: dict[str, Any] = {"requestId": request.get("requestId"),
                                  "serverVersion": core.SERVER_VERSION,
                                  "supportedProtocolVersions": [
                                      core.PROTOCOL_VERSION, *core.OLD_PROTOCOL_VERSIONS]}
        others = request.get("otherSupportedProtocolVersions") or []
        version_ = core.resolve_protocol_version(
            str(request.get("protocolVersion")),
            [str(v) for v in others] if isinstance(others, list) else [])
        if not self.tokens.is_allowed(request.get("authToken")):
            # Never log the token; the peer's port says which connection it was.
            log.warning("refused a connection from %s: wrong or missing auth token", peer)
            answer.update(status=int(core.Status.UNAUTHORIZED),
                          errorMessage="wrong or missing AWS_CONTAINER_AUTHORIZATION_TOKEN")
        elif version_ is None:
            answer.update(status=int(core.Status.UNSUPPORTED_PROTOCOL_VERSION),
                          errorMessage=f"protocol {request.get('protocolVersion')!r} "
                                       f"is not one of {core.PROTOCOL_VERSION}, "
                                       f"{', '.join(core.OLD_PROTOCOL_VERSIONS)}")
        else:
            answer.update(status=int(core.Status.SUCCESS), protocolVersion=version_,
                          clientIdentifier=f"{peer}")
        return answer

    async def answer(self, op: int, request: dict[str, Any],
                      writer: asyncio.WriteTransport) -> None:
        request_id = request.get("requestId")
        try:
            operation = core.Operation(op)
            response_op = core.RESPONSE_OF[operation]
        except (ValueError, KeyError):
            _write_frame(writer, core.Operation.UNKNOWN_OPERATION_ERROR, {
                "requestId": request_id, "status": int(core.Status.UNKNOWN_OPERATION),
                "errorMessage": f"unknown operation {op}"})
            return
        try:
            if operation is core.Operation.READ_MESSAGES:
                count, pieces = await self._read(request)
                if not writer.is_closing():
                    _write_messages(writer, request_id, count, pieces)
                return
            body = await self._dispatch(operation, request)
            answer = {"requestId": request_id, "status": int(core.Status.SUCCESS), **body}
        except Exception as exc:  # a bug must answer the client, not leave it waiting
            answer = _error_answer(operation, request_id, exc)
        if not writer.is_closing():
            _write_frame(writer, response_op, answer)

    def read_now(self, request: dict[str, Any], writer: asyncio.WriteTransport) -> bool:
        """Answer a read whose messages are there at once, in the callback that parsed
        it (no task); False when it must wait for appends (`answer` does that)."""
        request_id = request.get("requestId")
        try:
            stream = self.store.get(request.get("streamName"))
            opts = core.resolve_read_options(request.get("readMessagesOptions"))
            if stream.available(opts.start) < opts.min_count:
                return False
            count, pieces = stream.render_read(opts.start, opts.max_count or opts.min_count,
                                               core.MAX_READ_RESPONSE_BYTES)
        except Exception as exc:
            _write_frame(writer, core.Operation.READ_MESSAGES_RESPONSE,
                         _error_answer(core.Operation.READ_MESSAGES, request_id, exc))
            return True
        _write_messages(writer, request_id, count, pieces)
        return True

    def append(self, request: dict[str, Any], writer: asyncio.WriteTransport) -> None:
        request_id = request.get("requestId")
        op = core.Operation.APPEND_MESSAGE_RESPONSE
        try:
            stream = self.store.get(request.get("name"))
            payload = request.get("payload")
            if not isinstance(payload, bytes):
                raise core.RequestError(core.Status.INVALID_REQUEST, "payload: must be bytes")
            seq = stream.append(payload, self.store.budget_left(stream))
        except Exception as exc:
            _write_frame(writer, op, _error_answer(core.Operation.APPEND_MESSAGE,
                                                   request_id, exc))
            return

        def answer(exc: BaseException | None) -> None:
            # Never before the sync covering `seq` has completed (exc None), so an
            # acknowledged flushOnWrite append survives a crash.
            if writer.is_closing():
                return
            if exc is not None:
                _write_frame(writer, op, _error_answer(core.Operation.APPEND_MESSAGE,
                                                       request_id, exc))
            elif isinstance(request_id, str):  # the SDK's: a UUID
                body = core.render_append_response(request_id, seq)
                writer.write(core.render_frame_header(op, len(body)) + body)
            else:
                _write_frame(writer, op, {"requestId": request_id,
                                          "status": int(core.Status.SUCCESS),
                                          "sequenceNumber": seq})
        if stream.durable_appends:
            stream.when_durable(seq, answer)
        else:
            answer(None)

    async def _dispatch(self, op: core.Operation, req: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        if op is core.Operation.CREATE_MESSAGE_STREAM:
            store.create(core.resolve_definition(req.get("definition")))
            return {}
        if op is core.Operation.UPDATE_MESSAGE_STREAM:
            store.update(core.resolve_definition(req.get("definition")))
            return {}
        if op is core.Operation.DELETE_MESSAGE_STREAM:
            store.delete(req.get("name"))
            return {}
        if op is core.Operation.LIST_STREAMS:
            return {"streams": sorted(store.streams)}
        if op is core.Operation.DESCRIBE_MESSAGE_STREAM:
            stream = store.get(req.get("name"))
            return {"messageStreamInfo": {
                "definition": dict(stream.definition.raw),
                "storageStatus": {"oldestSequenceNumber": stream.oldest(),
                                  "newestSequenceNumber": stream.visible - 1,
                                  "totalBytes": stream.total_bytes},
                "exportStatuses": self.describe_exports(stream)}}
        raise core.RequestError(core.Status.UNKNOWN_OPERATION, f"operation {op.name}")

    async def _read(self, req: dict[str, Any]) -> tuple[int, list[bytes | memoryview]]:
        stream = self.store.get(req.get("streamName"))
        opts = core.resolve_read_options(req.get("readMessagesOptions"))
        want = opts.max_count or opts.min_count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.timeout_ms / 1000
        # Wait on the stream's event (set by appends and sync rounds), never by polling.
        while stream.available(opts.start) < opts.min_count:
            left = deadline - loop.time()
            if left <= 0 or stream.deleted:
                raise core.RequestError(
                    core.Status.NOT_ENOUGH_MESSAGES,
                    f"stream {stream.name!r} has {stream.available(opts.start)} messages "
                    f"from {opts.start}, fewer than minMessageCount {opts.min_count}")
            stream.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.changed.wait(), left)
        count, pieces = stream.render_read(opts.start, want, core.MAX_READ_RESPONSE_BYTES)
        return count, pieces


class Connection(asyncio.Protocol):
    """One client: its connect version byte and Connect frame, then request frames,
    parsed as they arrive (every whole frame in a read, no task or future per frame):
    appends are answered inline or by their sync round, reads whose messages are there
    inline, other requests as tasks (a read that waits does not hold up an append on the
    same connection)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = "version"  # → "connect" → "open"
        self.tasks: set[asyncio.Task[None]] = set()
        self.write_paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.sock: Any = None  # set while SO_RCVLOWAT works on it
        self.low_water = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if hasattr(socket, "SO_RCVLOWAT") and sock is not None \
                and sock.family in (socket.AF_INET, socket.AF_INET6):
            self.sock = sock
        # Connect must arrive quickly: a client that opens a socket and says nothing
        # holds a slot.
        self.timer = asyncio.get_running_loop().call_later(_CONNECT_TIMEOUT_S,
                                                           transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for task in self.tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._consume()
        except core.FrameError as exc:
            log.warning("closing a connection that broke the protocol: %s", exc)
            self.buf.clear()
            assert self.transport is not None
            self.transport.close()
            return
        if self.sock is not None and self.transport is not None \
                and not self.transport.is_closing():
            self._set_low_water()

    def _set_low_water(self) -> None:
        """Wake for the next whole frame, not for its header alone (see _LOW_WATER_CAP)."""
        buf = self.buf
        if self.state == "version":
            need = 1 + _FRAME_HEAD + 1 - len(buf)
        elif len(buf) < _FRAME_HEAD:
            need = _FRAME_HEAD + 1 - len(buf)  # every frame has a payload: a CBOR map
        else:
            need = _FRAME_HEAD + core.FRAME_HEADER.unpack_from(buf)[0] - 1 - len(buf)
        mark = min(max(need, 1), _LOW_WATER_CAP)
        if mark != self.low_water:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            except OSError:  # a kernel without it: wake per segment, as before
                self.sock = None
                return
            self.low_water = mark

    def _consume(self) -> None:
        transport, buf = self.transport, self.buf
        assert transport is not None
        if self.state == "version":
            if not buf:
                return
            if buf[0] != core.CONNECT_VERSION:
                raise core.FrameError(f"connect version {buf[0]}, expected "
                                      f"{core.CONNECT_VERSION}")
            del buf[:1]
            self.state = "connect"
        pos, size = 0, core.FRAME_HEADER.size
        try:
            while len(buf) - pos >= size and not transport.is_closing():
                length, op = core.resolve_frame_header(bytes(buf[pos:pos + size]))
                if len(buf) - pos - size < length:
                    break
                request = _decode(bytes(buf[pos + size:pos + size + length]))
                pos += size + length
                if self.state == "connect":
                    self._connect(op, request)
                elif op == core.Operation.APPEND_MESSAGE:
                    self.server.append(request, transport)  # the hot path, inline
                elif op == core.Operation.READ_MESSAGES and \
                        self.server.read_now(request, transport):
                    pass  # answered inline: its messages were there
                else:
                    task = asyncio.get_running_loop().create_task(
                        self.server.answer(op, request, transport))
                    self.tasks.add(task)
                    task.add_done_callback(self._done)
                    if len(self.tasks) >= _MAX_IN_FLIGHT:
                        transport.pause_reading()  # backpressure, not unbounded tasks
        finally:
            del buf[:pos]

    def _connect(self, op: int, request: dict[str, Any]) -> None:
        assert self.transport is not None
        if op != core.Operation.CONNECT:
            raise core.FrameError(f"first frame is operation {op}, not Connect")
        if self.timer is not None:
            self.timer.cancel()
        answer = self.server.connect(request, self.transport.get_extra_info("peername"))
        self.transport.write(bytes([core.CONNECT_VERSION]))
        _write_frame(self.transport, core.Operation.CONNECT_RESPONSE, answer)
        if answer["status"] == core.Status.SUCCESS:
            self.state = "open"
        else:
            self.transport.close()  # after the answer is sent

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._maybe_resume()

    # Answers a client does not read must not pile up here: stop reading its requests.
    def pause_writing(self) -> None:
        self.write_paused = True
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        transport = self.transport
        if (transport is not None and not transport.is_closing() and not self.write_paused
                and len(self.tasks) < _MAX_IN_FLIGHT and not transport.is_reading()):
            transport.resume_reading()


def _error_answer(operation: core.Operation, request_id: Any,
                  exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, core.RequestError):
        return {"requestId": request_id, "status": int(exc.status),
                "errorMessage": exc.message}
    if not isinstance(exc, OSError):
        log.error("%s failed", operation.name, exc_info=exc)
    else:
        log.error("%s failed: %s", operation.name, exc)
    return {"requestId": request_id,
            "status": int(core.Status.MESSAGE_STORE_READ_ERROR
                          if operation is core.Operation.READ_MESSAGES
                          else core.Status.UNKNOWN_FAILURE),
            "errorMessage": f"storage error: {getattr(exc, 'strerror', None) or exc}"}


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        value = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several kinds for hostile input
        raise core.FrameError(f"payload is not CBOR: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise core.FrameError("payload is not a CBOR map")
    return value


def _write_frame(writer: asyncio.WriteTransport, op: core.Operation,
                 body: dict[str, Any]) -> None:
    payload = cbor2.dumps(body)
    writer.write(core.render_frame_header(op, len(payload)) + payload)


# The head of a successful ReadMessagesResponse up to its requestId's value; the rest is
# status 0 and the messages array (built from the segments by core.render_messages).
_READ_HEAD = core.render_cbor_head(5, 3) + cbor2.dumps("requestId")
_READ_STATUS = cbor2.dumps("status") + cbor2.dumps(0) + cbor2.dumps("messages")


def _write_messages(writer: asyncio.WriteTransport, request_id: Any, count: int,
                    pieces: list[bytes | memoryview]) -> None:
    head = b"".join((_READ_HEAD, cbor2.dumps(request_id), _READ_STATUS,
                     core.render_cbor_head(4, count)))
    size = len(head) + sum(map(len, pieces))
    writer.writelines([core.render_frame_header(core.Operation.READ_MESSAGES_RESPONSE, size),
                       head, *pieces])
