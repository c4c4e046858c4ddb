"""Exports: each stream's HTTP exports (the SDK's HTTPConfig) and the component's MQTT
exports, one task each, ordered and at-least-once.

An export reads a batch from its checkpoint, sends it, and only then moves the
checkpoint (persisted atomically beside the stream): a crash between the send and the
write sends the batch again, never skips it. A failed send is retried, in order, after a
capped jittered backoff. All exports share the bandwidth budget; when several wait for
it, the most urgent priority (1) goes first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from hedgerow import files
from hedgerow.core import streams as core
from hedgerow.streams import store as store_

log = logging.getLogger("hedgerow.streams")

_HTTP_TIMEOUT_S = 30.0


class Bandwidth:
    """A token bucket (bytes per second, a second's worth of burst) whose waiters are
    served by priority, then arrival."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at = time.monotonic()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._busy = False

    async def take(self, size: int, priority: int) -> None:
        if self.rate <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._serve())
        await fut
        self.tokens -= size  # may go negative: a batch larger than a second waits longer

    async def _serve(self) -> None:
        try:
            while self._waiters:
                now = time.monotonic()
                self.tokens = min(float(self.rate), self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens <= 0:
                    await asyncio.sleep(-self.tokens / self.rate + 0.001)
                    continue
                _, _, fut = heapq.heappop(self._waiters)
                if not fut.done():
                    fut.set_result(None)
                    await asyncio.sleep(0)  # let it take its tokens before the next
        finally:
            self._busy = False


class Sender(Protocol):
    async def send(self, stream: str, batch: list[tuple[int, int, bytes]]) -> None: ...


class Exporter:
    """One export of one stream."""

    def __init__(self, stream: store_.Stream, ident: str, priority: int, batch_size: int,
                 interval_ms: int | None, start_seq: int, sender: Sender,
                 bandwidth: Bandwidth,
                 report: Callable[[Exporter, int, bool, str], None]) -> None:
        self.stream, self.ident, self.priority = stream, ident, priority
        self.batch_size, self.interval_ms, self.start_seq = batch_size, interval_ms, start_seq
        self.sender, self.bandwidth, self.report = sender, bandwidth, report
        self.checkpoint: int | None = None
        self.error = ""
        self.exported_bytes = self.exported_messages = 0
        self.last_export_ms = 0
        self.task: asyncio.Task[None] | None = None
        self._skipped_to = -1
        self.path = (None if stream.folder is None else
                     stream.folder / "exports" / f"{ident.encode().hex()}.json")
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_bytes())
            self.checkpoint = int(data["lastExportedSequenceNumber"])
            self.exported_bytes = int(data.get("exportedBytes", 0))
            self.exported_messages = int(data.get("exportedMessages", 0))
        except (OSError, ValueError, KeyError, TypeError):
            self.checkpoint = None

    def _save(self, checkpoint: int, exported_bytes: int, exported_messages: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(exist_ok=True, mode=0o700)
        files.write_atomic(self.path, json.dumps({
            "lastExportedSequenceNumber": checkpoint, "exportedBytes": exported_bytes,
            "exportedMessages": exported_messages}).encode())

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exportConfigIdentifier": self.ident,
            "lastExportedSequenceNumber": -1 if self.checkpoint is None else self.checkpoint,
            "exportedBytesFromStream": self.exported_bytes,
            "exportedMessagesCount": self.exported_messages}
        if self.last_export_ms:
            out["lastExportTime"] = self.last_export_ms
        if self.error:
            out["errorMessage"] = self.error
        return out

    async def run(self) -> None:
        stream = self.stream
        failures = 0
        while not stream.deleted:
            start = core.resolve_export_start(self.checkpoint, self.start_seq, stream.oldest())
            wanted = core.resolve_export_start(self.checkpoint, self.start_seq, 0)
            if start > wanted and start != self._skipped_to:
                # Overwritten (strategyOnFull) or expired before it could be sent: say so.
                self._skipped_to = start
                log.warning("export %r of %r: messages %d..%d were removed from the stream "
                            "before they could be exported", self.ident, stream.name,
                            wanted, start - 1)
            available = stream.available(start)
            first = stream.read(start, 1, 1) if available else []
            age = store_.now_ms() - first[0][1] if first else 0
            if not core.is_batch_due(available, self.batch_size, self.interval_ms, age):
                stream.changed.clear()
                wait = None
                if available and self.interval_ms is not None:
                    wait = max(0.0, (self.interval_ms - age) / 1000)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.changed.wait(), wait)
                continue
            batch = stream.read(start, self.batch_size, core.MAX_READ_RESPONSE_BYTES)
            if not batch:
                continue
            size = sum(len(p) for _, _, p in batch)
            await self.bandwidth.take(size, self.priority)
            try:
                await self.sender.send(stream.name, batch)
            except (OSError, TimeoutError, ExportError) as exc:
                failures += 1
                self.error = f"batch {batch[0][0]}..{batch[-1][0]}: {exc}"
                self.report(self, batch[-1][0], False, self.error)
                if failures == 1:  # a change of state, not every retry
                    log.warning("export %r of %r failing: %s", self.ident, stream.name,
                                self.error)
                await asyncio.sleep(core.resolve_retry_delay(failures, random.random()))  # noqa: S311 (jitter)
                continue
            if failures:
                log.info("export %r of %r delivering again", self.ident, stream.name)
            failures, self.error = 0, ""
            checkpoint = batch[-1][0]
            try:  # on disk first: what describe shows survives a crash
                self._save(checkpoint, self.exported_bytes + size,
                           self.exported_messages + len(batch))
            except OSError as exc:
                log.error("export %r of %r: checkpoint not saved: %s", self.ident,
                          stream.name, exc)
            self.checkpoint = checkpoint
            self.exported_bytes += size
            self.exported_messages += len(batch)
            self.last_export_ms = store_.now_ms()
            self.report(self, checkpoint, True,
                        f"exported {len(batch)} messages {batch[0][0]}..{checkpoint}")


class ExportError(Exception):
    pass


class HttpSender:
    def __init__(self, config: core.HttpExport) -> None:
        self.config = config
        url = urllib.parse.urlsplit(config.uri)
        self.tls = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.tls else 80)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")

    async def send(self, stream: str, batch: list[tuple[int, int, bytes]]) -> None:
        if self.config.export_format is core.ExportFormat.RAW_NOT_BATCHED:
            for _, _, payload in batch:
                await self._post(payload, "application/octet-stream")
            return
        body = json.dumps([{"streamName": stream, "sequenceNumber": s, "ingestTime": t,
                            "payload": base64.b64encode(p).decode()} for s, t, p in batch])
        await self._post(body.encode(), "application/json")

    async def _post(self, body: bytes, kind: str) -> None:
        ssl_ctx: Any = None
        if self.tls:
            import ssl  # only when an https export exists

            ssl_ctx = ssl.create_default_context()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ssl_ctx), _HTTP_TIMEOUT_S)
        try:
            head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\nUser-Agent: hedgerow-stream-manager\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), _HTTP_TIMEOUT_S)
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ExportError(f"{self.config.uri}: not an HTTP answer")
            code = int(parts[1])
            if not 200 <= code < 300:
                raise ExportError(f"{self.config.uri}: HTTP {code}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Exports:
    """Every export task, kept in line with the streams' definitions."""

    def __init__(self, st: store_.Store, config: core.Config) -> None:
        self.store, self.config = st, config
        self.bandwidth = Bandwidth(config.export_bandwidth)
        self.running: dict[tuple[str, str], tuple[Any, Exporter]] = {}
        self.mqtt: Any = None

    def start(self) -> None:
        for stream in self.store.streams.values():
            self.on_change(stream, stream.name)
        if self.config.mqtt:
            from hedgerow.streams import mqttexport  # only when configured

            self.mqtt = mqttexport.MqttLink(self.config)
            for name in {m.stream for m in self.config.mqtt}:
                self.on_change(self.store.streams.get(name), name)

    def _wanted(self, stream: store_.Stream) -> dict[str, tuple[Any, Any]]:
        out: dict[str, tuple[Any, Any]] = {}
        for http in stream.definition.http:
            if not http.disabled:
                out[http.identifier] = (http, lambda h=http: HttpSender(h))
        if self.mqtt is not None:
            for m in self.config.mqtt:
                if m.stream == stream.name:
                    out[m.identifier] = (m, lambda m=m: self.mqtt.sender(m))
        return out

    def on_change(self, stream: store_.Stream | None, name: str) -> None:
        wanted = {} if stream is None else self._wanted(stream)
        for key in [k for k in self.running if k[0] == name]:
            spec, exporter = self.running[key]
            if key[1] not in wanted or wanted[key[1]][0] != spec or exporter.stream is not stream:
                assert exporter.task is not None
                exporter.task.cancel()
                del self.running[key]
        assert stream is not None or not wanted
        for ident, (spec, make) in wanted.items():
            if (name, ident) in self.running:
                continue
            assert stream is not None
            exporter = Exporter(stream, ident, spec.priority, spec.batch_size,
                                getattr(spec, "batch_interval_ms", None),
                                getattr(spec, "start_sequence_number", 0), make(),
                                self.bandwidth, self._report)
            exporter.task = asyncio.get_running_loop().create_task(exporter.run())
            self.running[(name, ident)] = (spec, exporter)

    def _report(self, exporter: Exporter, seq: int, ok: bool, message: str) -> None:
        """A batch's outcome, appended to the status stream (when configured and present;
        a full status stream drops the report, never the export)."""
        status = self.store.streams.get(self.config.status_stream)
        if status is None or status is exporter.stream:
            return
        body = core.render_status_message(exporter.ident, exporter.stream.name, seq, ok,
                                          message, store_.now_ms())
        try:
            status.append(json.dumps(body).encode(), self.store.budget_left(status))
        except (core.RequestError, OSError) as exc:
            log.debug("status stream %r: report dropped: %s", status.name, exc)

    def describe(self, stream: store_.Stream) -> list[dict[str, Any]]:
        out = [e.status() for (name, _), (_, e) in sorted(self.running.items())
               if name == stream.name]
        out += [{"exportConfigIdentifier": u.identifier, "lastExportedSequenceNumber": -1,
                 "errorMessage": u.message} for u in stream.definition.unsupported]
        return out

    async def stop(self) -> None:
        for _, exporter in self.running.values():
            if exporter.task is not None:
                exporter.task.cancel()
        for _, exporter in self.running.values():
            if exporter.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await exporter.task
        if self.mqtt is not None:
            await self.mqtt.close()

