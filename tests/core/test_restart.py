"""Greengrass's restart rule: a changed component restarts only when its rendered lifecycle
(the recipe with its variables filled in), its container, runWith, version, artifacts or
dependencies changed; a configuration change no step uses only updates the record
(recipe.render_restart_hash + plan)."""

from __future__ import annotations

from typing import Any

import pytest

from hedgerow.core import component, deployment, documents, recipe
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as S

RUN = "python3 app.py --port {configuration:/port}"


def comp(name: str = "app", run: str = RUN, config: dict[str, Any] | None = None,
         version: str = "1.0.0", **kw: Any) -> documents.ResolvedComponent:
    return documents.ResolvedComponent(
        name=name, version=version, configuration={"port": 80, "topic": "a"} if config is None
        else config, lifecycle=component.Lifecycle(run=component.Step(script=run)), **kw)


def context(c: documents.ResolvedComponent,
            deps: dict[str, documents.ResolvedComponent] | None = None) -> recipe.Context:
    def paths(x: documents.ResolvedComponent) -> recipe.Paths:
        return recipe.Paths(f"/r/artifacts/{x.name}/{x.version}",
                            f"/r/unpacked/{x.name}/{x.version}", f"/r/work/{x.name}",
                            x.configuration)
    return recipe.Context(c.name, paths(c), "/r", "gw-1",
                          {n: paths(d) for n, d in (deps or {}).items()})


def steps(old: documents.ResolvedComponent, new: documents.ResolvedComponent,
          state: S = S.RUNNING) -> list[str]:
    seen = plan_.Observed(old.name, old.spec_hash, state,
                          restart_hash=recipe.render_restart_hash(old, context(old)))
    want = plan_.Want(new.name, new.spec_hash, restart_hash=recipe.render_restart_hash(
        new, context(new)))
    actions = plan_.plan(plan_.Desired("r", (want,)), {old.name: seen})
    return [f"{a.verb.value} {a.name}" for a in actions]


RESTART = ["prepare app", "stop app", "install app", "start app"]
UPDATE = ["update app"]
LIMITS = deployment.RunWith.model_validate({"systemResourceLimits": {"memory": "64Mi"}})


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param(comp(), comp(), [], id="unchanged"),
    pytest.param(comp(), comp(config={"port": 80, "topic": "b"}), UPDATE,
                 id="config-no-step-uses"),
    pytest.param(comp(), comp(config={"port": 80, "topic": "a", "new": {"x": 1}}), UPDATE,
                 id="config-key-added"),
    pytest.param(comp(), comp(config={"port": 8080, "topic": "a"}), RESTART,
                 id="config-the-run-step-uses"),
    # The rule compares what runs: a script rewritten to render the same runs the same.
    pytest.param(comp(), comp(run="python3 app.py --port 80"), UPDATE,
                 id="script-rewritten-to-render-the-same"),
    pytest.param(comp(), comp(version="1.0.1"), RESTART, id="version"),
    pytest.param(comp(), comp(run_with=LIMITS), RESTART, id="runWith"),
    pytest.param(comp(), comp(run_with=deployment.RunWith(posix_user="app")), RESTART,
                 id="runWith-user"),
    pytest.param(comp(), comp(artifacts=[component.Artifact(uri="file:///x/a.py")]),
                 RESTART, id="artifacts"),
    # A variable that cannot be rendered: unknown, so any change restarts (and the
    # start reports the variable).
    pytest.param(comp(run="{configuration:/missing}"),
                 comp(run="{configuration:/missing}", config={"port": 1}), RESTART,
                 id="unrenderable"),
])
def test_a_configuration_change_restarts_only_what_renders_differently(
        old: documents.ResolvedComponent, new: documents.ResolvedComponent,
        expected: list[str]) -> None:
    assert steps(old, new) == expected


def test_setenv_and_every_step_count_as_the_rendered_lifecycle() -> None:
    def with_env(port: int) -> documents.ResolvedComponent:
        life = component.Lifecycle(setenv={"PORT": "{configuration:/port}"},
                                   run=component.Step(script="serve"),
                                   shutdown=component.Step(script="echo bye"))
        return documents.ResolvedComponent(name="app", version="1.0.0", lifecycle=life,
                                           configuration={"port": port, "other": port})
    assert steps(with_env(80), with_env(81)) == RESTART


def test_containers_follow_the_same_rule() -> None:
    def box(config: dict[str, Any]) -> documents.ResolvedComponent:
        return documents.ResolvedComponent(
            name="app", version="1.0.0", configuration=config,
            container=component.Container(image="nginx:1.25",
                                          env={"MODE": "{configuration:/mode}"}))
    assert steps(box({"mode": "a", "x": 1}), box({"mode": "a", "x": 2})) == UPDATE
    assert steps(box({"mode": "a"}), box({"mode": "b"})) == RESTART


@pytest.mark.parametrize(("state", "expected"), [
    (S.RUNNING, UPDATE), (S.STARTING, UPDATE), (S.FINISHED, UPDATE), (S.INSTALLED, UPDATE),
    # A component that failed or never installed is installed again with the new spec.
    (S.ERRORED, ["prepare app", "install app", "start app"]),
    (S.BROKEN, ["prepare app", "install app", "start app"]),
    (S.NEW, ["prepare app", "install app", "start app"]),
])
def test_an_update_keeps_only_what_is_installed(state: S, expected: list[str]) -> None:
    assert steps(comp(), comp(config={"port": 80, "topic": "z"}), state) == expected


def test_a_dependencys_configuration_restarts_a_dependent_that_renders_it() -> None:
    """The dependent's own spec is unchanged; what it renders is not."""
    user = comp("user", run="connect --port {lib:configuration:/port}")
    old_lib, new_lib = comp("lib", config={"port": 1}), comp("lib", config={"port": 2})
    seen = plan_.Observed("user", user.spec_hash, S.RUNNING, restart_hash=recipe
                          .render_restart_hash(user, context(user, {"lib": old_lib})))
    want = plan_.Want("user", user.spec_hash, restart_hash=recipe.render_restart_hash(
        user, context(user, {"lib": new_lib})))
    actions = plan_.plan(plan_.Desired("r", (want,)), {"user": seen})
    assert [a.verb for a in actions] == [plan_.Verb.PREPARE, plan_.Verb.STOP,
                                          plan_.Verb.INSTALL, plan_.Verb.START]


def test_an_update_does_not_restart_hard_dependents() -> None:
    lib_old = comp("lib", config={"port": 1, "topic": "a"})
    lib_new = comp("lib", config={"port": 1, "topic": "b"})
    user = comp("user", dependencies=[documents.ResolvedDependency(
        name="lib", version="1.0.0", type=component.DependencyType.HARD)])
    hashes = {c.name: recipe.render_restart_hash(c, context(c)) for c in (lib_new, user)}
    observed = {
        "lib": plan_.Observed("lib", lib_old.spec_hash, S.RUNNING, restart_hash=recipe
                              .render_restart_hash(lib_old, context(lib_old))),
        "user": plan_.Observed("user", user.spec_hash, S.RUNNING, ("lib",),
                               restart_hash=hashes["user"])}
    doc = documents.render_desired_state("gw-1", [], [lib_new, user])
    actions = plan_.plan(plan_.resolve_desired(doc, hashes), observed)
    assert [(a.verb, a.name) for a in actions] == [(plan_.Verb.UPDATE, "lib")]
