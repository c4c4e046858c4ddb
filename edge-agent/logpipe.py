# ruff: noqa: PTH116, PTH110, PTH105  (stdlib-only, run with -S: os calls keep it small)
"""Timestamping log writer: `python -I -S logpipe.py FILE MAX_BYTES KEEP` reads stdin.

Runs as its own small process (stdlib only, no site, no hedgerow import), not inside the
agent, so a component's output never flows through a pipe the agent holds: when the agent
is killed, components keep running and keep logging. It exits at end of input, i.e. when
the component's processes have all exited. Rotation: FILE → FILE.1 … FILE.KEEP when FILE
would exceed MAX_BYTES, so a component's logs never take more than MAX_BYTES * (KEEP+1).
"""

import os
import sys
import time


def main() -> None:
    path, max_bytes, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    for line in sys.stdin.buffer:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        data = b"%s.%03dZ %s" % (stamp.encode(), int(time.time() * 1000) % 1000, line)
        if not data.endswith(b"\n"):
            data += b"\n"
        try:
            same = os.stat(path).st_ino == os.fstat(out).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # another writer of this component rotated it
            os.close(out)
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if os.fstat(out).st_size + len(data) > max_bytes:
            for i in range(keep, 0, -1):
                src = path if i == 1 else f"{path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{path}.{i}")
            os.close(out)
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.write(out, data)


if __name__ == "__main__":
    main()
