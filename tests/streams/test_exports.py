"""HTTP exports to a real local HTTP server: while it is down nothing is lost, once it is
back everything arrives in order; after a stream-manager restart the export resumes from
its persisted checkpoint."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from stream_manager import (
    ExportDefinition,
    HTTPConfig,
    MessageStreamDefinition,
    ReadMessagesOptions,
    Status,
    StatusMessage,
    StrategyOnFull,
    Util,
)

from tests.streams.conftest import StreamManager
from tests.support.net import LOOPBACK, free_port
from tests.support.wait import wait_for


class Receiver:
    """A stdlib HTTP server that records every batch POSTed to it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.batches: list[list[tuple[int, bytes]]] = []
        self.arrivals: list[tuple[str, float]] = []  # (stream, when) per batch
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                batch = json.loads(body)
                receiver.batches.append([(m["sequenceNumber"], base64.b64decode(m["payload"]))
                                         for m in batch])
                receiver.arrivals.append((batch[0]["streamName"], time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def seqs(self) -> list[int]:
        return [s for batch in self.batches for s, _ in batch]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


def test_http_export_survives_an_outage_and_a_restart(make_manager: Any,
                                                      receiver: Receiver) -> None:
    manager: StreamManager = make_manager(statusStreamName="export-status")
    export = HTTPConfig(identifier="home", uri=f"http://{LOOPBACK}:{receiver.port}/ingest",
                        batch_size=10)
    with manager.client() as client:
        client.create_message_stream(MessageStreamDefinition(
            name="export-status", strategy_on_full=StrategyOnFull.OverwriteOldestData))
        client.create_message_stream(MessageStreamDefinition(
            name="outbox", strategy_on_full=StrategyOnFull.RejectNewData, flush_on_write=True,
            export_definition=ExportDefinition(http=[export])))
        for i in range(45):  # the server is down: nothing can be delivered
            client.append_message("outbox", b"event %d" % i)

        def failing() -> bool:
            [status] = client.describe_message_stream("outbox").export_statuses
            return bool(status.error_message) and status.last_exported_sequence_number == -1
        wait_for(failing, 30, "the export to report the outage")

        receiver.start()  # back
        wait_for(lambda: receiver.seqs()[-1:] == [44], 60, "everything delivered")
        seqs = receiver.seqs()
        assert sorted(set(seqs)) == list(range(45))
        assert seqs == sorted(seqs)  # in order (a resent batch would repeat, not reorder)
        assert all(p == b"event %d" % s for b in receiver.batches for s, p in b)
        assert all(len(b) <= 10 for b in receiver.batches)
        wait_for(lambda: client.describe_message_stream("outbox").export_statuses[0]
                 .last_exported_sequence_number == 44, 10, "the checkpoint to move")
        status = client.describe_message_stream("outbox").export_statuses[0]
        assert not status.error_message and status.exported_messages_count >= 45
        # The status stream tells the same story, one StatusMessage per batch.
        reports = [Util.deserialize_json_bytes_to_obj(m.payload, StatusMessage)
                   for m in client.read_messages("export-status", ReadMessagesOptions(
                       min_message_count=1, max_message_count=1000))]
        assert all(r.status_context.export_identifier == "home" for r in reports)
        assert reports[0].status == Status.Failure and reports[0].message.startswith("batch 0..")
        assert reports[-1].status == Status.Success
        assert reports[-1].status_context.sequence_number == 44

    manager.kill9()
    delivered = len(receiver.seqs())
    manager.start()  # resumes from the persisted checkpoint, not from the start
    with manager.client() as client:
        for i in range(45, 50):
            client.append_message("outbox", b"event %d" % i)
        wait_for(lambda: receiver.seqs()[-1:] == [49], 60, "the new messages delivered")
    assert receiver.seqs()[delivered:] == list(range(45, 50))


def test_bandwidth_is_shared_and_the_urgent_export_goes_first(make_manager: Any,
                                                              receiver: Receiver) -> None:
    receiver.start()
    manager: StreamManager = make_manager(exportBandwidthBytesPerSecond=20_000)
    uri = f"http://{LOOPBACK}:{receiver.port}/"
    with manager.client() as client:
        for name, priority in (("bulk", 10), ("urgent", 1)):
            client.create_message_stream(MessageStreamDefinition(
                name=name, strategy_on_full=StrategyOnFull.RejectNewData,
                export_definition=ExportDefinition(http=[HTTPConfig(
                    identifier=name, uri=uri, batch_size=5, priority=priority,
                    disabled=True)])))
            for i in range(40):
                client.append_message(name, bytes([i]) * 1024)
        started = time.monotonic()
        for name, priority in (("bulk", 10), ("urgent", 1)):  # both start together
            client.update_message_stream(MessageStreamDefinition(
                name=name, strategy_on_full=StrategyOnFull.RejectNewData,
                export_definition=ExportDefinition(http=[HTTPConfig(
                    identifier=name, uri=uri, batch_size=5, priority=priority)])))
        wait_for(lambda: len(receiver.arrivals) == 16, 60, "16 batches")
    took = time.monotonic() - started
    # 80 KiB at 20,000 B/s with a second of burst: at least ~3 s.
    assert took > 2.5, took
    last = {name: max(t for n, t in receiver.arrivals if n == name)
            for name in ("bulk", "urgent")}
    assert last["urgent"] < last["bulk"]
    order = [n for n, _ in receiver.arrivals]
    # Once both wait for bandwidth, every urgent batch goes before the remaining bulk.
    assert order.index("urgent") <= 2 and order[-1] == "bulk"
