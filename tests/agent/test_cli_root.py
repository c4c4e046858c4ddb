"""The device CLI as a user types it: `--root` anywhere on the line or $HEDGEROW_ROOT
(like `kubectl -n`), and deployments written as files listed as local, not cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.deployments import local_deployment
from tests.support.wait import wait_for

from .conftest import THING, AgentProcess


def hedgerow(*args: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hedgerow", *args], capture_output=True,
                          text=True, timeout=60, env=env)


LOCAL = local_deployment(THING, "filed")


def test_root_anywhere_and_from_the_environment(agent: AgentProcess) -> None:
    (agent.root / "deployments" / "by-hand.yaml").write_text(LOCAL)
    agent.wait_states({"filed": "RUNNING"})
    root = str(agent.root)
    env = {k: v for k, v in os.environ.items() if k != "HEDGEROW_ROOT"}
    for argv, environment in (
            (["--root", root, "component", "list", "-o", "json"], env),
            (["component", "--root", root, "list", "-o", "json"], env),
            ([f"--root={root}", "component", "list", "-o", "json"], env),
            (["component", "list", "-o", "json"], {**env, "HEDGEROW_ROOT": root})):
        done = hedgerow(*argv, env=environment)
        assert done.returncode == 0, (argv, done.stderr)
        assert [c["name"] for c in json.loads(done.stdout)] == ["filed"], argv
    wrong = hedgerow("--root", root, "validate", "x.yaml")
    assert wrong.returncode == 2 and "--root does not apply to `validate`" in wrong.stderr

    # A deployment written as a file is local, as much as one from `deployment create`.
    wait_for(lambda: agent.outcome() == "SUCCEEDED")
    listed = json.loads(hedgerow("deployment", "list", "-o", "json", "--root", root).stdout)
    applied = agent.status()["appliedRevision"]
    [entry] = [d for d in listed if d["revision"] == applied]
    assert entry["source"] == "local" and entry["outcome"] == "SUCCEEDED"
