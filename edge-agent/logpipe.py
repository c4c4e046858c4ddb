# ruff: noqa: PTH100, PTH118, PTH120  (stdlib-only, run with -S: os calls keep it small)
"""Timestamping log writer: `python -I -S logpipe.py MAX_BYTES KEEP FD=FILE ...`.

Runs as its own small process (stdlib only, no site, no hedgerow import), not inside the
agent, so a component's output never flows through a pipe the agent holds: when the agent
is killed, components keep running and keep logging. ONE writer serves every step the
agent spawned in one batch (a pass that starts 50 components starts one writer, not 50);
each inherited pipe FD goes to its FILE (a `logsink.Sink`: bounded lines, a bounded rate,
rotation, writes that may fail). It exits once every pipe reached end of input, i.e. when
all those processes have exited.

This file is the script and nothing else: a script is compiled at every start, a module
is not, so the writer's logic lives in logsink.py and is run from its cached bytecode
(-I keeps this folder off sys.path; the import system's own loader, already loaded,
reads it): ~1 ms less CPU at every start of a writer.
"""

import _frozen_importlib_external
import os
import selectors
import sys


def _load_sink() -> type:
    """logsink.Sink, from logsink.py's cached bytecode (no typing, no __future__: each
    import here is paid at every start)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logsink.py")
    code = _frozen_importlib_external.SourceFileLoader("logsink", path).get_code("logsink")
    assert code is not None  # a source file always has code
    namespace: dict[str, object] = {"__name__": "logsink", "__file__": path}
    exec(code, namespace)  # noqa: S102 - our own file
    sink = namespace["Sink"]
    assert isinstance(sink, type)
    return sink


def main() -> None:
    sink = _load_sink()
    max_bytes, keep = int(sys.argv[1]), int(sys.argv[2])
    sel = selectors.DefaultSelector()
    for arg in sys.argv[3:]:
        fd, _, path = arg.partition("=")
        sel.register(int(fd), selectors.EVENT_READ, sink(path, max_bytes, keep))
    while sel.get_map():
        for key, _ in sel.select():
            try:
                chunk = os.read(key.fd, 65536)
            except OSError:  # EIO on a pipe does not happen; if it does, that pipe is over
                chunk = b""
            key.data.feed(chunk)
            if not chunk:
                sel.unregister(key.fd)
                os.close(key.fd)


if __name__ == "__main__":
    main()
