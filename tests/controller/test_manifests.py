"""The kustomize base renders, carries current CRDs, and grants no more than the
controller uses."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from hedgerow.core import component, crd, deployment, privilege
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


def test_replicas_elect_a_leader_and_survive_a_drain() -> None:
    docs = render()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]
    container = spec["template"]["spec"]["containers"][0]
    # More than one replica only ever with leader election (two active would publish
    # twice and take the broker session from each other).
    assert spec["replicas"] >= 2 and "--leader-elect" in container["args"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "--metrics=:9090" in container["args"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The Lease: in the controller's namespace only, and only its own one is renewed.
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "hedgerow-system"
    grants = {(r, v, tuple(rule.get("resourceNames", []))) for rule in role["rules"]
              for r in rule["resources"] for v in rule["verbs"]}
    assert grants == {("leases", "create", ()),
                      ("leases", "get", ("hedgerow-controller",)),
                      ("leases", "update", ("hedgerow-controller",))}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


# --- manifests/tenancy: roles and the admission policy -----------------------------------

TENANCY = ROOT / "manifests" / "tenancy"


def _tenancy(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((TENANCY / name).read_text()) if d]


def test_team_role_cannot_touch_devices_namespaces_or_status() -> None:
    roles = {d["metadata"]["name"]: d for d in _tenancy("roles.yaml")}
    team = {(g, r, v) for rule in roles["hedgerow-team"]["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}
    assert not any(r.startswith("coredevices") or r == "namespaces" for _, r, _ in team)
    assert not any(r.endswith("/status") and v != "get" for _, r, v in team)
    admin = {r for rule in roles["hedgerow-fleet-admin"]["rules"] for r in rule["resources"]}
    assert {"coredevices", "namespaces"} <= admin
    out = subprocess.run(["kubectl", "kustomize", str(TENANCY)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRole", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding"]


def _policy() -> dict[str, Any]:
    return next(d for d in _tenancy("admission.yaml")
                if d["kind"] == "ValidatingAdmissionPolicy")


def _admit(obj: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Evaluate the policy as the API server would (variables, then each validation):
    the messages of the validations that deny ``obj``."""
    import celpy
    import celpy.adapter

    env = celpy.Environment()
    namespace = {"metadata": {"name": "team-a", "labels": labels}}
    activation: dict[str, Any] = {"object": celpy.adapter.json_to_cel(obj),
                                  "namespaceObject": celpy.adapter.json_to_cel(namespace)}
    variables: dict[str, Any] = {}
    spec = _policy()["spec"]
    for var in spec["variables"]:
        activation["variables"] = celpy.adapter.json_to_cel(variables)
        program = env.program(env.compile(var["expression"]))
        variables[var["name"]] = program.evaluate(activation)
    activation["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(k): v for k, v in variables.items()})
    denied = []
    for check in spec["validations"]:
        if not env.program(env.compile(check["expression"])).evaluate(activation):
            message = env.program(env.compile(check["messageExpression"])).evaluate(activation)
            denied.append(str(message))
    return denied


def _component(**manifest: Any) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
            "metadata": {"name": "c", "namespace": "team-a"},
            "spec": {"name": "C", "version": "1.0.0", "manifests": [manifest]}}


def _deployment(run_with: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "team-a"},
            "spec": {"target": {"thing": "a-1"},
                     "components": [{"name": "C", "version": "1.0.0", "runWith": run_with}]}}


_BOX = {"image": "busybox:latest"}
ADMISSION_CASES = [
    _component(lifecycle={"run": {"script": "x"}}),
    _component(lifecycle={"install": {"script": "x", "requiresPrivilege": True},
                          "run": {"script": "x"}}),
    _component(lifecycle={"recover": {"script": "x", "requiresPrivilege": True}}),
    _component(container={**_BOX, "requiresPrivilege": True}),
    _component(container={**_BOX, "volumes": [{"source": "/etc", "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "{work:path}/data", "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "{work:path}/../..", "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "{work:path}", "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "{artifacts:path}/m", "target": "/x",
                                               "readOnly": True}]}),
    _component(container={**_BOX, "volumes": [{"source": "{artifacts:path}/../..",
                                               "target": "/x", "readOnly": True}]}),
    _component(container={**_BOX, "volumes": [{"source": "{artifacts:path}", "target": "/x",
                                               "readOnly": True}]}),
    _component(container={**_BOX, "volumes": [{"source": "{artifacts:path}", "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "{configuration:/dir}",
                                               "target": "/x"}]}),
    _component(container={**_BOX, "volumes": [{"source": "cache", "target": "/x"}]}),
    _component(container={**_BOX, "ports": [{"containerPort": 80, "hostIp": "0.0.0.0"}]}),
    _component(container={**_BOX, "ports": [{"containerPort": 80}]}),
    _deployment({"posixUser": "root"}),
    _deployment({"posixUser": "app:0"}),
    _deployment({"posixUser": "0"}),
    _deployment({"posixUser": "nobody:nogroup"}),
    _deployment({"systemResourceLimits": {"memory": "64Mi"}}),
]


@pytest.mark.parametrize("level", ["restricted", "baseline", "privileged", "unknown"])
@pytest.mark.parametrize("case", range(len(ADMISSION_CASES)))
def test_admission_policy_refuses_what_the_controller_refuses(case: int, level: str) -> None:
    """The CEL of manifests/tenancy/admission.yaml, evaluated with cel-python, denies
    exactly what hedgerow.core.privilege finds at that level. (The test API server has no
    admission, so the policy itself is not exercised by a real API server here.)"""
    obj = ADMISSION_CASES[case]
    granted = privilege.resolve_level({privilege.LABEL: level})
    if obj["kind"] == "Component":
        comp = component.Component.model_validate(obj)
        m = comp.spec.manifests[0]
        expected = privilege.resolve_violations(m.lifecycle, m.container, None, granted)
    else:
        d = deployment.Deployment.model_validate(obj)
        expected = privilege.resolve_violations(None, None, d.spec.components[0].run_with,
                                                granted)
    denied = _admit(component.Component.model_validate(obj).to_dict()
                    if obj["kind"] == "Component" else obj, {privilege.LABEL: level})
    assert bool(denied) == bool(expected), (obj, denied, expected)
    for message in denied:
        assert f"has {granted.value} (label hedgerow.dev/enforce)" in message
        assert any(v.field.split("[")[0].split(".")[-1] in message for v in expected)


def test_admission_policy_reads_only_fields_the_crds_have() -> None:
    """Every field the CEL reads exists in the schema of the kind it reads it from."""
    import re

    schemas = {name.split(".")[0]: doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
               for name, doc in crd.render_all().items()}

    def names(node: dict[str, Any]) -> set[str]:
        out = set(node.get("properties", {}))
        for sub in node.get("properties", {}).values():
            out |= names(sub)
        if "items" in node:
            out |= names(node["items"])
        return out

    known = names(schemas["components"]) | names(schemas["deployments"])
    known |= {"metadata", "labels", "name", "kind", "spec"}  # the envelope
    spec = _policy()["spec"]
    text = " ".join([v["expression"] for v in spec["variables"]]
                    + [v["expression"] for v in spec["validations"]])
    text = re.sub(r"'[^']*'", "''", text)  # string literals are no fields
    read = set(re.findall(r"\.([A-Za-z][A-Za-z0-9]*)\b(?!\()", text))
    read -= {"level", "privileged", "baseline", "manifests", "deploymentComponents"}  # vars
    assert read <= known, read - known
    assert spec["matchConstraints"]["resourceRules"][0]["resources"] == [
        "components", "deployments"]
