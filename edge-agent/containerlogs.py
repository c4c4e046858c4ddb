"""Container output mirrored into `<root>/logs/<component>.log`: one job, one thread per
running container following `docker logs` into the component's log file, written by the
same `logsink.Sink` the process log writer uses (bounded lines and rate, rotation, writes
that may fail). Docker keeps the output while the agent is down; after a restart the copy
resumes from the last line written (lines in the same millisecond as that line are not
copied twice).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from hedgerow.agent import logsink

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where the lines come from: `containers.ContainerRuntime.follow_logs`."""

    def follow_logs(self, container_id: str, since: int | None = None) -> Iterator[str]: ...


class LogMirror:
    """Copy each running container's output into the component's log file, so
    `hedgerow logs get NAME` reads `logs/NAME.log` for every component alike."""

    def __init__(self, source: Source, path_of: Callable[[str], Path],
                 max_bytes: int, keep: int) -> None:
        self._source, self._path_of = source, path_of
        self._max_bytes, self._keep = max_bytes, keep
        self._threads: dict[str, tuple[str, threading.Thread]] = {}

    def follow(self, component: str, container_id: str) -> None:
        current = self._threads.get(component)
        if current is not None and current[0] == container_id and current[1].is_alive():
            return
        thread = threading.Thread(target=self._copy, args=(component, container_id),
                                  name=f"logs:{component}", daemon=True)
        self._threads[component] = (container_id, thread)
        thread.start()

    def forget(self, keep: Iterable[str]) -> None:
        for name in set(self._threads) - set(keep):
            del self._threads[name]  # the stream ends with its container

    def _copy(self, component: str, container_id: str) -> None:
        """Follow one container into its log file. Ends with the stream or on any error;
        the next pass starts it again (`follow`)."""
        path = self._path_of(component)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            last = _last_stamp(path)
            since = None
            if last:
                with contextlib.suppress(ValueError):
                    since = int(datetime.datetime.fromisoformat(last[:19]).replace(
                        tzinfo=datetime.UTC).timestamp())
            sink = logsink.Sink(str(path), self._max_bytes, self._keep)
            try:
                for line in self._source.follow_logs(container_id, since):
                    stamp, _, text = line.partition(" ")
                    stamp = _short_stamp(stamp)
                    if last and stamp <= last:
                        continue
                    sink.line(text.encode(errors="replace"), stamp.encode())
            finally:
                sink.end()
        except Exception as exc:  # dockerd went away, the disk is full …: next pass resumes
            log.debug("%s: log copy ended: %s", component, exc)


def _short_stamp(docker_stamp: str) -> str:
    """2024-05-01T12:00:00.123456789Z -> 2024-05-01T12:00:00.123Z (the process format)."""
    whole, _, fraction = docker_stamp.rstrip("Z").partition(".")
    return f"{whole[:19]}.{(fraction + '000')[:3]}Z"


def _last_stamp(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - 4096))
            tail = stream.read().splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        stamp = line[:24].decode(errors="replace")
        if len(stamp) == 24 and stamp.endswith("Z"):
            return stamp
    return ""
