"""File streams survive `kill -9`: every acknowledged flushOnWrite append is there after a
restart, with its sequence number and content; a torn tail is cut, not served."""

from __future__ import annotations

import threading
import time

from stream_manager import (
    MessageStreamDefinition,
    Persistence,
    ReadMessagesOptions,
    StrategyOnFull,
)
from stream_manager.exceptions import NotEnoughMessagesException

from hedgerow.core import streams as core
from tests.streams.conftest import StreamManager
from tests.support.wait import wait_for


def _read_all(client: object, name: str) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    while True:
        try:
            got = client.read_messages(name, ReadMessagesOptions(  # type: ignore[attr-defined]
                desired_start_sequence_number=len(out) and out[-1][0] + 1,
                min_message_count=1, max_message_count=500))
        except NotEnoughMessagesException:
            return out
        out += [(m.sequence_number, m.payload) for m in got]


def test_kill9_during_concurrent_flush_on_write_appends_loses_nothing_acknowledged(
        manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="durable", strategy_on_full=StrategyOnFull.RejectNewData,
            persistence=Persistence.File, flush_on_write=True, stream_segment_size=64 * 1024))
    acked: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            c = manager.client(request_timeout=5)
        except Exception:
            return
        i = 0
        while not stop.is_set():
            payload = f"writer {n} message {i} ".encode() * 20
            try:
                seq = c.append_message("durable", payload)
            except Exception:
                return  # the server died under us: this one was not acknowledged
            with lock:
                acked.append((seq, payload))
            i += 1

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) > 300, 60, "300 acknowledged appends")
    manager.kill9()  # in the middle of the appends
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        before = dict(acked)
    assert len(before) == len(acked) > 300  # sequence numbers are unique

    manager.start()
    with manager.client() as client:
        stored = _read_all(client, "durable")
        seqs = [s for s, _ in stored]
        assert seqs == list(range(len(seqs)))  # in order, no holes
        found = dict(stored)
        missing = [s for s in before if found.get(s) != before[s]]
        assert not missing, f"{len(missing)} acknowledged messages lost or changed"
        # And the stream goes on after the last stored message.
        assert client.append_message("durable", b"after") == len(seqs)


def test_torn_tail_is_cut_on_restart(manager: StreamManager) -> None:
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="torn", strategy_on_full=StrategyOnFull.RejectNewData, flush_on_write=True))
        for i in range(5):
            client.append_message("torn", b"m%d" % i)
    manager.kill9()
    [segment] = (manager.storage / b"torn".hex()).glob("*.seg")
    intact = segment.stat().st_size
    # Power lost while the sixth record was half-written, and a corrupt seventh.
    record = core.render_record(5, int(time.time() * 1000), b"half-written message")
    with segment.open("ab") as f:
        f.write(record[:len(record) - 7])
    manager.start()
    with manager.client() as client:
        assert _read_all(client, "torn") == [(i, b"m%d" % i) for i in range(5)]
        assert segment.stat().st_size == intact
        assert client.append_message("torn", b"next") == 5
    assert "cut a torn tail" in manager.log.read_text()
