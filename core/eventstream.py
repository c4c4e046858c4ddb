"""The AWS event-stream codec and the RPC layer on top of it. Pure: bytes in, bytes out.

Greengrass IPC (and so the official `awsiot.greengrasscoreipc` client, through awscrt)
speaks event-stream RPC on a Unix socket. One message on the wire:

    total length (u32) | headers length (u32) | prelude CRC32 (of the 8 bytes before)
    headers: name length (u8), name (UTF-8), type (u8), value (by type)
    payload
    message CRC32 (of everything before it)

All big-endian. `Decoder` is incremental (feed it what the socket gave, get whole
messages back), bounds a frame before buffering it (core/limits.py), and answers every
malformed frame with a `FrameError` value, never an exception: a hostile component
costs the agent one closed connection, nothing more. After an error the stream is out of
step for good (the next frame's start is unknown), so the decoder stays failed.

The RPC layer (`RpcMessage`, `render_rpc`, `resolve_rpc`) reads and writes the
`:message-type`, `:message-flags` and `:stream-id` headers every RPC message carries.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import functools
import json
import struct
import uuid
from collections.abc import Iterable
from typing import Final

from hedgerow.core import limits

PRELUDE_BYTES: Final = 12
_MIN_MESSAGE: Final = PRELUDE_BYTES + 4
MAX_HEADER_NAME: Final = 127      # awscrt's bound
MAX_HEADER_VALUE: Final = 32767   # awscrt's bound (INT16_MAX) on strings and byte bufs
_U32x3 = struct.Struct(">III")
_U32x2 = struct.Struct(">II")
_U32 = struct.Struct(">I")


class HeaderType(enum.IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTE_BUF = 6
    STRING = 7
    TIMESTAMP = 8  # int64 milliseconds since the epoch
    UUID = 9


HeaderValue = bool | int | bytes | str | uuid.UUID
_INTS: Final = {HeaderType.BYTE: struct.Struct(">b"), HeaderType.INT16: struct.Struct(">h"),
                HeaderType.INT32: struct.Struct(">i"), HeaderType.INT64: struct.Struct(">q"),
                HeaderType.TIMESTAMP: struct.Struct(">q")}


@dataclasses.dataclass(frozen=True)
class Header:
    name: str
    value: HeaderValue
    type: HeaderType

    @classmethod
    def string(cls, name: str, value: str) -> Header:
        return cls(name, value, HeaderType.STRING)

    @classmethod
    def int32(cls, name: str, value: int) -> Header:
        return cls(name, value, HeaderType.INT32)

    @classmethod
    def boolean(cls, name: str, value: bool) -> Header:
        return cls(name, value, HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE)


@dataclasses.dataclass(frozen=True)
class Message:
    headers: tuple[Header, ...] = ()
    payload: bytes = b""


class Problem(enum.StrEnum):
    PRELUDE_CRC = "bad prelude CRC"
    MESSAGE_CRC = "bad message CRC"
    TRUNCATED = "truncated frame"
    OVERSIZED = "frame over the size bound"
    BAD_LENGTHS = "inconsistent lengths in the prelude"
    BAD_HEADER_TYPE = "unknown header type"
    HEADER_OVERRUN = "header runs past the headers section"
    BAD_HEADER_TEXT = "header name or string value is not UTF-8"
    BAD_RPC = "not an RPC message"


@dataclasses.dataclass(frozen=True)
class FrameError:
    """A malformed frame: what was wrong, and a detail for the log."""
    problem: Problem
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.problem}: {self.detail}" if self.detail else str(self.problem)


class EncodeError(ValueError):
    """The agent asked to encode something the format cannot carry (a bug, not input)."""


# --- encoding -------------------------------------------------------------------------

def _render_header(header: Header) -> bytes:
    name = header.name.encode()
    if not 0 < len(name) <= MAX_HEADER_NAME:
        raise EncodeError(f"header name of {len(name)} bytes: {header.name!r}")
    kind, value = header.type, header.value
    head = bytes((len(name),)) + name + bytes((kind,))
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return head
    if kind in _INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodeError(f"header {header.name}: {kind.name} needs an int")
        try:
            return head + _INTS[kind].pack(value)
        except struct.error as exc:
            raise EncodeError(f"header {header.name}: {exc}") from None
    if kind is HeaderType.UUID:
        if not isinstance(value, uuid.UUID):
            raise EncodeError(f"header {header.name}: UUID needs a uuid.UUID")
        return head + value.bytes
    data = value.encode() if isinstance(value, str) else value
    if not isinstance(data, bytes) or (kind is HeaderType.STRING) != isinstance(value, str):
        raise EncodeError(f"header {header.name}: {kind.name} needs "
                          f"{'str' if kind is HeaderType.STRING else 'bytes'}")
    if len(data) > MAX_HEADER_VALUE:
        raise EncodeError(f"header {header.name}: value of {len(data)} bytes")
    return head + struct.pack(">H", len(data)) + data


def render_headers(headers: Iterable[Header]) -> bytes:
    """The headers section's bytes (a sender that repeats headers renders them once)."""
    return b"".join(_render_header(h) for h in headers)


def render_frame(headers: bytes, payload: bytes) -> bytes:
    """One message from its rendered headers (`render_headers`) and payload."""
    total = PRELUDE_BYTES + len(headers) + len(payload) + 4
    head = _U32x2.pack(total, len(headers))
    head += _U32.pack(binascii.crc32(head))
    crc = binascii.crc32(payload, binascii.crc32(headers, binascii.crc32(head)))
    return b"".join((head, headers, payload, _U32.pack(crc)))


def render(message: Message) -> bytes:
    """One message's bytes; raises EncodeError for what the format cannot carry."""
    return render_frame(render_headers(message.headers), message.payload)


# --- decoding -------------------------------------------------------------------------

# Bytes of a header's value by type code; -1: a u16 length, then that many bytes.
_VALUE_BYTES: Final = (0, 0, 1, 2, 4, 8, -1, -1, 8, 16)
_TYPES: Final = tuple(HeaderType)
# The headers a client sends repeat from message to message (the SDK sends six per
# request, five of them the same each time): a parsed header is kept by its exact bytes
# and found again with one dict lookup, no decoding and no new object. Bounded: a client
# sending ever-new headers (or stream ids) only empties it now and then, costing misses.
# Its values are immutable and equal to what `_parse_headers_exactly` makes of the same
# bytes (a property test checks), so the cache changes the speed, not the results.
_HEADER_CACHE: dict[bytes, Header] = {}
_HEADER_CACHE_ENTRIES: Final = 512
_HEADER_CACHE_BYTES: Final = 160  # a longer header is parsed each time, not kept


def _parse_headers(data: bytes, pos: int, end: int) -> tuple[Header, ...] | FrameError:
    """The headers in data[pos:end]. The fast path bounds each header from its type and
    length bytes and looks its bytes up in the cache; anything it does not take (a bad
    type, an overrun, text that is not UTF-8) goes to the exact parser, which names the
    problem."""
    out: list[Header] = []
    start, cache = pos, _HEADER_CACHE
    while pos < end:
        name_end = pos + 1 + data[pos]
        if name_end >= end:
            break
        code = data[name_end]
        if code > 9:
            break
        size = _VALUE_BYTES[code]
        if size < 0:
            if name_end + 3 > end:
                break
            stop = name_end + 3 + ((data[name_end + 1] << 8) | data[name_end + 2])
        else:
            stop = name_end + 1 + size
        if stop > end:
            break
        raw = data[pos:stop]
        header = cache.get(raw)
        if header is None:
            header = _header_of(raw, name_end - pos, code)
            if header is None:
                break
            if len(raw) <= _HEADER_CACHE_BYTES:
                if len(cache) >= _HEADER_CACHE_ENTRIES:
                    cache.clear()
                cache[raw] = header
        out.append(header)
        pos = stop
    else:
        return tuple(out)
    return _parse_headers_exactly(memoryview(data)[start:end])


def _header_of(raw: bytes, name_end: int, code: int) -> Header | None:
    """One header from its bytes, already bounded (`_parse_headers`); None when its text
    is not UTF-8."""
    try:
        name = raw[1:name_end].decode()
    except UnicodeDecodeError:
        return None
    kind = _TYPES[code]
    value: HeaderValue
    if code <= 1:
        value = code == 0
    elif kind is HeaderType.BYTE_BUF:
        value = raw[name_end + 3:]
    elif kind is HeaderType.STRING:
        try:
            value = raw[name_end + 3:].decode()
        except UnicodeDecodeError:
            return None
    elif kind is HeaderType.UUID:
        value = uuid.UUID(bytes=raw[name_end + 1:])
    else:
        value = _INTS[kind].unpack_from(raw, name_end + 1)[0]
    return Header(name, value, kind)


def _parse_headers_exactly(data: bytes | memoryview) -> tuple[Header, ...] | FrameError:
    """Header by header, naming the first problem (the reference `_parse_headers` falls
    back to)."""
    out: list[Header] = []
    pos, end = 0, len(data)
    while pos < end:
        size = data[pos]
        pos += 1
        if pos + size + 1 > end:
            return FrameError(Problem.HEADER_OVERRUN, f"header name at byte {pos - 1}")
        try:
            name = bytes(data[pos:pos + size]).decode()
        except UnicodeDecodeError:
            return FrameError(Problem.BAD_HEADER_TEXT, f"header name at byte {pos - 1}")
        pos += size
        code = data[pos]
        pos += 1
        try:
            kind = HeaderType(code)
        except ValueError:
            return FrameError(Problem.BAD_HEADER_TYPE, f"type {code} of header {name!r}")
        value: HeaderValue
        if kind is HeaderType.BOOL_TRUE or kind is HeaderType.BOOL_FALSE:
            value = kind is HeaderType.BOOL_TRUE
        elif kind in _INTS:
            fmt = _INTS[kind]
            if pos + fmt.size > end:
                return FrameError(Problem.HEADER_OVERRUN, f"value of header {name!r}")
            value = fmt.unpack_from(data, pos)[0]
            pos += fmt.size
        elif kind is HeaderType.UUID:
            if pos + 16 > end:
                return FrameError(Problem.HEADER_OVERRUN, f"value of header {name!r}")
            value = uuid.UUID(bytes=bytes(data[pos:pos + 16]))
            pos += 16
        else:
            if pos + 2 > end:
                return FrameError(Problem.HEADER_OVERRUN, f"length of header {name!r}")
            length = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if pos + length > end:
                return FrameError(Problem.HEADER_OVERRUN, f"value of header {name!r}")
            raw = bytes(data[pos:pos + length])
            pos += length
            if kind is HeaderType.STRING:
                try:
                    value = raw.decode()
                except UnicodeDecodeError:
                    return FrameError(Problem.BAD_HEADER_TEXT, f"value of header {name!r}")
            else:
                value = raw
        out.append(Header(name, value, kind))
    return tuple(out)


class Decoder:
    """Incremental: `feed` bytes as they come, get the whole messages (and at most one
    FrameError, after which the decoder is failed and returns nothing more)."""

    def __init__(self, max_message: int = limits.MAX_IPC_MESSAGE_BYTES,
                 max_headers: int = limits.MAX_IPC_HEADERS_BYTES) -> None:
        self.max_message, self.max_headers = max_message, max_headers
        self._buffer = bytearray()
        self._need = PRELUDE_BYTES  # bytes the buffer must hold before a frame can end
        self.failed: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message | FrameError]:
        if self.failed is not None:
            return []
        if type(data) is not bytes:  # slices must be bytes: hashable, and the payload's type
            data = bytes(data)
        if self._buffer:
            # Wait in the buffer until a frame can be whole, then parse from one bytes
            # object: a big frame arriving in many reads is copied once, not per read.
            self._buffer += data
            if len(self._buffer) < self._need:
                return []
            data = bytes(self._buffer)
            self._buffer.clear()
        out: list[Message | FrameError] = []
        pos, size, crc32 = 0, len(data), binascii.crc32
        while size - pos >= PRELUDE_BYTES:
            total, headers_len, crc = _U32x3.unpack_from(data, pos)
            if crc32(data[pos:pos + 8]) != crc:
                return self._fail(out, FrameError(Problem.PRELUDE_CRC))
            if total > self.max_message:
                return self._fail(out, FrameError(
                    Problem.OVERSIZED, f"{total} bytes, the bound is {self.max_message}"))
            if headers_len > self.max_headers:
                return self._fail(out, FrameError(
                    Problem.OVERSIZED,
                    f"{headers_len} bytes of headers, the bound is {self.max_headers}"))
            if total < _MIN_MESSAGE or headers_len > total - _MIN_MESSAGE:
                return self._fail(out, FrameError(
                    Problem.BAD_LENGTHS, f"total {total}, headers {headers_len}"))
            end = pos + total
            if size < end:
                self._need = total
                break
            (want,) = _U32.unpack_from(data, end - 4)
            if crc32(data[pos:end - 4]) != want:
                return self._fail(out, FrameError(Problem.MESSAGE_CRC))
            payload_at = pos + PRELUDE_BYTES + headers_len
            headers = _parse_headers(data, pos + PRELUDE_BYTES, payload_at)
            if isinstance(headers, FrameError):
                return self._fail(out, headers)
            out.append(Message(headers, data[payload_at:end - 4]))
            pos = end
        else:
            self._need = PRELUDE_BYTES
        if pos < size:
            self._buffer += data[pos:] if pos else data
        return out

    def finish(self) -> FrameError | None:
        """The stream ended: an error if it ended inside a frame."""
        if self.failed is None and self._buffer:
            return FrameError(Problem.TRUNCATED, f"{len(self._buffer)} bytes left over")
        return None

    def _fail(self, out: list[Message | FrameError],
              error: FrameError) -> list[Message | FrameError]:
        self.failed = error
        self._buffer = bytearray()
        out.append(error)
        return out


def decode(data: bytes) -> Message | FrameError:
    """Exactly one message in `data`."""
    decoder = Decoder()
    found = decoder.feed(data)
    if not found:
        return decoder.finish() or FrameError(Problem.TRUNCATED, "no message")
    first = found[0]
    if isinstance(first, FrameError):
        return first
    if len(found) > 1 or decoder.pending:
        return FrameError(Problem.BAD_LENGTHS, "bytes after the message")
    return first


# --- the RPC layer ----------------------------------------------------------------------

MESSAGE_TYPE: Final = ":message-type"
MESSAGE_FLAGS: Final = ":message-flags"
STREAM_ID: Final = ":stream-id"
OPERATION: Final = "operation"
VERSION: Final = ":version"
CONTENT_TYPE: Final = ":content-type"
SERVICE_MODEL_TYPE: Final = "service-model-type"
JSON: Final = "application/json"
PROTOCOL_VERSION: Final = "0.1.0"  # what awscrt's client sends in `:version`
_RPC_HEADERS: Final = frozenset({MESSAGE_TYPE, MESSAGE_FLAGS, STREAM_ID})


class MessageType(enum.IntEnum):
    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


class Flag(enum.IntFlag):
    NONE = 0
    CONNECTION_ACCEPTED = 0x1
    TERMINATE_STREAM = 0x2


@dataclasses.dataclass(frozen=True)
class RpcMessage:
    type: MessageType
    flags: Flag = Flag.NONE
    stream_id: int = 0
    headers: tuple[Header, ...] = ()  # the others (operation, :version, :content-type…)
    payload: bytes = b""

    def header(self, name: str) -> str | None:
        """A string header's value (names compare case-insensitively, as awscrt does)."""
        name = name.lower()
        for h in self.headers:
            # Names are mostly sent in lower case already: one comparison, no new string.
            if (h.name == name or h.name.lower() == name) and isinstance(h.value, str) \
                    and h.type is HeaderType.STRING:
                return h.value
        return None


# The three headers every RPC message starts with, as one struct (names and types fixed),
# up to the stream id's value.
_RPC_PREFIX = struct.Struct(">B13sBiB14sBiB10sB")
_I32 = struct.Struct(">i")
_MESSAGE_TYPES: Final = tuple(MessageType)  # by value: 0..7
_FLAGS: Final = tuple(Flag(bits) for bits in range(4))  # by the bits that mean something


@functools.lru_cache(maxsize=64)
def _rpc_prefix(kind: MessageType, flags: Flag) -> bytes:
    return _RPC_PREFIX.pack(13, b":message-type", HeaderType.INT32, kind,
                            14, b":message-flags", HeaderType.INT32, int(flags),
                            10, b":stream-id", HeaderType.INT32)


def render_rpc_headers(kind: MessageType, flags: Flag, stream_id: int,
                       headers: Iterable[Header] = ()) -> bytes:
    rpc = _rpc_prefix(kind, flags) + _I32.pack(stream_id)
    return rpc + render_headers(headers) if headers else rpc


def render_rpc(message: RpcMessage) -> bytes:
    return render_frame(render_rpc_headers(message.type, message.flags, message.stream_id,
                                           message.headers), message.payload)


def resolve_rpc(message: Message) -> RpcMessage | FrameError:
    """The RPC view of a decoded message; a FrameError when its RPC headers are missing,
    of the wrong type or out of range."""
    kind: int | None = None
    flags = stream_id = 0
    rest: list[Header] = []
    for h in message.headers:
        name = h.name
        if name in _RPC_HEADERS:
            value = h.value
            if h.type is not HeaderType.INT32 or not isinstance(value, int):
                return FrameError(Problem.BAD_RPC, f"{name} is a {h.type.name}, not INT32")
            if name == MESSAGE_TYPE:  # a repeated header: the last one counts
                kind = value
            elif name == STREAM_ID:
                stream_id = value
            else:
                flags = value
        else:
            rest.append(h)
    if kind is None:
        return FrameError(Problem.BAD_RPC, f"no {MESSAGE_TYPE} header")
    if not 0 <= kind < len(_MESSAGE_TYPES):
        return FrameError(Problem.BAD_RPC, f"unknown message type {kind}")
    if stream_id < 0:
        return FrameError(Problem.BAD_RPC, f"negative stream id {stream_id}")
    return RpcMessage(_MESSAGE_TYPES[kind], _FLAGS[flags & 3], stream_id, tuple(rest),
                      message.payload)


@functools.lru_cache(maxsize=256)
def _application_headers(model: str, error: bool, terminate: bool) -> tuple[bytes, bytes]:
    """The headers of an application message but the stream id's value: before, after."""
    return (_rpc_prefix(MessageType.APPLICATION_ERROR if error
                        else MessageType.APPLICATION_MESSAGE,
                        Flag.TERMINATE_STREAM if terminate else Flag.NONE),
            render_headers((Header.string(CONTENT_TYPE, JSON),
                            Header.string(SERVICE_MODEL_TYPE, model))))


def render_application_headers(stream_id: int, model: str, *, error: bool = False,
                               terminate: bool = False) -> bytes:
    """The headers of a JSON application message (or modelled error) of the Greengrass
    service model: `model` is its shape, e.g. ``aws.greengrass#PublishToTopicResponse``."""
    before, after = _application_headers(model, error, terminate)
    return before + _I32.pack(stream_id) + after


_render_json = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one a call


def render_json(body: object) -> bytes:
    """Compact JSON, as the payloads of the service model are sent."""
    return b"{}" if body == {} else _render_json(body).encode()


def render_application(stream_id: int, model: str, body: object, *,
                       error: bool = False, terminate: bool = False) -> bytes:
    return render_frame(
        render_application_headers(stream_id, model, error=error, terminate=terminate),
        render_json(body))

