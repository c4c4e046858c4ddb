"""The storage shell on its own: a read is bounded by bytes, at least one message."""

from __future__ import annotations

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
