"""Resolution tables: groups, selectors, priorities, conflicts, dependencies, platforms,
configuration, determinism, and that the fleet fast path equals the canonical documents."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from hedgerow.core import (
    component,
    configuration,
    deployment,
    documents,
    manifest,
    privilege,
    resolve,
    thinggroup,
)

ROOT = pathlib.Path(__file__).parents[2]
LINUX_AMD64 = documents.PlatformInfo(os="linux", arch="amd64")
LINUX_ARM64 = documents.PlatformInfo(os="linux", arch="aarch64")


def comp(name: str, version: str = "1.0.0", *, deps: dict[str, str] | None = None,
         defaults: dict[str, Any] | None = None, platforms: tuple[str, ...] = ("linux/*",),
         namespace: str | None = "default") -> component.Component:
    manifests = []
    for p in platforms:
        os_, arch = p.split("/")
        manifests.append({"platform": {"os": os_, "arch": arch},
                          "lifecycle": {"run": {"script": f"echo {name} {p}"}}})
    return component.Component.model_validate({
        "metadata": {"name": f"{name.lower()}-{version}", "namespace": namespace},
        "spec": {"name": name, "version": version, "defaultConfiguration": defaults or {},
                 "dependencies": [{"name": k, "versionRequirement": v}
                                  for k, v in (deps or {}).items()],
                 "manifests": manifests},
    })


def dep(name: str, components: dict[str, Any], *, group: str | None = None,
        thing: str | None = None, priority: int = 0, generation: int = 1,
        namespace: str | None = "default") -> deployment.Deployment:
    items = []
    for n, v in components.items():
        item = {"name": n, "version": v} if isinstance(v, str) else {"name": n, **v}
        items.append(item)
    target = {"thingGroup": group} if group else {"thing": thing}
    return deployment.Deployment.model_validate({
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": {"target": target, "components": items, "priority": priority},
    })


def grp(name: str, *, things: list[str] | None = None, match: dict[str, str] | None = None,
        namespace: str | None = "default") -> thinggroup.ThingGroup:
    spec: dict[str, Any] = {}
    if things is not None:
        spec["things"] = things
    if match is not None:
        spec["selector"] = {"matchLabels": match}
    return thinggroup.ThingGroup.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec})


def versions(r: resolve.Resolution) -> dict[str, str]:
    assert r.desired is not None, r.problems
    return {c.name: c.version for c in r.desired.components}


CATALOG = [
    comp("A", "1.0.0"), comp("A", "1.1.0"), comp("A", "2.0.0"),
    comp("B", "1.0.0", deps={"A": "^1.0.0"}),
    comp("C", "1.0.0", deps={"B": "*"}),
    comp("D", "1.0.0", deps={"A": ">=2.0.0"}),
]
GROUPS = [grp("site-1", match={"site": "1"}), grp("vip", things=["gw-9"])]


@pytest.mark.parametrize(("case", "thing", "labels", "deployments", "expected"), [
    ("selector member", "gw-1", {"site": "1"}, [dep("d", {"A": "^1.0.0"}, group="site-1")],
     {"A": "1.1.0"}),
    ("not a member", "gw-1", {"site": "2"}, [dep("d", {"A": "*"}, group="site-1")], {}),
    ("static member", "gw-9", {}, [dep("d", {"A": "1.0.0"}, group="vip")], {"A": "1.0.0"}),
    ("direct thing target", "gw-7", {}, [dep("d", {"A": "*"}, thing="gw-7")], {"A": "2.0.0"}),
    ("group in another namespace does not count", "gw-1", {"site": "1"},
     [dep("d", {"A": "*"}, group="site-1", namespace="other")], {}),
    ("union of deployments", "gw-9", {"site": "1"},
     [dep("d1", {"A": "1.0.0"}, group="vip"), dep("d2", {"C": "*"}, group="site-1")],
     {"A": "1.0.0", "B": "1.0.0", "C": "1.0.0"}),
    ("higher priority wins", "gw-1", {"site": "1"},
     [dep("low", {"A": "^1.0.0"}, group="site-1"),
      dep("high", {"A": "2.0.0"}, thing="gw-1", priority=10)], {"A": "2.0.0"}),
    ("equal priority intersects", "gw-1", {"site": "1"},
     [dep("x", {"A": ">=1.0.0"}, group="site-1"), dep("y", {"A": "<2.0.0"}, thing="gw-1")],
     {"A": "1.1.0"}),
    ("dependency narrows the choice", "gw-1", {},
     [dep("d", {"A": "*", "B": "1.0.0"}, thing="gw-1")], {"A": "1.1.0", "B": "1.0.0"}),
    ("transitive dependencies are closed", "gw-1", {},
     [dep("d", {"C": "1.0.0"}, thing="gw-1")], {"A": "1.1.0", "B": "1.0.0", "C": "1.0.0"}),
])
def test_resolution_table(case: str, thing: str, labels: dict[str, str],
                          deployments: list[deployment.Deployment],
                          expected: dict[str, str]) -> None:
    r = resolve.resolve_device(thing, labels, LINUX_AMD64, GROUPS, deployments, CATALOG)
    assert r.problems == ()
    assert versions(r) == expected, case


@pytest.mark.parametrize(("case", "deployments", "catalog", "reasons", "in_message"), [
    ("conflict at equal priority",
     [dep("x", {"A": "^1.0.0"}, thing="gw-1"), dep("y", {"A": "^2.0.0"}, thing="gw-1")],
     CATALOG, {("default/x", "VersionConflict"), ("default/y", "VersionConflict")},
     ["default/x", "default/y", "'^1.0.0'", "'^2.0.0'"]),
    ("unknown component", [dep("x", {"Nope": "1.0.0"}, thing="gw-1")], CATALOG,
     {("default/x", "UnknownComponent")}, ["Nope", "no Component"]),
    ("unknown version", [dep("x", {"A": "3.0.0"}, thing="gw-1")], CATALOG,
     {("default/x", "UnknownComponent")}, ["available versions: 2.0.0, 1.1.0, 1.0.0"]),
    ("unsatisfiable dependency", [dep("x", {"B": "*", "D": "*"}, thing="gw-1")], CATALOG,
     {("default/x", "UnsatisfiableDependency")}, ["^1.0.0 (B@1.0.0)", ">=2.0.0 (D@1.0.0)"]),
    ("dependency on a missing component",
     [dep("x", {"E": "*"}, thing="gw-1")], [comp("E", deps={"Gone": "*"})],
     {("default/x", "UnsatisfiableDependency")}, ["Gone"]),
    ("cycle", [dep("x", {"P": "*"}, thing="gw-1")],
     [comp("P", deps={"Q": "*"}), comp("Q", deps={"R": "*"}), comp("R", deps={"P": "*"})],
     {("default/x", "DependencyCycle")}, ["P@1.0.0 -> Q@1.0.0 -> R@1.0.0 -> P"]),
    ("no manifest for the platform", [dep("x", {"W": "*"}, thing="gw-1")],
     [comp("W", platforms=("windows/*",))],
     {("default/x", "NoManifestForPlatform")}, ["linux/aarch64", "windows/*"]),
])
def test_problems_keep_the_last_good_state(
    case: str, deployments: list[deployment.Deployment], catalog: list[component.Component],
    reasons: set[tuple[str, str]], in_message: list[str],
) -> None:
    r = resolve.resolve_device("gw-1", {}, LINUX_ARM64, GROUPS, deployments, catalog)
    assert r.desired is None, case
    assert {(p.deployment, p.reason) for p in r.problems} == reasons
    for text in in_message:
        assert any(text in p.message for p in r.problems), (text, r.problems)


def test_a_swapped_out_version_leaves_no_stale_dependency() -> None:
    catalog = [comp("A", "1.0.0"), comp("A", "2.0.0", deps={"Old": "^9.0.0"}),
               comp("B", "1.0.0", deps={"A": "^1.0.0"})]
    # Round one picks A@2.0.0 (needs Old, which does not exist); B then narrows A to 1.x.
    r = resolve.resolve_device("gw-1", {}, None, [],
                               [dep("d", {"A": "*", "B": "*"}, thing="gw-1")], catalog)
    assert versions(r) == {"A": "1.0.0", "B": "1.0.0"}


def test_platform_picks_the_first_matching_manifest_and_defaults_to_linux_amd64() -> None:
    catalog = [comp("M", platforms=("linux/aarch64", "linux/amd64", "linux/*"))]
    d = [dep("d", {"M": "*"}, thing="gw-1")]

    def script(p: documents.PlatformInfo | None) -> str:
        r = resolve.resolve_device("gw-1", {}, p, [], d, catalog)
        assert r.desired is not None
        lifecycle = r.desired.components[0].lifecycle
        assert lifecycle is not None and lifecycle.run is not None
        return lifecycle.run.script

    assert script(LINUX_ARM64) == "echo M linux/aarch64"
    assert script(LINUX_AMD64) == "echo M linux/amd64"
    assert script(None) == "echo M linux/amd64"
    assert script(documents.PlatformInfo(os="linux", arch="armv7l")) == "echo M linux/*"


@pytest.mark.parametrize(("defaults", "updates", "expected"), [
    ({"a": 1, "n": {"x": 1, "y": 2}}, [], {"a": 1, "n": {"x": 1, "y": 2}}),
    ({"a": 1, "n": {"x": 1}}, [{"merge": {"n": {"y": 2}, "b": [1]}}],
     {"a": 1, "n": {"x": 1, "y": 2}, "b": [1]}),
    ({"l": [1, 2]}, [{"merge": {"l": [3]}}], {"l": [3]}),  # arrays replace
    ({"a": 1}, [{"merge": {"a": 5, "z": 1}}, {"reset": ["/a", "/z"]}], {"a": 1}),
    ({"a": 1, "n": {"x": 1}}, [{"merge": {"n": {"x": 9}, "a": 3}}, {"reset": [""]}],
     {"a": 1, "n": {"x": 1}}),
    ({"a/b": 1, "t~": 2}, [{"merge": {"a/b": 3, "t~": 4}}, {"reset": ["/a~1b", "/t~0"]}],
     {"a/b": 1, "t~": 2}),
    ({"a": 1}, [{"reset": ["/a"], "merge": {"a": 2}}], {"a": 2}),  # reset, then merge
])
def test_configuration(defaults: dict[str, Any], updates: list[dict[str, Any]],
                       expected: dict[str, Any]) -> None:
    parsed = [deployment.ConfigurationUpdate.model_validate(u) for u in updates]
    assert configuration.resolve_configuration(defaults, parsed) == expected
    # Defaults are never mutated in place (they belong to a shared Component object).
    assert configuration.resolve_configuration(defaults, []) == defaults


def test_configuration_and_run_with_come_from_the_winning_deployment() -> None:
    catalog = [comp("A", defaults={"m": "default", "k": 1})]
    low = dep("low", {"A": {"version": "*", "configurationUpdate": {"merge": {"m": "low"}}}},
              thing="gw-1")
    high = dep("high", {"A": {"version": "*", "configurationUpdate": {"merge": {"m": "high"}},
                              "runWith": {"posixUser": "nobody"}}}, thing="gw-1", priority=5)
    r = resolve.resolve_device("gw-1", {}, None, [], [low, high], catalog)
    assert r.desired is not None
    a = r.desired.components[0]
    assert a.configuration == {"m": "high", "k": 1}
    assert a.run_with is not None and a.run_with.posix_user == "nobody"
    assert a.deployment == "default/high"
    assert [d.name for d in r.desired.deployments] == ["high", "low"]


def test_dependencies_are_recorded_with_their_chosen_versions() -> None:
    r = resolve.resolve_device("gw-1", {}, None, [], [dep("d", {"C": "*"}, thing="gw-1")],
                               CATALOG)
    assert r.desired is not None
    c = r.desired.component("C")
    b = r.desired.component("B")
    assert c is not None and b is not None
    assert [(d.name, d.version, d.type.value) for d in c.dependencies] == [("B", "1.0.0", "HARD")]
    assert b.deployment == ""  # pulled in, not requested


def test_same_inputs_same_bytes_in_any_order() -> None:
    ds = [dep("d1", {"A": "1.0.0"}, group="vip"), dep("d2", {"C": "*"}, group="site-1")]
    one = resolve.resolve_device("gw-9", {"site": "1"}, None, GROUPS, ds, CATALOG)
    two = resolve.resolve_device("gw-9", {"site": "1"}, None, list(reversed(GROUPS)),
                                 list(reversed(ds)), list(reversed(CATALOG)))
    assert one.desired is not None and two.desired is not None
    assert documents.render_bytes(one.desired) == documents.render_bytes(two.desired)


def test_fleet_fast_path_equals_the_canonical_documents() -> None:
    texts = [(ROOT / "examples" / f).read_text() for f in
             ("hello-world.yaml", "telemetry.yaml", "web-status.yaml", "thinggroup.yaml",
              "deployment.yaml", "coredevices.yaml")]
    objs = [o for t in texts for o in manifest.parse_documents(t)]
    comps = [o for o in objs if isinstance(o, component.Component)]
    groups = [o for o in objs if isinstance(o, thinggroup.ThingGroup)]
    deps = [o for o in objs if isinstance(o, deployment.Deployment)]
    fleet = resolve.Fleet(groups, deps, comps)
    seen = {}
    for device in (o for o in objs if o.kind == "CoreDevice"):
        result = fleet.resolve(device.metadata.name, device.metadata.labels, None)
        desired = result.render()
        assert desired is not None
        assert result.revision == desired.revision
        assert result.payload() == documents.render_bytes(desired)
        seen[device.metadata.name] = sorted(c.name for c in desired.components)
    assert seen == {
        "gateway-1": ["com.example.HelloWorld", "com.example.Telemetry"],
        "gateway-2": ["com.example.HelloWorld", "com.example.Telemetry"],
        "gateway-3": ["com.example.WebStatus"],
    }
    hello = fleet.resolve("gateway-1", {"site": "factory-1"}, None).render()
    assert hello is not None
    assert hello.components[0].configuration == {"message": "Hello from factory 1",
                                                 "intervalSeconds": 5}


def test_fleet_shares_combinations_and_substitutes_generations() -> None:
    d_new = dep("d", {"A": "2.0.0"}, group="site-1", generation=2)
    d_old = dep("d", {"A": "1.0.0"}, group="site-1", generation=1)
    fleet = resolve.Fleet(GROUPS, [d_new], CATALOG)
    one = fleet.resolve("gw-1", {"site": "1", "x": "y"}, None)
    two = fleet.resolve("gw-2", {"site": "1"}, None)
    assert one.combination is two.combination
    assert one.revision != two.revision  # the thing is part of the document
    held = fleet.resolve("gw-3", {"site": "1"}, None, substitute=lambda d: d_old)
    gone = fleet.resolve("gw-4", {"site": "1"}, None, substitute=lambda d: None)
    assert [c.version for c in held.combination.components] == ["1.0.0"]
    assert gone.combination.components == ()
    assert held.deployments == ("default/d",)


def test_empty_targets() -> None:
    ds = [dep("nobody", {"A": "*"}, group="site-1"), dep("ghost", {"A": "*"}, group="nope"),
          dep("stranger", {"A": "*"}, thing="gw-404"), dep("ok", {"A": "*"}, group="vip")]
    problems = resolve.Fleet(GROUPS, ds, CATALOG).empty_targets(
        [("gw-9", {"site": "2"}, "default")])
    assert {(p.deployment, p.reason) for p in problems} == {
        ("default/nobody", "EmptyTarget"), ("default/ghost", "EmptyTarget"),
        ("default/stranger", "EmptyTarget")}
    # A thing of another namespace is no target, and the words do not tell it exists.
    foreign = resolve.Fleet(GROUPS, [dep("d", {"A": "*"}, thing="gw-1", namespace="zzz")],
                            CATALOG).empty_targets([("gw-1", {}, "default")])
    assert [p.message for p in foreign] == [
        "thing 'gw-1' is not a registered CoreDevice of namespace 'zzz'"]


# --- tenancy: a device of namespace N sees only N's groups, deployments, components -----

TENANTS = [
    grp("site-1", match={"site": "1"}), grp("vip", things=["gw-9"]),
    grp("everything", match={}, namespace="zzz"), grp("vip", things=["gw-9"], namespace="zzz"),
]
TENANT_CATALOG = [comp("A", "1.0.0"), comp("A", "1.0.0", namespace="zzz"),
                  comp("A", "9.0.0", namespace="zzz"), comp("Z", "1.0.0", namespace="zzz")]


@pytest.mark.parametrize(("case", "thing", "labels", "namespace", "deployments", "expected"), [
    ("selector {} of another namespace selects nothing", "gw-1", {"site": "1"}, "default",
     [dep("d", {"Z": "*"}, group="everything", namespace="zzz")], {}),
    ("static member of another namespace's group is no member", "gw-9", {}, "default",
     [dep("d", {"Z": "*"}, group="vip", namespace="zzz")], {}),
    ("target.thing of another namespace", "gw-1", {}, "default",
     [dep("d", {"Z": "*"}, thing="gw-1", namespace="zzz")], {}),
    ("no cross-namespace layering: a higher priority elsewhere does not win", "gw-1",
     {"site": "1"}, "default",
     [dep("mine", {"A": "*"}, group="site-1"),
      dep("theirs", {"A": "9.0.0"}, group="everything", namespace="zzz", priority=1000)],
     {"A": "1.0.0"}),
    ("own namespace still works", "gw-1", {"site": "1"}, "zzz",
     [dep("d", {"A": "*"}, group="everything", namespace="zzz")], {"A": "9.0.0"}),
    ("no namespace given (a device's local deployments): all of them", "gw-1", {}, None,
     [dep("d", {"A": "1.0.0"}, thing="gw-1", namespace="zzz")], {"A": "1.0.0"}),
])
def test_tenancy_table(case: str, thing: str, labels: dict[str, str], namespace: str | None,
                       deployments: list[deployment.Deployment],
                       expected: dict[str, str]) -> None:
    fleet = resolve.Fleet(TENANTS, deployments, TENANT_CATALOG)
    result = fleet.resolve(thing, labels, LINUX_AMD64, namespace=namespace)
    assert result.problems == (), case
    assert {c.name: c.version for c in result.combination.components} == expected, case


def test_catalog_shadowing_is_impossible() -> None:
    # zzz has its own A@1.0.0 that runs something else; default's device gets default's.
    evil = component.Component.model_validate({
        "metadata": {"name": "a-evil", "namespace": "zzz"},
        "spec": {"name": "A", "version": "1.0.0",
                 "manifests": [{"lifecycle": {"run": {"script": "id"}}}]}})
    fleet = resolve.Fleet(TENANTS, [dep("mine", {"A": "1.0.0"}, group="site-1"),
                                    dep("theirs", {"A": "1.0.0"}, group="everything",
                                        namespace="zzz")], [evil, comp("A", "1.0.0")])
    result = fleet.resolve("gw-1", {"site": "1"}, None, namespace="default")
    desired = result.render()
    assert desired is not None and [d.name for d in desired.deployments] == ["mine"]
    lifecycle = desired.components[0].lifecycle
    assert lifecycle is not None and lifecycle.run is not None
    assert lifecycle.run.script == "echo A linux/*"


# --- privilege: checked per namespace level when resolving -----------------------------

def _priv_comp(name: str, namespace: str = "default", **manifest: Any) -> component.Component:
    return component.Component.model_validate({
        "metadata": {"name": name.lower(), "namespace": namespace},
        "spec": {"name": name, "version": "1.0.0", "manifests": [manifest]}})


PRIV_CATALOG = [
    comp("A"),
    _priv_comp("Root", lifecycle={"run": {"script": "x", "requiresPrivilege": True}}),
    _priv_comp("Box", container={"image": "busybox:latest", "requiresPrivilege": True}),
    _priv_comp("Port", container={"image": "busybox:latest",
                                  "ports": [{"containerPort": 80, "hostIp": "0.0.0.0"}]}),
    _priv_comp("Dep", lifecycle={"run": {"script": "x"}}),
]


@pytest.mark.parametrize(("case", "deployments", "level", "expected"), [
    ("plain component, restricted", [dep("d", {"A": "*"}, thing="gw-1")], "restricted", []),
    ("posixUser root, restricted", [dep("d", {"A": {"version": "*",
                                                    "runWith": {"posixUser": "root"}}},
                                        thing="gw-1")], "restricted",
     ["A: runWith.posixUser: runs as 'root' (root); needs privilege level 'privileged', "
      "granted 'restricted' (label hedgerow.dev/enforce)"]),
    ("gid 0, baseline", [dep("d", {"A": {"version": "*", "runWith": {"posixUser": "app:0"}}},
                             thing="gw-1")], "baseline",
     ["A: runWith.posixUser: runs as 'app:0' (root); needs privilege level 'privileged', "
      "granted 'baseline' (label hedgerow.dev/enforce)"]),
    ("requiresPrivilege step, restricted", [dep("d", {"Root": "*"}, thing="gw-1")],
     "restricted",
     ["Root: lifecycle.run.requiresPrivilege: the run step runs as root; needs privilege "
      "level 'privileged', granted 'restricted' (label hedgerow.dev/enforce)"]),
    ("privileged container, baseline", [dep("d", {"Box": "*"}, thing="gw-1")], "baseline",
     ["Box: container.requiresPrivilege: runs a privileged container; needs privilege level "
      "'privileged', granted 'baseline' (label hedgerow.dev/enforce)"]),
    ("port on every address, restricted", [dep("d", {"Port": "*"}, thing="gw-1")],
     "restricted",
     ["Port: container.ports[0].hostIp: publishes port 80 on '0.0.0.0', beyond the device's "
      "loopback; needs privilege level 'baseline', granted 'restricted' (label "
      "hedgerow.dev/enforce)"]),
    ("port on every address, baseline", [dep("d", {"Port": "*"}, thing="gw-1")], "baseline",
     []),
    ("everything, privileged", [dep("d", {"Root": "*", "Box": "*", "A": {
        "version": "*", "runWith": {"posixUser": "root"}}}, thing="gw-1")], "privileged", []),
])
def test_privilege_table(case: str, deployments: list[deployment.Deployment], level: str,
                         expected: list[str]) -> None:
    levels = {"default": privilege.Level(level)}
    result = resolve.Fleet([], deployments, PRIV_CATALOG, levels).resolve(
        "gw-1", {}, None, namespace="default")
    assert [p.message for p in result.problems] == expected, case
    assert all(p.reason == "PrivilegeViolation" and p.deployment == "default/d"
               for p in result.problems), case


def test_privilege_default_is_restricted_and_local_resolution_does_not_check() -> None:
    root = [dep("d", {"Root": "*"}, thing="gw-1")]
    # A namespace with no level given: restricted.
    unlabelled = resolve.Fleet([], root, PRIV_CATALOG, {}).resolve(
        "gw-1", {}, None, namespace="default")
    assert [p.reason for p in unlabelled.problems] == ["PrivilegeViolation"]
    # A device's own local deployments: no namespace levels; the agent's ceiling applies.
    local = resolve.resolve_device("gw-1", {}, None, [], root, PRIV_CATALOG)
    assert local.problems == ()


def test_size_for_equals_the_payload_length() -> None:
    fleet = resolve.Fleet(GROUPS, [dep("d", {"C": "*"}, thing="gw-1")], CATALOG)
    combination = fleet.resolve("gw-1", {}, None).combination
    for thing in ("gw-1", 'we"ird', "ünï"):
        assert combination.size_for(thing) == len(combination.payload_for(thing))


def test_is_member_and_targets() -> None:
    groups = resolve.index_groups(GROUPS)
    assert resolve.is_member("gw-1", {"site": "1"}, GROUPS[0])
    assert not resolve.is_member("gw-1", {}, GROUPS[0])
    assert resolve.targets(dep("d", {"A": "*"}, group="vip"), "gw-9", {}, groups)
    assert not resolve.targets(dep("d", {"A": "*"}, group="vip"), "gw-1", {}, groups)
    assert resolve.targets(dep("d", {"A": "*"}, thing="gw-1"), "gw-1", {}, groups)


def test_fast_revision_matches_for_names_needing_escapes() -> None:
    # Thing names are plain by schema; the fast path must still agree on anything else.
    fleet = resolve.Fleet(GROUPS, [dep("d", {"A": "*"}, thing="gw-1")], CATALOG)
    combination = fleet.resolve("gw-1", {}, None).combination
    for thing in ("gw-1", 'we"ird', "new\nline", "ünï"):
        expected = documents.revision_of(thing, list(combination.deployments),
                                         list(combination.components))
        assert combination.revision_for(thing) == expected
