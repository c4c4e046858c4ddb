"""The component state machine: Greengrass states and transitions as ONE table.

Like h11's `_state.py`, the rules are data: `TRANSITIONS[(state, event)]` is the next
state, and an event that is not in the table for a state is a programming error in the
shell (`LocalProtocolError`-style), never silently ignored. What the table cannot say on
its own — "three errors in a row from the same state make BROKEN", "errors are forgotten
after an error-free period", "wait before retrying" — lives in `resolve_transition`, the
only function that moves a component from one state to another.

Pure: time is an argument, nothing here sleeps, reads clocks or touches processes.
"""

from __future__ import annotations

import dataclasses

from hedgerow.core import backoff, base
from hedgerow.core.documents import ComponentState as State

__all__ = ["TRANSITIONS", "Event", "LocalTransitionError", "Policy", "State", "Status",
           "is_active", "resolve_backoff", "resolve_reanchored", "resolve_transition"]


class Event(base.StrEnum):
    INSTALLED = "installed"            # install step succeeded or there is none
    START = "start"                    # the shell begins the startup/run step
    STARTED = "started"                # run process spawned / startup step exited 0
    EXITED_OK = "exited_ok"            # the run process exited with code 0
    FAILED = "failed"                  # a step exited non-zero or could not be spawned
    TIMED_OUT = "timed_out"            # a step outlived its timeout
    STOP_REQUESTED = "stop_requested"  # shutdown begins (removal, update, operator)
    STOPPED = "stopped"                # the process group is gone
    RECOVER = "recover"                # backoff elapsed: recover step, then start over
    RESET = "reset"                    # a new desired revision or spec: forget the past


S, E = State, Event

# The whole state machine. Errors are entered through FAILED/TIMED_OUT; the counting rule
# in resolve_transition may turn an ERRORED target into BROKEN.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.NEW, E.INSTALLED): S.INSTALLED,
    (S.NEW, E.FAILED): S.ERRORED,
    (S.NEW, E.TIMED_OUT): S.ERRORED,
    (S.NEW, E.STOP_REQUESTED): S.NEW,
    (S.NEW, E.RESET): S.NEW,
    (S.INSTALLED, E.START): S.STARTING,
    (S.INSTALLED, E.STOP_REQUESTED): S.INSTALLED,
    (S.INSTALLED, E.RESET): S.NEW,
    (S.STARTING, E.STARTED): S.RUNNING,
    (S.STARTING, E.EXITED_OK): S.FINISHED,
    (S.STARTING, E.FAILED): S.ERRORED,
    (S.STARTING, E.TIMED_OUT): S.ERRORED,
    (S.STARTING, E.STOP_REQUESTED): S.STOPPING,
    (S.RUNNING, E.EXITED_OK): S.FINISHED,
    (S.RUNNING, E.FAILED): S.ERRORED,
    (S.RUNNING, E.STOP_REQUESTED): S.STOPPING,
    (S.FINISHED, E.START): S.STARTING,
    (S.FINISHED, E.STOP_REQUESTED): S.STOPPING,
    (S.FINISHED, E.RESET): S.NEW,
    (S.STOPPING, E.STOP_REQUESTED): S.STOPPING,
    (S.STOPPING, E.STOPPED): S.INSTALLED,
    (S.STOPPING, E.FAILED): S.ERRORED,
    (S.STOPPING, E.TIMED_OUT): S.ERRORED,
    # Greengrass re-runs install before every start after an error: install steps are
    # idempotent by contract, and it is the one path back from any failed step.
    (S.ERRORED, E.RECOVER): S.NEW,
    (S.ERRORED, E.FAILED): S.ERRORED,        # the recover step itself failed
    (S.ERRORED, E.TIMED_OUT): S.ERRORED,
    (S.ERRORED, E.STOP_REQUESTED): S.INSTALLED,
    (S.ERRORED, E.RESET): S.NEW,
    # Only a new desired revision (or spec) leaves BROKEN.
    (S.BROKEN, E.STOP_REQUESTED): S.BROKEN,
    (S.BROKEN, E.RESET): S.NEW,
}

_ACTIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


def is_active(state: State) -> bool:
    """True when a process of the component may be alive."""
    return state in _ACTIVE


class LocalTransitionError(ValueError):
    """The shell asked for a transition the table does not have (a bug, not bad input)."""


@dataclasses.dataclass(frozen=True)
class Policy:
    broken_after: int = 3             # errors in a row from one state
    reset_after_s: float = 3600.0     # an error-free period that forgets past errors
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class Status:
    state: State = State.NEW
    # (state the error came from, when), oldest first; only the current run of errors.
    errors: tuple[tuple[State, float], ...] = ()
    retry_at: float | None = None     # when ERRORED may recover


def resolve_backoff(errors: int, policy: Policy) -> float:
    """Seconds to wait before the n-th retry: doubling from the base, capped."""
    if errors <= 0:
        return 0.0
    return backoff.resolve_step(errors - 1, policy.backoff_base_s, policy.backoff_cap_s)


def resolve_transition(status: Status, event: Event, now: float,
                       policy: Policy = Policy()) -> Status:
    target = TRANSITIONS.get((status.state, event))
    if target is None:
        raise LocalTransitionError(f"no transition from {status.state} on {event}")
    if event is E.RESET:
        return Status(state=target)
    errors = status.errors
    if errors and now - errors[-1][1] >= policy.reset_after_s:
        errors = ()
    if target is not S.ERRORED:
        return Status(state=target, errors=errors)
    # An error from ERRORED (a failed recover step) counts against the state before it.
    origin = errors[-1][0] if status.state is S.ERRORED and errors else status.state
    errors = (*errors, (origin, now))
    recent = errors[-policy.broken_after:]
    if len(recent) >= policy.broken_after and all(o is origin for o, _ in recent):
        return Status(state=S.BROKEN, errors=errors)
    return Status(state=S.ERRORED, errors=errors,
                  retry_at=now + resolve_backoff(len(errors), policy))


def resolve_reanchored(status: Status, now: float, policy: Policy = Policy()) -> Status:
    """A status persisted by an earlier run, made sense of at `now` (the agent's start).

    Its times were read from a clock that may have been stepped since (an NTP step, a
    device without an RTC that booted in 1970): an error "in the future" is at most now,
    and no retry waits longer after the last error than the policy asks for that many
    errors (nor, without errors, longer than the cap) — so a clock stepped back a day
    delays recovery by the backoff, not by a day.
    """
    errors = tuple((origin, min(at, now)) for origin, at in status.errors)
    retry_at = status.retry_at
    if retry_at is not None:
        latest = (errors[-1][1] + resolve_backoff(len(errors), policy) if errors
                  else now + policy.backoff_cap_s)
        retry_at = min(retry_at, latest)
    return Status(state=status.state, errors=errors, retry_at=retry_at)
