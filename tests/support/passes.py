"""Waiting for an agent's (or the controller's) loop to run, instead of sleeping to show
that nothing happened.

A test that proves absence ("the forged document changed nothing") must let the agent
look again first. The agent counts its passes and answers them on its control socket;
waiting for the count to grow by two means at least one whole pass began after the wait
did, whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal

from hedgerow.agent import control
from tests.support.wait import wait_for


def passes(root: pathlib.Path) -> int:
    """How many passes the agent on ``root`` has begun."""
    return int(control.request(root / "agent.sock", {"op": "status"}, timeout=10)["passes"])


def wait_passes(root: pathlib.Path, more: int = 2, timeout: float = 30.0) -> None:
    """Until the agent on ``root`` has begun ``more`` passes after this call (two: the
    one running now may have read its inputs before the caller's change)."""
    start = passes(root)

    def looked() -> bool:
        # An idle agent passes only when woken: ask it to look again each time.
        count = int(control.request(root / "agent.sock", {"op": "wake"}, timeout=10)["passes"])
        return count >= start + more

    wait_for(looked, timeout,
             f"{more} more passes of the agent on {root} (from {start})")


def controller_stats(stats_file: pathlib.Path) -> dict[str, object]:
    """The counters `hedgerow controller --stats-file` writes after every pass ({} before
    its first pass)."""
    try:
        stats: dict[str, object] = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return {}
    return stats


def controller_passes(stats_file: pathlib.Path) -> int:
    return int(str(controller_stats(stats_file).get("passes", 0)))


def wait_controller_passes(stats_file: pathlib.Path, pid: int, more: int = 2,
                           timeout: float = 30.0) -> None:
    """Until the controller (process ``pid``, started with ``--stats-file``) has completed
    ``more`` passes after this call (two: the one running now may have read its inputs
    before the caller's change). SIGUSR1 asks it to look again, so an idle controller
    does not make the caller wait for its resync."""
    start = controller_passes(stats_file)

    def looked() -> bool:
        os.kill(pid, signal.SIGUSR1)
        return controller_passes(stats_file) >= start + more

    wait_for(looked, timeout, f"{more} more passes of the controller (from {start})",
             interval=0.2)
