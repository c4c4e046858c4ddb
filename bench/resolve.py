"""Fleet resolution: 10,000 (and 100,000) devices x 100 groups x 200 deployments x 500 components.

The measured path is what the controller runs every pass: index the objects
(hedgerow.core.resolve.Fleet, with the namespaces' privilege levels), resolve every device
in its namespace (all in "fleet"; a second namespace holds as many objects again, which
must cost nothing), and compute each device's revision (the content hash it is published
under). Target: <= 1 s for 10,000 devices on one core.

Baseline, measured in the same run: the naive path, resolve_device() per device with no
shared indexes or combination cache (what the edge agent does for its one device),
timed on a sample of 200 devices and extrapolated linearly to the fleet size. The ratio is
value / baseline: how much of the naive cost the indexed path still pays.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from bench import harness
from hedgerow.core import component, deployment, documents, privilege, resolve, thinggroup

SITES, TIERS = 50, 4
PLATFORMS = [documents.PlatformInfo(os="linux", arch="amd64"),
             documents.PlatformInfo(os="linux", arch="aarch64")]


def make_world(seed: int = 7) -> tuple[list[thinggroup.ThingGroup], list[deployment.Deployment],
                                       list[component.Component]]:
    rng = random.Random(seed)
    components = []
    names = [f"com.example.C{i:03}" for i in range(250)]
    for i, name in enumerate(names):
        for minor in (0, 1):  # 500 component versions
            deps = {}
            if i >= 10 and rng.random() < 0.4:  # depend on lower-numbered ones: no cycles
                for j in rng.sample(range(i), k=min(2, i)):
                    deps[names[j]] = "^1.0.0"
            components.append(component.Component.model_validate({
                "metadata": {"name": f"c{i:03}-1-{minor}", "namespace": "fleet"},
                "spec": {"name": name, "version": f"1.{minor}.0",
                         "defaultConfiguration": {"interval": i, "nested": {"a": minor}},
                         "dependencies": [{"name": k, "versionRequirement": v}
                                          for k, v in deps.items()],
                         "manifests": [
                             {"platform": {"os": "linux", "arch": "aarch64"},
                              "lifecycle": {"run": {"script": f"run-arm {name}"}}},
                             {"platform": {"os": "linux"},
                              "lifecycle": {"run": {"script": f"run {name}"}}}]},
            }))
    groups = []
    for g in range(100):
        if g < SITES:
            selector: dict[str, Any] = {"matchLabels": {"site": f"s{g}"}}
        elif g < SITES + TIERS:
            selector = {"matchLabels": {"tier": f"t{g - SITES}"}}
        else:
            selector = {"matchExpressions": [
                {"key": "site", "operator": "In",
                 "values": [f"s{x}" for x in rng.sample(range(SITES), 5)]},
                {"key": "tier", "operator": "NotIn", "values": [f"t{rng.randrange(TIERS)}"]}]}
        groups.append(thinggroup.ThingGroup.model_validate(
            {"metadata": {"name": f"g{g:03}", "namespace": "fleet"},
             "spec": {"selector": selector, "things": [f"dev-{rng.randrange(10000):06}"]}}))
    deployments = []
    for d in range(200):
        picks = rng.sample(names, k=rng.randint(1, 4))
        deployments.append(deployment.Deployment.model_validate({
            "metadata": {"name": f"d{d:03}", "namespace": "fleet", "generation": 1},
            "spec": {"target": {"thingGroup": f"g{rng.randrange(100):03}"},
                     "priority": rng.choice([0, 0, 0, 10]),
                     "components": [{"name": n, "version": "^1.0.0",
                                     "configurationUpdate": {"merge": {"by": f"d{d}"}}}
                                    for n in picks]},
        }))
    return groups, deployments, components


def make_devices(n: int, seed: int = 11) -> list[tuple[str, dict[str, str],
                                                       documents.PlatformInfo]]:
    rng = random.Random(seed)
    return [(f"dev-{i:06}", {"site": f"s{rng.randrange(SITES)}",
                             "tier": f"t{rng.randrange(TIERS)}", "serial": str(i)},
             PLATFORMS[i % 2]) for i in range(n)]


def other_namespace(world: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """The world again, in namespace "other": tenants no device of "fleet" may see."""
    def moved(objs: list[Any]) -> list[Any]:
        return [o.model_copy(update={"metadata": o.metadata.model_copy(
            update={"namespace": "other"})}) for o in objs]
    return (moved(world[0]), moved(world[1]), moved(world[2]))


def resolve_fleet(world: tuple[Any, Any, Any],
                  devices: list[tuple[str, dict[str, str], documents.PlatformInfo]]) -> int:
    groups, deployments, components = world
    levels = {"fleet": privilege.Level.RESTRICTED, "other": privilege.Level.PRIVILEGED}
    fleet = resolve.Fleet(groups, deployments, components, levels)
    ok = 0
    for thing, labels, platform in devices:
        if fleet.resolve(thing, labels, platform, namespace="fleet").revision is not None:
            ok += 1
    return ok


def naive_per_device(world: tuple[Any, Any, Any],
                     devices: list[tuple[str, dict[str, str], documents.PlatformInfo]]) -> float:
    groups, deployments, components = world
    start = time.perf_counter()
    for thing, labels, platform in devices:
        resolve.resolve_device(thing, labels, platform, groups, deployments, components)
    return (time.perf_counter() - start) / len(devices)


def run() -> Iterator[harness.Figure]:
    world = make_world()
    sample = make_devices(200, seed=99)
    per_device = naive_per_device(world, sample)
    other = other_namespace(world)
    world = (world[0] + other[0], world[1] + other[1], world[2] + other[2])
    for n, metric, target in ((10_000, "resolve_10k_s", "<= 1 s"),
                              (100_000, "resolve_100k_s", "report")):
        devices = make_devices(n)
        ok = resolve_fleet(world, devices)
        assert ok > n * 0.9, f"only {ok} of {n} devices resolved without problems"
        def once(devices: list[tuple[str, dict[str, str], documents.PlatformInfo]]
                 = devices) -> int:
            return resolve_fleet(world, devices)

        seconds = harness.best_of(once, repeat=3 if n <= 10_000 else 1)
        yield harness.Figure(metric, seconds, "s", per_device * n, target)


if __name__ == "__main__":
    for figure in run():
        print(figure.to_json())
