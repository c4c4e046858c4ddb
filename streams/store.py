"""Streams and their segmented logs: the file and memory storage, group commit, waits.

A stream is a list of segments; a segment is a run of records (core.streams' format:
length, CRC, sequence number, time, payload) in one file `<base seq>.seg` of the stream's
folder, or in one bytearray for Memory persistence. Appends are written on the event loop
(a `write` to the page cache costs microseconds); `flushOnWrite` appends then wait for a
sync round: one `fdatasync` in the store's sync thread for everything written before it
began. The loop goes on taking appends while a sync is in flight, and all of those share
the next one (group commit). Readers and exporters of a
flushOnWrite stream see a record only once it is durable: nothing they saw can vanish in
a crash. Other file streams are synced every `flush_interval`; a crash may lose what was
written since the last sync (their readers may have seen it).
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import os
import pathlib
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hedgerow import files
from hedgerow.core import streams as core

log = logging.getLogger("hedgerow.streams")

_SUFFIX = ".seg"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Segment:
    __slots__ = ("base_seq", "buf", "fd", "offsets", "path", "read_fd", "size", "times")

    def __init__(self, base_seq: int, path: pathlib.Path | None) -> None:
        self.base_seq, self.path = base_seq, path
        self.offsets = array.array("Q")
        self.times = array.array("q")
        self.size = 0
        self.buf: bytearray | None = bytearray() if path is None else None
        self.fd: int | None = None  # the newest segment's, for appends (and reads)
        self.read_fd: int | None = None  # an older segment's, while it is being read

    @property
    def count(self) -> int:
        return len(self.offsets)

    def info(self) -> core.SegmentInfo:
        return core.SegmentInfo(self.base_seq, self.count, self.size,
                                self.times[-1] if self.times else 0)

    def open_for_append(self) -> None:
        assert self.path is not None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          0o600)

    def write(self, record: bytes, ingest: int) -> None:
        if self.buf is not None:
            self.buf += record
        else:
            assert self.fd is not None
            view = memoryview(record)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                # A partial record (a full disk) must not stay: the next append would go
                # after it, and a restart cuts the log at the first bad record.
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)
                raise
        self.offsets.append(self.size)
        self.times.append(ingest)
        self.size += len(record)

    def raw(self, first: int, count: int) -> bytes | memoryview:
        """The bytes of `count` records from index `first`, with one pread (from the page
        cache: the append fd reads too, so a read of the newest segment opens nothing; an
        older one keeps its read fd open until the stream reads another, see
        Stream._reading)."""
        start = self.offsets[first]
        end = self.offsets[first + count] if first + count < self.count else self.size
        if self.buf is not None:
            return memoryview(self.buf)[start:end]
        fd = self.fd if self.fd is not None else self.read_fd
        if fd is None:
            assert self.path is not None
            fd = self.read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, end - start, start)

    def read(self, first: int, count: int) -> list[tuple[int, int, bytes]]:
        """`count` records from index `first`."""
        return core.resolve_payloads(self.raw(first, count), count)

    def close_reader(self) -> None:
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.close_reader()


def _base_seq(segment: Segment) -> int:
    return segment.base_seq


class Stream:
    def __init__(self, definition: core.Definition, folder: pathlib.Path | None,
                 syncer: Syncer | None = None) -> None:
        self.definition = definition
        self.folder = folder  # None: Memory persistence
        self.segments: list[Segment] = []
        self.next_seq = 0
        self.visible = 0  # readers see sequence numbers below this
        self.synced = 0  # durable below this
        self.new_files = False  # a segment file was created since the last sync
        self.changed = asyncio.Event()
        self._last_time = 0
        self.deleted = False
        # The sync thread syncs the newest segment's fd under this lock; the loop takes it
        # to close an fd, so a sync never hits a closed (or reused) descriptor.
        self.lock = threading.Lock()
        self.syncer = syncer
        self._flushed = 0  # the sync thread's own `synced` (it skips a sync with nothing new)
        self._sync_queued = False
        self.syncs = 0  # fdatasync rounds so far (appends per sync: group commit at work)
        # (sequence number, callback) of appends waiting for their sync, in order.
        self._waiters: deque[tuple[int, Callable[[BaseException | None], None]]] = deque()
        # The one older segment holding a read fd: a reader walking an old part of the
        # stream reads on without an open and a close per batch, and the stream never
        # holds more than two fds.
        self._reading: Segment | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def durable_appends(self) -> bool:
        return self.folder is not None and self.definition.flush_on_write

    def oldest(self, now: int | None = None) -> int:
        """The oldest sequence number a read can return (past the TTL: not readable).
        Ingest times never go backwards in a stream, so the first young message is a
        binary search away."""
        ttl = self.definition.ttl_ms
        if ttl is None:
            return self.segments[0].base_seq if self.segments else self.next_seq
        cutoff = (now_ms() if now is None else now) - ttl  # expired: ingest <= cutoff
        for seg in self.segments:
            if seg.count and seg.times[-1] > cutoff:
                return seg.base_seq + bisect.bisect_right(seg.times, cutoff)
        return self.next_seq

    # --- opening ---------------------------------------------------------------------

    def load(self) -> None:
        """Scan the segment files: cut a torn or corrupt tail (and any segment after a
        break in the sequence), index the rest."""
        assert self.folder is not None
        paths = sorted(self.folder.glob(f"*{_SUFFIX}"), key=lambda p: int(p.stem))
        expect: int | None = None
        broken = False
        for path in paths:
            base = int(path.stem)
            if broken or (expect is not None and base != expect):
                log.warning("stream %r: dropping segment %s after a break in the log",
                            self.name, path.name)
                path.unlink()
                broken = True
                continue
            data = path.read_bytes()
            scan = core.resolve_records(data, base)
            if scan.end < len(data):
                log.warning("stream %r: cut a torn tail of %d bytes from %s", self.name,
                            len(data) - scan.end, path.name)
                with path.open("r+b") as f:
                    f.truncate(scan.end)
                    os.fsync(f.fileno())
                broken = True
            if not scan.seqs:
                path.unlink()
                continue
            seg = Segment(base, path)
            seg.offsets = array.array("Q", scan.offsets)
            seg.times = array.array("q", scan.times)
            seg.size = scan.end
            self.segments.append(seg)
            expect = scan.seqs[-1] + 1
        if expect is not None:
            self.next_seq = expect
        self.visible = self.synced = self.next_seq
        self._flushed = self.next_seq
        if self.segments:
            self._last_time = self.segments[-1].times[-1]
            self.segments[-1].open_for_append()

    # --- appends ---------------------------------------------------------------------

    def append(self, payload: bytes, budget_left: int) -> int:
        """Write one message (not yet durable: see `wait_durable`); its sequence number.
        RequestError when the stream is full and rejects new data."""
        ingest = max(now_ms(), self._last_time)  # never backwards: TTL and reads rely on it
        size = core.RECORD_OVERHEAD + len(payload)
        plan = core.plan_append([s.info() for s in self.segments], size, self.definition,
                                budget_left)
        if plan.room is core.Room.REJECT:
            raise core.RequestError(core.Status.INVALID_REQUEST, plan.reason)
        if plan.drop:
            self.drop_oldest(plan.drop)
        if plan.roll or not self.segments:
            self._roll()
        seq = self.next_seq
        self.segments[-1].write(core.render_record(seq, ingest, payload), ingest)
        self._last_time = ingest
        self.next_seq = seq + 1
        if not self.durable_appends:
            self.visible = self.next_seq
            self.changed.set()
        else:
            self._queue_sync()  # readers see it once durable, waiter or not
        return seq

    def _roll(self) -> None:
        if self.segments:
            old = self.segments[-1]
            with self.lock:
                if old.fd is not None and self._flushed < self.next_seq:
                    os.fdatasync(old.fd)  # once per segment: its unsynced tail goes with it
                old.close()
        path = None if self.folder is None else self.folder / f"{self.next_seq:020d}{_SUFFIX}"
        seg = Segment(self.next_seq, path)
        if path is not None:
            seg.open_for_append()
            self.new_files = True
        self.segments.append(seg)

    def drop_oldest(self, count: int) -> None:
        for seg in self.segments[:count]:
            with self.lock:
                seg.close()
            if seg is self._reading:
                self._reading = None
            if seg.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
        del self.segments[:count]

    def expire(self, now: int) -> int:
        """Delete the oldest segments whose messages are all past their TTL."""
        count = core.resolve_expired([s.info() for s in self.segments],
                                     self.definition.ttl_ms, now)
        if count:
            self.drop_oldest(count)
        return count

    def when_durable(self, seq: int, callback: Callable[[BaseException | None], None]
                     ) -> None:
        """Call `callback(None)` on the loop once `seq` is on disk (or `callback(error)`
        when the sync that should have covered it failed). No task, no future: a
        flushOnWrite append costs one entry here until its sync round answers it."""
        if self.synced > seq or self.deleted:
            callback(None)
            return
        self._waiters.append((seq, callback))
        self._queue_sync()

    async def wait_durable(self, seq: int) -> None:
        """Until `seq` is on disk."""
        if self.synced > seq or self.deleted:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                done.set_result(None) if exc is None else done.set_exception(exc)
        self.when_durable(seq, settle)
        await done

    def _queue_sync(self) -> None:
        if self.folder is None or self._sync_queued:
            return
        if self.syncer is None:  # a stream outside a Store (tests): its own thread
            self.syncer = Syncer()
        self._sync_queued = True
        self.syncer.request(self, asyncio.get_running_loop())

    def sync_now(self) -> tuple[int, OSError | None]:
        """On the sync thread: fdatasync everything written so far. (target, error):
        every sequence number below target is durable, unless error."""
        with self.lock:
            target = self.next_seq  # written (to the page cache) below this
            if self.deleted or (target <= self._flushed and not self.new_files):
                return target, None
            new_files, self.new_files = self.new_files, False
            try:
                seg = self.segments[-1] if self.segments else None
                if seg is not None and seg.fd is not None:
                    os.fdatasync(seg.fd)  # older segments were synced when they rolled
                if new_files and self.folder is not None:
                    files.fsync_dir(self.folder)
            except OSError as exc:
                self.new_files = self.new_files or new_files
                return target, exc
            self._flushed = max(self._flushed, target)
            self.syncs += 1
            return target, None

    def synced_to(self, target: int, exc: OSError | None) -> None:
        """On the loop, after a sync round: answer the appends it covered; another round
        for those written while it ran (they all share it)."""
        self._sync_queued = False
        if exc is None:
            self.synced = max(self.synced, target)
            if self.visible < self.synced:
                self.visible = self.synced
                self.changed.set()
        waiters = self._waiters
        while waiters and (waiters[0][0] < target or self.deleted):
            try:
                waiters.popleft()[1](exc)
            except Exception:  # one broken answer must not strand the others
                log.exception("stream %r: answering a synced append failed", self.name)
        # After a failed sync, only a new append retries (no busy loop on a dead disk).
        if not self.deleted and (waiters or (exc is None and self.durable_appends
                                             and self.synced < self.next_seq)):
            self._queue_sync()

    async def flush(self) -> None:
        """The periodic sync of a stream without flushOnWrite."""
        if self.folder is not None and self.synced < self.next_seq:
            await self.wait_durable(self.next_seq - 1)

    # --- reads -----------------------------------------------------------------------

    def _spans(self, start: int, count: int, max_bytes: int
               ) -> list[tuple[Segment, int, int]]:
        """(segment, first index, how many) of up to `count` visible messages from
        `start` (or the oldest readable, if later: none past its TTL), at most about
        `max_bytes` of records (at least one message)."""
        start = max(start, self.oldest(now_ms()))
        out: list[tuple[Segment, int, int]] = []
        taken = got = 0
        # The segment holding `start` is a binary search away: a read of a long stream
        # does not walk every older segment.
        segments = self.segments
        at = max(0, bisect.bisect_right(segments, start, key=_base_seq) - 1)
        for seg in itertools.islice(segments, at, None):
            if got >= count or start >= self.visible:
                break
            end_seq = seg.base_seq + seg.count
            if end_seq <= start:
                continue
            first = start - seg.base_seq
            want = min(count - got, min(end_seq, self.visible) - start)
            # Bound the batch by bytes before reading it (offsets give sizes directly).
            base = seg.offsets[first]
            end = seg.offsets[first + want] if first + want < seg.count else seg.size
            if taken + end - base <= max_bytes:
                n, taken = want, taken + end - base
            else:
                n = 1 + bisect.bisect_left(seg.offsets, base + max_bytes - taken,
                                           first + 1, first + want) - (first + 1)
                taken = max_bytes
            out.append((seg, first, n))
            got += n
            start += n
            if taken >= max_bytes:
                break
        return out

    def _reader(self, seg: Segment) -> Segment:
        if seg.path is not None and seg.fd is None and seg is not self._reading:
            if self._reading is not None:
                self._reading.close_reader()
            self._reading = seg
        return seg

    def read(self, start: int, count: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
        """Up to `count` visible messages from `start`: (seq, ingest ms, payload)."""
        out: list[tuple[int, int, bytes]] = []
        for seg, first, n in self._spans(start, count, max_bytes):
            out.extend(self._reader(seg).read(first, n))
        return out

    def render_read(self, start: int, count: int, max_bytes: int
                    ) -> tuple[int, list[bytes | memoryview]]:
        """The same messages as `read`, as the SDK's CBOR Message maps: (how many, pieces)."""
        pieces: list[bytes | memoryview] = []
        total = 0
        for seg, first, n in self._spans(start, count, max_bytes):
            pieces.extend(core.render_messages(self._reader(seg).raw(first, n), n,
                                               self.name))
            total += n
        return total, pieces

    def available(self, start: int) -> int:
        return max(0, self.visible - max(start, self.oldest()))

    def close(self) -> None:
        with self.lock:
            for seg in self.segments:
                seg.close()


def _definition_json(definition: core.Definition) -> bytes:
    """The definition as stored (the SDK's own map); RequestError for one that carries
    something JSON cannot hold (CBOR bytes or tags in a field we do not know)."""
    try:
        return json.dumps(dict(definition.raw), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise core.RequestError(core.Status.INVALID_REQUEST,
                                f"definition: cannot be stored: {exc}") from None


class Syncer:
    """The store's sync thread: `fdatasync` off the event loop, one stream at a time,
    each request covering everything written before its sync began. fdatasync releases
    the GIL, so the loop goes on reading, writing and answering meanwhile."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: dict[Stream, asyncio.AbstractEventLoop] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    def request(self, stream: Stream, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            self._queue[stream] = loop
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="streams-sync",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                batch, self._queue = self._queue, {}
            for stream, loop in batch.items():
                target, exc = stream.sync_now()
                with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                    loop.call_soon_threadsafe(stream.synced_to, target, exc)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class Store:
    """Every stream of this stream manager, under one storage folder and disk budget."""

    def __init__(self, folder: pathlib.Path, budget: int) -> None:
        self.folder, self.budget = folder, budget
        self.streams: dict[str, Stream] = {}
        self.syncer = Syncer()
        self.on_change: Callable[[Stream | None, str], None] = lambda s, n: None

    def folder_of(self, name: str) -> pathlib.Path:
        # Names may hold spaces and commas: hex keeps them out of the file system's way.
        return self.folder / name.encode().hex()

    def load(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in sorted(self.folder.iterdir()):
            meta = sub / "definition.json"
            if not meta.is_file():
                continue
            try:
                definition = core.resolve_definition(json.loads(meta.read_bytes()))
            except (ValueError, core.RequestError) as exc:
                log.error("%s: unreadable stream definition, stream skipped: %s", meta, exc)
                continue
            stream = Stream(definition, sub, self.syncer)
            stream.load()
            self.streams[definition.name] = stream
            log.info("stream %r: %d messages from %d", definition.name,
                     stream.next_seq - stream.oldest(), stream.oldest())

    def disk_used(self) -> int:
        return sum(s.total_bytes for s in self.streams.values() if s.folder is not None)

    def budget_left(self, stream: Stream) -> int:
        if stream.folder is None:
            return stream.definition.max_size  # memory: bounded by its own maxSize only
        return self.budget - self.disk_used()

    def get(self, name: Any) -> Stream:
        stream = self.streams.get(name) if isinstance(name, str) else None
        if stream is None:
            raise core.RequestError(core.Status.RESOURCE_NOT_FOUND,
                                    f"stream {name!r} does not exist")
        return stream

    def create(self, definition: core.Definition) -> Stream:
        _definition_json(definition)  # refuse what could not be stored, before any change
        if definition.name in self.streams:
            raise core.RequestError(core.Status.INVALID_REQUEST,
                                    f"stream {definition.name!r} already exists")
        folder = None
        if definition.persistence is core.Persistence.FILE:
            folder = self.folder_of(definition.name)
            shutil.rmtree(folder, ignore_errors=True)  # leftovers of a half-done delete
            folder.mkdir(mode=0o700)
            self._save_definition(folder, definition)
        stream = Stream(definition, folder, self.syncer)
        self.streams[definition.name] = stream
        self.on_change(stream, definition.name)
        return stream

    def update(self, definition: core.Definition) -> Stream:
        _definition_json(definition)
        stream = self.get(definition.name)
        stream.definition = core.resolve_update(stream.definition, definition)
        if stream.folder is not None:
            self._save_definition(stream.folder, stream.definition)
        self.on_change(stream, definition.name)
        return stream

    def delete(self, name: Any) -> None:
        stream = self.get(name)
        del self.streams[stream.name]
        stream.deleted = True
        stream.close()
        stream.changed.set()
        if stream.folder is not None:
            # Unlink the definition first: a crash mid-delete leaves no stream behind.
            files.remove_file(stream.folder / "definition.json")
            shutil.rmtree(stream.folder, ignore_errors=True)
        self.on_change(None, stream.name)

    def _save_definition(self, folder: pathlib.Path, definition: core.Definition) -> None:
        files.write_atomic(folder / "definition.json", _definition_json(definition))

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.syncer.stop()
