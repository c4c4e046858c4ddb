"""A minimal Greengrass IPC client: the stream manager is a component, so it reaches the
cloud the way every component does — through the agent, on the agent's one MQTT session.

It speaks event-stream RPC on the agent's component socket
(`AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`) with the pure codec
`hedgerow.core.eventstream`: the connect handshake with the component's `SVCUID`, then
request/response operations (one stream id each), modelled errors raised as the
exceptions below. Not awscrt: the stream manager must stay small (docs/streams.md,
`stream_manager_pss_mb`), and request/response is all it needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any, Final

from hedgerow.core import eventstream as es

log = logging.getLogger("hedgerow.streams.ipc")

PUBLISH_TO_IOT_CORE: Final = "aws.greengrass#PublishToIoTCore"
_ERROR_PREFIX: Final = "aws.greengrass#"
CONNECT_TIMEOUT_S: Final = 10.0


class IpcError(Exception):
    """A modelled error the agent answered (`model` is its shape, e.g.
    ``aws.greengrass#UnauthorizedError``)."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model.removeprefix(_ERROR_PREFIX)}: {message}")
        self.model, self.message = model, message


class UnauthorizedError(IpcError):
    pass


class ServiceError(IpcError):
    pass


class InvalidArgumentsError(IpcError):
    pass


class ResourceNotFoundError(IpcError):
    pass


_ERRORS: Final[dict[str, type[IpcError]]] = {
    f"{_ERROR_PREFIX}UnauthorizedError": UnauthorizedError,
    f"{_ERROR_PREFIX}ServiceError": ServiceError,
    f"{_ERROR_PREFIX}InvalidArgumentsError": InvalidArgumentsError,
    f"{_ERROR_PREFIX}ResourceNotFoundError": ResourceNotFoundError,
}


class ConnectionLostError(ConnectionError):
    """No connection to the agent: refused at connect, closed, or a protocol error. The
    caller connects again (the agent may be restarting)."""


def resolve_error(model: str, payload: bytes) -> IpcError:
    """The exception for a modelled error message."""
    try:
        body = json.loads(payload or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return _ERRORS.get(model, IpcError)(model, str(message or "(no message)"))


class Client:
    """One connection to the agent's IPC server. `connect()` first; `call()` may run
    concurrently from many tasks (each call is its own stream)."""

    def __init__(self, path: str, token: str) -> None:
        self.path, self.token = path, token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[es.RpcMessage]] = {}
        self._next_id = 1
        self._task: asyncio.Task[None] | None = None
        self._lost: ConnectionLostError | None = None

    @property
    def connected(self) -> bool:
        return self._task is not None and self._lost is None

    async def connect(self) -> None:
        """Connect and authenticate; ConnectionLostError (or OSError) when refused."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.path), CONNECT_TIMEOUT_S)
        writer.write(es.render_rpc(es.RpcMessage(
            es.MessageType.CONNECT, headers=(es.Header.string(es.VERSION,
                                                              es.PROTOCOL_VERSION),),
            payload=json.dumps({"authToken": self.token}).encode())))
        decoder = es.Decoder()
        ack: es.RpcMessage | None = None
        try:
            while ack is None:
                data = await asyncio.wait_for(reader.read(65536), CONNECT_TIMEOUT_S)
                if not data:
                    raise ConnectionLostError("the agent closed the IPC connection at "
                                              "connect (is SVCUID this component's token?)")
                for item in decoder.feed(data):
                    message = item if isinstance(item, es.FrameError) else es.resolve_rpc(item)
                    if isinstance(message, es.FrameError):
                        raise ConnectionLostError(f"the agent's connect answer: {message}")
                    ack = message
                    break
            if ack.type is not es.MessageType.CONNECT_ACK or \
                    not ack.flags & es.Flag.CONNECTION_ACCEPTED:
                raise ConnectionLostError("the agent refused the IPC connection (is SVCUID "
                                          "this component's token?)")
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        self._task = asyncio.get_running_loop().create_task(self._read(decoder))

    async def _read(self, decoder: es.Decoder) -> None:
        assert self._reader is not None and self._writer is not None
        reason = "the agent closed the IPC connection"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for item in decoder.feed(data):
                    message = item if isinstance(item, es.FrameError) else es.resolve_rpc(item)
                    if isinstance(message, es.FrameError):
                        raise ConnectionLostError(f"malformed frame from the agent: {message}")
                    self._dispatch(message)
        except ConnectionLostError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"IPC connection: {exc}"
        self._fail(ConnectionLostError(reason))

    def _dispatch(self, message: es.RpcMessage) -> None:
        kind = message.type
        if kind is es.MessageType.PING:
            self._send(es.RpcMessage(es.MessageType.PING_RESPONSE, payload=message.payload))
        elif kind in (es.MessageType.APPLICATION_MESSAGE, es.MessageType.APPLICATION_ERROR):
            fut = self._pending.pop(message.stream_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif kind in (es.MessageType.PROTOCOL_ERROR, es.MessageType.INTERNAL_ERROR):
            raise ConnectionLostError(f"the agent answered {kind.name}: "
                                      f"{message.payload[:200]!r}")

    def _fail(self, error: ConnectionLostError) -> None:
        self._lost = error
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if self._writer is not None:
            self._writer.close()

    def _send(self, message: es.RpcMessage) -> None:
        assert self._writer is not None
        self._writer.write(es.render_rpc(message))

    async def call(self, operation: str, request: dict[str, Any],
                   timeout: float = 60.0) -> dict[str, Any]:
        """One request/response operation: its response's JSON object, or the modelled
        error raised (UnauthorizedError, ServiceError…)."""
        if self._lost is not None or self._writer is None:
            raise self._lost or ConnectionLostError("not connected to the agent")
        sid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[es.RpcMessage] = asyncio.get_running_loop().create_future()
        self._pending[sid] = fut
        self._send(es.RpcMessage(
            es.MessageType.APPLICATION_MESSAGE, stream_id=sid,
            headers=(es.Header.string(es.OPERATION, operation),
                     es.Header.string(es.CONTENT_TYPE, es.JSON),
                     es.Header.string(es.SERVICE_MODEL_TYPE, f"{operation}Request")),
            payload=json.dumps(request, separators=(",", ":")).encode()))
        try:
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(sid, None)
        model = answer.header(es.SERVICE_MODEL_TYPE) or ""
        if answer.type is es.MessageType.APPLICATION_ERROR:
            raise resolve_error(model, answer.payload)
        try:
            body = json.loads(answer.payload or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServiceError(model, "the agent's answer is not a JSON object")
        return body

    async def publish_to_iot_core(self, topic: str, payload: bytes, qos: int = 1,
                                  timeout: float = 60.0) -> None:
        """Publish through the agent's cloud connection. Returns when the agent answers
        success: the broker acknowledged it (QoS 1), or it is in the agent's persisted
        offline spool."""
        await self.call(PUBLISH_TO_IOT_CORE, {
            "topicName": topic, "qos": str(qos),
            "payload": base64.b64encode(payload).decode()}, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(ConnectionLostError("closed"))
