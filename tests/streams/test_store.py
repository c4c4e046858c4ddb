"""The storage shell on its own: a read is bounded by bytes, at least one message."""

from __future__ import annotations

import asyncio
import pathlib

from hedgerow.core import streams as core
from hedgerow.streams import store


def test_read_is_bounded_by_bytes() -> None:
    definition = core.resolve_definition({"name": "m", "strategyOnFull": 0,
                                          "persistence": 1})
    stream = store.Stream(definition, None)
    size = 1000 - core.RECORD_OVERHEAD
    for i in range(10):
        stream.append(bytes([i]) * size, budget_left=10**9)
    assert [s for s, _, _ in stream.read(0, 10, 10**9)] == list(range(10))
    assert [s for s, _, _ in stream.read(0, 10, 2500)] == [0, 1, 2]
    assert [s for s, _, _ in stream.read(4, 10, 3000)] == [4, 5, 6]
    assert [s for s, _, _ in stream.read(9, 10, 1)] == [9]
    assert [p for _, _, p in stream.read(7, 2, 10**9)] == [b"\7" * size, b"\x08" * size]


def test_the_server_stays_light() -> None:
    """What the stream manager process imports: no pydantic, agent, docker or paho (the
    MQTT export imports paho only when one is configured)."""
    import subprocess
    import sys

    heavy = ["pydantic", "paho", "docker", "kubernetes", "kopf", "hedgerow.agent",
             "hedgerow.controller", "watchfiles"]
    code = ("import sys, hedgerow.streams.cli, hedgerow.streams.server, "
            "hedgerow.streams.exports, hedgerow.streams.store; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_concurrent_flush_on_write_appends_share_syncs(tmp_path: pathlib.Path) -> None:
    """16 appenders, each waiting for its flushOnWrite append before the next: every one
    is answered only once a sync covering it has completed, far fewer syncs than appends
    run (the loop keeps writing while the sync thread syncs), and a reopened store holds
    every message, in order."""
    definition = core.resolve_definition({"name": "g", "strategyOnFull": 0,
                                          "flushOnWrite": True})
    acks: list[tuple[int, int]] = []

    async def main() -> int:
        st = store.Store(tmp_path, 1 << 30)
        st.load()
        stream = st.create(definition)

        async def appender(i: int) -> None:
            for j in range(20):
                seq = stream.append(bytes([i, j]) * 512, st.budget_left(stream))
                assert stream.visible <= seq  # not readable before it is durable
                await stream.wait_durable(seq)
                acks.append((seq, stream.synced))
        await asyncio.gather(*(appender(i) for i in range(16)))
        st.close()
        return stream.syncs

    syncs = asyncio.run(main())
    assert len(acks) == 320 and all(synced > seq for seq, synced in acks)
    assert syncs < 320 // 2, f"{syncs} syncs for 320 appends: group commit is not sharing"
    again = store.Store(tmp_path, 1 << 30)
    again.load()
    got = again.streams["g"].read(0, 1000, 1 << 30)
    again.close()
    assert [seq for seq, _, _ in got] == list(range(320))
    assert sorted(p[:2] for _, _, p in got) == sorted(bytes([i, j]) for i in range(16)
                                                       for j in range(20))
