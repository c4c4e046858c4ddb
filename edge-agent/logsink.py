# ruff: noqa: PTH100, PTH105, PTH110, PTH116, PTH118, PTH120  (stdlib-only, run with -S: os calls keep it small)
"""A component's log file, written by a root process from hostile input (logpipe.py
runs it; the container log mirror uses it too).

Stdlib only and no hedgerow import needed: logpipe.py runs it with `python -I -S`.
What a component writes is hostile input to this root process, which runs outside the
component's cgroup: a line is at most MAX_LOG_LINE_BYTES (longer ones are split, in
linear time, holding at most one line), a component may write LOG_BYTES_PER_SECOND on
average after a burst of LOG_BURST_BYTES (core/limits.py); what is over is dropped, and
the drop is counted and said in the component's log once writing resumes. A write that
fails (disk full, EIO, no descriptors) drops the line the same way — the pipe is always
drained, so the component never blocks or dies of SIGPIPE because its log cannot be
written — and the next line tries again. Rotation: FILE -> FILE.1 ... FILE.KEEP when
FILE would exceed MAX_BYTES, so a component's logs never take more than
MAX_BYTES * (KEEP+1).
"""

import _frozen_importlib_external  # the import system's loaders: loaded at start
import os
import sys
import time
from collections.abc import Callable  # loaded by selectors anyway: costs nothing


def _load_limits() -> dict[str, int]:
    """The bounds from hedgerow/core/limits.py. Imported as part of hedgerow: as usual.
    Run by logpipe.py (-I -S) there is no hedgerow package: the file beside this one's
    package is run from its cached bytecode with a stand-in for `typing` (its only
    import; the real one costs ~1.3 MB here)."""
    try:
        from hedgerow.core import limits
    except ImportError:
        pass
    else:
        return {k: v for k, v in vars(limits).items() if k.isupper() and isinstance(v, int)}
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "core", "limits.py")
    code = _frozen_importlib_external.SourceFileLoader("hedgerow_limits", path).get_code(
        "hedgerow_limits")
    assert code is not None  # a source file always has code
    stub = type(sys)("typing")
    stub.Final = object  # type: ignore[attr-defined]
    saved = sys.modules.get("typing")
    sys.modules["typing"] = stub
    namespace: dict[str, object] = {"__name__": "hedgerow_limits"}
    try:
        exec(code, namespace)  # noqa: S102 - our own file
    finally:
        if saved is None:
            del sys.modules["typing"]
        else:
            sys.modules["typing"] = saved
    return {k: v for k, v in namespace.items() if k.isupper() and isinstance(v, int)}


_LIMITS = _load_limits()
LINE_MAX = _LIMITS["MAX_LOG_LINE_BYTES"]
RATE = _LIMITS["LOG_BYTES_PER_SECOND"]
BURST = _LIMITS["LOG_BURST_BYTES"]


def stamp_now() -> bytes:
    now = time.time()
    return b"%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode(),
                          int(now * 1000) % 1000)


class Splitter:
    """Bytes in, lines out: at each newline, and every `line_max` bytes of a line that
    has none. Holds less than one line; each byte is looked at once."""

    def __init__(self, line_max: int = LINE_MAX) -> None:
        self.line_max = line_max
        self.partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self.partial + chunk if self.partial else chunk
        out, start, size, limit = [], 0, len(data), self.line_max
        while True:
            end = data.find(b"\n", start, start + limit + 1)
            if end >= 0:
                out.append(data[start:end])
                start = end + 1
            elif size - start >= limit:
                out.append(data[start:start + limit])
                start += limit
            else:
                break
        self.partial = data[start:]
        return out

    def end(self) -> list[bytes]:
        """End of input: a last line without a newline still counts."""
        rest, self.partial = self.partial, b""
        return [rest] if rest else []


class Budget:
    """A token bucket: `rate` bytes per second on average, `burst` at once."""

    def __init__(self, rate: int = RATE, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.at = self.clock()

    def take(self, size: int) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if size > self.tokens:
            return False
        self.tokens -= size
        return True


class Sink:
    """One component's log file: bounded lines, a bounded rate, rotation, and writes
    that may fail without taking the writer (or the component) down."""

    def __init__(self, path: str, max_bytes: int, keep: int,
                 budget: "Budget | None" = None) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.budget = budget or Budget()
        self.splitter = Splitter()
        self.out = -1
        self.dropped_lines = self.dropped_bytes = 0
        self.why = ""
        self._open()

    def _open(self) -> bool:
        if self.out >= 0:
            os.close(self.out)
            self.out = -1
        try:
            self.out = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self.why = f"cannot open the log: {exc}"
            return False
        return True

    def line(self, text: bytes, stamp: bytes = b"") -> None:
        data = b"%s %s\n" % (stamp or stamp_now(), text)
        if not self.budget.take(len(data)):
            self._drop(data, f"over the log limit of {RATE} bytes/s")
            return
        if not self._notice() or not self._write(data):
            self._drop(data, self.why)

    def _notice(self) -> bool:
        """Say what was dropped and why (not charged to the budget); False if the log
        still cannot be written."""
        if not self.dropped_lines:
            return True
        if not self._write(b"%s [hedgerow] %d line(s), %d bytes dropped: %s\n" % (
                stamp_now(), self.dropped_lines, self.dropped_bytes, self.why.encode())):
            return False
        self.dropped_lines = self.dropped_bytes = 0
        return True

    def _drop(self, data: bytes, why: str) -> None:
        self.dropped_lines += 1
        self.dropped_bytes += len(data)
        self.why = why

    def _write(self, data: bytes) -> bool:
        try:
            try:
                same = self.out >= 0 and os.stat(self.path).st_ino == os.fstat(self.out).st_ino
            except FileNotFoundError:
                same = False
            if not same and not self._open():  # another writer of it rotated it
                return False
            if os.fstat(self.out).st_size + len(data) > self.max_bytes:
                for i in range(self.keep, 0, -1):
                    src = self.path if i == 1 else f"{self.path}.{i - 1}"
                    if os.path.exists(src):
                        os.replace(src, f"{self.path}.{i}")
                if not self._open():
                    return False
            os.write(self.out, data[:self.max_bytes])
        except OSError as exc:  # ENOSPC, EIO, EMFILE ...: this line is lost, not the writer
            self.why = f"could not write the log: {exc}"
            return False
        return True

    def feed(self, chunk: bytes) -> None:
        if not chunk:  # end of input
            self.end()
            return
        for text in self.splitter.feed(chunk):
            self.line(text)

    def end(self) -> None:
        """The last line, what was dropped (if the log can be written), and close."""
        for text in self.splitter.end():
            self.line(text)
        self._notice()
        self.close()

    def close(self) -> None:
        if self.out >= 0:
            os.close(self.out)
            self.out = -1
