"""The event-stream codec: round trips, and every malformed frame is a FrameError value
(never an exception), found before an oversized frame is buffered."""

from __future__ import annotations

import binascii
import json
import struct
import uuid

import hypothesis
import pytest
from hypothesis import strategies as st

from hedgerow.core import eventstream as es
from hedgerow.core import limits

T = es.HeaderType
_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                 max_size=20).filter(lambda s: 0 < len(s.encode()) <= es.MAX_HEADER_NAME)


@st.composite
def _header(draw: st.DrawFn) -> es.Header:
    name = draw(_names)
    kind = draw(st.sampled_from(list(T)))
    if kind in (T.BOOL_TRUE, T.BOOL_FALSE):
        return es.Header(name, kind is T.BOOL_TRUE, kind)
    bits = {T.BYTE: 8, T.INT16: 16, T.INT32: 32, T.INT64: 64, T.TIMESTAMP: 64}
    if kind in bits:
        b = bits[kind]
        return es.Header(name, draw(st.integers(-(1 << (b - 1)), (1 << (b - 1)) - 1)), kind)
    if kind is T.UUID:
        return es.Header(name, uuid.UUID(bytes=draw(st.binary(min_size=16, max_size=16))), kind)
    if kind is T.STRING:
        return es.Header(name, draw(st.text(max_size=50)), kind)
    return es.Header(name, draw(st.binary(max_size=50)), kind)


_messages = st.builds(es.Message, st.lists(_header(), max_size=8).map(tuple),
                      st.binary(max_size=300))


@hypothesis.given(st.lists(_messages, min_size=1, max_size=5), st.data())
@hypothesis.settings(max_examples=300, deadline=None)
def test_round_trip_whatever_the_socket_reads_split(messages: list[es.Message],
                                                     data: st.DataObject) -> None:
    wire = b"".join(es.render(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = es.Decoder()
    got: list[es.Message | es.FrameError] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += decoder.feed(wire[a:b])
    assert got == messages
    assert decoder.finish() is None and decoder.pending == 0


@hypothesis.given(_messages, st.data())
@hypothesis.settings(max_examples=300, deadline=None)
def test_every_corrupted_byte_is_an_error(message: es.Message, data: st.DataObject) -> None:
    wire = bytearray(es.render(message))
    at = data.draw(st.integers(0, len(wire) - 1))
    wire[at] ^= data.draw(st.integers(1, 255))
    decoder = es.Decoder()
    got = decoder.feed(bytes(wire))
    # CRC32 catches every single-byte change; a changed length may also leave the frame
    # waiting for bytes that never come: truncated at the end of the stream.
    errors = [g for g in got if isinstance(g, es.FrameError)]
    assert not [g for g in got if isinstance(g, es.Message)]
    assert errors or decoder.finish() is not None
    if errors:
        assert decoder.feed(es.render(message)) == []  # failed for good: out of step


@hypothesis.given(st.binary(max_size=2000))
@hypothesis.settings(max_examples=500, deadline=None)
def test_garbage_never_raises(garbage: bytes) -> None:
    decoder = es.Decoder()
    for item in decoder.feed(garbage):
        assert isinstance(item, es.FrameError | es.Message)
    decoder.finish()
    result = es.decode(garbage)
    assert isinstance(result, es.FrameError | es.Message)


@hypothesis.given(_messages, st.data())
@hypothesis.settings(max_examples=200, deadline=None)
def test_truncated_is_an_error(message: es.Message, data: st.DataObject) -> None:
    wire = es.render(message)
    cut = data.draw(st.integers(1, len(wire) - 1))
    decoder = es.Decoder()
    assert decoder.feed(wire[:cut]) == []
    error = decoder.finish()
    assert error is not None and error.problem is es.Problem.TRUNCATED
    assert isinstance(es.decode(wire[:cut]), es.FrameError)


def _frame(headers: bytes, payload: bytes = b"", total: int | None = None,
           headers_len: int | None = None) -> bytes:
    """A frame with valid CRCs around whatever header bytes (to reach the parser)."""
    total = 16 + len(headers) + len(payload) if total is None else total
    prelude = struct.pack(">II", total, len(headers) if headers_len is None else headers_len)
    head = prelude + struct.pack(">I", binascii.crc32(prelude))
    body = head + headers + payload
    return body + struct.pack(">I", binascii.crc32(body))


@pytest.mark.parametrize(("wire", "problem"), [
    (_frame(b"\x01a\x0a"), es.Problem.BAD_HEADER_TYPE),                # type 10
    (_frame(b"\x01a\xff"), es.Problem.BAD_HEADER_TYPE),
    (_frame(b"\x05ab"), es.Problem.HEADER_OVERRUN),                     # name past the end
    (_frame(b"\x01a\x04\x00\x00"), es.Problem.HEADER_OVERRUN),          # int32 cut short
    (_frame(b"\x01a\x07\x00\x09abc"), es.Problem.HEADER_OVERRUN),       # string too long
    (_frame(b"\x01a\x09" + b"\x00" * 15), es.Problem.HEADER_OVERRUN),  # uuid cut short
    (_frame(b"\x01\xff\x00"), es.Problem.BAD_HEADER_TEXT),
    (_frame(b"\x01a\x07\x00\x01\xff"), es.Problem.BAD_HEADER_TEXT),
    (_frame(b"", headers_len=100), es.Problem.BAD_LENGTHS),
    (_frame(b"", total=8), es.Problem.BAD_LENGTHS),
])
def test_malformed_headers_and_lengths(wire: bytes, problem: es.Problem) -> None:
    got = es.Decoder().feed(wire)
    assert len(got) == 1 and isinstance(got[0], es.FrameError)
    assert got[0].problem is problem


def test_oversized_frame_refused_from_its_prelude_alone() -> None:
    """The bound holds before the frame is buffered: 12 bytes announcing 16 MiB (what
    awscrt would accept) are refused, the rest is never waited for."""
    prelude = struct.pack(">II", 16 * limits.MIB, 0)
    decoder = es.Decoder()
    got = decoder.feed(prelude + struct.pack(">I", binascii.crc32(prelude)))
    assert [g.problem for g in got if isinstance(g, es.FrameError)] == [es.Problem.OVERSIZED]
    prelude = struct.pack(">II", 1000, limits.MAX_IPC_HEADERS_BYTES + 1)
    got = es.Decoder().feed(prelude + struct.pack(">I", binascii.crc32(prelude)))
    assert [g.problem for g in got if isinstance(g, es.FrameError)] == [es.Problem.OVERSIZED]


def test_bad_crcs_named() -> None:
    wire = bytearray(es.render(es.Message((es.Header.string("a", "b"),), b"xyz")))
    bad_prelude = bytearray(wire)
    bad_prelude[9] ^= 1
    assert es.decode(bytes(bad_prelude)) == es.FrameError(es.Problem.PRELUDE_CRC)
    wire[-1] ^= 1
    assert es.decode(bytes(wire)) == es.FrameError(es.Problem.MESSAGE_CRC)


def test_known_frame() -> None:
    """Byte for byte: one string header and a payload (the CRC is zlib's CRC32 over the
    whole message, as in aws-c-event-stream)."""
    wire = es.render(es.Message((es.Header.string("k", "v"),), b"{}"))
    assert wire[:8] == struct.pack(">II", 12 + 6 + 2 + 4, 6)
    assert wire[12:18] == b"\x01k\x07\x00\x01v"
    assert wire[18:20] == b"{}"
    assert es.decode(wire) == es.Message((es.Header.string("k", "v"),), b"{}")


@hypothesis.given(st.sampled_from(list(es.MessageType)), st.sampled_from(list(es.Flag)),
                  st.integers(0, 2**31 - 1), st.binary(max_size=100))
@hypothesis.settings(max_examples=100, deadline=None)
def test_rpc_round_trip(kind: es.MessageType, flags: es.Flag, stream_id: int,
                        payload: bytes) -> None:
    message = es.RpcMessage(kind, flags, stream_id,
                            (es.Header.string(es.OPERATION, "aws.greengrass#X"),), payload)
    decoded = es.decode(es.render_rpc(message))
    assert isinstance(decoded, es.Message)
    assert es.resolve_rpc(decoded) == message
    assert message.header("Operation") == "aws.greengrass#X"


@pytest.mark.parametrize("headers", [
    (),                                                              # no :message-type
    (es.Header.string(es.MESSAGE_TYPE, "0"),),                       # wrong type
    (es.Header.int32(es.MESSAGE_TYPE, 99),),                         # unknown value
    (es.Header.int32(es.MESSAGE_TYPE, 0), es.Header.int32(es.STREAM_ID, -1)),
])
def test_rpc_headers_checked(headers: tuple[es.Header, ...]) -> None:
    result = es.resolve_rpc(es.Message(headers))
    assert isinstance(result, es.FrameError) and result.problem is es.Problem.BAD_RPC


@pytest.mark.parametrize("header", [
    es.Header("", "x", T.STRING), es.Header("a" * 128, "x", T.STRING),
    es.Header("a", "x" * 40000, T.STRING), es.Header("a", 300, T.BYTE),
    es.Header("a", "x", T.INT32), es.Header("a", b"x", T.STRING),
])
def test_unencodable_is_a_clear_error(header: es.Header) -> None:
    with pytest.raises(es.EncodeError):
        es.render(es.Message((header,)))


# --- the fast paths: the same results as the exact, header-by-header reference ----------

def _headers_section(headers: tuple[es.Header, ...]) -> bytes:
    return es.render_headers(headers)


@st.composite
def _header_sections(draw: st.DrawFn) -> bytes:
    """Valid sections, the same with a byte changed or cut short, and garbage."""
    section = _headers_section(draw(st.lists(_header(), max_size=6).map(tuple)))
    how = draw(st.sampled_from(["valid", "changed", "cut", "garbage"]))
    if how == "changed" and section:
        at = draw(st.integers(0, len(section) - 1))
        return section[:at] + bytes((section[at] ^ draw(st.integers(1, 255)),)) + \
            section[at + 1:]
    if how == "cut" and section:
        return section[:draw(st.integers(0, len(section) - 1))]
    if how == "garbage":
        return draw(st.binary(max_size=200))
    return section


@hypothesis.given(_header_sections(), st.binary(max_size=8), st.binary(max_size=8))
@hypothesis.settings(max_examples=1000, deadline=None)
def test_fast_header_parsing_is_the_exact_parsing(section: bytes, before: bytes,
                                                   after: bytes) -> None:
    """Whatever the bytes — every malformed case included — the cached fast path gives
    what the exact parser gives (the same headers, or the same error and detail), on a
    cold cache and again on a warm one, wherever the section sits in the frame."""
    want = es._parse_headers_exactly(section)
    data = before + section + after
    for _ in range(2):
        assert es._parse_headers(data, len(before), len(before) + len(section)) == want


def test_the_header_cache_is_bounded() -> None:
    """Ever-new headers (a client counting up, or hostile) never grow it past its bound,
    and headers longer than the bound on one entry are parsed, never kept."""
    for i in range(3 * es._HEADER_CACHE_ENTRIES):
        es.decode(es.render(es.Message((es.Header.int32("n", i),
                                        es.Header.string("long", "x" * 500)))))
        assert len(es._HEADER_CACHE) <= es._HEADER_CACHE_ENTRIES
    assert all(len(raw) <= es._HEADER_CACHE_BYTES for raw in es._HEADER_CACHE)


@hypothesis.given(_messages, st.integers(1, 64))
@hypothesis.settings(max_examples=100, deadline=None)
def test_a_frame_in_small_reads_waits_then_decodes_once(message: es.Message,
                                                         chunk: int) -> None:
    """Read by read (as bytes, bytearray or memoryview: what a socket may hand over), a
    frame is held until whole, then decoded; a second frame right behind it too."""
    wire = es.render(message) * 2
    decoder = es.Decoder()
    got: list[es.Message | es.FrameError] = []
    kinds = (bytes, bytearray, memoryview)
    for n, at in enumerate(range(0, len(wire), chunk)):
        piece = wire[at:at + chunk]
        got += decoder.feed(kinds[n % 3](piece))  # type: ignore[arg-type]
        assert decoder.pending == (at + len(piece)) % len(es.render(message))
    assert got == [message, message]
    assert all(type(m.payload) is bytes for m in got if isinstance(m, es.Message))
    assert decoder.finish() is None and decoder.pending == 0


def _resolve_rpc_reference(message: es.Message) -> es.RpcMessage | es.FrameError:
    """resolve_rpc as first written (a dict of the RPC headers, enum conversions)."""
    found: dict[str, int] = {}
    rest: list[es.Header] = []
    for h in message.headers:
        if h.name in (es.MESSAGE_TYPE, es.MESSAGE_FLAGS, es.STREAM_ID):
            if h.type is not T.INT32 or not isinstance(h.value, int):
                return es.FrameError(es.Problem.BAD_RPC, f"{h.name} is a {h.type.name}, "
                                     "not INT32")
            found[h.name] = h.value
        else:
            rest.append(h)
    if es.MESSAGE_TYPE not in found:
        return es.FrameError(es.Problem.BAD_RPC, f"no {es.MESSAGE_TYPE} header")
    try:
        kind = es.MessageType(found[es.MESSAGE_TYPE])
    except ValueError:
        return es.FrameError(es.Problem.BAD_RPC,
                             f"unknown message type {found[es.MESSAGE_TYPE]}")
    stream_id = found.get(es.STREAM_ID, 0)
    if stream_id < 0:
        return es.FrameError(es.Problem.BAD_RPC, f"negative stream id {stream_id}")
    flags = es.Flag(found.get(es.MESSAGE_FLAGS, 0) & 3)
    return es.RpcMessage(kind, flags, stream_id, tuple(rest), message.payload)


_rpc_names = st.sampled_from([es.MESSAGE_TYPE, es.MESSAGE_FLAGS, es.STREAM_ID, "operation"])


@st.composite
def _rpc_header(draw: st.DrawFn) -> es.Header:
    name = draw(_rpc_names)
    if draw(st.booleans()):
        return es.Header.int32(name, draw(st.integers(-3, 10) | st.integers(-2**31, 2**31 - 1)))
    if draw(st.booleans()):  # a hand-made header whose value is not of its type
        return es.Header(name, draw(st.text(max_size=3) | st.binary(max_size=3)), T.INT32)
    header = draw(_header())
    return es.Header(name, header.value, header.type)


@hypothesis.given(st.lists(_rpc_header() | _header(), max_size=7).map(tuple),
                  st.binary(max_size=20))
@hypothesis.settings(max_examples=500, deadline=None)
def test_resolve_rpc_is_the_reference(headers: tuple[es.Header, ...], payload: bytes) -> None:
    """Missing, repeated (the last counts), mistyped and out-of-range RPC headers, and
    flag bits that mean nothing: the same answers as the first, plain version."""
    message = es.Message(headers, payload)
    assert es.resolve_rpc(message) == _resolve_rpc_reference(message)


@hypothesis.given(st.integers(0, 2**31 - 1), st.text(min_size=1, max_size=60),
                  st.booleans(), st.booleans(),
                  st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                                  max_size=3))
@hypothesis.settings(max_examples=200, deadline=None)
def test_application_messages_render_as_their_headers_say(
        stream_id: int, model: str, error: bool, terminate: bool,
        body: dict[str, object]) -> None:
    """The cached pieces of an application message put together are the message that
    its headers, rendered one by one, make."""
    kind = es.MessageType.APPLICATION_ERROR if error else es.MessageType.APPLICATION_MESSAGE
    flags = es.Flag.TERMINATE_STREAM if terminate else es.Flag.NONE
    want = es.render(es.Message((
        es.Header.int32(es.MESSAGE_TYPE, kind), es.Header.int32(es.MESSAGE_FLAGS, flags),
        es.Header.int32(es.STREAM_ID, stream_id), es.Header.string(es.CONTENT_TYPE, es.JSON),
        es.Header.string(es.SERVICE_MODEL_TYPE, model)),
        json.dumps(body, separators=(",", ":")).encode()))
    assert es.render_application(stream_id, model, body, error=error,
                                 terminate=terminate) == want
