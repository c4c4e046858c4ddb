"""The converge loop with real processes: start, update, remove, dependencies, bad input."""

from __future__ import annotations

from hedgerow.core import component, documents

from .conftest import THING, AgentProcess, pids_with_marker, rc, wait_for


def test_a_component_runs_and_sees_its_environment(agent: AgentProcess) -> None:
    agent.deploy(rc("a", "echo thing=$HEDGEROW_THING_NAME tok=${#HEDGEROW_AUTH_TOKEN} "
                         "user=$(id -un) cfg={configuration:/m} work={work:path}; sleep 60",
                    configuration={"m": "hi"}))
    agent.wait_states({"a": "RUNNING"})
    log = agent.root / "logs" / "a.log"
    line = wait_for(lambda: log.exists() and log.read_text(), 20, "log output")
    assert f"thing={THING} tok=32 user=nobody cfg=hi work={agent.root}/work/a" in line
    assert line[:4].isdigit() and "Z " in line  # timestamped
    assert oct((agent.root / "agent.sock").stat().st_mode & 0o777) == "0o660"


def test_update_restarts_only_what_changed_and_removal_cleans_up(agent: AgentProcess) -> None:
    agent.deploy(rc("a"), rc("b"))
    agent.wait_states({"a": "RUNNING", "b": "RUNNING"})
    pid_a, pid_b = agent.record("a")["process"]["pid"], agent.record("b")["process"]["pid"]
    # A new run step (a configuration change no step uses would keep b running:
    # tests/agent/test_config_restart.py).
    agent.deploy(rc("a"), rc("b", run="sleep 61"))
    wait_for(lambda: (agent.record("b").get("process") or {}).get("pid") not in (None, pid_b))
    assert agent.record("a")["process"]["pid"] == pid_a
    assert pid_b not in pids_with_marker(agent.root, "b")  # the old b is gone, not doubled
    b_now = wait_for(lambda: pids_with_marker(agent.root, "b"), 20, "b's new processes")
    a_now = pids_with_marker(agent.root, "a")
    assert pid_a in a_now
    agent.deploy(rc("a"))
    agent.wait_states({"a": "RUNNING"})
    assert not (agent.root / "work" / "b").exists()
    # Removal stopped every process of b (the shell and its sleep), and only those: a's
    # processes are the very same ones.
    assert pids_with_marker(agent.root, "b") == set(), b_now
    assert pids_with_marker(agent.root, "a") == a_now
    assert agent.record("a")["process"]["pid"] == pid_a


def test_dependencies_start_first_and_hard_restart_restarts_dependents(
    agent: AgentProcess,
) -> None:
    dep = documents.ResolvedDependency(name="base", version="1.0.0", type="HARD")
    # The guarantee is spawn order (a dependent is spawned only once its dependency is
    # RUNNING); two running shells' first lines race, so the dependent writes a bit later.
    order = "{delay}echo $(date +%s%N) {name} >> {root}/order; sleep 60"
    (agent.root / "order").touch(mode=0o666)
    (agent.root / "order").chmod(0o666)
    agent.deploy(rc("base", order.format(name="base", root=agent.root, delay="")),
                 rc("user", order.format(name="user", root=agent.root,
                                     delay="sleep 0.2; "), dependencies=[dep]))
    agent.wait_states({"base": "RUNNING", "user": "RUNNING"})
    user_pid = agent.record("user")["process"]["pid"]
    wait_for(lambda: len((agent.root / "order").read_text().splitlines()) == 2)
    # base's step changes (a configuration change its step renders would do the same).
    agent.deploy(rc("base", order.format(name="base", root=agent.root, delay=": v2; ")),
                 rc("user", order.format(name="user", root=agent.root,
                                     delay="sleep 0.2; "), dependencies=[dep]))
    wait_for(lambda: (agent.record("user").get("process") or {}).get("pid")
             not in (None, user_pid), 10, "user restarted")
    agent.wait_states({"base": "RUNNING", "user": "RUNNING"})
    wait_for(lambda: len((agent.root / "order").read_text().splitlines()) == 4)
    names = [line.split()[1] for line in (agent.root / "order").read_text().splitlines()]
    assert names == ["base", "user", "base", "user"]


def test_removals_stop_together_and_dependencies_stop_after_their_dependents(
    agent: AgentProcess,
) -> None:
    # Each shutdown step takes 0.5 s and notes when it began and ended: the two users
    # (independent of each other) overlap; their shared dependency begins only after
    # both are over. In sequence the three would take 1.5 s.
    marks = agent.root / "marks"
    marks.touch()
    marks.chmod(0o666)
    note = f"echo $(date +%s%N) {{0}} >> {marks}"

    def comp(name: str, *deps: str) -> documents.ResolvedComponent:
        return rc(name, lifecycle=component.Lifecycle(
            run=component.Step(script="sleep 60"),
            shutdown=component.Step(script="; ".join(
                [note.format(f"{name}-begin"), "sleep 0.5", note.format(f"{name}-end")]))),
            dependencies=[documents.ResolvedDependency(name=d, version="1.0.0", type="HARD")
                          for d in deps])

    agent.deploy(comp("base"), comp("u1", "base"), comp("u2", "base"))
    agent.wait_states(dict.fromkeys(("base", "u1", "u2"), "RUNNING"))
    agent.deploy()
    agent.wait_states({}, timeout=15)
    at = {name: int(ns) / 1e9 for ns, name in
          (line.split() for line in marks.read_text().splitlines())}
    assert at["u1-begin"] < at["u2-end"] and at["u2-begin"] < at["u1-end"]  # together
    assert at["base-begin"] >= max(at["u1-end"], at["u2-end"])  # after its dependents
    assert at["base-end"] - min(at["u1-begin"], at["u2-begin"]) < 1.4
    assert not pids_with_marker(agent.root)


def test_invalid_desired_document_is_rejected_and_nothing_is_removed(
    agent: AgentProcess,
) -> None:
    agent.deploy(rc("a"))
    agent.wait_states({"a": "RUNNING"})
    target = agent.root / "desired" / "desired.json"
    target.write_text(target.read_text().replace('"sleep 60"', '"sleep 61"'))
    wait_for(lambda: (agent.status().get("deployment") or {}).get("outcome") == "REJECTED")
    reason = agent.status()["deployment"]["reason"]
    assert "desired.json DesiredState" in reason and "revision" in reason
    assert agent.states() == {"a": "RUNNING"}


def test_invalid_local_manifest_names_file_object_and_field(agent: AgentProcess) -> None:
    (agent.root / "deployments" / "bad.yaml").write_text(
        "apiVersion: hedgerow.dev/v1alpha1\nkind: Component\nmetadata: {name: x}\n"
        "spec: {name: x, version: one, manifests: []}\n")
    wait_for(lambda: (agent.status().get("deployment") or {}).get("outcome") == "REJECTED")
    assert "bad.yaml#1 Component/x: spec.version: must be a semantic version" in \
        agent.status()["deployment"]["reason"]


def test_lifecycle_steps_timeouts_and_skipif(agent: AgentProcess) -> None:
    life = component.Lifecycle.model_validate({
        "setenv": {"G": "global"},
        "install": {"script": "echo installed-$G > {work:path}/i", "setenv": {"G": "step"}},
        "startup": {"script": "echo started-$G > {work:path}/s"},
        "shutdown": {"script": "echo bye > {work:path}/../../bye"},
    })
    skipped = component.Lifecycle.model_validate({
        "install": {"script": "exit 1", "skipIf": "onpath sh"},
        "run": {"script": "sleep 60", "skipIf": "exists /etc/hostname"},
    })
    agent.deploy(rc("steps", lifecycle=life), rc("skip", lifecycle=skipped))
    agent.wait_states({"steps": "RUNNING", "skip": "FINISHED"})
    assert (agent.root / "work" / "steps" / "i").read_text() == "installed-step\n"
    assert (agent.root / "work" / "steps" / "s").read_text() == "started-global\n"
    agent.deploy()
    wait_for(lambda: agent.states() == {})
    assert not (agent.root / "work" / "steps").exists()


def test_startup_timeout_errors_then_broken(agent: AgentProcess) -> None:
    life = component.Lifecycle.model_validate(
        {"startup": {"script": "sleep 30", "timeoutSeconds": 1}})
    agent.deploy(rc("slow", lifecycle=life), failure_handling="DO_NOTHING")
    agent.wait_states({"slow": "BROKEN"}, timeout=30)
    assert "timed out after 1s" in agent.status()["components"][0]["message"]
    assert agent.status()["deployment"]["outcome"] == "FAILED"
    assert pids_with_marker(agent.root) == set()


def test_a_component_reads_the_fleet_ca_but_not_the_identity(agent: AgentProcess) -> None:
    identity = agent.root / "identity"
    identity.mkdir(mode=0o700)
    (identity / "key.pem").write_text("PRIVATE")
    (identity / "key.pem").chmod(0o600)
    (identity / "ca.pem").write_text("-----FLEET CA 1-----\n")
    agent.deploy(rc("ca", 'for i in $(seq 100); do cat "$GG_ROOT_CA_PATH" 2>/dev/null '
                          '&& break; sleep 0.1; done; echo "ca=$GG_ROOT_CA_PATH"; '
                          'cat ' + str(identity / "key.pem") + ' || echo no-key; sleep 60'))
    agent.wait_states({"ca": "RUNNING"})
    log = agent.root / "logs" / "ca.log"
    text = wait_for(lambda: "no-key" in (log.read_text() if log.exists() else "")
                    and log.read_text(), 10, "the component's output")
    assert "-----FLEET CA 1-----" in text and "PRIVATE" not in text
    assert f"ca={agent.root}/ipc/ca.pem" in text
    # A replaced trust bundle reaches the copy within a pass.
    (identity / "ca.pem").write_text("-----FLEET CA 2-----\n")
    agent.passes()
    assert (agent.root / "ipc" / "ca.pem").read_text() == "-----FLEET CA 2-----\n"
