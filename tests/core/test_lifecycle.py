"""The component state machine: one table, error counting, backoff, BROKEN."""

from __future__ import annotations

import pytest

from hedgerow.core import lifecycle
from hedgerow.core.lifecycle import Event as E  # noqa: N817
from hedgerow.core.lifecycle import State as S  # noqa: N817

POLICY = lifecycle.Policy(broken_after=3, reset_after_s=100.0, backoff_base_s=1.0,
                          backoff_cap_s=4.0)


def _walk(events: list[E], start: S = S.NEW, now: float = 0.0) -> lifecycle.Status:
    status = lifecycle.Status(state=start)
    for event in events:
        status = lifecycle.resolve_transition(status, event, now, POLICY)
    return status


@pytest.mark.parametrize(("events", "expected"), [
    ([E.INSTALLED], S.INSTALLED),
    ([E.INSTALLED, E.START], S.STARTING),
    ([E.INSTALLED, E.START, E.STARTED], S.RUNNING),
    ([E.INSTALLED, E.START, E.EXITED_OK], S.FINISHED),
    ([E.INSTALLED, E.START, E.STARTED, E.EXITED_OK], S.FINISHED),
    ([E.INSTALLED, E.START, E.STARTED, E.STOP_REQUESTED], S.STOPPING),
    ([E.INSTALLED, E.START, E.STARTED, E.STOP_REQUESTED, E.STOPPED], S.INSTALLED),
    ([E.INSTALLED, E.START, E.STARTED, E.FAILED], S.ERRORED),
    ([E.INSTALLED, E.START, E.TIMED_OUT], S.ERRORED),
    ([E.FAILED], S.ERRORED),
    ([E.FAILED, E.RECOVER], S.NEW),
    ([E.INSTALLED, E.START, E.STARTED, E.FAILED, E.STOP_REQUESTED], S.INSTALLED),
    ([E.RESET], S.NEW),
])
def test_table_paths(events: list[E], expected: S) -> None:
    assert _walk(events).state is expected


@pytest.mark.parametrize(("state", "event"), [
    (S.NEW, E.START), (S.RUNNING, E.INSTALLED), (S.BROKEN, E.RECOVER),
    (S.BROKEN, E.START), (S.FINISHED, E.STARTED), (S.RUNNING, E.RESET),
])
def test_transitions_not_in_the_table_are_refused(state: S, event: E) -> None:
    with pytest.raises(lifecycle.LocalTransitionError, match=f"from {state}"):
        lifecycle.resolve_transition(lifecycle.Status(state=state), event, 0.0, POLICY)


def _crash(status: lifecycle.Status, now: float) -> lifecycle.Status:
    """Recover, reinstall, start, and crash while RUNNING."""
    for event in (E.RECOVER, E.INSTALLED, E.START, E.STARTED, E.FAILED):
        status = lifecycle.resolve_transition(status, event, now, POLICY)
    return status


def test_three_errors_in_a_row_from_one_state_make_broken() -> None:
    status = _walk([E.INSTALLED, E.START, E.STARTED, E.FAILED])
    assert status.state is S.ERRORED and status.retry_at == 1.0
    status = _crash(status, 2.0)
    assert status.state is S.ERRORED and status.retry_at == 2.0 + 2.0
    status = _crash(status, 5.0)
    assert status.state is S.BROKEN
    assert [o for o, _ in status.errors] == [S.RUNNING] * 3


def test_only_a_reset_leaves_broken() -> None:
    status = lifecycle.Status(state=S.BROKEN, errors=((S.RUNNING, 0.0),) * 3)
    for event in (E.RECOVER, E.START, E.INSTALLED):
        with pytest.raises(lifecycle.LocalTransitionError):
            lifecycle.resolve_transition(status, event, 1.0, POLICY)
    assert lifecycle.resolve_transition(status, E.RESET, 1.0, POLICY) == lifecycle.Status()


def test_errors_from_different_states_do_not_make_broken() -> None:
    status = _walk([E.FAILED])                        # install failed (from NEW)
    status = _crash(status, 1.0)                      # RUNNING
    status = lifecycle.resolve_transition(status, E.RECOVER, 2.0, POLICY)
    status = lifecycle.resolve_transition(status, E.INSTALLED, 2.0, POLICY)
    status = lifecycle.resolve_transition(status, E.START, 2.0, POLICY)
    status = lifecycle.resolve_transition(status, E.TIMED_OUT, 2.0, POLICY)  # STARTING
    assert status.state is S.ERRORED and len(status.errors) == 3


def test_an_error_free_period_forgets_past_errors() -> None:
    status = _walk([E.INSTALLED, E.START, E.STARTED, E.FAILED])
    status = _crash(status, 10.0)
    status = _crash(status, 10.0 + POLICY.reset_after_s)
    assert status.state is S.ERRORED
    assert len(status.errors) == 1 and status.retry_at == 110.0 + 1.0


def test_a_failed_recover_step_counts_against_the_original_state() -> None:
    status = _walk([E.INSTALLED, E.START, E.STARTED, E.FAILED])
    status = lifecycle.resolve_transition(status, E.FAILED, 1.0, POLICY)
    status = lifecycle.resolve_transition(status, E.TIMED_OUT, 2.0, POLICY)
    assert status.state is S.BROKEN


@pytest.mark.parametrize(("errors", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0),
                                               (10, 4.0)])
def test_backoff_doubles_and_is_capped(errors: int, delay: float) -> None:
    assert lifecycle.resolve_backoff(errors, POLICY) == delay


def test_every_state_can_be_reset_or_is_transient() -> None:
    # Transient states end by an event from the runtime, every other can be reset.
    for state in S:
        if state in (S.STARTING, S.RUNNING, S.STOPPING):
            assert (state, E.STOP_REQUESTED) in lifecycle.TRANSITIONS
        else:
            assert (state, E.RESET) in lifecycle.TRANSITIONS
