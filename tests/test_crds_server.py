"""The generated CRDs on a real API server: examples apply, bad objects are refused with
the field named, and `kubectl get` shows the printer columns."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.apiserver import ApiServer

pytestmark = pytest.mark.apiserver

EXAMPLES = ROOT / "examples"


def test_every_example_applies_and_lists_under_the_category(apiserver: ApiServer) -> None:
    apiserver.kubectl("apply", "-f", str(EXAMPLES))
    listing = apiserver.kubectl("get", "hedgerow", "-o", "name").stdout.split()
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            kind = doc["kind"].lower()
            assert f"{kind}.hedgerow.dev/{doc['metadata']['name']}" in listing


def test_printer_columns(apiserver: ApiServer) -> None:
    apiserver.kubectl("apply", "-f", str(EXAMPLES))
    components = apiserver.kubectl("get", "components").stdout.splitlines()
    assert components[0].split() == ["NAME", "COMPONENT", "VERSION", "AGE"]
    assert any(line.split()[1:3] == ["com.example.HelloWorld", "1.0.0"] for line in components)
    deployments = apiserver.kubectl("get", "hdep").stdout.splitlines()
    assert deployments[0].split()[:4] == ["NAME", "GROUP", "THING", "TARGETED"]
    assert any(line.split()[:2] == ["factory-1-apps", "factory-1"] for line in deployments)
    devices = apiserver.kubectl("get", "cd").stdout.splitlines()
    assert devices[0].split() == ["NAME", "NAMESPACE", "HEALTH", "DEPLOYMENT", "APPLIED",
                                  "AGENT", "LAST", "SEEN", "AGE"]


def _component(version: str = "2.0.0", name: str = "c-bad") -> dict[str, object]:
    return {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
        "metadata": {"name": name},
        "spec": {"name": "com.example.Bad", "version": version,
                 "manifests": [{"lifecycle": {"run": {"script": "true"}}}]},
    }


def _deployment(target: dict[str, str], failure: str = "ROLLBACK") -> dict[str, object]:
    return {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "d-bad"},
        "spec": {"target": target, "components": [{"name": "x", "version": "1.0.0"}],
                 "policies": {"failureHandling": failure}},
    }


REJECTED = [
    ("bad semver", _component(version="1.0"), "spec.version"),
    ("wrong enum", _deployment({"thing": "t1"}, failure="UNDO"),
     'spec.policies.failureHandling: Unsupported value: "UNDO"'),
    # CEL messages name the field; 1.36 leaves out the value's type.
    ("group and thing", _deployment({"thing": "t1", "thingGroup": "g"}),
     "spec.target: Invalid value: a deployment targets exactly one of thingGroup or thing"),
    ("unknown field", {**_component(), "spec": {**_component()["spec"],  # type: ignore[dict-item]
                                                "colour": "red"}}, 'unknown field "spec.colour"'),
    # Every device belongs to a namespace (docs/security.md).
    ("device without a namespace", {"apiVersion": "hedgerow.dev/v1alpha1",
                                    "kind": "CoreDevice", "metadata": {"name": "no-ns"}},
     "spec: Required value"),
    ("device with an empty spec", {"apiVersion": "hedgerow.dev/v1alpha1",
                                   "kind": "CoreDevice", "metadata": {"name": "no-ns"},
                                   "spec": {"csr": "x"}},
     "spec.namespace: Required value"),
]


@pytest.mark.parametrize(("case", "doc", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_invalid_objects_are_refused_naming_the_field(
    apiserver: ApiServer, case: str, doc: dict[str, object], message: str,
) -> None:
    result = apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert message in result.stderr, result.stderr


def test_a_component_spec_is_immutable(apiserver: ApiServer, tmp_path: pathlib.Path) -> None:
    apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump(_component(name="c-fixed")))
    changed = _component(version="2.0.1", name="c-fixed")
    result = apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
    shown = apiserver.kubectl("get", "component", "c-fixed", "-o",
                    "jsonpath={.spec.version}").stdout
    assert shown == "2.0.0"
    # Labels (metadata) may still change: only the recipe is frozen.
    apiserver.kubectl("label", "component", "c-fixed", "tier=edge")
