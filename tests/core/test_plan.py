"""plan(desired, observed): table-driven cases and the apply-then-plan-is-empty property."""

from __future__ import annotations

import dataclasses

import hypothesis
import pytest
from hypothesis import strategies as st

from hedgerow.core import component, documents
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as S
from hedgerow.core.plan import Action, Desired, Observed, Verb, Want

REV = "r1"


def _desired(*wants: Want) -> Desired:
    return Desired(REV, tuple(wants))


def _obs(name: str, h: str = "h", state: S = S.RUNNING, **kw: object) -> Observed:
    return Observed(name, h, state, **kw)  # type: ignore[arg-type]


def _steps(actions: list[Action]) -> list[str]:
    return [f"{a.verb.value} {a.name}" for a in actions]


A, B, C = Want("a", "h"), Want("b", "h", hard=("a",)), Want("c", "h", soft=("b",))


@pytest.mark.parametrize(("desired", "observed", "expected"), [
    # Fresh device: prepare everything, then install+start, dependencies first.
    (_desired(C, B, A), {}, ["prepare a", "prepare b", "prepare c", "install a", "start a",
                             "install b", "start b", "install c", "start c"]),
    # Converged: nothing to do.
    (_desired(A, B), {"a": _obs("a"), "b": _obs("b", dependencies=("a",))}, []),
    # Spec of a HARD dependency changed: dependent stops first, starts last.
    (_desired(Want("a", "h2"), B), {"a": _obs("a"), "b": _obs("b")},
     ["prepare a", "stop b", "stop a", "install a", "start a", "start b"]),
    # SOFT dependency restart leaves the dependent alone.
    (_desired(Want("b", "h2"), C), {"b": _obs("b"), "c": _obs("c")},
     ["prepare b", "stop b", "install b", "start b"]),
    # Removal: dependents go first (by the recorded dependencies).
    (_desired(), {"a": _obs("a"), "b": _obs("b", dependencies=("a",))},
     ["remove b", "remove a"]),
    # Installed but not running (stopped for an update, or after a reboot).
    (_desired(A), {"a": _obs("a", state=S.INSTALLED)}, ["start a"]),
    # Operator stop holds it for this revision.
    (_desired(A), {"a": _obs("a", state=S.INSTALLED, hold_revision=REV)}, []),
    (_desired(A), {"a": _obs("a", state=S.INSTALLED, hold_revision="old")}, ["start a"]),
    # ERRORED waits for its backoff, then recovers and restarts HARD dependents.
    (_desired(A, B), {"a": _obs("a", state=S.ERRORED), "b": _obs("b")}, []),
    (_desired(A, B), {"a": _obs("a", state=S.ERRORED, retry_due=True), "b": _obs("b")},
     ["stop b", "recover a", "start b"]),
    # BROKEN stays until a new revision.
    (_desired(A), {"a": _obs("a", state=S.BROKEN, hold_revision=REV)}, []),
    (_desired(A), {"a": _obs("a", state=S.BROKEN, hold_revision="old")},
     ["prepare a", "install a", "start a"]),
    # A changed spec replaces even a BROKEN or ERRORED component at once.
    (_desired(Want("a", "h2")), {"a": _obs("a", state=S.BROKEN, hold_revision=REV)},
     ["prepare a", "install a", "start a"]),
    # In-flight states are left to the runtime.
    (_desired(A), {"a": _obs("a", state=S.STARTING)}, []),
    (_desired(A), {"a": _obs("a", state=S.STOPPING)}, []),
    # Never installed (install failed, then backoff): recover does it.
    (_desired(A), {"a": _obs("a", state=S.NEW)}, ["prepare a", "install a", "start a"]),
])
def test_plan_cases(desired: Desired, observed: dict[str, Observed],
                    expected: list[str]) -> None:
    assert _steps(plan_.plan(desired, observed)) == expected


def test_transitive_hard_dependents_restart() -> None:
    d = _desired(Want("a", "h2"), Want("b", "h", hard=("a",)), Want("c", "h", hard=("b",)))
    observed = {n: _obs(n) for n in "abc"}
    assert _steps(plan_.plan(d, observed)) == [
        "prepare a", "stop c", "stop b", "stop a", "install a", "start a", "start b",
        "start c"]


def test_resolve_desired_uses_spec_hashes_and_dependency_types() -> None:
    def rc(name: str, **kw: object) -> documents.ResolvedComponent:
        return documents.ResolvedComponent(
            name=name, version="1.0.0",
            lifecycle=component.Lifecycle(run=component.Step(script="true")), **kw)
    dep = [documents.ResolvedDependency(name="a", version="1.0.0", type="HARD"),
           documents.ResolvedDependency(name="c", version="1.0.0", type="SOFT")]
    state = documents.render_desired_state("gw", [], [rc("a"), rc("b", dependencies=dep)])
    desired = plan_.resolve_desired(state)
    b = desired.wants[1]
    assert (b.hard, b.soft) == (("a",), ("c",))
    assert b.spec_hash == state.components[1].spec_hash
    assert plan_.resolve_desired(None) == Desired("", ())


# --- property: applying a plan and planning again gives nothing -------------------------

def _apply(desired: Desired, observed: dict[str, Observed],
           actions: list[Action]) -> dict[str, Observed]:
    """What a runtime that always succeeds does with each verb."""
    out = dict(observed)
    wants = {w.name: w for w in desired.wants}
    for action in actions:
        seen = out.get(action.name)
        if action.verb is Verb.REMOVE:
            del out[action.name]
        elif action.verb is Verb.STOP:
            assert seen is not None
            out[action.name] = dataclasses.replace(seen, state=S.INSTALLED)
        elif action.verb is Verb.INSTALL:
            w = wants[action.name]
            out[action.name] = Observed(w.name, w.spec_hash, S.INSTALLED, w.hard + w.soft)
        elif action.verb in (Verb.START, Verb.RECOVER):
            w = wants[action.name]
            out[action.name] = Observed(w.name, w.spec_hash, S.RUNNING, w.hard + w.soft)
    return out


NAMES = [f"c{i}" for i in range(8)]


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[Desired, dict[str, Observed]]:
    chosen = draw(st.lists(st.sampled_from(NAMES), unique=True))
    wants = []
    for i, name in enumerate(chosen):
        earlier = chosen[:i]  # dependencies only on earlier names: no cycles
        hard = tuple(draw(st.lists(st.sampled_from(earlier), unique=True))) if earlier else ()
        soft = tuple(n for n in draw(st.lists(st.sampled_from(earlier), unique=True))
                     if n not in hard) if earlier else ()
        wants.append(Want(name, draw(st.sampled_from(["h1", "h2"])), hard, soft))
    observed = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        observed[name] = Observed(
            name, draw(st.sampled_from(["h1", "h2"])), draw(st.sampled_from(list(S))),
            retry_due=draw(st.booleans()),
            hold_revision=draw(st.sampled_from([None, REV, "old"])))
    return Desired(REV, tuple(wants)), observed


@hypothesis.given(_scenario())
@hypothesis.settings(max_examples=400, deadline=None)
def test_apply_then_plan_is_empty_and_planning_is_deterministic(
    scenario: tuple[Desired, dict[str, Observed]],
) -> None:
    desired, observed = scenario
    actions = plan_.plan(desired, observed)
    assert actions == plan_.plan(desired, dict(reversed(list(observed.items()))))
    after = _apply(desired, observed, actions)
    assert plan_.plan(desired, after) == []
    # Every dependency starts before its dependent.
    started = [a.name for a in actions if a.verb in (Verb.START, Verb.RECOVER)]
    for want in desired.wants:
        for dep in want.hard + want.soft:
            if dep in started and want.name in started:
                assert started.index(dep) < started.index(want.name)
