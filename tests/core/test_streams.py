"""The stream manager's pure decisions: records, segments, limits, TTL, export batching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hedgerow.core import streams


def _definition(**raw: object) -> streams.Definition:
    return streams.resolve_definition({"name": "s", "strategyOnFull": 0, **raw})


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(0, 200))
def test_torn_tail_is_cut_at_the_last_intact_record(payloads: list[bytes], cut: int) -> None:
    data = b"".join(streams.render_record(7 + i, 1000 + i, p) for i, p in enumerate(payloads))
    whole = streams.resolve_records(data, 7)
    assert whole.seqs == list(range(7, 7 + len(payloads))) and whole.end == len(data)
    torn = data[:max(0, len(data) - cut)]
    scan = streams.resolve_records(torn, 7)
    assert scan.end <= len(torn)
    assert [p for _, _, p in streams.resolve_payloads(torn, len(scan.seqs))] == \
        payloads[:len(scan.seqs)]


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-2**63, 2**63 - 1),
                          st.binary(max_size=300)), max_size=12),
       st.text(min_size=1, max_size=40))
def test_read_answers_are_the_cbor_the_sdk_decodes(
        records: list[tuple[int, int, bytes]], name: str) -> None:
    """Messages encoded straight from a segment's bytes decode (with the cbor2 the SDK
    uses) to exactly the maps a generic encoder would have sent (a time before 1970, from
    a wrong clock, as 0: the SDK's is unsigned)."""
    import cbor2

    data = b"".join(streams.render_record(seq, t, p) for seq, t, p in records)
    pieces = streams.render_messages(data, len(records), name)
    encoded = streams.render_cbor_head(4, len(records)) + b"".join(pieces)
    assert cbor2.loads(encoded) == [
        {"streamName": name, "sequenceNumber": seq, "ingestTime": max(t, 0), "payload": p}
        for seq, t, p in records]
    for value in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        assert streams.render_cbor_head(0, value) == cbor2.dumps(value)
    assert cbor2.loads(streams.render_append_response(name, records[0][0] if records else 7)
                       ) == {"requestId": name, "status": 0,
                             "sequenceNumber": records[0][0] if records else 7}


def test_a_flipped_bit_ends_the_log() -> None:
    data = bytearray(b"".join(streams.render_record(i, 0, b"abc") for i in range(3)))
    data[streams.RECORD_OVERHEAD + 3 + streams.RECORD_OVERHEAD + 1] ^= 1  # 2nd payload
    assert streams.resolve_records(bytes(data), 0).seqs == [0]


def test_overwrite_drops_whole_oldest_segments_just_enough() -> None:
    d = _definition(maxSize=4096, streamSegmentSize=1024, strategyOnFull=1)
    segs = [streams.SegmentInfo(i * 4, 4, 1024, 0) for i in range(4)]
    plan = streams.plan_append(segs, 256, d, budget_left=10**9)
    assert (plan.room, plan.drop, plan.roll) == (streams.Room.DROP, 1, True)
    reject = _definition(maxSize=4096, streamSegmentSize=1024)
    plan = streams.plan_append(segs, 256, reject, budget_left=10**9)
    assert plan.room is streams.Room.REJECT and "RejectNewData" in plan.reason


def test_disk_budget_applies_across_streams() -> None:
    d = _definition(strategyOnFull=1, streamSegmentSize=1024)
    segs = [streams.SegmentInfo(0, 4, 1024, 0), streams.SegmentInfo(4, 1, 256, 0)]
    assert streams.plan_append(segs, 256, d, budget_left=100).drop == 1
    assert streams.plan_append(segs, 256, _definition(), budget_left=100).room is \
        streams.Room.REJECT


def test_ttl_keeps_the_newest_segment_and_what_is_young() -> None:
    segs = [streams.SegmentInfo(0, 1, 10, 1000), streams.SegmentInfo(1, 1, 10, 5000),
            streams.SegmentInfo(2, 1, 10, 9000)]
    assert streams.resolve_expired(segs, 60_000, 61_000) == 1
    assert streams.resolve_expired(segs, 60_000, 10**9) == 2
    assert streams.resolve_expired(segs, None, 10**9) == 0
    assert streams.is_expired(1000, 60_000, 61_000)
    assert not streams.is_expired(1001, 60_000, 61_000)


@pytest.mark.parametrize(("raw", "field"), [
    ({"name": "bad/name", "strategyOnFull": 0}, "definition.name"),
    ({"name": "s"}, "definition.strategyOnFull"),
    ({"name": "s", "strategyOnFull": 0, "maxSize": 10}, "definition.maxSize"),
    ({"name": "s", "strategyOnFull": 5}, "definition.strategyOnFull"),
    ({"name": "s", "strategyOnFull": 0, "exportDefinition": {"http": [
        {"identifier": "h", "uri": "ftp://x"}]}}, "definition.exportDefinition.http[0].uri"),
])
def test_bad_definitions_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(streams.DefinitionError, match=re.escape(field)):
        streams.resolve_definition(raw)


def test_export_batching_and_backoff() -> None:
    assert streams.is_batch_due(500, 500, 60_000, 0)
    assert not streams.is_batch_due(3, 500, 60_000, 1000)
    assert streams.is_batch_due(3, 500, 60_000, 60_000)
    assert streams.is_batch_due(1, 500, None, 0)
    assert not streams.is_batch_due(0, 1, None, 0)
    assert streams.resolve_export_start(None, 5, 0) == 5
    assert streams.resolve_export_start(9, 5, 0) == 10
    assert streams.resolve_export_start(9, 5, 20) == 20
    delays = [streams.resolve_retry_delay(n, 0.999) for n in range(1, 20)]
    assert delays == sorted(delays) and delays[-1] <= streams.EXPORT_RETRY_CAP_S


def test_config_refuses_non_loopback_and_names_keys() -> None:
    with pytest.raises(streams.ConfigError, match=r"configuration\.host"):
        streams.resolve_config({"host": "0.0.0.0"})
    with pytest.raises(streams.ConfigError, match=r"configuration\.port"):
        streams.resolve_config({"port": 70000})
    assert streams.resolve_config({}).port == 8088



def test_mqtt_export_topics_default_to_the_devices_namespace() -> None:
    config = streams.resolve_config({"mqttExports": [
        {"stream": "telemetry"},
        {"stream": "alarms", "topic": "site/{iot:thingName}/alarms", "identifier": "a"}]})
    assert [streams.render_mqtt_topic("gw-1", m.topic) for m in config.mqtt] == [
        "devices/gw-1/streams/telemetry", "site/gw-1/alarms"]
    for bad in ("hedgerow/things/gw-1/status", "$SYS/x", "devices/+/x", "/abs", ""):
        with pytest.raises(streams.ConfigError, match=r"mqttExports\[0\]\.topic"):
            streams.resolve_config({"mqttExports": [{"stream": "s", "topic": bad}]})
    # The removed identity-file settings are an error, not silently ignored.
    with pytest.raises(streams.ConfigError, match=r"configuration\.mqttBroker: no longer"):
        streams.resolve_config({"mqttBroker": {"keyFile": "/var/lib/hedgerow/identity/k"}})

def test_client_env_only_for_dependents() -> None:
    assert streams.resolve_client_env({}, "t") == {}
    assert streams.resolve_client_env({streams.COMPONENT_NAME: {"port": 9000}}, "t") == {
        "STREAM_MANAGER_SERVER_PORT": "9000", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "t"}


def test_protocol_version_negotiation() -> None:
    assert streams.resolve_protocol_version("1.1.0", ["1.0.0"]) == "1.1.0"
    assert streams.resolve_protocol_version("2.0.0", ["1.0.0"]) == "1.0.0"  # falls back
    assert streams.resolve_protocol_version("2.0.0", ["1.9.0"]) is None


@pytest.mark.parametrize("header", [b"\x00\x00\x00\x00\x04", b"\xff\xff\xff\xfb\x04",
                                    b"\x7f\xff\xff\xff\x04"])
def test_frame_lengths_out_of_bounds_are_refused(header: bytes) -> None:
    with pytest.raises(streams.FrameError):
        streams.resolve_frame_header(header)
    assert streams.resolve_frame_header(streams.render_frame_header(
        streams.Operation.APPEND_MESSAGE, 10)) == (10, 4)
