"""The coalescing writer of CoreDevice status.

A device is *offered* with a priority (``hedgerow.core.liveness.Priority``) whenever its
status changed in a way worth writing; the writer takes the status to write only when a
worker gets to the device, so whatever changed meanwhile goes in the same write (the
latest value wins, a burst of reports costs one write). Rules:

- at most one write per device per ``interval`` (a device offered again sooner waits,
  cooling, until its interval is over), and never two writes of one device at once;
  except that an outcome (``COUNTING``) does not wait out the interval of a write that
  was not itself early: a device's success 0.2 s after its Notified write would
  otherwise wait most of a second, which is what a rollout's notified -> Applied
  latency is made of. So at most two writes per device per interval;
- ``workers`` writes in flight (a bounded pool: the API server's throughput stops
  growing past a few concurrent writes, and each in flight costs a thread);
- at most ``qps`` writes per second on average (bursts of one second's worth): the
  budget this controller may spend of a shared API server (None: no budget);
- the most urgent first: outcomes that change rollout counting before other visible
  changes before liveness alone; offered order within a priority.

The counters (``writes``, ``offered``, ``coalesced``, ``write_seconds``,
``throttled_seconds``, ``depth``) are plain attributes for whoever exports metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from hedgerow.core import liveness, ratelimit

logger = logging.getLogger(__name__)

Write = Callable[[str], Awaitable[object]]


class StatusWriter:
    def __init__(self, write: Write, interval: float, workers: int,
                 qps: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.interval = interval
        self.workers = max(1, workers)
        self.qps = qps if qps else None
        self._bucket: ratelimit.Bucket | None = None
        self._clock = clock
        # One insertion-ordered queue per priority, of devices ready to write.
        self._ready: dict[liveness.Priority, dict[str, None]] = {
            p: {} for p in liveness.Priority}
        self._queued: dict[str, liveness.Priority] = {}  # ready or cooling -> priority
        self._cooling: list[tuple[float, str]] = []  # (ready at, thing), a heap
        self._busy: set[str] = set()
        self._again: set[str] = set()  # offered while being written
        self._last: dict[str, float] = {}  # thing -> when its last write started
        self._early: set[str] = set()  # things whose last write came within the interval
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._writing: set[asyncio.Task[None]] = set()
        # Counters (metrics read them).
        self.offered = 0
        self.coalesced = 0  # offers folded into a write already due
        self.writes = 0
        self.write_seconds = 0.0  # summed duration of the writes
        self.throttled_seconds = 0.0  # waited for the write budget
        self.max_depth = 0

    @property
    def depth(self) -> int:
        """Devices waiting for a write (ready or cooling)."""
        return len(self._queued)

    def priority_of(self, thing: str) -> liveness.Priority | None:
        return self._queued.get(thing)

    def offer(self, thing: str, priority: liveness.Priority) -> None:
        """Write ``thing``'s status soon: at its latest, when a worker gets to it."""
        self.offered += 1
        if thing in self._busy:
            # Written right now, maybe with an older status: once more afterwards.
            self._again.add(thing)
        queued = self._queued.get(thing)
        if queued is not None:
            self.coalesced += 1
            if priority < queued:
                self._queued[thing] = priority
                if thing in self._ready[queued]:  # ready: move it to its new queue
                    del self._ready[queued][thing]
                    self._ready[priority][thing] = None
                elif thing not in self._busy:  # cooling: an outcome may be due sooner
                    heapq.heappush(self._cooling, (self._ready_at(thing, priority), thing))
                    self._wake.set()
            return
        self._queued[thing] = priority
        ready_at = self._ready_at(thing, priority)
        if thing in self._busy or ready_at > self._clock():
            heapq.heappush(self._cooling, (ready_at, thing))
        else:
            self._ready[priority][thing] = None
        self.max_depth = max(self.max_depth, len(self._queued))
        self._wake.set()

    def _ready_at(self, thing: str, priority: liveness.Priority) -> float:
        """When ``thing`` may be written next, at ``priority``."""
        ready_at = self._last.get(thing, -self.interval) + self.interval
        if self._may_hurry(thing, priority):
            return min(ready_at, self._clock())
        return ready_at

    def _may_hurry(self, thing: str, priority: liveness.Priority) -> bool:
        return priority is liveness.Priority.COUNTING and thing not in self._early

    def forget(self, thing: str) -> None:
        """A deleted device: nothing more to write."""
        priority = self._queued.pop(thing, None)
        if priority is not None:
            self._ready[priority].pop(thing, None)
        self._again.discard(thing)
        self._last.pop(thing, None)
        self._early.discard(thing)

    def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())

    async def stop(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._writing) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dispatcher = None

    async def drain(self) -> None:
        """Until nothing is queued or being written (tests, and a clean stop)."""
        while self._queued or self._busy:
            await asyncio.sleep(0.01)

    def _take(self) -> tuple[str | None, float | None]:
        """The next device to write, or when to look again (None: when offered)."""
        now = self._clock()
        while self._cooling and self._cooling[0][0] <= now:
            when, thing = heapq.heappop(self._cooling)
            priority = self._queued.get(thing)
            if priority is None or thing in self._ready[priority]:
                continue  # forgotten, or a duplicate heap entry
            if when < self._ready_at(thing, priority) and not self._may_hurry(thing, priority):
                continue  # pushed before an early write: a later entry stands for it
            if thing in self._busy:
                continue  # re-offered when its write ends
            self._ready[priority][thing] = None
        for priority in liveness.Priority:
            queue = self._ready[priority]
            if queue:
                thing = next(iter(queue))
                del queue[thing]
                del self._queued[thing]
                return thing, None
        return None, (self._cooling[0][0] - now if self._cooling else None)

    async def _dispatch(self) -> None:
        """Hand the next device to a free slot of the pool, most urgent first."""
        slots = asyncio.Semaphore(self.workers)
        while True:
            await slots.acquire()
            await self._budget()
            thing, wait = self._take()
            while thing is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                thing, wait = self._take()
            self._busy.add(thing)
            task = asyncio.create_task(self._write_one(thing, slots))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _budget(self) -> None:
        """Until the write budget (a token bucket of ``qps``) allows one more write."""
        if self.qps is None:
            return
        while True:
            now = self._clock()
            ok, self._bucket = ratelimit.plan_take(self._bucket, now,
                                                   max(1, round(self.qps)), 1 / self.qps)
            if ok:
                return
            wait = (1.0 - self._bucket.tokens) / self.qps
            self.throttled_seconds += wait
            await asyncio.sleep(wait)

    async def _write_one(self, thing: str, slots: asyncio.Semaphore) -> None:
        started = self._clock()
        if started < self._last.get(thing, -self.interval) + self.interval:
            self._early.add(thing)
        else:
            self._early.discard(thing)
        self._last[thing] = started
        try:
            await self._write(thing)
        except Exception:
            logger.exception("writing the status of %s failed", thing)
        finally:
            self._busy.discard(thing)
            slots.release()
            self.writes += 1
            self.write_seconds += self._clock() - started
        if thing in self._again:
            self._again.discard(thing)
            priority = self._queued.get(thing)
            if priority is not None:  # still wanted: cooling until it may be written
                heapq.heappush(self._cooling, (self._ready_at(thing, priority), thing))
                self._wake.set()
