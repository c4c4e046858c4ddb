"""Resolution: ThingGroups, Deployments and Components → one DesiredState per device. Pure.

The same function serves the controller (every CoreDevice in the cluster) and the edge
agent (local deployments, the device as the only target).

Semantics, in the order they are applied:

1. *Targeting.* A Deployment targets a device directly (``target.thing``) or through a
   ThingGroup in the Deployment's own namespace (static ``things`` or label selector).
   *Tenancy:* in a fleet, every device belongs to one namespace (``CoreDevice
   spec.namespace``) and only that namespace's groups and deployments reach it: a
   selector never reaches across, ``target.thing`` naming another namespace's device
   targets nothing (``EmptyTarget``), so there is no cross-namespace layering and every
   component comes from the device's namespace. On a device (local deployments) there
   is no namespace: ``namespace=None`` resolves every deployment given.
2. *Layering.* When several targeting deployments name one component, the highest
   ``priority`` wins. At equal priority every winner's version range must intersect the
   others' (``semver.Range.intersects``); otherwise each side gets a ``VersionConflict``
   problem naming both deployments and ranges. Configuration updates of equal-priority
   winners are applied in (namespace, name) order; the last ``runWith`` given wins.
3. *Versions and dependencies.* Each component gets the highest available version that
   satisfies every range asking for it: the deployments' and its dependents'. Ranges are
   re-collected from scratch until the chosen set stops changing, so a version swapped out
   early leaves no stale dependency behind. There is no backtracking (as in Greengrass): a
   range no version satisfies is ``UnsatisfiableDependency`` (or ``UnknownComponent`` when
   only deployments ask). Components are looked up in the namespace of the deployment
   that asked for them; dependencies in the namespace of their dependent.
4. *Cycles* among the chosen versions are ``DependencyCycle``; the message names the cycle.
5. *Platform.* The first manifest matching the device's reported os/arch is used
   (``NoManifestForPlatform`` if none). A device that has not reported its platform yet is
   resolved as :data:`DEFAULT_PLATFORM` (linux/amd64, what the agent is built and tested
   on); its first status report corrects it and it is re-resolved.
6. *Configuration* = ``defaultConfiguration``, then each ``reset`` pointer restores the
   default at that pointer (or removes the key when the default has none; ``""`` resets
   everything), then ``merge`` is deep-merged (objects merge, everything else replaces).
7. *Privilege.* Given the namespaces' levels (``levels``; the controller always gives
   them), a resolved component using a feature its namespace's level does not grant
   (``hedgerow.core.privilege``) is ``PrivilegeViolation``, naming component, field and
   level. Without ``levels`` (on a device) nothing is checked here; the agent's own
   ceiling applies.

Any problem makes the combination's ``desired`` None. The controller then resolves the
device again without the deployments at fault, or with their last good generation
(``hedgerow.core.fleet``), so one bad Deployment never blocks another.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from hedgerow.core import (
    component,
    configuration,
    deployment,
    documents,
    privilege,
    semver,
    thinggroup,
)

VERSION_CONFLICT: Final = "VersionConflict"
UNKNOWN_COMPONENT: Final = "UnknownComponent"
DEPENDENCY_CYCLE: Final = "DependencyCycle"
UNSATISFIABLE_DEPENDENCY: Final = "UnsatisfiableDependency"
NO_MANIFEST_FOR_PLATFORM: Final = "NoManifestForPlatform"
EMPTY_TARGET: Final = "EmptyTarget"
PRIVILEGE_VIOLATION: Final = "PrivilegeViolation"

DEFAULT_PLATFORM: Final = documents.PlatformInfo(os="linux", arch="amd64")

# Bound on the fixpoint of version choice; real graphs settle in depth + 1 rounds.
_MAX_ROUNDS = 64

Key = tuple[str, str]
"""(namespace, name) of a namespaced object; namespace "" when it has none (on a device)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    deployment: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Resolution:
    desired: documents.DesiredState | None
    problems: tuple[Problem, ...]


def key_of(obj: component.Component | deployment.Deployment | thinggroup.ThingGroup) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name)


def deployment_id(d: deployment.Deployment) -> str:
    """How a deployment is named in problems and documents: ``namespace/name`` or ``name``."""
    namespace, name = key_of(d)
    return f"{namespace}/{name}" if namespace else name


def index_groups(groups: Iterable[thinggroup.ThingGroup]) -> dict[Key, thinggroup.ThingGroup]:
    return {key_of(g): g for g in groups}


def is_member(thing: str, labels: Mapping[str, str], group: thinggroup.ThingGroup) -> bool:
    return group.spec.contains(thing, labels)


def targets(
    d: deployment.Deployment,
    thing: str,
    labels: Mapping[str, str],
    groups_by_name: Mapping[Key, thinggroup.ThingGroup],
) -> bool:
    """Whether ``d`` targets the device; groups are keyed (namespace, name), see index_groups."""
    target = d.spec.target
    if target.thing is not None:
        return target.thing == thing
    group = groups_by_name.get((d.metadata.namespace or "", target.thing_group or ""))
    return group is not None and is_member(thing, labels, group)


# --- the catalog of component versions -----------------------------------------------


class Catalog:
    """Component versions by (namespace, name), highest first."""

    def __init__(self, components: Iterable[component.Component]) -> None:
        by_key: dict[Key, list[tuple[semver.Version, component.Component]]] = {}
        for c in components:
            key = (c.metadata.namespace or "", c.spec.name)
            by_key.setdefault(key, []).append((semver.parse_version(c.spec.version), c))
        # Highest version first; equal versions (two objects, one version) by object name,
        # so the choice never depends on the order the API server listed them in.
        self._versions = {
            k: sorted(v, key=lambda p: (p[0], p[1].metadata.name), reverse=True)
            for k, v in by_key.items()
        }
        # A fleet asks the same questions for many combinations; answers are memoized.
        self._picks: dict[tuple[str, str, frozenset[str]], component.Component | None] = {}
        self._resolved: dict[tuple[Any, ...], tuple[documents.ResolvedComponent, bytes,
                                                    tuple[Any, ...]]] = {}
        self.closures: dict[tuple[int, ...], _Versions] = {}
        self._manifests: dict[tuple[int, str, str],
                              tuple[component.Manifest | None, component.Component]] = {}
        self._needs: dict[int, tuple[documents.ResolvedComponent,
                                     tuple[privilege.Violation, ...]]] = {}

    def pick(self, namespace: str, name: str,
             ranges: frozenset[str]) -> component.Component | None:
        """The highest version satisfying every range (npm range texts)."""
        key = (namespace, name, ranges)
        if key not in self._picks:
            parsed = [semver.parse_range(r) for r in ranges]
            self._picks[key] = next(
                (c for v, c in self.versions(namespace, name)
                 if all(r.satisfied_by(v) for r in parsed)), None)
        return self._picks[key]

    def manifest(self, comp: component.Component,
                 platform: documents.PlatformInfo) -> component.Manifest | None:
        key = (id(comp), platform.os, platform.arch)
        if key not in self._manifests:
            self._manifests[key] = (comp.spec.manifest_for(platform.os, platform.arch), comp)
        return self._manifests[key][0]

    def render(
        self, comp: component.Component, manifest: component.Manifest,
        layers: Sequence[deployment.DeploymentComponent], deployment_name: str,
        dependencies: tuple[tuple[str, str], ...],
    ) -> tuple[documents.ResolvedComponent, bytes]:
        """A ResolvedComponent and its canonical JSON, shared by every combination that
        resolves it the same way. Keys use object identities; the cached value holds the
        objects, so an identity cannot be reused while its entry exists."""
        key = (id(comp), id(manifest), *(id(x) for x in layers), deployment_name,
               dependencies)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit[0], hit[1]
        kinds = {d.name: d.type for d in comp.spec.dependencies}
        run_with = next((x.run_with for x in reversed(layers) if x.run_with), None)
        resolved = documents.ResolvedComponent(
            name=comp.spec.name,
            version=comp.spec.version,
            publisher=comp.spec.publisher,
            dependencies=[documents.ResolvedDependency(name=n, version=v, type=kinds[n])
                          for n, v in dependencies],
            lifecycle=manifest.lifecycle,
            container=manifest.container,
            artifacts=manifest.artifacts,
            configuration=configuration.resolve_configuration(
                comp.spec.default_configuration,
                [x.configuration_update for x in layers if x.configuration_update]),
            run_with=run_with,
            deployment=deployment_name,
        )
        data = documents.canonical_json(resolved.to_dict())
        self._resolved[key] = (resolved, data, (comp, manifest, tuple(layers)))
        return resolved, data

    def versions(
        self, namespace: str, name: str,
    ) -> list[tuple[semver.Version, component.Component]]:
        return self._versions.get((namespace, name), [])

    def violations(self, rc: documents.ResolvedComponent,
                   granted: privilege.Level) -> list[privilege.Violation]:
        """What of ``rc`` the level does not grant (what it needs is worked out once)."""
        hit = self._needs.get(id(rc))
        if hit is None:
            hit = (rc, tuple(privilege.resolve_needs(rc.lifecycle, rc.container, rc.run_with)))
            self._needs[id(rc)] = hit
        return [v for v in hit[1] if not privilege.is_allowed(v.needs, granted)]


# --- resolving one set of deployments --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Request:
    source: deployment.Deployment
    item: deployment.DeploymentComponent


@dataclasses.dataclass(frozen=True)
class Combination:
    """The thing-independent part of a resolution: shared by every device with the same
    targeting deployments (at the same generations) and the same platform."""

    deployments: tuple[documents.DeploymentRef, ...]
    components: tuple[documents.ResolvedComponent, ...]
    problems: tuple[Problem, ...]
    # Canonical JSON of the two lists, so a per-device revision and payload are one hash
    # and one concatenation (see revision_for / payload_for).
    _components_json: bytes = b"[]"
    _deployments_json: bytes = b"[]"
    _hasher: Any = None  # sha256 over everything before the thing name

    def revision_for(self, thing: str) -> str:
        """Equal to documents.revision_of(thing, deployments, components), computed fast:
        the document is the same up to the thing name, so only the tail is hashed."""
        h = self._hasher.copy()
        h.update(_json_str(thing) + b"}")
        return str(h.hexdigest()[:32])

    def payload_for(self, thing: str) -> bytes:
        """Equal to documents.render_bytes(self.render(thing)), computed fast."""
        return (b'{"apiVersion":"hedgerow.dev/v1alpha1","components":' + self._components_json
                + b',"deployments":' + self._deployments_json
                + b',"kind":"DesiredState","revision":"' + self.revision_for(thing).encode()
                + b'","thing":' + _json_str(thing) + b"}")

    def size_for(self, thing: str) -> int:
        """len(self.payload_for(thing)), without building it."""
        return (len(_PAYLOAD_FIXED) + len(self._components_json) + len(self._deployments_json)
                + 32 + len(_json_str(thing)))

    def render(self, thing: str) -> documents.DesiredState | None:
        if self.problems:
            return None
        return documents.render_desired_state(
            thing, list(self.deployments), list(self.components))


_PLAIN = re.compile(r"[A-Za-z0-9._-]*")
# The bytes payload_for adds around the two lists, the revision and the thing name.
_PAYLOAD_FIXED: Final = (b'{"apiVersion":"hedgerow.dev/v1alpha1","components":'
                         b',"deployments":' b',"kind":"DesiredState","revision":"'
                         b'","thing":' b"}")


def _json_str(text: str) -> bytes:
    if _PLAIN.fullmatch(text):  # thing names always are: nothing to escape
        return b'"' + text.encode() + b'"'
    return json.dumps(text, ensure_ascii=False).encode()


def _ref(d: deployment.Deployment) -> documents.DeploymentRef:
    return documents.DeploymentRef(
        name=d.metadata.name, namespace=d.metadata.namespace or "",
        generation=d.metadata.generation or 0, priority=d.spec.priority,
        policies=d.spec.policies,
    )


@dataclasses.dataclass(frozen=True)
class _Versions:
    """The platform-independent part: which versions, for which deployments."""

    refs: tuple[documents.DeploymentRef, ...]
    winners: dict[str, list[_Request]]
    chosen: dict[str, component.Component]
    origins: dict[str, set[str]]
    problems: tuple[Problem, ...]
    keep: Sequence[deployment.Deployment]  # their identities key the cache
    namespaces: dict[str, str] = dataclasses.field(default_factory=dict)  # by component


def _resolve_versions(ordered: Sequence[deployment.Deployment], catalog: Catalog) -> _Versions:
    refs = tuple(_ref(d) for d in ordered)

    requests: dict[str, list[_Request]] = {}
    for d in ordered:
        for item in d.spec.components:
            requests.setdefault(item.name, []).append(_Request(d, item))

    problems: list[Problem] = []
    winners: dict[str, list[_Request]] = {}
    for name in sorted(requests):
        top = max(r.source.spec.priority for r in requests[name])
        best = [r for r in requests[name] if r.source.spec.priority == top]
        winners[name] = best
        for i, a in enumerate(best):
            for b in best[i + 1:]:
                if not _intersects(a.item.version, b.item.version):
                    message = (
                        f"{name}: deployment {deployment_id(a.source)} wants "
                        f"{a.item.version!r} and deployment {deployment_id(b.source)} wants "
                        f"{b.item.version!r} at the same priority {top}; no version satisfies "
                        "both (raise one deployment's priority or align the ranges)")
                    problems.append(Problem(deployment_id(a.source), VERSION_CONFLICT, message))
                    problems.append(Problem(deployment_id(b.source), VERSION_CONFLICT, message))
    if problems:
        return _Versions(refs, {}, {}, {}, _dedupe(problems), ordered)

    ids = {id(d): deployment_id(d) for d in ordered}
    # A worklist: each component gets the highest version satisfying every range on it
    # (from the winning requests and from the dependencies of the versions chosen for
    # others). When a choice changes, the ranges it put on its dependencies are replaced
    # and those dependencies are looked at again, until nothing moves. Sources of ranges
    # and the deployments behind each component are worked out once, at the end.
    ranges: dict[str, list[str]] = {name: [r.item.version for r in best]
                                    for name, best in winners.items()}
    namespace = {name: best[0].source.metadata.namespace or ""
                 for name, best in winners.items()}
    chosen: dict[str, component.Component] = {}
    queue = sorted(ranges, reverse=True)
    queued = set(queue)
    budget = _MAX_ROUNDS * (len(ranges) + 16)
    while queue and budget > 0:
        budget -= 1
        name = queue.pop()
        queued.discard(name)
        texts = ranges.get(name)
        pick = catalog.pick(namespace[name], name, frozenset(texts)) if texts else None
        old = chosen.get(name)
        if pick is old:
            continue
        touched = []
        if old is not None:
            del chosen[name]
            for dep in old.spec.dependencies:
                ranges[dep.name].remove(dep.version_requirement)
                touched.append(dep.name)
        if pick is not None:
            chosen[name] = pick
            for dep in pick.spec.dependencies:
                ranges.setdefault(dep.name, []).append(dep.version_requirement)
                namespace.setdefault(dep.name, pick.metadata.namespace or "")
                touched.append(dep.name)
        for dep_name in touched:
            if dep_name not in queued:
                queued.add(dep_name)
                queue.append(dep_name)
    settled = not queue
    missing = [n for n, texts in ranges.items() if texts and n not in chosen]

    # Which deployments each component is there for (problems are reported to them).
    origins: dict[str, set[str]] = {}
    for name, best in winners.items():
        stack = [(name, {ids[id(r.source)] for r in best})]
        while stack:
            n, why = stack.pop()
            have = origins.setdefault(n, set())
            if why <= have:
                continue
            have |= why
            if n in chosen:
                stack.extend((d.name, have) for d in chosen[n].spec.dependencies)

    failures: list[Problem] = []
    if not settled:
        failures.append(Problem(
            ",".join(sorted(ids.values())), UNSATISFIABLE_DEPENDENCY,
            "dependency versions did not settle; ranges push each other back and forth"))
    for name in sorted(missing):
        sources = [(r.item.version, f"deployment {ids[id(r.source)]}")
                   for r in winners.get(name, [])]
        sources += [(d.version_requirement, f"{dependent}@{c.spec.version}")
                    for dependent, c in sorted(chosen.items()) for d in c.spec.dependencies
                    if d.name == name]
        available = catalog.versions(namespace[name], name)
        wanted = "; ".join(f"{text} ({source})" for text, source in sources)
        listed = ", ".join(str(v) for v, _ in available) or "none"
        reason = UNKNOWN_COMPONENT if name in winners and len(sources) == len(
            winners[name]) else UNSATISFIABLE_DEPENDENCY
        what = "no Component" if not available else "no version"
        message = f"{name}: {what} satisfies {wanted}; available versions: {listed}"
        failures.extend(Problem(o, reason, message) for o in sorted(origins.get(name, ())))
    if failures:
        return _Versions(refs, {}, {}, {}, _dedupe(failures), ordered)

    cycle = _find_cycle({n: [d.name for d in c.spec.dependencies] for n, c in chosen.items()})
    if cycle:
        message = "dependency cycle: " + " -> ".join(
            f"{n}@{chosen[n].spec.version}" for n in cycle[:-1]) + f" -> {cycle[-1]}"
        affected = sorted(frozenset().union(*(origins[n] for n in cycle[:-1])))
        return _Versions(refs, {}, {}, {},
                         tuple(Problem(o, DEPENDENCY_CYCLE, message) for o in affected), ordered)

    return _Versions(refs, winners, chosen, origins, (), ordered, namespace)


def resolve_combination(
    deployments: Sequence[deployment.Deployment],
    platform: documents.PlatformInfo | None,
    catalog: Catalog,
    levels: Mapping[str, privilege.Level] | None = None,
) -> Combination:
    """Resolve the union of ``deployments`` (all assumed to target the device). With
    ``levels`` (privilege level by namespace; absent = the default), every component is
    checked against the level of the namespace it was resolved in."""
    ordered = sorted(deployments, key=key_of)
    key = tuple(id(d) for d in ordered)
    versions = catalog.closures.get(key)
    if versions is None:
        versions = _resolve_versions(ordered, catalog)
        catalog.closures[key] = versions
    refs, winners, chosen, origins = (versions.refs, versions.winners, versions.chosen,
                                      versions.origins)
    if versions.problems:
        return _with_json(Combination(refs, (), versions.problems))
    plat = platform or DEFAULT_PLATFORM
    problems: list[Problem] = []
    resolved: list[documents.ResolvedComponent] = []
    parts: list[bytes] = []
    for name in sorted(chosen):
        comp = chosen[name]
        manifest = catalog.manifest(comp, plat)
        if manifest is None:
            platforms = ", ".join(f"{m.platform.os}/{m.platform.arch}"
                                  for m in comp.spec.manifests)
            problems.extend(Problem(o, NO_MANIFEST_FOR_PLATFORM,
                                    f"{name}@{comp.spec.version} has no manifest for "
                                    f"{plat.os}/{plat.arch} (it has {platforms})")
                            for o in sorted(origins[name]))
            continue
        layers = winners.get(name, [])
        rc, data = catalog.render(
            comp, manifest, [r.item for r in layers],
            deployment_id(layers[0].source) if layers else "",
            tuple((d.name, chosen[d.name].spec.version) for d in comp.spec.dependencies))
        if levels is not None:
            ns = versions.namespaces.get(name, "")
            granted = levels.get(ns, privilege.DEFAULT)
            # The deployments that asked for it by name (their runWith applies), else
            # those whose components pulled it in as a dependency.
            blamed = sorted({deployment_id(r.source) for r in winners.get(name, [])}
                            or origins[name])
            for v in catalog.violations(rc, granted):
                message = privilege.render_violation(name, v, granted)
                problems.extend(Problem(o, PRIVILEGE_VIOLATION, message) for o in blamed)
        resolved.append(rc)
        parts.append(data)
    if problems:
        return _with_json(Combination(refs, (), _dedupe(problems)))
    # canonical_json of a list is its items' canonical JSON joined by ",": same bytes.
    return _with_json(Combination(refs, tuple(resolved), ()), b"[" + b",".join(parts) + b"]")


def _with_json(c: Combination, components_json: bytes | None = None) -> Combination:
    # Same bytes as documents.revision_of builds: canonical JSON of the to_dict() lists.
    if components_json is None:
        components_json = documents.canonical_json([x.to_dict() for x in c.components])
    deployments_json = documents.canonical_json([x.to_dict() for x in c.deployments])
    prefix = (b'{"components":' + components_json + b',"deployments":' + deployments_json
              + b',"thing":')
    return dataclasses.replace(c, _components_json=components_json,
                               _deployments_json=deployments_json,
                               _hasher=hashlib.sha256(prefix))


@functools.lru_cache(maxsize=4096)
def _intersects(a: str, b: str) -> bool:
    return a == b or semver.parse_range(a).intersects(semver.parse_range(b))


def _dedupe(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    return tuple(dict.fromkeys(problems))


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The first cycle in name order, as [a, b, ..., a]; [] when there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        stack = [iter(sorted(x for x in graph[start] if x in graph))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done.add(path.pop())
            elif child in path:
                return [*path[path.index(child):], child]
            elif child not in done:
                path.append(child)
                stack.append(iter(sorted(x for x in graph[child] if x in graph)))
    return []


# --- whole fleets ----------------------------------------------------------------------


Substitute = Callable[[deployment.Deployment], deployment.Deployment | None]
"""Per device: which generation of a deployment it gets (rollouts), or None to leave it out."""


@dataclasses.dataclass(frozen=True)
class DeviceResult:
    thing: str
    combination: Combination
    deployments: tuple[str, ...]  # ids of the targeting deployments

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.combination.problems

    @property
    def revision(self) -> str | None:
        return None if self.combination.problems else self.combination.revision_for(self.thing)

    def payload(self) -> bytes | None:
        return None if self.combination.problems else self.combination.payload_for(self.thing)

    def render(self) -> documents.DesiredState | None:
        return self.combination.render(self.thing)


class Fleet:
    """Indexes over groups, deployments and components for resolving many devices fast.

    Everything is indexed by namespace: a device of namespace N (``namespace=N``) is
    looked at only by N's groups and deployments; ``namespace=None`` (a device's local
    deployments) sees all. Devices of one namespace that agree on every label some
    selector of that namespace reads share group membership by selector; devices with the
    same targeting deployments and platform share one Combination. Static group members
    are looked up by name. ``levels`` (privilege level by namespace) turns the privilege
    check on.
    """

    def __init__(
        self,
        groups: Iterable[thinggroup.ThingGroup],
        deployments: Iterable[deployment.Deployment],
        components: Iterable[component.Component],
        levels: Mapping[str, privilege.Level] | None = None,
    ) -> None:
        self.groups = index_groups(groups)
        self.deployments = sorted(deployments, key=key_of)
        self.catalog = Catalog(components)
        self.levels = None if levels is None else dict(levels)
        # Every index has one entry per namespace and one under None (all namespaces).
        keys: dict[str | None, set[str]] = {}
        self._static: dict[tuple[str | None, str], list[Key]] = {}
        self._selected: dict[str | None, list[tuple[Key, thinggroup.LabelSelector]]] = {}
        for key, g in sorted(self.groups.items()):
            for scope in (key[0], None):
                for thing in g.spec.things or ():
                    self._static.setdefault((scope, thing), []).append(key)
                if g.spec.selector is not None:
                    self._selected.setdefault(scope, []).append((key, g.spec.selector))
                    read = keys.setdefault(scope, set())
                    read.update(g.spec.selector.match_labels)
                    read.update(r.key for r in g.spec.selector.match_expressions)
        self._label_keys = {scope: tuple(sorted(k)) for scope, k in keys.items()}
        self._by_group: dict[Key, list[int]] = {}
        self._by_thing: dict[tuple[str | None, str], list[int]] = {}
        for i, d in enumerate(self.deployments):
            t = d.spec.target
            if t.thing is not None:
                for scope in (d.metadata.namespace or "", None):
                    self._by_thing.setdefault((scope, t.thing), []).append(i)
            else:
                self._by_group.setdefault((d.metadata.namespace or "", t.thing_group or ""),
                                          []).append(i)
        self._selector_cache: dict[tuple[str | None, tuple[str | None, ...]],
                                   tuple[Key, ...]] = {}
        self._targeting_cache: dict[Any, tuple[int, ...]] = {}
        self.ids = [deployment_id(d) for d in self.deployments]
        self._ids_cache: dict[tuple[int, ...], tuple[str, ...]] = {}
        # Callers' values derived from these objects (e.g. older generations of a
        # deployment), kept exactly as long as the indexes and caches above.
        self.memo: dict[Any, Any] = {}
        self._combinations: dict[tuple[Any, ...], Combination] = {}

    def groups_of(self, thing: str, labels: Mapping[str, str],
                  namespace: str | None = None) -> tuple[Key, ...]:
        """The groups the device is a member of (of its namespace only)."""
        signature = (namespace, tuple(labels.get(k) for k in self._label_keys.get(namespace, ())))
        selected = self._selector_cache.get(signature)
        if selected is None:
            selected = tuple(k for k, s in self._selected.get(namespace, ())
                             if s.matches(labels))
            self._selector_cache[signature] = selected
        static = self._static.get((namespace, thing))
        return tuple(sorted({*selected, *static})) if static else selected

    def indices(self, thing: str, labels: Mapping[str, str],
                namespace: str | None = None) -> tuple[int, ...]:
        """Positions in ``self.deployments`` of the deployments targeting the device."""
        groups = self.groups_of(thing, labels, namespace)
        direct = self._by_thing.get((namespace, thing))
        key = (groups, thing, namespace) if direct else groups
        hit = self._targeting_cache.get(key)
        if hit is None:
            indices: set[int] = set(direct or ())
            for g in groups:
                indices.update(self._by_group.get(g, ()))
            hit = tuple(sorted(indices))
            self._targeting_cache[key] = hit
        return hit

    def targeting(self, thing: str, labels: Mapping[str, str],
                  namespace: str | None = None) -> list[deployment.Deployment]:
        return [self.deployments[i] for i in self.indices(thing, labels, namespace)]

    def resolve(
        self,
        thing: str,
        labels: Mapping[str, str],
        platform: documents.PlatformInfo | None,
        substitute: Substitute | None = None,
        namespace: str | None = None,
    ) -> DeviceResult:
        indices = self.indices(thing, labels, namespace)
        plat = platform or DEFAULT_PLATFORM
        if substitute is None:
            chosen = [self.deployments[i] for i in indices]
            cache_key: tuple[Any, ...] = (plat.os, plat.arch, indices)
        else:
            chosen = [x for x in (substitute(self.deployments[i]) for i in indices)
                      if x is not None]
            # Substitutes are values the caller keeps alive for this Fleet's lifetime, so
            # their identities name the combination.
            cache_key = (plat.os, plat.arch, None, *(id(d) for d in chosen))
        combination = self._combinations.get(cache_key)
        if combination is None:
            combination = resolve_combination(chosen, plat, self.catalog, self.levels)
            self._combinations[cache_key] = combination
        return DeviceResult(thing, combination, self._id_tuples(indices))

    def _id_tuples(self, indices: tuple[int, ...]) -> tuple[str, ...]:
        hit = self._ids_cache.get(indices)
        if hit is None:
            hit = tuple(self.ids[i] for i in indices)
            self._ids_cache[indices] = hit
        return hit

    def empty_targets(
        self, devices: Iterable[tuple[str, Mapping[str, str], str | None]],
        reached: set[int] | None = None,
    ) -> list[Problem]:
        """An EmptyTarget problem for every deployment that targets none of ``devices``
        (thing, labels, namespace); ``reached``: the positions of the deployments that
        target some, when the caller knows them already."""
        hit: set[int] = set()
        if reached is not None:
            hit = reached
        else:
            for thing, labels, namespace in devices:
                hit.update(self._by_thing.get((namespace, thing), ()))
                for g in self.groups_of(thing, labels, namespace):
                    hit.update(self._by_group.get(g, ()))
        problems = []
        for i, d in enumerate(self.deployments):
            if i in hit:
                continue
            t = d.spec.target
            if t.thing is not None:
                # The same words whether the thing exists elsewhere or not at all: a team
                # learns nothing about other namespaces' devices.
                why = (f"thing {t.thing!r} is not a registered CoreDevice of namespace "
                       f"{d.metadata.namespace or ''!r}")
            elif (d.metadata.namespace or "", t.thing_group or "") not in self.groups:
                why = f"ThingGroup {t.thing_group!r} does not exist in this namespace"
            else:
                why = f"ThingGroup {t.thing_group!r} has no members"
            problems.append(Problem(deployment_id(d), EMPTY_TARGET, why))
        return problems


def resolve_device(
    thing: str,
    labels: Mapping[str, str],
    platform: documents.PlatformInfo | None,
    groups: Sequence[thinggroup.ThingGroup],
    deployments: Sequence[deployment.Deployment],
    components: Sequence[component.Component],
) -> Resolution:
    """The DesiredState of one device, or the problems that keep it on its last good one."""
    result = Fleet(groups, deployments, components).resolve(thing, labels, platform)
    return Resolution(result.render(), result.problems)
