"""Greengrass recipes → Hedgerow Components (core/greengrass.py), over real-shaped recipes:
the shapes of AWS's published examples and of recipes found in public repositories."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from typing import Any

import pytest
import yaml

from hedgerow.core import greengrass, manifest

DIGEST = base64.b64encode(hashlib.sha256(b"print('hi')\n").digest()).decode()
HEX = hashlib.sha256(b"print('hi')\n").hexdigest()
MIRROR = greengrass.ArtifactMap("https://mirror.example.com/gg")

# The shape of the AWS developer guide's "Create your first component" recipe.
HELLO = textwrap.dedent(f"""\
    ---
    RecipeFormatVersion: '2020-01-25'
    ComponentName: com.example.HelloWorld
    ComponentVersion: '1.0.0'
    ComponentDescription: My first AWS IoT Greengrass component.
    ComponentPublisher: Amazon
    ComponentConfiguration:
      DefaultConfiguration:
        Message: world
        accessControl:
          aws.greengrass.ipc.pubsub:
            com.example.HelloWorld:pubsub:1:
              policyDescription: Allows access to publish to all topics.
              operations:
                - aws.greengrass#PublishToTopic
              resources:
                - "*"
    Manifests:
      - Platform:
          os: linux
        Lifecycle:
          Run: |
            python3 -u {{artifacts:path}}/hello_world.py "{{configuration:/Message}}"
        Artifacts:
          - URI: s3://DOC-EXAMPLE-BUCKET/artifacts/com.example.HelloWorld/1.0.0/hello_world.py
            Digest: {DIGEST}
            Algorithm: SHA-256
    """)


def recipe(**changes: Any) -> dict[str, Any]:
    """The hello-world recipe as data, with top-level fields replaced (None: removed)."""
    data: dict[str, Any] = yaml.safe_load(HELLO)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def convert(data: Any, artifacts: greengrass.ArtifactMap = MIRROR) -> greengrass.Imported:
    return greengrass.resolve_import(data, "r.yaml", artifacts)


def spec(data: Any) -> dict[str, Any]:
    return convert(data).component.spec.to_dict()


def test_the_hello_world_recipe_becomes_a_component_with_nothing_lost() -> None:
    imported = greengrass.resolve_text(HELLO, "hello.yaml", MIRROR)
    assert imported.losses == ()
    comp = imported.component
    assert comp.metadata.name == "com.example.helloworld-1.0.0"
    assert comp.metadata.annotations == {greengrass.SOURCE_ANNOTATION: "greengrass-recipe"}
    s = comp.spec
    assert (s.name, s.version, s.publisher) == ("com.example.HelloWorld", "1.0.0", "Amazon")
    # accessControl is configuration like any other: carried over verbatim.
    assert s.default_configuration["accessControl"]["aws.greengrass.ipc.pubsub"][
        "com.example.HelloWorld:pubsub:1"]["operations"] == ["aws.greengrass#PublishToTopic"]
    [m] = s.manifests
    assert (m.platform.os, m.platform.arch) == ("linux", "*")
    assert m.lifecycle is not None and m.lifecycle.run is not None
    # Recipe variables stay as they are; the device fills them in.
    assert m.lifecycle.run.script == (
        'python3 -u {artifacts:path}/hello_world.py "{configuration:/Message}"\n')
    [art] = m.artifacts
    assert art.uri == ("https://mirror.example.com/gg/DOC-EXAMPLE-BUCKET/artifacts/"
                       "com.example.HelloWorld/1.0.0/hello_world.py")
    assert art.sha256 == HEX  # Greengrass's base64 digest, as the hex the device checks


def test_json_recipes_read_the_same_as_yaml() -> None:
    text = json.dumps(yaml.safe_load(HELLO), indent=2)
    assert greengrass.resolve_text(text, "hello.json", MIRROR) == greengrass.resolve_text(
        HELLO, "hello.yaml", MIRROR)


def test_the_written_manifest_is_a_valid_hedgerow_document_naming_its_losses() -> None:
    data = recipe(Manifests=[{"Name": "Linux", "Platform": {"os": "linux"},
                              "Lifecycle": {"Run": "echo hi"}}])
    imported = convert(data)
    text = greengrass.render_manifest(imported, "hello.yaml")
    assert "# not carried over: Manifests[0].Name:" in text
    [doc] = manifest.parse_documents(text, "out.yaml")
    assert doc == imported.component
    assert "Manifests[0].Name" in doc.metadata.annotations[greengrass.LOSSES_ANNOTATION]


FULL_LIFECYCLE = {
    "Setenv": {"PORT": 8080, "MODE": "prod"},
    "Install": {"Script": "pip3 install --user -r {artifacts:path}/requirements.txt",
                "Timeout": 300, "RequiresPrivilege": False},
    "Run": {"Script": "python3 {artifacts:decompressedPath}/app/main.py",
            "Setenv": {"LOG": "{configuration:/log}"}, "SkipIf": "exists /etc/no-app",
            "RequiresPrivilege": "true"},
    "Shutdown": {"Script": "kill $(cat {work:path}/pid)", "Timeout": 15},
    "Recover": "echo recovering on {iot:thingName} under {kernel:rootPath}",
}
FULL_EXPECTED = {
    "setenv": {"PORT": "8080", "MODE": "prod"},
    "install": {"script": "pip3 install --user -r {artifacts:path}/requirements.txt",
                "timeoutSeconds": 300},
    "run": {"script": "python3 {artifacts:decompressedPath}/app/main.py",
            "setenv": {"LOG": "{configuration:/log}"}, "skipIf": "exists /etc/no-app",
            "requiresPrivilege": True},
    "shutdown": {"script": "kill $(cat {work:path}/pid)", "timeoutSeconds": 15},
    "recover": {"script": "echo recovering on {iot:thingName} under {kernel:rootPath}"},
}


def _lifecycle(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    life = spec(data)["manifests"][index]["lifecycle"]
    # Defaults the model fills in are not what the recipe said: compare what it said.
    out = {"setenv": life["setenv"]} if life["setenv"] else {}
    for name, step in life.items():
        if name != "setenv":
            out[name] = {k: v for k, v in step.items()
                         if (k, v) not in (("setenv", {}), ("requiresPrivilege", False))}
    return out


@pytest.mark.parametrize(("lifecycle", "expected"), [
    pytest.param(FULL_LIFECYCLE, FULL_EXPECTED, id="every-step-and-field"),
    # Greengrass reads keys case-insensitively; recipes in the wild write `run:`.
    pytest.param({"run": {"script": "a", "timeout": 5}, "setenv": {"X": "1"}},
                 {"setenv": {"X": "1"}, "run": {"script": "a", "timeoutSeconds": 5}},
                 id="lowercase-keys"),
    pytest.param({"Startup": "daemon --fork"}, {"startup": {"script": "daemon --fork"}},
                 id="startup-service"),
    pytest.param({}, {}, id="no-steps-artifacts-only"),
])
def test_lifecycles_carry_every_step_and_field(lifecycle: dict[str, Any],
                                               expected: dict[str, Any]) -> None:
    data = recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": lifecycle}])
    assert convert(data).losses == ()
    assert _lifecycle(data) == expected


def test_a_global_lifecycle_with_selections_picks_each_manifests_part() -> None:
    data = recipe(
        Lifecycle={"linux": {"Run": "python3 app.py"}, "windows": {"Run": "py -3 app.py"},
                   "all": {"Run": "sh app.sh"}},
        Manifests=[{"Platform": {"os": "linux"}, "Selections": ["linux"]},
                   {"Platform": {"os": "darwin"}}])
    assert convert(data).losses == ()
    assert _lifecycle(data, 0) == {"run": {"script": "python3 app.py"}}
    assert _lifecycle(data, 1) == {"run": {"script": "sh app.sh"}}  # default: `all`


def test_selection_keys_inside_a_step_and_a_global_lifecycle_without_manifests() -> None:
    data = recipe(Lifecycle={"Run": {"Script": {"linux": "./run.sh", "windows": "run.cmd"}},
                             "Install": {"windows": "setup.exe"}},
                  Manifests=[{"Platform": {"os": "linux"}, "Selections": ["linux"]}])
    assert _lifecycle(data) == {"run": {"script": "./run.sh"}}
    # The oldest recipes: no Manifests at all, one lifecycle for every platform.
    old = recipe(Lifecycle={"Run": "echo old"}, Manifests=None)
    [m] = spec(old)["manifests"]
    assert m["platform"] == {"os": "*", "arch": "*"}
    assert m["lifecycle"]["run"]["script"] == "echo old"


@pytest.mark.parametrize(("platform", "expected"), [
    ({"os": "linux", "architecture": "amd64"}, [("linux", "amd64")]),
    # Greengrass says aarch64 where the device (and Hedgerow) says arm64.
    ({"os": "linux", "architecture": "aarch64"}, [("linux", "arm64")]),
    ({"os": "*", "architecture": "*"}, [("*", "*")]),
    ({"os": "all"}, [("*", "*")]),
    ({}, [("*", "*")]),
    ({"os": "/linux|darwin/", "architecture": "/amd64|aarch64/"},
     [("darwin", "amd64"), ("darwin", "arm64"), ("linux", "amd64"), ("linux", "arm64")]),
    ({"os": "/.*/"}, [("*", "*")]),
    ({"os": "linux", "runtime": "aws_nucleus_classic"}, [("linux", "*")]),
    ({"os": "linux", "runtime": "*"}, [("linux", "*")]),
])
def test_platforms(platform: dict[str, str], expected: list[tuple[str, str]]) -> None:
    data = recipe(Manifests=[{"Platform": platform, "Lifecycle": {"Run": "x"}}])
    assert convert(data).losses == ()
    assert [(m["platform"]["os"], m["platform"]["arch"])
            for m in spec(data)["manifests"]] == expected


@pytest.mark.parametrize(("data", "path", "says"), [
    (recipe(Manifests=[{"Name": "Linux", "Platform": {"os": "linux"},
                        "Lifecycle": {"Run": "x"}}]), "Manifests[0].Name", "label"),
    (recipe(Manifests=[{"Platform": {"os": "linux"},
                        "Lifecycle": {"Run": "x", "Bootstrap": {"Script": "reboot"}}}]),
     "Manifests[0].Lifecycle.Bootstrap", "no bootstrap step"),
    (recipe(Manifests=[{"Platform": {"os": "linux"},
                        "Lifecycle": {"Run": "x", "BootstrapOnRollback": {"Script": "b"}}}]),
     "Manifests[0].Lifecycle.BootstrapOnRollback", "no bootstrap step"),
    (recipe(Lifecycle={"all": {"Run": "x", "Bootstrap": "exit 100"}},
            Manifests=[{"Platform": {"os": "linux"}, "Selections": ["linux"]}]),
     "Lifecycle.Bootstrap", "no bootstrap step"),
    (recipe(Manifests=[{"Platform": {"os": "linux", "architecture": "arm",
                                     "architecture.detail": "armv7"},
                        "Lifecycle": {"Run": "x"}}]),
     "Manifests[0].Platform.architecture.detail", "every variant"),
    (recipe(Manifests=[{"Platform": {"os": "linux", "gpu": "nvidia"},
                        "Lifecycle": {"Run": "x"}}]),
     "Manifests[0].Platform.gpu", "custom platform attributes"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"}},
                       {"Platform": {"os": "linux", "runtime": "aws_nucleus_lite"},
                        "Lifecycle": {"Run": "y"}}]),
     "Manifests[1].Platform.runtime", "never matches"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"}},
                       {"Platform": {"os": "/qnx|vxworks/"}, "Lifecycle": {"Run": "y"}}]),
     "Manifests[1].Platform", "matches no os"),
    (recipe(ComponentDependencies={"aws.greengrass.Nucleus": {
        "VersionRequirement": ">=2.0.0", "DependencyType": "SOFT"}}),
     "ComponentDependencies.aws.greengrass.Nucleus", "stands in for the Greengrass nucleus"),
    (recipe(ComponentSource="arn:aws:lambda:us-east-1:1:function:f:1"),
     "ComponentSource", "Lambda"),
    (recipe(ComponentConfiguration={"DefaultConfiguration": {}, "Extra": 1}),
     "ComponentConfiguration.Extra", "not a Greengrass recipe field"),
    (recipe(Manifests=[{"Platform": {"os": "linux"},
                        "Lifecycle": {"Run": {"Script": "x", "Retries": 3}}}]),
     "Manifests[0].Lifecycle.Run.Retries", "not a Greengrass recipe field"),
    (recipe(Manifests=[{"Platform": {"os": "linux"},
                        "Lifecycle": {"Run": "x", "Restart": "y"}}]),
     "Manifests[0].Lifecycle.Restart", "not a lifecycle step"),
    (recipe(Lifecycle={"Run": "global"},
            Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "own"}}]),
     "Lifecycle", "global one is never used"),
    (recipe(SomethingNew={"a": 1}), "SomethingNew", "not a Greengrass recipe field"),
])
def test_every_field_not_carried_over_is_named_with_its_path(
        data: dict[str, Any], path: str, says: str) -> None:
    imported = convert(data)
    found = [loss for loss in imported.losses if loss.path == path]
    assert found, imported.losses
    assert says in found[0].reason
    assert f"{path}: " in imported.component.metadata.annotations[
        greengrass.LOSSES_ANNOTATION]


@pytest.mark.parametrize(("data", "artifacts", "says"), [
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {
        "Run": "docker run --rm {configuration:/image}"},
        "Artifacts": [{"URI": "docker:public.ecr.aws/nginx/nginx:latest"}]}]), MIRROR,
     "Manifests[0].Artifacts[0].URI: docker:public.ecr.aws/nginx/nginx:latest: docker "
     "artifacts are not imported"),
    (recipe(), greengrass.ArtifactMap(),
     "Manifests[0].Artifacts[0].URI: s3://DOC-EXAMPLE-BUCKET/artifacts/com.example."
     "HelloWorld/1.0.0/hello_world.py: the device cannot read S3; give --artifact-base"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
                        "Artifacts": [{"URI": "greengrass:abc.zip"}]}]), MIRROR,
     "not a URI the device can fetch"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
                        "Artifacts": [{"URI": "s3://b/k.py", "Digest": DIGEST,
                                       "Algorithm": "SHA-1"}]}]), MIRROR,
     "Manifests[0].Artifacts[0].Algorithm: 'SHA-1': the device verifies SHA-256"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
                        "Artifacts": [{"URI": "s3://b/k.py", "Digest": "not-base64!"}]}]),
     MIRROR, "Manifests[0].Artifacts[0].Digest: not a base64 SHA-256 digest"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
                        "Artifacts": [{"URI": "s3://b/k.py"}]}]), MIRROR,
     "Manifests[0].Artifacts[0]: an http(s) artifact needs a sha256 digest"),
    (recipe(ComponentType="aws.greengrass.lambda"), MIRROR,
     "ComponentType: aws.greengrass.lambda: only generic components"),
    (recipe(RecipeFormatVersion="2019-01-01"), MIRROR, "RecipeFormatVersion: '2019-01-01'"),
    (recipe(ComponentVersion="one"), MIRROR, "spec.version"),
    (recipe(ComponentName=None), MIRROR, "ComponentName and ComponentVersion are required"),
    (recipe(Manifests=[{"Platform": {"os": "linux"},
                        "Lifecycle": {"Run": "a", "Startup": "b"}}]), MIRROR,
     "either startup or run, not both"),
    (recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": {"Timeout": 3}}}]),
     MIRROR, "Manifests[0].Lifecycle.Run.Script: a step needs a script"),
    (recipe(Manifests=[{"Platform": {"os": "linux", "runtime": "aws_nucleus_lite"},
                        "Lifecycle": {"Run": "x"}}]), MIRROR,
     "no manifest matches a platform"),
    (recipe(ComponentDependencies={"com.example.Lib": {"VersionRequirement": ">=one"}}),
     MIRROR, "versionRequirement"),
    (recipe(componentname="dup"), MIRROR, "componentname: given twice"),
])
def test_what_cannot_be_converted_is_refused_naming_file_and_field(
        data: dict[str, Any], artifacts: greengrass.ArtifactMap, says: str) -> None:
    with pytest.raises(greengrass.RecipeError) as caught:
        convert(data, artifacts)
    assert str(caught.value).startswith("r.yaml: ")
    assert says in str(caught.value)


def test_dependencies_keep_version_ranges_and_types() -> None:
    data = recipe(ComponentDependencies={
        "com.example.Lib": {"VersionRequirement": ">=1.0.0 <2.0.0",
                            "DependencyType": "HARD"},
        "aws.greengrass.TokenExchangeService": {"VersionRequirement": "^2.0.0",
                                                "DependencyType": "SOFT"},
        "com.example.Any": {}})
    assert spec(data)["dependencies"] == [
        {"name": "com.example.Lib", "versionRequirement": ">=1.0.0 <2.0.0", "type": "HARD"},
        {"name": "aws.greengrass.TokenExchangeService", "versionRequirement": "^2.0.0",
         "type": "SOFT"},
        {"name": "com.example.Any", "versionRequirement": "*", "type": "HARD"}]


def test_artifact_fields_and_the_local_deployment_layout() -> None:
    data = recipe(Manifests=[{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "x"},
                              "Artifacts": [
        {"Uri": "s3://bucket/app/bundle.zip", "Unarchive": "ZIP",
         "Permission": {"Read": "ALL", "Execute": "OWNER"}},
        {"Uri": "https://example.com/model.bin", "Digest": DIGEST},
        {"Uri": "file:///opt/tools/t.sh"}]}])
    local = greengrass.ArtifactMap("file:///var/lib/hedgerow/local-artifacts",
                                   per_component=True)
    arts = convert(data, local).component.spec.manifests[0].artifacts
    # greengrass-cli's --artifactDir layout: NAME/VERSION/FILE.
    assert arts[0].uri == ("file:///var/lib/hedgerow/local-artifacts/"
                           "com.example.HelloWorld/1.0.0/bundle.zip")
    assert (arts[0].unarchive.value, arts[0].permission.read.value,
            arts[0].permission.execute.value) == ("ZIP", "ALL", "OWNER")
    assert (arts[1].uri, arts[1].sha256) == ("https://example.com/model.bin", HEX)
    assert (arts[2].uri, arts[2].sha256) == ("file:///opt/tools/t.sh", None)


@pytest.mark.parametrize(("name", "version", "expected"), [
    ("com.example.HelloWorld", "1.0.0", "com.example.helloworld-1.0.0"),
    ("My_Component", "2.1.0-beta.1+build.5", "my-component-2.1.0-beta.1-build.5"),
    ("a..b", "1.0.0", "a.b-1.0.0"),
])
def test_object_names_are_kubernetes_names(name: str, version: str, expected: str) -> None:
    assert greengrass.render_object_name(name, version) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("a: [1,", "r.yaml:1:"),
    ('{"a": ', "r.yaml:1:7: not valid JSON"),
    ("RecipeFormatVersion: x\n---\nRecipeFormatVersion: y\n", "one recipe (found 2"),
])
def test_unreadable_files_are_refused_with_where(text: str, says: str) -> None:
    with pytest.raises(greengrass.RecipeError, match=None) as caught:
        greengrass.parse_text(text, "r.yaml")
    assert says in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    (HELLO, True),
    (json.dumps(yaml.safe_load(HELLO)), True),
    ("recipeFormatVersion: '2020-01-25'\n", True),
    ("apiVersion: hedgerow.dev/v1alpha1\nkind: Component\n", False),
    ("# RecipeFormatVersion: in a comment\nkind: Component\n", False),
])
def test_recipes_are_told_from_manifests(text: str, expected: bool) -> None:
    assert greengrass.is_recipe_text(text) is expected
