"""The shipped examples on a real agent: HelloWorld + its dependent Telemetry through a
local deployment (examples/local/), both RUNNING and Telemetry sampling; plus the logs
CLI following a component's output and adopted exit codes."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import yaml

from tests.support.passes import wait_passes

from .conftest import THING, AgentProcess, rc, wait_for

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_examples_run_through_a_local_deployment(agent: AgentProcess) -> None:
    deployments = agent.root / "deployments"
    shutil.copy(EXAMPLES / "hello-world.yaml", deployments)
    shutil.copy(EXAMPLES / "telemetry.yaml", deployments)
    local = (EXAMPLES / "local" / "gateway-1.yaml").read_text()
    assert "thing: gateway-1" in local
    (deployments / "local.yaml").write_text(local.replace("thing: gateway-1",
                                                           f"thing: {THING}"))
    agent.wait_states({"com.example.HelloWorld": "RUNNING",
                       "com.example.Telemetry": "RUNNING"}, timeout=20)
    samples = agent.root / "work" / "com.example.Telemetry" / "samples" / "load.txt"
    wait_for(lambda: samples.exists() and len(samples.read_text().split()) >= 2, 10,
             "two load samples")
    float(samples.read_text().split()[0])
    hello = agent.root / "logs" / "com.example.HelloWorld.log"
    wait_for(lambda: hello.exists() and f"Hello from the gateway from {THING}"
             in hello.read_text(), 10, "the greeting")
    listing = agent.cli("component", "list")
    assert listing.returncode == 0, listing.stderr
    assert all(f"com.example.{n}" in listing.stdout for n in ("HelloWorld", "Telemetry"))


def test_configuration_is_data_not_code_in_the_examples(agent: AgentProcess) -> None:
    """A deployment that merges shell into the example's configuration (the review's
    `$(id)` injection) gets the text printed, never run: the example passes
    {configuration:/message} through setenv and quotes "$GREETING"."""
    canary = agent.root.parent / "canary"
    hostile = (f"$(touch {canary}-dollar); touch {canary}-semicolon; `touch {canary}-tick`"
               f" | touch {canary}-pipe && touch {canary}-and \"'; touch {canary}-quote")
    deployments = agent.root / "deployments"
    shutil.copy(EXAMPLES / "hello-world.yaml", deployments)
    (deployments / "hostile.yaml").write_text(yaml.safe_dump({
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "hostile"},
        "spec": {"target": {"thing": THING},
                 "components": [{"name": "com.example.HelloWorld", "version": "1.0.0",
                                 "configurationUpdate": {"merge": {
                                     "message": hostile, "intervalSeconds": 1}}}]}}))
    agent.wait_states({"com.example.HelloWorld": "RUNNING"}, timeout=20)
    hello = agent.root / "logs" / "com.example.HelloWorld.log"
    wait_for(lambda: hello.exists() and f"{hostile} from {THING}" in hello.read_text(), 10,
             "the hostile text printed as text")
    wait_passes(agent.root)  # more loop rounds: the text stays text every time
    assert not list(canary.parent.glob("canary*")), "configuration ran as code"


def test_examples_never_put_configuration_into_script_text() -> None:
    """The pattern the examples teach: configuration variables only in setenv/env."""
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] != "Component":
                continue
            for m in doc["spec"]["manifests"]:
                for step, body in (m.get("lifecycle") or {}).items():
                    if step != "setenv":
                        text = json.dumps({k: v for k, v in body.items() if k != "setenv"})
                        assert "{configuration:" not in text, (path.name, step)
                container = dict(m.get("container") or {})
                container.pop("env", None)
                assert "{configuration:" not in json.dumps(container), path.name


def test_logs_get_follow_prints_new_lines(agent: AgentProcess) -> None:
    agent.deploy(rc("talker", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"))
    agent.wait_states({"talker": "RUNNING"})
    log = agent.root / "logs" / "talker.log"
    wait_for(lambda: log.exists() and "tick 1" in log.read_text(), 20, "first tick")
    follow = subprocess.Popen(
        [sys.executable, "-m", "hedgerow", "logs", "get", "talker", "--follow", "--root",
         str(agent.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        deadline = time.monotonic() + 10
        seen: list[str] = []
        while time.monotonic() < deadline and len(seen) < 30:
            seen.append(follow.stdout.readline())
        ticks = [int(line.split()[-1]) for line in seen if "tick" in line]
        # Old lines first, then lines written after `logs get` started, in order.
        assert ticks == sorted(ticks) and ticks[-1] - ticks[0] >= 5, seen
        assert all(line[10] == "T" for line in seen if line.strip())
        # Rotation (what the log writer does at its size limit): following goes on in
        # the new file, with no tick lost or repeated.
        log.replace(log.with_name("talker.log.1"))
        more: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(more) < 20:
            more.append(follow.stdout.readline())
        after = [int(line.split()[-1]) for line in more if "tick" in line]
        assert after == list(range(ticks[-1] + 1, ticks[-1] + 1 + len(after))), more
        assert len(after) == 20
    finally:
        follow.terminate()
        follow.wait(5)


def test_an_adopted_process_exit_code_is_known(agent: AgentProcess) -> None:
    flag = agent.root.parent / "go"
    agent.deploy(rc("once", "touch {work:path}/started; "
                            f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 0"),
                 failure_handling="DO_NOTHING")
    agent.wait_states({"once": "RUNNING"})
    # RUNNING means spawned; the step runs once the agent has placed it in its cgroup
    # and opened its gate. A kill -9 before that ends the step (the gate sees EOF): wait.
    wait_for((agent.root / "work" / "once" / "started").exists, 10, "the step to start")
    agent.kill9()
    agent.start()
    wait_for(lambda: "adopted" in (agent.root.parent / "agent.log").read_text(), 10,
             "adoption")
    flag.touch()
    agent.wait_states({"once": "FINISHED"})
    assert agent.record("once")["message"] == "exited with 0"
