"""Waiting for an agent's loop to run, instead of sleeping to show that nothing happened.

A test that proves absence ("the forged document changed nothing") must let the agent
look again first. The agent counts its passes and answers them on its control socket;
waiting for the count to grow by two means at least one whole pass began after the wait
did, whatever the machine's load.
"""

from __future__ import annotations

import pathlib

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
