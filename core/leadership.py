"""Leader election over a Kubernetes Lease, as decisions: pure (the clock is an argument).

The algorithm is client-go's (``tools/leaderelection``): the holder renews
``spec.renewTime`` every retry period; a candidate that has seen the same record for
``leaseDurationSeconds`` on *its own* monotonic clock takes the lease over. No replica
compares its clock with another's: only "this record has not changed for N seconds, as I
measured it". The holder gives up (stops all work) when it could not renew for
``renew_deadline`` seconds, shorter than the lease duration, so it has stopped before any
candidate can have taken over. Writes go through the API server's optimistic
concurrency (resourceVersion): of two candidates only one update succeeds.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum


@dataclasses.dataclass(frozen=True)
class Record:
    """What a Lease's spec says (``None`` fields: unset)."""

    holder: str | None
    duration_s: int
    transitions: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None


@dataclasses.dataclass(frozen=True)
class Seen:
    """A record and when this replica first saw it (its monotonic clock)."""

    record: Record
    at: float


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    TAKE = "take"  # free or expired: become its holder (a new transition)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # someone else's, alive: stand by


def plan_seen(before: Seen | None, record: Record | None, now: float) -> Seen | None:
    """The observation after reading ``record`` at ``now``: its age restarts only when
    the record changed (the holder renewed, or another took it)."""
    if record is None:
        return None
    if before is not None and before.record == record:
        return before
    return Seen(record, now)


def plan_step(seen: Seen | None, identity: str, now: float) -> Step:
    if seen is None:
        return Step.CREATE
    record = seen.record
    if record.holder == identity:
        return Step.RENEW
    if not record.holder or now - seen.at > record.duration_s:
        return Step.TAKE
    return Step.WAIT


def render_micro_time(at: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_spec(step: Step, seen: Seen | None, identity: str, duration_s: int,
                now: datetime.datetime) -> dict[str, object]:
    """The Lease spec to write for ``step`` (CREATE, TAKE or RENEW)."""
    stamp = render_micro_time(now)
    record = seen.record if seen is not None else None
    if step is Step.RENEW and record is not None:
        return {"holderIdentity": identity, "leaseDurationSeconds": duration_s,
                "acquireTime": record.acquire_time or stamp, "renewTime": stamp,
                "leaseTransitions": record.transitions}
    transitions = 0 if record is None else record.transitions + (1 if record.holder else 0)
    return {"holderIdentity": identity, "leaseDurationSeconds": duration_s,
            "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": transitions}


def resolve_record(spec: dict[str, object] | None) -> Record | None:
    """A Lease's spec, read leniently (another elector may leave fields out)."""
    if spec is None:
        return None
    duration = spec.get("leaseDurationSeconds")
    transitions = spec.get("leaseTransitions")
    holder = spec.get("holderIdentity")
    acquired, renewed = spec.get("acquireTime"), spec.get("renewTime")
    return Record(
        holder=holder if isinstance(holder, str) else None,
        duration_s=duration if isinstance(duration, int) and duration > 0 else 15,
        transitions=transitions if isinstance(transitions, int) else 0,
        acquire_time=acquired if isinstance(acquired, str) else None,
        renew_time=renewed if isinstance(renewed, str) else None)
