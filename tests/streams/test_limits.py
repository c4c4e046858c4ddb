"""Full streams and old messages: OverwriteOldestData drops exactly the oldest whole
segments, RejectNewData refuses with the SDK's error and keeps everything, the disk budget
holds across streams, and a time to live removes exactly the expired messages."""

from __future__ import annotations

import pytest
from stream_manager import (
    MessageStreamDefinition,
    ReadMessagesOptions,
    StrategyOnFull,
)
from stream_manager.exceptions import InvalidRequestException

from hedgerow.core import streams as core
from tests.streams.conftest import StreamManager
from tests.support.wait import wait_for

# 4 records of 256 bytes (header included) fill a 1 KiB segment; 16 fill 4 KiB.
PAYLOAD = 256 - core.RECORD_OVERHEAD


def payload(i: int) -> bytes:
    return f"{i:06d}".encode().ljust(PAYLOAD, b".")


def read_from(client: object, name: str, start: int = 0) -> list[tuple[int, bytes]]:
    got = client.read_messages(name, ReadMessagesOptions(  # type: ignore[attr-defined]
        desired_start_sequence_number=start, min_message_count=1, max_message_count=1000))
    return [(m.sequence_number, m.payload) for m in got]


def test_overwrite_oldest_drops_whole_oldest_segments(manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="ring", max_size=4096, stream_segment_size=1024,
            strategy_on_full=StrategyOnFull.OverwriteOldestData, flush_on_write=True))
        for i in range(16):
            client.append_message("ring", payload(i))
        assert [s for s, _ in read_from(client, "ring")] == list(range(16))
        for i in range(16, 20):  # the 17th needs 256 bytes: the oldest segment (0-3) goes
            client.append_message("ring", payload(i))
        assert read_from(client, "ring") == [(i, payload(i)) for i in range(4, 20)]
        status = client.describe_message_stream("ring").storage_status
        assert (status.oldest_sequence_number, status.newest_sequence_number,
                status.total_bytes) == (4, 19, 4096)
        assert len(list((manager.storage / b"ring".hex()).glob("*.seg"))) == 4


def test_reject_new_data_refuses_and_keeps_everything(manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="bounded", max_size=4096, stream_segment_size=1024,
            strategy_on_full=StrategyOnFull.RejectNewData))
        for i in range(16):
            client.append_message("bounded", payload(i))
        with pytest.raises(InvalidRequestException, match=r"full.*RejectNewData"):
            client.append_message("bounded", payload(16))
        assert read_from(client, "bounded") == [(i, payload(i)) for i in range(16)]


def test_disk_budget_holds_across_streams(make_manager: object) -> None:
    manager: StreamManager = make_manager(diskBudgetBytes=6144)  # type: ignore[operator]
    with manager.client() as client:
        for name in ("a", "b"):
            client.create_message_stream(MessageStreamDefinition(
                name=name, max_size=1 << 20, stream_segment_size=1024,
                strategy_on_full=StrategyOnFull.RejectNewData))
        for i in range(16):
            client.append_message("a", payload(i))
        for i in range(8):
            client.append_message("b", payload(i))
        with pytest.raises(InvalidRequestException, match="disk budget"):
            client.append_message("b", payload(8))
        with pytest.raises(InvalidRequestException, match="disk budget"):
            client.append_message("a", payload(16))
        client.delete_message_stream("a")  # space given back
        assert client.append_message("b", payload(8)) == 8


def test_time_to_live_drops_exactly_the_expired_messages(make_manager: object) -> None:
    """The SDK's smallest TTL is a minute: the stream manager runs with a wall clock this
    test moves on (tests/streams/shifted_clock.py) instead of waiting for one."""
    manager: StreamManager = make_manager(clock=True)  # type: ignore[operator]
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="fresh", time_to_live_millis=60_000, stream_segment_size=1024,
            strategy_on_full=StrategyOnFull.RejectNewData))
        for i in range(8):  # two full segments
            client.append_message("fresh", payload(i))
        folder = manager.storage / b"fresh".hex()
        assert len(list(folder.glob("*.seg"))) == 2
        manager.advance(45)
        client.append_message("fresh", payload(8))  # 45 s younger than the first eight
        manager.advance(5)  # 50 s on (and a moment): nothing has expired yet
        assert [s for s, _ in read_from(client, "fresh")] == list(range(9))
        manager.advance(11)  # 61 s on for the first eight, 16 s for message 8
        wait_for(lambda: [s for s, _ in read_from(client, "fresh")] == [8], 10,
                 "the first eight to expire")
        assert read_from(client, "fresh") == [(8, payload(8))]
        assert client.describe_message_stream("fresh").storage_status \
            .oldest_sequence_number == 8
        # Their segments are deleted; the one that holds message 8 stays.
        wait_for(lambda: sorted(p.name for p in folder.glob("*.seg")) ==
                 [f"{8:020d}.seg"], 10, "expired segments deleted")
