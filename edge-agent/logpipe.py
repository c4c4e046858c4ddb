# ruff: noqa: PTH116, PTH110, PTH105  (stdlib-only, run with -S: os calls keep it small)
"""Timestamping log writer: `python -I -S logpipe.py MAX_BYTES KEEP FD=FILE ...`.

Runs as its own small process (stdlib only, no site, no hedgerow import), not inside the
agent, so a component's output never flows through a pipe the agent holds: when the agent
is killed, components keep running and keep logging. ONE writer serves every step the
agent spawned in one batch (a pass that starts 50 components starts one writer, not 50);
each inherited pipe FD goes to its FILE. It exits once every pipe reached end of input,
i.e. when all those processes have exited. Rotation: FILE -> FILE.1 ... FILE.KEEP when FILE
would exceed MAX_BYTES, so a component's logs never take more than MAX_BYTES * (KEEP+1).
"""

import os
import selectors
import sys
import time


class Sink:
    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.out = self._open()
        self.partial = b""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def line(self, line: bytes) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        data = b"%s.%03dZ %s\n" % (stamp.encode(), int(now * 1000) % 1000, line)
        try:
            same = os.stat(self.path).st_ino == os.fstat(self.out).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # another writer of this component rotated it
            os.close(self.out)
            self.out = self._open()
        if os.fstat(self.out).st_size + len(data) > self.max_bytes:
            for i in range(self.keep, 0, -1):
                src = self.path if i == 1 else f"{self.path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i}")
            os.close(self.out)
            self.out = self._open()
        os.write(self.out, data)

    def feed(self, chunk: bytes) -> None:
        if not chunk:  # end of input: a last line without a newline still counts
            if self.partial:
                self.line(self.partial)
            os.close(self.out)
            return
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            self.line(line)


def main() -> None:
    max_bytes, keep = int(sys.argv[1]), int(sys.argv[2])
    sel = selectors.DefaultSelector()
    for arg in sys.argv[3:]:
        fd, _, path = arg.partition("=")
        sel.register(int(fd), selectors.EVENT_READ, Sink(path, max_bytes, keep))
    while sel.get_map():
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            key.data.feed(chunk)
            if not chunk:
                sel.unregister(key.fd)
                os.close(key.fd)


if __name__ == "__main__":
    main()
