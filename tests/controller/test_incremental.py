"""Passes proportional to the change, observed on the real controller: a change to one
ThingGroup re-resolves only the devices it reached or reaches, the other devices get no
new document, and a pass with nothing changed resolves nothing."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.support import passes
from tests.support.wait import wait_for

THINGS = {f"inc-{i}": ("a" if i <= 3 else "b") for i in range(1, 6)}


def _objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
         "metadata": {"name": t, "labels": {"inc-group": g}}, "spec": {"namespace": "default"}}
        for t, g in THINGS.items()]
    docs.append({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
                 "metadata": {"name": "inc-app", "namespace": "default"},
                 "spec": {"name": "com.example.Inc", "version": "1.0.0",
                          "manifests": [{"lifecycle": {"run": {"script": "sleep 1"}}}]}})
    for g in ("a", "b"):
        docs.append({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "ThingGroup",
                     "metadata": {"name": f"inc-{g}", "namespace": "default"},
                     "spec": {"selector": {"matchLabels": {"inc-group": g}}}})
        docs.append({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
                     "metadata": {"name": f"inc-{g}", "namespace": "default"},
                     "spec": {"target": {"thingGroup": f"inc-{g}"},
                              "components": [{"name": "com.example.Inc",
                                              "version": "^1.0.0"}]}})
    return docs


def _stat(stats: pathlib.Path, name: str) -> int:
    return int(str(passes.controller_stats(stats).get(name, 0)))


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_a_changed_group_re_resolves_only_its_devices(
    cluster: Cluster, devices: Devices, tmp_path: pathlib.Path,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    cluster.apply(*_objects())
    stats = tmp_path / "stats.json"
    # No resync within the test: every pass after the first is incremental.
    c = controller_factory("--stats-file", str(stats), "--resync", "600")
    wait_for(lambda: all(devices.latest(t) for t in THINGS), 60, "every device's document")
    assert c.proc is not None
    passes.wait_controller_passes(stats, c.proc.pid)
    # Nothing changed: the pass resolves nothing.
    skipped = _stat(stats, "skippedPasses")
    passes.wait_controller_passes(stats, c.proc.pid)
    assert _stat(stats, "skippedPasses") > skipped
    assert _stat(stats, "lastPassResolved") == 0
    resolved, documents = _stat(stats, "resolvedTotal"), devices.count()
    # Group b now names one device: b's two devices are resolved again, a's are not.
    cluster.apply({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "ThingGroup",
                   "metadata": {"name": "inc-b", "namespace": "default"},
                   "spec": {"things": ["inc-4"]}})
    wait_for(lambda: devices.components("inc-5") == {}, 30, "inc-5 to lose the deployment")
    passes.wait_controller_passes(stats, c.proc.pid)
    assert _stat(stats, "resolvedTotal") - resolved == 2
    assert devices.count() == documents + 1  # inc-5's new document, nobody else's
    assert all(devices.components(t) == {"com.example.Inc": "1.0.0"}
               for t in ("inc-1", "inc-2", "inc-3", "inc-4"))
