"""stream_append: the stream manager through the official SDK — durable appends, reads,
HTTP export drain, memory.

One `python -m hedgerow.streams serve` on a temp folder of the root disk; clients are the
official `stream-manager` SDK (StreamManagerClient), as components use it.

- append_ratio_1: one client appending 1 KiB with flushOnWrite (each append acknowledged
  once on disk) ÷ a raw `write` + `fdatasync` loop of the same records on the same disk,
  in the same run (target ≥ 0.9).
- append_durable_vs_memory_1 (report only): the same client's flushOnWrite rate ÷ its
  rate to a Memory stream — what the disk costs on top of the SDK's own round trip.
- group_commit_speedup_16: 16 clients (16 processes, one SDK client each) appending
  concurrently to one flushOnWrite stream ÷ the 1-client rate (target ≥ 5: they share
  fsyncs).
- read_msgs_per_s: 1 KiB messages read in batches of 100 by one client (target ≥ 50,000).
- export_msgs_per_s: 1 KiB messages drained by an HTTP export (batches of 500) to a local
  stdlib HTTP server (report only).
- stream_manager_pss_mb: the server's PSS with 10 streams holding data, beside an idle
  `python` (target ≤ 30 MB).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench import harness

PAYLOAD = b"x" * 1024
SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in smaps_rollup")


def _client(port: int, token: str) -> Any:
    from stream_manager import StreamManagerClient

    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
    return StreamManagerClient(port=port)


def _definition(name: str, flush: bool, **kw: Any) -> Any:
    from stream_manager import MessageStreamDefinition, StrategyOnFull

    return MessageStreamDefinition(name=name, strategy_on_full=StrategyOnFull.RejectNewData,
                                   flush_on_write=flush, max_size=1 << 31, **kw)


def _raw_rate(folder: pathlib.Path) -> float:
    """write + fdatasync of one 1 KiB record at a time, as the server's own format."""
    from hedgerow.core import streams

    path = folder / "raw.seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    count, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < SECONDS:
            os.write(fd, streams.render_record(count, 0, PAYLOAD))
            os.fdatasync(fd)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / (time.perf_counter() - start)


def _append_worker(port: int, token: str, go: Any, out: Any) -> None:
    """One SDK client in its own process: connect, say so, wait for the start, append."""
    client = _client(port, token)
    out.put("ready")
    go.wait()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        client.append_message("durable16", PAYLOAD)
        count += 1
    out.put(count)
    client.close()


class _Sink(http.server.BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Sink.received += len(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run() -> Iterator[harness.Figure]:
    from stream_manager import ExportDefinition, HTTPConfig, ReadMessagesOptions

    home = pathlib.Path.home() / ".cache" / "hedgerow"
    home.mkdir(parents=True, exist_ok=True)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-streams-", dir=home))
    token = secrets.token_urlsafe(24)
    (folder / "tokens").write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    port = _free_port()
    config = {"port": port, "storageDir": str(folder / "streams"), "logLevel": "WARNING",
              "diskBudgetBytes": 1 << 34}
    server = subprocess.Popen([sys.executable, "-m", "hedgerow.streams", "serve", "--tokens",
                               str(folder / "tokens"), "--config", json.dumps(config)])
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client = _client(port, token)

        raw = _raw_rate(folder)
        client.create_message_stream(_definition("durable1", True))
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            client.append_message("durable1", PAYLOAD)
            count += 1
        one = count / (time.perf_counter() - start)
        yield harness.Figure("append_ratio_1", one, "appends/s", raw, ">= 0.9")
        # The SDK's own floor: the same client appending to a Memory stream (no disk at
        # all). When this is far below the raw fsync loop, the client, not the disk, sets
        # the pace of append_ratio_1.
        from stream_manager import Persistence

        client.create_message_stream(_definition("memory1", False,
                                                  persistence=Persistence.Memory))
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            client.append_message("memory1", PAYLOAD)
            count += 1
        floor = count / (time.perf_counter() - start)
        yield harness.Figure("append_durable_vs_memory_1", one, "appends/s", floor,
                             "report only: flushOnWrite ÷ Memory through the same SDK client")
        client.delete_message_stream("memory1")

        client.create_message_stream(_definition("durable16", True))
        ctx = multiprocessing.get_context("spawn")
        go, out = ctx.Event(), ctx.Queue()
        workers = [ctx.Process(target=_append_worker, args=(port, token, go, out))
                   for _ in range(16)]
        for w in workers:
            w.start()
        for _ in workers:  # every client connected before the clock starts
            assert out.get(timeout=120) == "ready"
        go.set()
        counts = [out.get(timeout=120) for _ in workers]
        for w in workers:
            w.join(30)
        sixteen = sum(counts) / SECONDS
        yield harness.Figure("group_commit_speedup_16", sixteen, "appends/s", one, ">= 5")

        client.create_message_stream(_definition("bulk", False))
        total = 20_000
        for _ in range(total):
            client.append_message("bulk", PAYLOAD)
        start = time.perf_counter()
        seq = 0
        while seq < total:
            got = client.read_messages("bulk", ReadMessagesOptions(
                desired_start_sequence_number=seq, min_message_count=100,
                max_message_count=100))
            seq = got[-1].sequence_number + 1
        reads = total / (time.perf_counter() - start)
        yield harness.Figure("read_msgs_per_s", reads, "msg/s", None, ">= 50000")

        uri = f"http://127.0.0.1:{sink.server_address[1]}/"
        start = time.perf_counter()
        client.update_message_stream(_definition("bulk", False, export_definition=(
            ExportDefinition(http=[HTTPConfig(identifier="sink", uri=uri, batch_size=500)]))))
        while _Sink.received < total:
            time.sleep(0.01)
        exported = total / (time.perf_counter() - start)
        yield harness.Figure("export_msgs_per_s", exported, "msg/s", None, "report only")

        for i in range(7):  # 10 streams with data in all
            client.create_message_stream(_definition(f"s{i}", False))
            for _ in range(100):
                client.append_message(f"s{i}", PAYLOAD)
        client.close()
        time.sleep(1)
        yield harness.Figure("stream_manager_pss_mb", _pss_mb(server.pid), "MB",
                             _pss_mb(idle.pid), "<= 30 MB")
    finally:
        sink.shutdown()
        server.terminate()
        server.wait(20)
        idle.communicate(b"")
        shutil.rmtree(folder, ignore_errors=True)
