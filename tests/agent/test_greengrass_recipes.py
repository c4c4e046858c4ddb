"""Greengrass recipes as they are, on a device: the greengrass-cli local deployment flow
(`deployment create --recipes DIR --artifacts DIR --merge NAME=VERSION`) with a recipe
and artifacts in Greengrass's own folder layout, and a recipe dropped into
deployments/recipes/ by hand."""

from __future__ import annotations

import json
import pathlib

from tests.support.wait import wait_for

from .conftest import AgentProcess

RECIPE = {
    "RecipeFormatVersion": "2020-01-25",
    "ComponentName": "com.example.GgHello",
    "ComponentVersion": "1.0.0",
    "ComponentDescription": "My first AWS IoT Greengrass component.",
    "ComponentPublisher": "Amazon",
    "ComponentConfiguration": {"DefaultConfiguration": {"Message": "world"}},
    "ComponentDependencies": {
        "aws.greengrass.Nucleus": {"VersionRequirement": ">=2.0.0", "DependencyType": "SOFT"}},
    "Manifests": [{
        "Platform": {"os": "linux"},
        "Lifecycle": {
            "run": "python3 -u {artifacts:path}/hello_world.py \"{configuration:/Message}\""},
        "Artifacts": [{"URI": "s3://DOC-EXAMPLE-BUCKET/artifacts/com.example.GgHello/"
                              "1.0.0/hello_world.py"}],
    }],
}
SCRIPT = """\
import sys
import time

message = f"Hello, {sys.argv[1]}!"
print(message)
while True:
    time.sleep(60)
"""


def log_of(agent: AgentProcess, name: str) -> str:
    path = agent.root / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


def test_a_greengrass_recipe_deploys_locally_as_it_is(agent: AgentProcess,
                                                      agent_home: pathlib.Path) -> None:
    recipes, artifacts = agent_home / "recipes", agent_home / "artifacts"
    recipes.mkdir()
    (recipes / "com.example.GgHello-1.0.0.json").write_text(json.dumps(RECIPE, indent=2))
    folder = artifacts / "com.example.GgHello" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "hello_world.py").write_text(SCRIPT)
    created = agent.cli("deployment", "create", "--recipes", str(recipes),
                        "--artifacts", str(artifacts), "--merge", "com.example.GgHello=1.0.0")
    assert created.returncode == 0, created.stderr
    agent.wait_states({"com.example.GgHello": "RUNNING"}, 30)
    # The artifact came from the Greengrass layout and the configuration was filled in.
    wait_for(lambda: "Hello, world!" in log_of(agent, "com.example.GgHello"), 15,
             "the component's greeting")
    # What the recipe could not carry over is named, not dropped silently.
    assert ("ComponentDependencies.aws.greengrass.Nucleus: not carried over: the Hedgerow "
            "agent stands in for the Greengrass nucleus") in agent.log.read_text()

    # A broken recipe by hand: refused naming file and field; what runs keeps running.
    pid = agent.record("com.example.GgHello")["process"]["pid"]
    broken = {**RECIPE, "ComponentVersion": "1.0.1", "Manifests": [
        {"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
         "Artifacts": [{"URI": "docker:nginx:latest"}]}]}
    bad = agent.root / "deployments" / "recipes" / "broken.json"
    bad.write_text(json.dumps(broken))
    wait_for(lambda: (agent.status().get("deployment") or {}).get("outcome") == "REJECTED",
             15, "the broken recipe, rejected")
    reason = agent.status()["deployment"]["reason"]
    assert f"{bad}: Manifests[0].Artifacts[0].URI: docker:nginx:latest" in reason
    assert agent.states() == {"com.example.GgHello": "RUNNING"}
    assert agent.record("com.example.GgHello")["process"]["pid"] == pid
    bad.unlink()
    agent.passes()
    assert agent.states() == {"com.example.GgHello": "RUNNING"}
