"""Reading manifests: every example is valid, and each kind of mistake is reported with
the file, document, object, field and a reason a person can act on."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from hedgerow.core import component, deployment, manifest

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("*.yaml"))

COMPONENT = """
apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {name: hello}
spec:
  name: com.example.Hello
  version: 1.0.0
  manifests:
    - lifecycle: {run: {script: echo hi}}
"""

DEPLOYMENT = """
apiVersion: hedgerow.dev/v1alpha1
kind: Deployment
metadata: {name: d}
spec:
  target: {thingGroup: g}
  components: [{name: com.example.Hello, version: ^1.0.0}]
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: pathlib.Path) -> None:
    resources = manifest.parse_documents(path.read_text(), str(path))
    assert resources
    for resource in resources:
        # Round trip: what we write back is what we read.
        again = manifest.parse_resource(resource.to_dict())
        assert again == resource


def _edit(text: str, path: str, value: object) -> str:
    doc = yaml.safe_load(text)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return yaml.safe_dump(doc)


_DELETE = object()

# (base document, dotted path to change, new value, field the error names, words in reason)
INVALID = [
    (COMPONENT, "spec.version", "1.0", "spec.version", "semantic version"),
    (COMPONENT, "spec.name", "bad name!", "spec.name", "component name"),
    (COMPONENT, "spec.manifests", [], "spec.manifests", "at least 1"),
    (COMPONENT, "spec.manifests.0.lifecycle.run.timeout", 3,
     "spec.manifests[0].lifecycle.run.timeout", "unknown field"),
    (COMPONENT, "spec.manifests.0.container", {"image": "busybox:1"}, "spec.manifests[0]",
     "exactly one of lifecycle"),
    (COMPONENT, "spec.manifests.0.lifecycle.startup", {"script": "x"},
     "spec.manifests[0].lifecycle", "startup or run"),
    (COMPONENT, "spec.manifests.0.lifecycle.run.skipIf", "maybe",
     "spec.manifests[0].lifecycle.run.skipIf", "should match"),
    (COMPONENT, "spec.manifests.0.artifacts", [{"uri": "https://x/y.zip"}],
     "spec.manifests[0].artifacts[0]", "sha256"),
    (COMPONENT, "spec.dependencies", [{"name": "a", "versionRequirement": ">=1 <<2"}],
     "spec.dependencies[0].versionRequirement", "'<2' is not a version"),
    (COMPONENT, "spec.dependencies", [{"name": "a"}, {"name": "a"}], "spec", "twice"),
    (COMPONENT, "spec.dependencies", [{"name": "a", "type": "MAYBE"}],
     "spec.dependencies[0].type", "'HARD' or 'SOFT'"),
    (COMPONENT, "metadata.name", "Hello", "metadata.name", "lowercase DNS name"),
    (DEPLOYMENT, "spec.target", {"thingGroup": "g", "thing": "t"}, "spec.target", "exactly one"),
    (DEPLOYMENT, "spec.target", {}, "spec.target", "exactly one"),
    (DEPLOYMENT, "spec.policies", {"failureHandling": "UNDO"}, "spec.policies.failureHandling",
     "'ROLLBACK' or 'DO_NOTHING'"),
    (DEPLOYMENT, "spec.components.0.version", "1.x.3", "spec.components[0].version", "wildcard"),
    (DEPLOYMENT, "spec.components.0.runWith", {"systemResourceLimits": {"memory": "lots"}},
     "spec.components[0].runWith.systemResourceLimits.memory", "quantity"),
    (DEPLOYMENT, "spec.components.0.configurationUpdate", {"reset": ["no-slash"]},
     "spec.components[0].configurationUpdate.reset[0]", "JSON pointer"),
    (DEPLOYMENT, "spec.rollout", {"maximumPerMinute": 5, "exponentialRate": {
        "baseRatePerMinute": 1, "incrementFactor": 2,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 3}}}, "spec.rollout", "not both"),
    (DEPLOYMENT, "spec.rollout", {"abortCriteria": [{"failureType": "ALL",
                                                      "thresholdPercentage": 150}]},
     "spec.rollout.abortCriteria[0].thresholdPercentage", "less than or equal to 100"),
    (DEPLOYMENT, "spec.components", [{"name": "a", "version": "1.0.0"}] * 2, "spec", "twice"),
    (DEPLOYMENT, "apiVersion", "hedgerow.dev/v1", "apiVersion", "must be hedgerow.dev/v1alpha1"),
    (DEPLOYMENT, "kind", "Deploymnet", "kind", "unknown kind"),
]


@pytest.mark.parametrize(("base", "path", "value", "field", "reason"), INVALID,
                         ids=[f"{i[1]}={i[2]!r}"[:60] for i in INVALID])
def test_invalid_documents_name_field_and_reason(
    base: str, path: str, value: object, field: str, reason: str,
) -> None:
    with pytest.raises(manifest.InvalidDocumentError) as caught:
        manifest.parse_documents(_edit(base, path, value), "bad.yaml")
    problems = caught.value.problems
    assert any(p.field == field and reason in p.reason for p in problems), problems
    line = str(problems[0])
    assert line.startswith("bad.yaml#1 ") and "/" in line.split(":")[0]


def test_every_problem_in_a_document_is_listed() -> None:
    text = _edit(_edit(COMPONENT, "spec.version", "one"), "spec.publisher", 7)
    with pytest.raises(manifest.InvalidDocumentError) as caught:
        manifest.parse_documents(text, "two.yaml")
    assert {p.field for p in caught.value.problems} == {"spec.version", "spec.publisher"}


def test_yaml_syntax_errors_give_the_line() -> None:
    with pytest.raises(manifest.InvalidDocumentError, match=r"broken.yaml:3:5: not valid YAML"):
        manifest.parse_documents("a: 1\nb: [\nc: {", "broken.yaml")


def test_models_are_frozen_values() -> None:
    [hello] = manifest.parse_documents(COMPONENT)
    assert isinstance(hello, component.Component)
    with pytest.raises(Exception, match="frozen"):
        hello.spec.version = "2.0.0"  # type: ignore[misc]


def test_defaults_follow_greengrass() -> None:
    [dep] = manifest.parse_documents(DEPLOYMENT)
    assert isinstance(dep, deployment.Deployment)
    assert dep.spec.policies.failure_handling is deployment.FailureHandling.ROLLBACK
    assert dep.spec.policies.component_update.timeout_seconds == 60
    assert dep.spec.priority == 0
    [hello] = manifest.parse_documents(COMPONENT)
    assert isinstance(hello, component.Component)
    artifact = component.Artifact(uri="file:///x/model.tar.gz")
    assert artifact.permission.read is component.Access.OWNER
    assert artifact.filename == "model.tar.gz"
