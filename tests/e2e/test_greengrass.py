"""A Greengrass component moved to a Hedgerow fleet, end to end: the unmodified recipe of
examples/greengrass/ converted with `hedgerow component import` (its s3:// artifact on a
mirror), applied with `kubectl apply` beside a Deployment, published by the real
controller to a real agent, run as `nobody` with the official SDK — it reads its
configuration, publishes and receives its message; then a Deployment's configuration
update reaches it without a restart."""

from __future__ import annotations

import pathlib
import shutil

import yaml

from tests.agent.test_greengrass_example import NAME, install_sdk_for
from tests.conftest import ROOT
from tests.e2e.conftest import HEDGEROW, Fleet, run, wait_for

EXAMPLE = ROOT / "examples" / "greengrass"


def deployment(thing: str, message: str | None = None) -> dict[str, object]:
    component: dict[str, object] = {"name": NAME, "version": "1.0.0"}
    if message is not None:
        component["configurationUpdate"] = {"merge": {"message": message,
                                                      "intervalSeconds": 1}}
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "gg-example", "namespace": "default"},
            "spec": {"target": {"thing": thing}, "components": [component]}}


def test_an_imported_greengrass_component_runs_on_the_fleet(fleet: Fleet) -> None:
    g2 = fleet.agents["gateway-2"]
    # The bucket, mirrored to a folder the devices can read (s3://B/K -> file://M/B/K).
    mirror = fleet.home / "mirror"
    target = mirror / "DOC-EXAMPLE-BUCKET" / "artifacts" / NAME / "1.0.0"
    target.mkdir(parents=True)
    shutil.copy(EXAMPLE / "artifacts" / NAME / "1.0.0" / "pubsub_config.py", target)
    for path in [mirror, *mirror.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = fleet.home / "imported"
    run([*HEDGEROW, "component", "import",
         str(EXAMPLE / "recipes" / f"{NAME}-1.0.0.yaml"),
         "--artifact-base", f"file://{mirror}", "-o", str(out)])
    [manifest] = out.glob("*.yaml")
    component = yaml.safe_load(manifest.read_text())
    component["metadata"]["namespace"] = "default"
    install_sdk_for(g2.root / "work" / NAME)  # what `pip install --user awsiotsdk` leaves

    fleet.apply([component, deployment(g2.thing)])
    log = g2.root / "logs" / f"{NAME}.log"

    def logged(text: str) -> bool:
        return log.exists() and text in log.read_text()
    wait_for(lambda: logged('Received new message on topic my/topic: '
                            '{"message": "Hello, World!"}'), 90,
             "the component's own message, received")
    wait_for(lambda: g2.states().get(NAME) == ("1.0.0", "RUNNING"), 30, "RUNNING reported")
    pid = g2.pids()[NAME]

    fleet.apply([deployment(g2.thing, "Hello from the cluster")])
    wait_for(lambda: logged('Received new message on topic my/topic: '
                            '{"message": "Hello from the cluster"}'), 60,
             "the new configuration, used without a restart")
    assert g2.pids()[NAME] == pid
    assert pathlib.Path(f"/proc/{pid}").exists()
