"""Run the stream manager with a wall clock a test can move forward.

    python tests/streams/shifted_clock.py OFFSET_FILE serve --tokens ... --config ...

Every wall-clock reading the stream manager makes (ingest times, the TTL cutoff of reads,
the housekeeping that deletes expired segments) goes through `store.now_ms`; here it is
the real clock plus the milliseconds OFFSET_FILE holds (0 while it is missing). So a test
of a one-minute TTL (the smallest the SDK and the server accept) moves time on by a minute
instead of waiting for one; the code under test is the same.
"""

from __future__ import annotations

import pathlib
import sys

from hedgerow.streams import cli, store


def main() -> int:
    offset_file = pathlib.Path(sys.argv.pop(1))
    real_now_ms = store.now_ms  # fails here, loudly, if the clock moves elsewhere

    def now_ms() -> int:
        try:
            offset = int(offset_file.read_text())
        except FileNotFoundError:
            offset = 0
        return real_now_ms() + offset

    store.now_ms = now_ms
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
