"""The stream manager's decisions, pure: the Stream Manager SDK's wire vocabulary, the
on-disk record format, the stream definition as the SDK sends it, and what to drop,
reject or export next.

The shell (`hedgerow.streams`) does the I/O: sockets, CBOR, files, HTTP, MQTT. Nothing
here imports pydantic: the stream manager is a separate process on small devices, and
its whole footprint (≤ 30 MB PSS with ten streams) leaves no room for pydantic-core. The
models are frozen dataclasses built from the SDK's camelCase dictionaries by `resolve_*`
functions that raise `DefinitionError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from hedgerow.core import backoff, limits

# --- the SDK's protocol (stream_manager 1.1.2, data/__init__.py and utilinternal.py) ----

CONNECT_VERSION: Final = 1  # the first byte a client sends, and the first we answer
PROTOCOL_VERSION: Final = "1.1.0"
OLD_PROTOCOL_VERSIONS: Final = ("1.0.0",)
SERVER_VERSION: Final = "hedgerow-1.1.0"
# A frame: 4-byte big-endian signed length (operation byte + payload), operation, payload.
FRAME_HEADER: Final = struct.Struct(">iB")
# Largest request frame we accept: an append carries one message, and a message is
# bounded by what a stream can hold; 16 MiB is the SDK's largest stream segment worth.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
# Largest read response we build (the client reads whatever arrives, but an unbounded
# answer would let one read pin the server's memory).
MAX_READ_RESPONSE_BYTES: Final = 16 * 1024 * 1024


class Operation(enum.IntEnum):
    UNKNOWN = 0
    CONNECT = 1
    CREATE_MESSAGE_STREAM = 2
    DELETE_MESSAGE_STREAM = 3
    APPEND_MESSAGE = 4
    READ_MESSAGES = 5
    CONNECT_RESPONSE = 6
    CREATE_MESSAGE_STREAM_RESPONSE = 7
    DELETE_MESSAGE_STREAM_RESPONSE = 8
    APPEND_MESSAGE_RESPONSE = 9
    READ_MESSAGES_RESPONSE = 10
    LIST_STREAMS = 11
    LIST_STREAMS_RESPONSE = 12
    DESCRIBE_MESSAGE_STREAM = 13
    DESCRIBE_MESSAGE_STREAM_RESPONSE = 14
    UPDATE_MESSAGE_STREAM = 15
    UPDATE_MESSAGE_STREAM_RESPONSE = 16
    UNKNOWN_OPERATION_ERROR = 17


# Request → the operation its answer carries.
RESPONSE_OF: Final = {
    Operation.CREATE_MESSAGE_STREAM: Operation.CREATE_MESSAGE_STREAM_RESPONSE,
    Operation.DELETE_MESSAGE_STREAM: Operation.DELETE_MESSAGE_STREAM_RESPONSE,
    Operation.APPEND_MESSAGE: Operation.APPEND_MESSAGE_RESPONSE,
    Operation.READ_MESSAGES: Operation.READ_MESSAGES_RESPONSE,
    Operation.LIST_STREAMS: Operation.LIST_STREAMS_RESPONSE,
    Operation.DESCRIBE_MESSAGE_STREAM: Operation.DESCRIBE_MESSAGE_STREAM_RESPONSE,
    Operation.UPDATE_MESSAGE_STREAM: Operation.UPDATE_MESSAGE_STREAM_RESPONSE,
}


class Status(enum.IntEnum):
    """ResponseStatusCode; the SDK raises the exception of the same name."""

    SUCCESS = 0
    UNKNOWN_FAILURE = 1
    UNAUTHORIZED = 2
    INVALID_REQUEST = 3
    REQUEST_PAYLOAD_TOO_LARGE = 4
    RESOURCE_NOT_FOUND = 5
    SERVER_TIMEOUT = 6
    RESPONSE_PAYLOAD_TOO_LARGE = 7
    UNSUPPORTED_CONNECT_VERSION = 8
    UNEXPECTED_OPERATION = 9
    UNSUPPORTED_PROTOCOL_VERSION = 10
    INVALID_PROTOCOL_VERSION = 11
    FAILED_TO_CONNECT = 12
    NOT_ENOUGH_MESSAGES = 13
    MESSAGE_STORE_READ_ERROR = 14
    OUT_OF_MEMORY_ERROR = 15
    UPDATE_FAILED = 16
    UPDATE_NOT_ALLOWED = 17
    UNKNOWN_OPERATION = 18


class RequestError(Exception):
    """A request the server answers with a non-success status (and keeps serving)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class DefinitionError(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(Status.INVALID_REQUEST, message)


class FrameError(ValueError):
    """The byte stream is not the protocol: the connection is closed (only that one)."""


def resolve_frame_header(header: bytes) -> tuple[int, int]:
    """(payload length, operation code) of a frame header; FrameError when the length
    is not one we accept (a hostile or confused client)."""
    length, operation = FRAME_HEADER.unpack(header)
    if length < 1 or length - 1 > MAX_FRAME_BYTES:
        raise FrameError(f"frame length {length} outside 1..{MAX_FRAME_BYTES + 1}")
    return length - 1, operation


def render_frame_header(operation: Operation, payload_len: int) -> bytes:
    return FRAME_HEADER.pack(payload_len + 1, int(operation))


def resolve_protocol_version(offered: str, others: Sequence[str]) -> str | None:
    """The version we speak with a client that offers `offered` first, then `others`
    (the SDK sends its current version and the older ones it can fall back to)."""
    ours = (PROTOCOL_VERSION, *OLD_PROTOCOL_VERSIONS)
    for version in (offered, *others):
        if version in ours:
            return version
    return None


# --- the stream definition, as the SDK's MessageStreamDefinition.as_dict() sends it -----

NAME_PATTERN: Final = re.compile(r"^[\w ,.\-_]{1,255}$")
DEFAULT_MAX_SIZE: Final = 256 * 1024 * 1024
DEFAULT_SEGMENT_SIZE: Final = 16 * 1024 * 1024
MIN_SIZE: Final = 1024
MIN_TTL_MS: Final = 60_000
MAX_BATCH: Final = 500


class Strategy(enum.IntEnum):
    REJECT_NEW_DATA = 0
    OVERWRITE_OLDEST_DATA = 1


class Persistence(enum.IntEnum):
    FILE = 0
    MEMORY = 1


class ExportFormat(enum.IntEnum):
    RAW_NOT_BATCHED = 0
    JSON_BATCHED = 1


# ExportDefinition keys the SDK models but Hedgerow does not deliver to.
UNSUPPORTED_EXPORTS: Final = {"iotAnalytics": "IoT Analytics", "kinesis": "Kinesis",
                              "IotSitewise": "IoT SiteWise", "s3TaskExecutor": "S3 tasks"}


@dataclasses.dataclass(frozen=True)
class HttpExport:
    identifier: str
    uri: str
    batch_size: int = MAX_BATCH
    batch_interval_ms: int | None = None
    priority: int = 10  # 1 is the most urgent; unset is the least
    start_sequence_number: int = 0
    disabled: bool = False
    export_format: ExportFormat = ExportFormat.JSON_BATCHED


@dataclasses.dataclass(frozen=True)
class UnsupportedExport:
    identifier: str
    kind: str

    @property
    def message(self) -> str:
        return f"{self.kind} export is not supported by Hedgerow, use http or mqtt"


@dataclasses.dataclass(frozen=True)
class Definition:
    name: str
    max_size: int = DEFAULT_MAX_SIZE
    segment_size: int = DEFAULT_SEGMENT_SIZE
    ttl_ms: int | None = None
    strategy: Strategy = Strategy.REJECT_NEW_DATA
    persistence: Persistence = Persistence.FILE
    flush_on_write: bool = False
    http: tuple[HttpExport, ...] = ()
    unsupported: tuple[UnsupportedExport, ...] = ()
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


def _int(d: Mapping[str, Any], key: str, where: str, default: int | None,
         lo: int, hi: int = 2**63 - 1) -> int | None:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DefinitionError(f"{where}.{key}: must be an integer in {lo}..{hi}, "
                                f"got {value!r}")
    return value


def _enum(d: Mapping[str, Any], key: str, where: str, kind: type[enum.IntEnum],
          default: Any) -> Any:
    value = d.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except (ValueError, TypeError):
        names = ", ".join(f"{m.value} ({m.name})" for m in kind)
        raise DefinitionError(f"{where}.{key}: must be one of {names}, got {value!r}"
                                ) from None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise DefinitionError(f"{where}: must be 1-255 letters, digits, spaces, "
                                f"',', '.', '-', '_', got {value!r}")
    return value


def resolve_definition(raw: Any) -> Definition:
    """A MessageStreamDefinition dictionary → Definition; DefinitionError names the
    field that is wrong (the SDK validates too, but a raw client need not)."""
    if not isinstance(raw, Mapping):
        raise DefinitionError("definition: must be a map")
    where = "definition"
    name = _name(raw.get("name"), f"{where}.name")
    max_size = _int(raw, "maxSize", where, DEFAULT_MAX_SIZE, MIN_SIZE)
    segment = _int(raw, "streamSegmentSize", where, DEFAULT_SEGMENT_SIZE, MIN_SIZE, 2**31 - 1)
    ttl = _int(raw, "timeToLiveMillis", where, None, MIN_TTL_MS, 9223372036854)
    strategy = _enum(raw, "strategyOnFull", where, Strategy, None)
    if strategy is None:
        raise DefinitionError(f"{where}.strategyOnFull: required")
    persistence = _enum(raw, "persistence", where, Persistence, Persistence.FILE)
    flush = raw.get("flushOnWrite")
    if flush is not None and not isinstance(flush, bool):
        raise DefinitionError(f"{where}.flushOnWrite: must be a boolean")
    exports = raw.get("exportDefinition") or {}
    if not isinstance(exports, Mapping):
        raise DefinitionError(f"{where}.exportDefinition: must be a map")
    http: list[HttpExport] = []
    unsupported: list[UnsupportedExport] = []
    seen: set[str] = set()
    for key, items in exports.items():
        if items is None:
            continue
        if not isinstance(items, list):
            raise DefinitionError(f"{where}.exportDefinition.{key}: must be a list")
        for i, item in enumerate(items):
            at = f"{where}.exportDefinition.{key}[{i}]"
            if not isinstance(item, Mapping):
                raise DefinitionError(f"{at}: must be a map")
            ident = _name(item.get("identifier"), f"{at}.identifier")
            if ident in seen:
                raise DefinitionError(f"{at}.identifier: {ident!r} is used twice")
            seen.add(ident)
            if key == "http":
                http.append(_http(item, at, ident))
            elif key in UNSUPPORTED_EXPORTS:
                unsupported.append(UnsupportedExport(ident, UNSUPPORTED_EXPORTS[key]))
            else:
                raise DefinitionError(f"{where}.exportDefinition.{key}: unknown export")
    assert max_size is not None and segment is not None
    return Definition(name, max_size, segment, ttl, strategy, persistence, bool(flush),
                      tuple(http), tuple(unsupported), dict(raw))


def _http(item: Mapping[str, Any], at: str, ident: str) -> HttpExport:
    uri = item.get("uri")
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        raise DefinitionError(f"{at}.uri: must be an http:// or https:// URL")
    disabled = item.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise DefinitionError(f"{at}.disabled: must be a boolean")
    return HttpExport(
        ident, uri,
        batch_size=_int(item, "batchSize", at, MAX_BATCH, 1, MAX_BATCH) or MAX_BATCH,
        batch_interval_ms=_int(item, "batchIntervalMillis", at, None, MIN_TTL_MS),
        priority=_int(item, "priority", at, 10, 1, 10) or 10,
        start_sequence_number=_int(item, "startSequenceNumber", at, 0, 0) or 0,
        disabled=bool(disabled),
        export_format=_enum(item, "exportFormat", at, ExportFormat,
                            ExportFormat.JSON_BATCHED))


def resolve_update(old: Definition, new: Definition) -> Definition:
    """An update may change limits, strategy, flushOnWrite and exports, not where the
    data lives (persistence): that would need a copy the SDK's semantics do not promise."""
    if old.persistence is not new.persistence:
        raise RequestError(Status.UPDATE_NOT_ALLOWED,
                           "definition.persistence: cannot change on update")
    return new


# --- the record format ------------------------------------------------------------------

# A record on disk: length of payload (u32), crc32 (u32) of everything after it, sequence
# number (u64), ingest time in ms (i64), payload. A torn or corrupt record fails the CRC
# or the length, and everything from it on is cut when a segment is opened.
RECORD_HEADER: Final = struct.Struct(">IIQq")
RECORD_OVERHEAD: Final = RECORD_HEADER.size
_CRC_PART: Final = struct.Struct(">Qq")


def render_record(seq: int, ingest_ms: int, payload: bytes) -> bytes:
    body = _CRC_PART.pack(seq, ingest_ms)
    crc = zlib.crc32(payload, zlib.crc32(body))
    return RECORD_HEADER.pack(len(payload), crc, seq, ingest_ms) + payload


@dataclasses.dataclass(frozen=True)
class Scan:
    """What a segment holds: one entry per intact record, then where the intact part ends."""

    offsets: list[int]
    seqs: list[int]
    times: list[int]
    end: int


def resolve_records(data: bytes | memoryview, first_seq: int | None = None) -> Scan:
    """The intact prefix of a segment's bytes: each record's offset, sequence number and
    time, stopping at the first record that is short, fails its CRC, or does not follow
    the previous sequence number (a torn tail after a crash)."""
    view = memoryview(data)
    offsets: list[int] = []
    seqs: list[int] = []
    times: list[int] = []
    pos, expect = 0, first_seq
    size = len(view)
    while pos + RECORD_OVERHEAD <= size:
        length, crc, seq, ingest = RECORD_HEADER.unpack_from(view, pos)
        end = pos + RECORD_OVERHEAD + length
        if end > size or (expect is not None and seq != expect):
            break
        if zlib.crc32(view[pos + RECORD_OVERHEAD:end], zlib.crc32(view[pos + 8:pos + 24])
                      ) != crc:
            break
        offsets.append(pos)
        seqs.append(seq)
        times.append(ingest)
        pos, expect = end, seq + 1
    return Scan(offsets, seqs, times, pos)


def resolve_payloads(data: bytes | memoryview, count: int) -> list[tuple[int, int, bytes]]:
    """(seq, ingest ms, payload) of `count` consecutive records at the start of `data`
    (already checked when the segment was scanned or written)."""
    view = memoryview(data)
    out = []
    pos = 0
    for _ in range(count):
        length, _crc, seq, ingest = RECORD_HEADER.unpack_from(view, pos)
        start = pos + RECORD_OVERHEAD
        out.append((seq, ingest, bytes(view[start:start + length])))
        pos = start + length
    return out


_CBOR_HEADS: Final = (struct.Struct(">B"), struct.Struct(">BB"), struct.Struct(">BH"),
                      struct.Struct(">BI"), struct.Struct(">BQ"))


def render_cbor_head(major: int, value: int) -> bytes:
    """A CBOR item head: major type (0 unsigned, 2 bytes, 3 text, 4 array, 5 map) and its
    value or length, in the shortest form (RFC 8949 §3)."""
    mt = major << 5
    if value < 24:
        return _CBOR_HEADS[0].pack(mt | value)
    if value < 0x100:
        return _CBOR_HEADS[1].pack(mt | 24, value)
    if value < 0x10000:
        return _CBOR_HEADS[2].pack(mt | 25, value)
    if value < 0x100000000:
        return _CBOR_HEADS[3].pack(mt | 26, value)
    return _CBOR_HEADS[4].pack(mt | 27, value)


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return render_cbor_head(3, len(raw)) + raw


_SEQ_KEY: Final = _cbor_text("sequenceNumber")
_APPENDED_HEAD: Final = b"\xa3" + _cbor_text("requestId")
_APPENDED_TAIL: Final = _cbor_text("status") + b"\x00" + _SEQ_KEY


def render_append_response(request_id: str, seq: int) -> bytes:
    """A successful AppendMessageResponse ({requestId, status 0, sequenceNumber}) in
    CBOR, without a generic encoder: this runs once per append."""
    return b"".join((_APPENDED_HEAD, _cbor_text(request_id), _APPENDED_TAIL,
                     render_cbor_head(0, seq)))
_TIME_KEY: Final = _cbor_text("ingestTime")
_PAYLOAD_KEY: Final = _cbor_text("payload")


def render_messages(data: bytes | memoryview, count: int, stream: str
                    ) -> list[bytes | memoryview]:
    """The SDK's Message maps (streamName, sequenceNumber, ingestTime, payload) of
    `count` consecutive records at the start of `data`, as CBOR pieces to send in a row:
    a read's answer is encoded straight from the segment's bytes, with no object per
    message and each payload copied once (into the socket).

    The numbers take their full width (8-byte sequence number and time, 4-byte payload
    length; RFC 8949 lets an encoder choose it and every decoder accepts it): a message's
    head is then one `struct` pack, where the shortest form cost a branch and a pack per
    number. This loop runs for every message a read returns."""
    view = memoryview(data)
    name = b"\xa4" + _cbor_text("streamName") + _cbor_text(stream) + _SEQ_KEY + b"\x1b"
    time_key, payload_key = _TIME_KEY + b"\x1b", _PAYLOAD_KEY + b"\x5a"
    pack = struct.Struct(f">{len(name)}sQ{len(time_key)}sQ{len(payload_key)}sI").pack
    unpack_from = RECORD_HEADER.unpack_from
    out: list[bytes | memoryview] = []
    append = out.append
    pos = 0
    for _ in range(count):
        length, _crc, seq, ingest = unpack_from(view, pos)
        start = pos + RECORD_OVERHEAD
        pos = start + length
        # An ingest time before 1970 (a wrong clock) is sent as 0: the head holds a uint.
        append(pack(name, seq, time_key, ingest if ingest >= 0 else 0, payload_key, length))
        append(view[start:pos])
    return out


# --- size, segments and time -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    base_seq: int
    count: int
    size: int  # bytes, records' headers included
    newest_ms: int


class Room(enum.Enum):
    FITS = "fits"
    DROP = "drop"  # drop the `drop` oldest segments first
    REJECT = "reject"


@dataclasses.dataclass(frozen=True)
class Admission:
    room: Room
    drop: int = 0  # oldest segments to delete before writing
    roll: bool = False  # start a new segment for this record
    reason: str = ""


def plan_append(segments: Sequence[SegmentInfo], record_size: int, definition: Definition,
                budget_left: int) -> Admission:
    """Where one record of `record_size` bytes goes: into the newest segment or a new one
    (`streamSegmentSize`), after dropping the oldest whole segments when the stream's
    `maxSize` or the component's disk budget (`budget_left`: what all streams may still
    add) would be passed and the strategy is OverwriteOldestData; else rejected."""
    if record_size > definition.max_size:
        return Admission(Room.REJECT, reason=f"message of {record_size} bytes is larger "
                         f"than the stream's maxSize {definition.max_size}")
    newest = segments[-1] if segments else None
    roll = newest is None or (newest.count > 0
                              and newest.size + record_size > definition.segment_size)
    total = sum(s.size for s in segments)
    need = max(total + record_size - definition.max_size, record_size - budget_left, 0)
    if need <= 0:
        return Admission(Room.FITS, roll=roll)
    if definition.strategy is Strategy.REJECT_NEW_DATA:
        which = ("maxSize" if total + record_size > definition.max_size
                 else "the stream manager's disk budget")
        return Admission(Room.REJECT, reason=f"stream {definition.name!r} is full "
                         f"({which}); strategyOnFull is RejectNewData")
    freed, drop = 0, 0
    for seg in segments:
        if freed >= need:
            break
        freed += seg.size
        drop += 1
    if freed < need:
        return Admission(Room.REJECT, reason=f"stream {definition.name!r} cannot make room "
                         "for the message within the disk budget")
    return Admission(Room.DROP, drop=drop, roll=roll or drop == len(segments))


def resolve_expired(segments: Sequence[SegmentInfo], ttl_ms: int | None,
                    now_ms: int) -> int:
    """How many of the oldest segments hold only messages past their time to live (the
    newest segment is kept: it is where appends go)."""
    if ttl_ms is None:
        return 0
    count = 0
    for seg in segments[:-1]:
        if seg.newest_ms + ttl_ms > now_ms:
            break
        count += 1
    return count


def is_expired(ingest_ms: int, ttl_ms: int | None, now_ms: int) -> bool:
    """A message past its time to live is never returned by a read, even while its
    segment (which is deleted whole) still holds newer ones."""
    return ttl_ms is not None and ingest_ms + ttl_ms <= now_ms


# --- reads --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    start: int = 0
    min_count: int = 1
    max_count: int | None = None
    timeout_ms: int = 0


def resolve_read_options(raw: Any) -> ReadOptions:
    if raw is None:
        return ReadOptions()
    if not isinstance(raw, Mapping):
        raise RequestError(Status.INVALID_REQUEST, "readMessagesOptions: must be a map")
    at = "readMessagesOptions"
    start = _int(raw, "desiredStartSequenceNumber", at, 0, 0) or 0
    low = _int(raw, "minMessageCount", at, 1, 1, 2**31 - 1) or 1
    high = _int(raw, "maxMessageCount", at, None, 1, 2**31 - 1)
    timeout = _int(raw, "readTimeoutMillis", at, 0, 0) or 0
    if high is not None and low > high:
        raise RequestError(Status.INVALID_REQUEST,
                           f"{at}: minMessageCount {low} > maxMessageCount {high}")
    return ReadOptions(start, low, high, timeout)


# --- exports -------------------------------------------------------------------------------

EXPORT_RETRY_BASE_S: Final = 0.5
EXPORT_RETRY_CAP_S: Final = 30.0


def resolve_export_start(checkpoint: int | None, start_seq: int, oldest: int) -> int:
    """The first sequence number to export: after the persisted checkpoint, else the
    export's startSequenceNumber; never before what the stream still holds."""
    first = checkpoint + 1 if checkpoint is not None else start_seq
    return max(first, oldest)


def is_batch_due(available: int, batch_size: int, interval_ms: int | None,
                 oldest_age_ms: int) -> bool:
    """Ship now? A full batch always; otherwise whatever there is once the oldest waiting
    message is `batchIntervalMillis` old (immediately when there is no interval)."""
    if available <= 0:
        return False
    if available >= batch_size:
        return True
    return interval_ms is None or oldest_age_ms >= interval_ms


def resolve_retry_delay(failures: int, rand: float) -> float:
    """Capped, jittered backoff after `failures` consecutive failed batches."""
    return backoff.resolve_delay(max(failures - 1, 0), EXPORT_RETRY_BASE_S,
                                 EXPORT_RETRY_CAP_S, lambda: rand)


def resolve_client_env(dependencies: Mapping[str, Mapping[str, Any]], token: str
                       ) -> dict[str, str]:
    """The variables a component that depends on hedgerow.StreamManager gets, given
    its dependencies' configurations: the port to reach it on, and its own token."""
    config = dependencies.get(COMPONENT_NAME)
    if config is None:
        return {}
    port = config.get("port", DEFAULT_PORT)
    return {"STREAM_MANAGER_SERVER_PORT": str(port),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token}


COMPONENT_NAME: Final = "hedgerow.StreamManager"
DEFAULT_PORT: Final = 8088
# Where the agent publishes the SHA-256 of each dependent's token, under its root: a
# folder only root writes, which the stream manager (running as its own user) reads.
TOKENS_FILE: Final = "services/stream-manager/tokens"


# --- the component's configuration --------------------------------------------------------

LOOPBACK: Final = ("127.0.0.1", "::1", "localhost")


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class MqttExport:
    """A stream shipped to the cloud broker through the agent's connection."""

    stream: str
    identifier: str
    topic: str  # {iot:thingName} stands for the device's thing name
    batch_size: int = 100
    priority: int = 10


# Under the device's own namespace, which the default broker topic rule (core/topicrule.py,
# devices/%u/#) lets only this device write, and which the manifest's accessControl
# policy lets the stream manager ask the agent to publish to.
DEFAULT_MQTT_TOPIC: Final = "devices/{iot:thingName}/streams/{stream}"
THING_VARIABLE: Final = "{iot:thingName}"


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    storage: str = ""  # '' → the component's work folder /streams
    disk_budget: int = 1024 * 1024 * 1024
    export_bandwidth: int = 0  # bytes per second over all exports; 0: unlimited
    log_level: str = "INFO"
    flush_interval_ms: int = 1000
    mqtt: tuple[MqttExport, ...] = ()
    status_stream: str = ""  # every export's batch outcomes go there, if it exists


def resolve_config(raw: Any) -> Config:
    """The component's configuration (its JSON) → Config; ConfigError names the key."""
    if raw is None or raw == "":
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("configuration: must be a map")
    host = raw.get("host", "127.0.0.1")
    if host not in LOOPBACK:
        raise ConfigError(f"configuration.host: {host!r} is not a loopback address "
                          f"(one of {', '.join(LOOPBACK)}): other hosts must not reach "
                          "the stream manager")
    try:
        port = _int(raw, "port", "configuration", DEFAULT_PORT, 1, 65535)
        budget = _int(raw, "diskBudgetBytes", "configuration", 1 << 30, MIN_SIZE)
        bandwidth = _int(raw, "exportBandwidthBytesPerSecond", "configuration", 0, 0)
        flush = _int(raw, "flushIntervalMillis", "configuration", 1000, 10, 60_000)
    except DefinitionError as exc:
        raise ConfigError(exc.message) from None
    level = str(raw.get("logLevel", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"configuration.logLevel: {level!r} is not DEBUG, INFO, "
                          "WARNING or ERROR")
    storage = raw.get("storageDir", "")
    if not isinstance(storage, str):
        raise ConfigError("configuration.storageDir: must be a path")
    mqtt = []
    for i, item in enumerate(raw.get("mqttExports") or []):
        at = f"configuration.mqttExports[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{at}: must be a map")
        try:
            stream = _name(item.get("stream"), f"{at}.stream")
            ident = _name(item.get("identifier", f"mqtt-{stream}"), f"{at}.identifier")
            batch = _int(item, "batchSize", at, 100, 1, MAX_BATCH) or 100
            prio = _int(item, "priority", at, 10, 1, 10) or 10
        except DefinitionError as exc:
            raise ConfigError(exc.message) from None
        topic = item.get("topic", DEFAULT_MQTT_TOPIC.replace("{stream}", stream))
        if (not isinstance(topic, str) or not topic or any(c in topic for c in "#+\0")
                or topic.startswith(("/", "$", "hedgerow/"))):
            raise ConfigError(f"{at}.topic: must be a cloud topic without wildcards, outside "
                              f"$… and Hedgerow's own hedgerow/… (e.g. "
                              f"{DEFAULT_MQTT_TOPIC!r}), got {topic!r}")
        mqtt.append(MqttExport(stream, ident, topic, batch, prio))
    if raw.get("mqttBroker"):
        raise ConfigError("configuration.mqttBroker: no longer used: the MQTT export "
                          "publishes through the agent's cloud connection (docs/streams.md); "
                          "remove it")
    status_stream = raw.get("statusStreamName", "")
    if status_stream:
        try:
            _name(status_stream, "configuration.statusStreamName")
        except DefinitionError as exc:
            raise ConfigError(exc.message) from None
    assert port is not None and budget is not None and flush is not None
    return Config(host, port, storage, budget, bandwidth or 0, level, flush, tuple(mqtt),
                  str(status_stream))


def render_mqtt_topic(thing: str, topic: str) -> str:
    """An export's configured topic with the device's thing name in it."""
    return topic.replace(THING_VARIABLE, thing)


def resolve_dependents(specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The components (by recorded spec) that depend on the stream manager."""
    return sorted(name for name, spec in specs.items()
                  if any(isinstance(d, Mapping) and d.get("name") == COMPONENT_NAME
                         for d in spec.get("dependencies") or []))


def render_tokens_file(tokens: Sequence[str]) -> bytes:
    """One SHA-256 hex digest a line, sorted: the stream manager learns who may connect
    without ever holding a token it could leak (a digest of 192 random bits reveals
    nothing, so the file may be world-readable)."""
    return "".join(sorted(hashlib.sha256(t.encode()).hexdigest() + "\n"
                          for t in tokens if t)).encode()

# An MQTT export batch stays under the cloud broker's packet limit (topic and headers
# take the rest).
MAX_MQTT_BATCH_BYTES: Final = limits.BROKER_MAX_PACKET_BYTES - 4 * 1024


def render_status_message(ident: str, stream: str, seq: int, ok: bool, message: str,
                          now_ms: int) -> dict[str, Any]:
    """One export batch's outcome as the SDK's StatusMessage (JSON; read it back with
    `Util.deserialize_json_bytes_to_obj(payload, StatusMessage)`). The SDK's EventType
    has one value (S3Task, 0) and requires it, so that is what every message carries."""
    return {"eventType": 0, "statusLevel": 2 if ok else 0, "status": 0 if ok else 1,
            "statusContext": {"exportIdentifier": ident, "streamName": stream,
                              "sequenceNumber": seq},
            "message": message, "timestampEpochMs": now_ms}
