"""The kustomize base renders, carries current CRDs, and grants no more than the
controller uses."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from hedgerow.core import crd
from tests.conftest import ROOT

BASE = ROOT / "manifests" / "base"


def render() -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_crd_copies_are_current() -> None:
    for name, doc in crd.render_all().items():
        assert (BASE / "crds" / name).read_text() == yaml.safe_dump(doc, sort_keys=False), (
            f"manifests/base/crds/{name} is stale: hedgerow crds --dir manifests/base/crds")


def test_base_renders_everything_the_controller_needs() -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert ("Deployment", "hedgerow-controller") in kinds
    assert ("ServiceAccount", "hedgerow-controller") in kinds
    assert sum(k == "CustomResourceDefinition" for k, _ in kinds) == 4
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--broker=$(BROKER_URL)" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    assert container["envFrom"][0]["configMapRef"]["name"] == configmap["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == "hedgerow-system"


def test_cluster_role_is_least_privilege() -> None:
    role = next(d for d in render() if d["kind"] == "ClusterRole")
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in part for grant in grants for part in grant)
    assert not any(r in ("secrets", "configmaps") for _, r, _ in grants)
    # Spec and metadata are never written; status of three kinds is.
    writes = {(g, r) for g, r, v in grants if v in ("create", "update", "patch", "delete")}
    assert writes == {("hedgerow.dev", "thinggroups/status"),
                      ("hedgerow.dev", "deployments/status"),
                      ("hedgerow.dev", "coredevices/status"),
                      ("", "events"), ("events.k8s.io", "events")}
    for kind in ("components", "thinggroups", "deployments", "coredevices"):
        assert {("hedgerow.dev", kind, v) for v in ("get", "list", "watch")} <= grants
