"""A Greengrass component moved to a Hedgerow fleet, end to end: the unmodified recipe of
examples/greengrass/ converted with `hedgerow component import` (its s3:// artifact on a
mirror), applied with `kubectl apply` beside a Deployment, published by the real
controller to a real agent, run as `nobody` with the official SDK — it reads its
configuration, publishes and receives its message; then a Deployment's configuration
update reaches it without a restart.

And what a Greengrass component decides about its own updates, seen from the cluster: a
component (official SDK, SubscribeToValidateConfigurationUpdates) rejects a Deployment's
configuration -- the CoreDevice says RolledBack with the component's own reason, and the
component keeps running on its old configuration; a component defers another's update
(SubscribeToComponentUpdates + DeferComponentUpdate) -- `kubectl get coredevices` says
Deferred meanwhile, and the update then goes on."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import yaml

from tests.agent.ipc_support import PYTHON, Client
from tests.agent.test_greengrass_example import NAME, install_sdk_for
from tests.agent.test_ipc_configuration import config_sdk, sdk
from tests.conftest import ROOT
from tests.e2e.conftest import HEDGEROW, Agent, Fleet, run, wait_for

__all__ = ["config_sdk", "sdk"]  # fixtures (tests/agent): the SDK and the SDK component

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


def sdk_component(sdk: pathlib.Path, name: str, version: str = "1.0.0",
                  configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Component CR running tests/agent/ipc_config_component.py (the official SDK), as
    `nobody`; driven through its work folder (tests/agent/ipc_support.Client)."""
    script = f"exec env PYTHONPATH={sdk} {PYTHON} -u {sdk}/ipc_config_component.py"
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
            "metadata": {"name": f"{name.lower()}-{version}", "namespace": "default"},
            "spec": {"name": name, "version": version,
                     "defaultConfiguration": configuration or {},
                     "manifests": [{"platform": {"os": "linux"},
                                    "lifecycle": {"run": {"script": script}}}]}}


def sleeper(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
            "metadata": {"name": f"{name.lower()}-{version}", "namespace": "default"},
            "spec": {"name": name, "version": version, "manifests": [{
                "platform": {"os": "linux"},
                "lifecycle": {"run": {"script": f"exec sleep {600 + len(version)}"}}}]}}


def target(name: str, thing: str, components: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"target": {"thing": thing}, "components": components}}


def applied(fleet: Fleet, agent: Agent) -> dict[str, Any]:
    """The CoreDevice's Applied condition, as the API server has it."""
    conditions = fleet.device_status(agent).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Applied"), {})


VALIDATOR = "com.example.Validator"


def test_a_rejected_configuration_rolls_back_with_the_components_reason(
        fleet: Fleet, config_sdk: pathlib.Path) -> None:
    g1 = fleet.agents["gateway-1"]

    def deploy(mode: str | None) -> None:
        entry: dict[str, Any] = {"name": VALIDATOR, "version": "1.0.0"}
        if mode is not None:
            entry["configurationUpdate"] = {"merge": {"mode": mode}}
        fleet.apply([target("gg-validate", g1.thing, [entry])])

    fleet.apply([sdk_component(config_sdk, VALIDATOR, configuration={"mode": "fast"})])
    deploy(None)
    wait_for(lambda: g1.states().get(VALIDATOR) == ("1.0.0", "RUNNING"), 90, "RUNNING")
    wait_for(lambda: applied(fleet, g1).get("reason") == "Succeeded", 60,
             "the first revision applied")
    v = Client(g1, VALIDATOR)  # (uses only its root)
    v.connected()
    pid = g1.pids()[VALIDATOR]
    v.command("validate", key="mode", reject="broken", tag="validate")
    v.wait(lambda e: e["event"] == "subscribed", "subscribed to validation")

    deploy("broken")
    v.wait(lambda e: e["event"] == "validating" and e["value"] == "broken",
           "asked about the broken configuration", 60)
    wait_for(lambda: applied(fleet, g1).get("reason") == "RolledBack", 60,
             f"RolledBack in the CoreDevice status (last: {applied(fleet, g1)})")
    condition = applied(fleet, g1)
    assert condition["status"] == "False"
    assert f"{VALIDATOR} rejected its new configuration: mode may not be 'broken'" in \
        condition["message"], condition
    # The Deployment counts the device as failed.
    wait_for(lambda: (fleet.deployment("gg-validate").get("status") or {}).get("failed") == 1,
             30, f"counted failed (last: {fleet.deployment('gg-validate').get('status')})")
    # What the operator sees with kubectl: the reason and, with -o wide, the message.
    wide = fleet.kubectl("get", "coredevices", g1.thing, "-o", "wide")
    assert "RolledBack" in wide and "mode may not be 'broken'" in wide, wide
    # The component was never restarted and never saw the rejected configuration.
    assert g1.pids()[VALIDATOR] == pid
    assert pathlib.Path(f"/proc/{pid}").exists()
    v.command("get", keyPath=["mode"], tag="mode")
    got = v.wait(lambda e: e.get("tag") == "mode" and e["event"] == "got", "its configuration")
    assert got["value"] == {"mode": "fast"}
    records = json.loads((g1.root / "state" / "components.json").read_text())
    assert records[VALIDATOR]["spec"]["configuration"] == {"mode": "fast"}


WATCHER, WORKER = "com.example.BatchWatcher", "com.example.BatchWorker"


def test_kubectl_get_coredevices_shows_a_deferred_update(
        fleet: Fleet, config_sdk: pathlib.Path) -> None:
    g3 = fleet.agents["gateway-3"]

    def deploy(worker: str) -> None:
        fleet.apply([target("gg-defer", g3.thing, [{"name": WATCHER, "version": "1.0.0"},
                                                   {"name": WORKER, "version": worker}])])

    fleet.apply([sdk_component(config_sdk, WATCHER), sleeper(WORKER, "1.0.0"),
                 sleeper(WORKER, "1.1.0")])
    deploy("1.0.0")
    wait_for(lambda: g3.states().get(WATCHER) == ("1.0.0", "RUNNING")
             and g3.states().get(WORKER) == ("1.0.0", "RUNNING"), 90, "both RUNNING")
    wait_for(lambda: applied(fleet, g3).get("reason") == "Succeeded", 60,
             "the first revision applied")
    w = Client(g3, WATCHER)  # (uses only its root)
    w.connected()
    # Defers the update by a minute (the componentUpdatePolicy timeout), and lets it go
    # on as soon as the deferral has been seen (`release`: DeferComponentUpdate with
    # recheckAfterMs 0, as a component that finished its batch early answers).
    w.command("updates", times=1, ms=60_000, tag="sub")
    w.wait(lambda e: e["event"] == "subscribed", "subscribed to updates")
    pid = g3.pids()[WORKER]

    deploy("1.1.0")
    w.wait(lambda e: e["event"] == "pre" and e["deferring"], "asked, and deferring", 60)

    def shown() -> str | None:
        table = fleet.kubectl("get", "coredevices", g3.thing)
        return table if "Deferred" in table else None
    table = wait_for(shown, 20, "Deferred in `kubectl get coredevices`")
    header, row = table.splitlines()[:2]
    assert row.split()[header.split().index("DEPLOYMENT")] == "Deferred", table
    wide = fleet.kubectl("get", "coredevices", g3.thing, "-o", "wide")
    assert f"deferred by {WATCHER}: finishing a batch" in wide, wide
    assert g3.pids()[WORKER] == pid  # the old worker goes on meanwhile
    w.command("release", tag="go")
    released = w.wait(lambda e: e["event"] in ("released", "failed"), "released")
    assert released["event"] == "released" and released["deployments"], released

    # Then replaced well before the minute is up (it went on because it was let go),
    # and the column says so.
    w.wait(lambda e: e["event"] == "post", "the post-update event", 30)
    wait_for(lambda: g3.states().get(WORKER) == ("1.1.0", "RUNNING"), 60, "replaced")
    wait_for(lambda: g3.pids().get(WORKER) not in (None, pid), 30, "a new worker process")
    wait_for(lambda: applied(fleet, g3).get("reason") == "Succeeded", 60, "Succeeded")
