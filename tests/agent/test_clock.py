"""Time-based decisions on a clock that does not jump (issue 12: "a clock stepped back a
day delays recovery by a day").

The decision functions take the time as an argument (table tests below); the agent feeds
them its AnchoredClock; deadlines persisted by an earlier run are re-anchored at start —
the last test does that for real, on a root whose records were written under a wall
clock a day ahead of this one (the machine's clock is shared: it is never changed here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from hedgerow.agent import agent as agent_
from hedgerow.core import lifecycle
from hedgerow.core.documents import ComponentState as S
from hedgerow.core.lifecycle import Event
from tests.agent.conftest import AgentProcess, pids_with_marker, rc
from tests.support.wait import wait_for

DAY = 86400.0
P = lifecycle.Policy()  # backoff 1 s doubling to 60 s, BROKEN after 3, reset after 1 h


@pytest.mark.parametrize(("status", "now", "expected"), [
    # nothing persisted in the future: unchanged
    (lifecycle.Status(S.ERRORED, ((S.RUNNING, 100.0),), 101.0), 100.5,
     lifecycle.Status(S.ERRORED, ((S.RUNNING, 100.0),), 101.0)),
    # written under a clock a day ahead: the error is "now", the retry one backoff later
    (lifecycle.Status(S.ERRORED, ((S.RUNNING, 100.0 + DAY),), 101.0 + DAY), 100.0,
     lifecycle.Status(S.ERRORED, ((S.RUNNING, 100.0),), 101.0)),
    (lifecycle.Status(S.ERRORED, ((S.RUNNING, 50.0), (S.RUNNING, 90.0 + DAY)), 92.0 + DAY),
     100.0, lifecycle.Status(S.ERRORED, ((S.RUNNING, 50.0), (S.RUNNING, 100.0)), 102.0)),
    # a deadline without errors (not written by this agent): at most the cap away
    (lifecycle.Status(S.ERRORED, (), 100.0 + DAY), 100.0,
     lifecycle.Status(S.ERRORED, (), 160.0)),
    # a deadline that has passed stays passed (retried at once)
    (lifecycle.Status(S.ERRORED, ((S.RUNNING, 10.0),), 11.0), 5000.0,
     lifecycle.Status(S.ERRORED, ((S.RUNNING, 10.0),), 11.0)),
    # no deadline, no errors
    (lifecycle.Status(S.RUNNING), 1.0, lifecycle.Status(S.RUNNING)),
])
def test_persisted_times_are_reanchored(status: lifecycle.Status, now: float,
                                        expected: lifecycle.Status) -> None:
    assert lifecycle.resolve_reanchored(status, now, P) == expected


@pytest.mark.parametrize(("steps", "expected_state", "expected_retry"), [
    # errors 1 s apart: backoff 1, 2 -> the third from RUNNING is BROKEN
    ([(Event.FAILED, 0.0), (Event.RECOVER, 1.0), (Event.INSTALLED, 1.0), (Event.START, 1.0),
      (Event.STARTED, 1.0), (Event.FAILED, 2.0)], S.ERRORED, 4.0),
    # an error-free hour (on the injected clock) forgets the past errors
    ([(Event.FAILED, 0.0), (Event.RECOVER, 1.0), (Event.INSTALLED, 1.0), (Event.START, 1.0),
      (Event.STARTED, 1.0), (Event.FAILED, 1.0 + 3600.0)], S.ERRORED, 3602.0),
])
def test_backoff_is_decided_on_the_clock_it_is_given(
    steps: list[tuple[Event, float]], expected_state: S, expected_retry: float,
) -> None:
    status = lifecycle.Status(S.RUNNING)
    for event, now in steps:
        status = lifecycle.resolve_transition(status, event, now, P)
    assert (status.state, status.retry_at) == (expected_state, expected_retry)


def test_the_agent_clock_ignores_wall_clock_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = agent_.AnchoredClock(wall=1000.0, monotonic=time.monotonic())
    before = clock()
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - DAY)  # the wall clock steps back
    after = clock()
    assert 0.0 <= after - before < 5.0
    assert 1000.0 <= after < 1010.0


def test_a_retry_persisted_a_day_ahead_runs_within_seconds(agent: AgentProcess) -> None:
    """A component ERRORED under a clock that was a day ahead (then stepped back, e.g.
    by NTP, while the agent was down): it is recovered within seconds, not in a day."""
    doc = agent.deploy(rc("com.example.Clocked", run="sleep 60"))
    agent.wait_states({"com.example.Clocked": "RUNNING"})
    wait_for(lambda: agent.outcome(doc) == "SUCCEEDED", 10, "SUCCEEDED")
    agent.stop()
    for pid in pids_with_marker(agent.root):  # the component died while it was down
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    path = agent.root / "state" / "components.json"
    records = json.loads(path.read_text())
    ahead = time.time() + DAY
    records["com.example.Clocked"].update(
        state="ERRORED", process=None, errors=[["RUNNING", ahead]], retry_at=ahead + 1.0,
        since=ahead, message="exited with 1")
    path.write_text(json.dumps(records))

    began = time.monotonic()
    agent.start()
    agent.wait_states({"com.example.Clocked": "RUNNING"}, timeout=20)
    assert time.monotonic() - began < 20
    rec = agent.record("com.example.Clocked")
    assert all(at <= time.time() + 5 for _, at in rec["errors"])  # re-anchored on disk
