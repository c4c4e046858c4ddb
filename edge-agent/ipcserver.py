"""Component IPC: the Greengrass event-stream RPC server on ipc/ipc.sock.

Components written with the official SDK (`awsiot.greengrasscoreipc`, `clientv2`)
connect here with their `SVCUID` and call operations by their Greengrass names.

How to add an operation (a later issue's GetConfiguration, say):

    from hedgerow.agent import ipcserver

    def get_configuration(call: ipcserver.Call) -> dict[str, Any]:
        call.authorize("aws.greengrass.ipc.config", key)   # only if a policy must allow it
        return {"componentName": call.caller.component, "value": ...}

    server.register(ipcserver.Operation(
        "aws.greengrass#GetConfiguration",            # the `operation` header
        "aws.greengrass#GetConfigurationResponse",    # the response shape
        get_configuration))

- A handler is a plain function or a coroutine function taking a `Call` (the caller
  component, the request's JSON object, the `Stream` of a streaming operation) and
  returning the response shape's JSON object. Field names are the service model's
  (`_to_payload`/`_from_payload` in the SDK's `awsiot/greengrasscoreipc/model.py`).
- It refuses by raising `RefusalError` (UnauthorizedError, InvalidArgumentsError,
  ResourceNotFoundError, ServiceError…): the client gets that modelled error.
  `call.authorize(service, resource)` raises the UnauthorizedError that names the
  policy to write (hedgerow.core.accesscontrol); `call.require(field)` an
  InvalidArgumentsError for a missing field.
- Streaming operations give `stream_event=` (the event shape): events go out with
  `call.stream.send(body)` (never blocks: a full subscriber drops and counts), and
  `call.stream.on_close(fn)` learns that the client closed the stream or went away.
- Operations nobody registered answer a ServiceError naming the operation.

One `Connection` (an asyncio protocol) per client, in the agent's event loop: all work
is a few microseconds of parsing and writes into a bounded buffer, never a wait, so the
converge loop is never blocked; a client that sends garbage or does not read closes only
its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import inspect
import json
import logging
import os
import pathlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from hedgerow.agent import records as records_
from hedgerow.core import accesscontrol, limits, ratelimit
from hedgerow.core import eventstream as es

log = logging.getLogger("hedgerow.agent.ipc")

UNAUTHORIZED: Final = "aws.greengrass#UnauthorizedError"
INVALID_ARGUMENTS: Final = "aws.greengrass#InvalidArgumentsError"
RESOURCE_NOT_FOUND: Final = "aws.greengrass#ResourceNotFoundError"
SERVICE_ERROR: Final = "aws.greengrass#ServiceError"
# Before a client has connected it may only send its connect message: a small one.
_CONNECT_MAX_BYTES: Final = 16 * limits.KIB
_MAX_TOKEN: Final = 512
_LOG_BURST: Final = 20
_DECISIONS: Final = 256  # authorization decisions a connection remembers (~50 KB at most)


@dataclasses.dataclass(frozen=True)
class Caller:
    """The component a connection belongs to, as it was when it connected."""
    component: str
    token: str
    policies: accesscontrol.Policies
    thing: str = ""


Lookup = Callable[[str], Caller | None]


class RefusalError(Exception):
    """A modelled error for the client: `model` is its shape, `fields` its other fields."""

    def __init__(self, model: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.model, self.message, self.fields = model, message, fields

    def body(self) -> dict[str, Any]:
        return {"message": self.message, **self.fields}


class Stream:
    """One open stream of a streaming operation (a subscription)."""

    def __init__(self, connection: Connection, stream_id: int, event_model: str) -> None:
        self.connection, self.stream_id, self.event_model = connection, stream_id, event_model
        self.closed = False
        self.dropped = 0
        self._headers = es.render_application_headers(stream_id, event_model)  # once
        self._early: list[bytes] | None = []  # events before the response went out
        self._on_close: list[Callable[[], None]] = []

    def send(self, body: Mapping[str, Any]) -> bool:
        return self.send_payload(es.render_json(body))

    def send_payload(self, payload: bytes) -> bool:
        """Queue one event (the JSON payload of `event_model`). False: not sent — the
        stream is closed, or the client is not reading and its buffer is full (counted
        in `dropped`)."""
        if self.closed:
            return False
        frame = es.render_frame(self._headers, payload)
        if self._early is not None:
            self._early.append(frame)
            return True
        if self.connection.send(frame, droppable=True):
            return True
        self.dropped += 1
        self.connection.dropped(self)
        return False

    def on_close(self, callback: Callable[[], None]) -> None:
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def opened(self) -> None:
        early, self._early = self._early or [], None
        for frame in early:
            self.connection.send(frame, droppable=True)

    def close(self, *, tell: bool) -> None:
        """End the stream (the subscription behind it with it); `tell`: send the client
        a terminate-stream message."""
        if self.closed:
            return
        self.closed = True
        if tell:
            self.connection.send(es.render_rpc(es.RpcMessage(
                es.MessageType.APPLICATION_MESSAGE, es.Flag.TERMINATE_STREAM,
                self.stream_id)), droppable=False)
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("closing IPC stream %d", self.stream_id)


@dataclasses.dataclass
class Call:
    caller: Caller
    operation: str
    request: dict[str, Any]
    stream: Stream | None = None
    # The connection's earlier decisions, (service, operation, resource) -> allowed: a
    # connection's caller, and so its policies, never change (Server.refresh closes the
    # connections whose component changed), so a decision holds as long as it is open.
    decisions: dict[tuple[str, str, str], bool] = dataclasses.field(default_factory=dict)

    def authorize(self, service: str, resource: str) -> None:
        """Raise the UnauthorizedError naming the policy to write, unless one allows it."""
        key, decisions = (service, self.operation, resource), self.decisions
        allowed = decisions.get(key)
        if allowed is None:
            allowed = accesscontrol.is_allowed(self.caller.policies, service,
                                               self.operation, resource, self.caller.thing)
            if len(decisions) >= _DECISIONS:  # resources are the client's choice: bounded
                decisions.clear()
            decisions[key] = allowed
        if not allowed:
            message = accesscontrol.render_refusal(self.caller.component, service,
                                                   self.operation, resource)
            raise RefusalError(UNAUTHORIZED, message)

    def require(self, field: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.request.get(field)
        if value is None or not isinstance(value, kind) or value == "":
            raise RefusalError(INVALID_ARGUMENTS,
                          f"{self.operation}: the request needs {field!r}")
        return value


Handler = Callable[[Call], "dict[str, Any] | Awaitable[dict[str, Any]]"]


@dataclasses.dataclass(frozen=True)
class Operation:
    name: str                       # "aws.greengrass#PublishToTopic"
    response: str                   # "aws.greengrass#PublishToTopicResponse"
    handler: Handler
    stream_event: str | None = None  # a streaming operation: its event shape


class Phase(enum.Enum):
    AWAITING_CONNECT = "awaiting connect"
    CONNECTED = "connected"
    CLOSED = "closed"


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.phase = Phase.AWAITING_CONNECT
        self.decoder = es.Decoder(max_message=_CONNECT_MAX_BYTES)
        self.caller: Caller | None = None
        self.streams: dict[int, Stream] = {}
        self.decisions: dict[tuple[str, str, str], bool] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown peer"
        self.paused = False
        # Frames wait here until the loop's next turn: everything one burst of requests
        # produces for this client goes out in one write (one system call, not one per
        # frame: at a window of 64 publishes in flight, 2 per message were a third of
        # the agent's CPU).
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._stuck: asyncio.TimerHandle | None = None
        self._connect_timer: asyncio.TimerHandle | None = None

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=limits.IPC_WRITE_BUFFER_BYTES)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError, struct.error):
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            self.peer = f"pid {pid} uid {uid}"
        if len(self.server.connections) >= limits.MAX_IPC_CONNECTIONS:
            log.warning("IPC: refused a connection from %s: %d connections already",
                        self.peer, limits.MAX_IPC_CONNECTIONS)
            transport.abort()
            return
        self.server.connections.add(self)
        self._connect_timer = asyncio.get_running_loop().call_later(
            limits.IPC_CONNECT_TIMEOUT_SECONDS, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:  # a bug must cost this connection, and be seen
            log.exception("IPC: handling %s's data failed", self.caller or self.peer)
            self.close("internal error", level=logging.ERROR)

    def _received(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if self.phase is Phase.CLOSED:
                return
            if isinstance(item, es.FrameError):
                self.protocol_error(f"malformed frame: {item}")
                return
            message = es.resolve_rpc(item)
            if isinstance(message, es.FrameError):
                self.protocol_error(str(message))
                return
            self.receive(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out = []
        self.server.connections.discard(self)
        for timer in (self._stuck, self._connect_timer):
            if timer is not None:
                timer.cancel()
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.close(tell=False)
        for task in self.tasks:
            task.cancel()

    def pause_writing(self) -> None:
        """The client does not read: stop reading its requests (it must not fill our
        memory with responses it never takes), drop its events, and give it a bound."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._stuck = asyncio.get_running_loop().call_later(
            limits.IPC_SUBSCRIBER_STUCK_SECONDS, self._stuck_too_long)

    def resume_writing(self) -> None:
        self.paused = False
        if self._stuck is not None:
            self._stuck.cancel()
            self._stuck = None
        if self.transport is not None and self.phase is not Phase.CLOSED:
            self.transport.resume_reading()

    # --- sending --------------------------------------------------------------------

    def send(self, frame: bytes, *, droppable: bool) -> bool:
        if self.phase is Phase.CLOSED or self.transport is None or \
                self.transport.is_closing():
            return False
        if droppable and self.paused:
            return False
        self._out.append(frame)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))  # may call pause_writing: backpressure

    def send_rpc(self, message: es.RpcMessage) -> None:
        self.send(es.render_rpc(message), droppable=False)

    def dropped(self, stream: Stream) -> None:
        if self.caller is not None:
            self.server.count_drop(self.caller.component, stream)

    def close(self, reason: str, *, level: int = logging.INFO) -> None:
        if self.phase is Phase.CLOSED:
            return
        who = self.caller.component if self.caller else self.peer
        self.server.note(level, f"IPC connection of {who} closed: {reason}")
        self.phase = Phase.CLOSED
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        if self.transport is not None:
            self.transport.close()  # what is buffered (a refusal, an error) goes first

    def protocol_error(self, reason: str) -> None:
        self.send_rpc(es.RpcMessage(es.MessageType.PROTOCOL_ERROR, payload=json.dumps(
            {"message": reason}).encode()))
        self.close(f"protocol error: {reason}", level=logging.WARNING)

    def _connect_timeout(self) -> None:
        if self.phase is Phase.AWAITING_CONNECT:
            self.close(f"no connect message within {limits.IPC_CONNECT_TIMEOUT_SECONDS:g}s",
                       level=logging.WARNING)

    def _stuck_too_long(self) -> None:
        dropped = sum(s.dropped for s in self.streams.values())
        self.close(f"it has not read what it was sent for "
                   f"{limits.IPC_SUBSCRIBER_STUCK_SECONDS:g}s (a slow subscriber; "
                   f"{dropped} event(s) dropped)", level=logging.WARNING)
        if self.caller is not None:
            self.server.count_disconnect(self.caller.component)
        if self.transport is not None:
            self.transport.abort()  # its buffer will never drain: drop it now

    # --- the protocol ---------------------------------------------------------------

    def receive(self, message: es.RpcMessage) -> None:
        kind = message.type
        if self.phase is Phase.AWAITING_CONNECT:
            if kind is not es.MessageType.CONNECT:
                self.protocol_error(f"expected a connect message, got {kind.name}")
            else:
                self.handshake(message)
            return
        if kind is es.MessageType.APPLICATION_MESSAGE:
            self.application(message)
        elif kind is es.MessageType.PING:
            self.send_rpc(es.RpcMessage(es.MessageType.PING_RESPONSE,
                                        payload=message.payload))
        elif kind is es.MessageType.PING_RESPONSE:
            pass
        elif kind is es.MessageType.CONNECT:
            self.protocol_error("connect sent twice")
        else:
            self.protocol_error(f"unexpected {kind.name} from a client")

    def handshake(self, message: es.RpcMessage) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        version = message.header(es.VERSION)
        caller = None
        reason = ""
        if version != es.PROTOCOL_VERSION:
            reason = f"protocol version {version!r}, expected {es.PROTOCOL_VERSION!r}"
        else:
            token = _token_of(message.payload)
            if token is None:
                reason = "no authToken in the connect message"
            else:
                caller = self.server.lookup(token)
                if caller is None:
                    reason = "its authToken is not the SVCUID of any component here"
        if caller is None:
            self.send_rpc(es.RpcMessage(es.MessageType.CONNECT_ACK))
            self.close(f"connect refused: {reason}", level=logging.WARNING)
            return
        self.caller = caller
        self.phase = Phase.CONNECTED
        self.decoder.max_message = limits.MAX_IPC_MESSAGE_BYTES
        self.send_rpc(es.RpcMessage(es.MessageType.CONNECT_ACK,
                                    es.Flag.CONNECTION_ACCEPTED))
        log.debug("IPC: %s connected (%s)", caller.component, self.peer)

    def application(self, message: es.RpcMessage) -> None:
        sid = message.stream_id
        stream = self.streams.get(sid)
        operation = message.header(es.OPERATION)
        if stream is not None:
            if message.flags & es.Flag.TERMINATE_STREAM:
                del self.streams[sid]
                stream.close(tell=False)
            return  # no served operation takes events from the client
        if operation is None:
            if not message.flags & es.Flag.TERMINATE_STREAM:
                log.debug("IPC: %s sent a message on unknown stream %d", self.caller, sid)
            return
        if sid <= 0:
            self.protocol_error(f"operation {operation} on stream id {sid}")
            return
        op = self.server.operations.get(operation)
        if op is None:
            self.reply_error(sid, RefusalError(
                SERVICE_ERROR, f"operation {operation} is not served by Hedgerow's IPC "
                f"(served: {', '.join(sorted(self.server.operations)) or 'none'})"))
            return
        try:  # UTF-8, as RFC 8259 has it (and not json.loads' guess among UTF-8/16/32)
            request = json.loads(message.payload.decode()) if message.payload else {}
        except (ValueError, RecursionError):  # RecursionError: [[[[… nested too deep
            request = None
        if not isinstance(request, dict):
            self.reply_error(sid, RefusalError(INVALID_ARGUMENTS,
                                          f"{operation}: the request is not a JSON object"))
            return
        stream = None
        if op.stream_event is not None:
            if len(self.streams) >= limits.MAX_IPC_STREAMS_PER_CONNECTION:
                self.reply_error(sid, RefusalError(
                    SERVICE_ERROR, f"{operation}: this connection already has "
                    f"{limits.MAX_IPC_STREAMS_PER_CONNECTION} open streams"))
                return
            stream = self.streams[sid] = Stream(self, sid, op.stream_event)
        assert self.caller is not None
        call = Call(self.caller, operation, request, stream, self.decisions)
        try:
            result = op.handler(call)
        except Exception as exc:
            self.finish(op, call, sid, exc)
            return
        if not isinstance(result, dict) and inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await(op, call, sid, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.finish(op, call, sid, result)

    async def _await(self, op: Operation, call: Call, sid: int,
                     result: Awaitable[dict[str, Any]]) -> None:
        try:
            body: dict[str, Any] | BaseException = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            body = exc
        self.finish(op, call, sid, body)

    def finish(self, op: Operation, call: Call, sid: int,
               result: dict[str, Any] | BaseException) -> None:
        stream = call.stream
        if isinstance(result, BaseException):
            if stream is not None:
                self.streams.pop(sid, None)
                stream.close(tell=False)
            if isinstance(result, RefusalError):
                self.reply_error(sid, result)
            else:
                log.error("IPC %s for %s failed", op.name, call.caller.component,
                          exc_info=result)
                self.reply_error(sid, RefusalError(
                    SERVICE_ERROR, f"{op.name}: internal error ({type(result).__name__})"))
            return
        self.send(es.render_application(sid, op.response, result,
                                        terminate=stream is None), droppable=False)
        if stream is not None:
            stream.opened()

    def reply_error(self, sid: int, refusal: RefusalError) -> None:
        if refusal.model == UNAUTHORIZED:
            self.server.note(logging.INFO, "IPC refused: " + refusal.message.split(": no ")[0])
        self.send(es.render_application(sid, refusal.model, refusal.body(), error=True,
                                        terminate=True), droppable=False)


def _token_of(payload: bytes) -> str | None:
    if len(payload) > _CONNECT_MAX_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    token = body.get("authToken") if isinstance(body, dict) else None
    return token if isinstance(token, str) and 0 < len(token) <= _MAX_TOKEN else None


class Server:
    """The socket, its connections, the registered operations, and per-component
    counters (`details_of`: what `hedgerow component details` shows)."""

    def __init__(self, path: pathlib.Path, lookup: Lookup,
                 operations: Iterable[Operation] = ()) -> None:
        self.path, self.lookup = path, lookup
        self.operations: dict[str, Operation] = {}
        self.connections: set[Connection] = set()
        self.stats: dict[str, dict[str, int]] = {}
        self._server: asyncio.AbstractServer | None = None
        # What clients make the agent log is rate-limited: a component reconnecting with
        # garbage in a loop must not fill root's disk with the agent's log.
        self._log_bucket: ratelimit.Bucket | None = None
        self._suppressed = 0
        for op in operations:
            self.register(op)

    def register(self, operation: Operation) -> None:
        if operation.name in self.operations:
            raise ValueError(f"IPC operation {operation.name} registered twice")
        self.operations[operation.name] = operation

    async def start(self) -> None:
        """Listen on the socket: any local user may connect (components run as their own
        users, in containers as any uid), the token in the connect message decides. The
        folder (root's, 0711 and no listing) holds nothing else."""
        folder = self.path.parent
        folder.mkdir(mode=0o711, exist_ok=True)
        folder.chmod(0o711)
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)  # created 0600, opened up once it is ours
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: Connection(self), path=str(self.path))
        finally:
            os.umask(old)
        self.path.chmod(0o666)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def refresh(self) -> None:
        """Close the connections whose token no longer belongs to a component (it was
        removed, or reinstalled with a new token): a token is valid while its component
        is, not while a connection made with it stays open."""
        for conn in list(self.connections):
            caller = conn.caller
            if caller is not None and self.lookup(caller.token) != caller:
                conn.close("its component was removed or reinstalled")

    def note(self, level: int, message: str) -> None:
        """Log what a client caused, at most _LOG_BURST lines at once and one a second."""
        if not log.isEnabledFor(level):
            return
        ok, self._log_bucket = ratelimit.plan_take(self._log_bucket, time.monotonic(),
                                                   _LOG_BURST, 1.0)
        if not ok:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar message(s) suppressed before this)"
            self._suppressed = 0
        log.log(level, "%s", message)

    def count_drop(self, component: str, stream: Stream) -> None:
        stats = self.stats.setdefault(component, {})
        stats["dropped"] = stats.get("dropped", 0) + 1
        if stream.dropped == 1 or stream.dropped % 1000 == 0:
            log.debug("IPC: %s is not reading: %d event(s) dropped on stream %d",
                      component, stream.dropped, stream.stream_id)

    def count_disconnect(self, component: str) -> None:
        stats = self.stats.setdefault(component, {})
        stats["disconnectedSlow"] = stats.get("disconnectedSlow", 0) + 1

    def details_of(self, component: str) -> dict[str, int]:
        conns = [c for c in self.connections
                 if c.caller is not None and c.caller.component == component]
        return {"connections": len(conns),
                "streams": sum(len(c.streams) for c in conns),
                "dropped": self.stats.get(component, {}).get("dropped", 0),
                "disconnectedSlow": self.stats.get(component, {}).get(
                    "disconnectedSlow", 0)}


def records_lookup(records: Callable[[], Mapping[str, records_.Record]],
                   thing: str) -> Lookup:
    """The seam between the agent's records and the server: a token maps to the
    component whose record holds it now (compared in constant time), with the policies
    of its configuration; nothing else of the agent is reachable from a connection."""
    cache: dict[str, tuple[str, accesscontrol.Policies]] = {}  # by spec hash

    def lookup(token: str) -> Caller | None:
        for rec in records().values():
            if rec.token and hmac.compare_digest(rec.token.encode(), token.encode()):
                known = cache.get(rec.spec_hash)
                if known is None:
                    if len(cache) > 1024:
                        cache.clear()
                    policies = accesscontrol.resolve_policies(
                        rec.name, rec.component().configuration)
                    known = cache[rec.spec_hash] = (rec.name, policies)
                return Caller(known[0], rec.token, known[1], thing)
        return None

    return lookup
