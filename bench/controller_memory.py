"""Controller memory per device, in-process: where a rollout's memory goes, by structure.

The 10,000-device `bench.fleet_rollout` takes ~12 minutes and most of the machine and
reports one number (the process's RSS). This builds, in one process and without a
server or a broker, what the controller keeps per device after that benchmark's rollout,
through the controller's own code: `Controller._parse_coredevice` for the informer's
listing and for the watch's echo of every status write (bodies shaped as the API server
sends them: managedFields for the creating client and for the controller's server-side
applies), `fold_report` for each device's first report and its success (payloads as
`bench._fleet`'s simulators send them), one full plan (`fleet.plan_fleet`, one
ThingGroup, one Deployment, two Components), `render_published` and `_write_status`
(the API call itself a no-op) for every device.

Figures (tracemalloc: Python's own allocations, not the interpreter's or the imports'):
- controller_kb_per_device: after the rollout, per device. Baseline: after the listing
  alone (every device known, none reported): ratio = what a rollout adds, as a factor.
- controller_mb_<structure>: the deep size of each per-device structure (each object
  counted once, in the order listed: an object shared with an earlier one is not counted
  again). No baseline; they are what to cut.

`python -m bench.controller_memory --devices 10000` (~4 minutes on 2 shared cores);
`python -m bench controller_memory` runs 2,000 (HEDGEROW_BENCH_DEVICES to change it).
Per-device figures scale linearly; docs/scale.md has both.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import pydantic

from bench import _fleet, harness
from hedgerow.controller import broker as broker_
from hedgerow.controller import operator
from hedgerow.core import component, deployment, documents, fleet, thinggroup

DEFAULT_DEVICES = 2000
_T0 = "2026-12-04T13:47:30Z"


def _fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {f"f:{k}": _fields(v) for k, v in value.items()}
    return {}


def _status_fields(status: dict[str, Any]) -> dict[str, Any]:
    """The fieldsV1 the API server records for a server-side apply of ``status``
    (conditions are a list map keyed by type; other lists are atomic)."""
    out: dict[str, Any] = {}
    for k, v in status.items():
        if k == "conditions":
            out["f:conditions"] = {
                f'k:{{"type":"{c["type"]}"}}': {".": {}, **{f"f:{f}": {} for f in c}}
                for c in v}
        else:
            out[f"f:{k}"] = _fields(v)
    return out


def _body(i: int, uid: str, version: int, status: dict[str, Any] | None) -> dict[str, Any]:
    """A CoreDevice as the API server sends it (decoded from JSON: fresh strings)."""
    managed: list[dict[str, Any]] = [{
        "apiVersion": "hedgerow.dev/v1alpha1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:bench": {}}},
                     "f:spec": {".": {}, "f:namespace": {}}},
        "manager": "OpenAPI-Generator", "operation": "Update", "time": _T0}]
    if status is not None:
        managed.insert(0, {"apiVersion": "hedgerow.dev/v1alpha1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:status": _status_fields(status)},
                           "manager": "hedgerow-controller", "operation": "Apply",
                           "subresource": "status", "time": _T0})
    body: dict[str, Any] = {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
        "metadata": {"creationTimestamp": _T0, "generation": 1, "labels": {"bench": "yes"},
                     "managedFields": managed, "name": _fleet.thing_name(i),
                     "resourceVersion": str(version), "uid": uid},
        "spec": {"namespace": "default"}}
    if status is not None:
        body["status"] = status
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


def _report(thing: str, sequence: int, desired: documents.DesiredState | None) -> bytes:
    """What bench._fleet's simulator sends: a first report, then its success."""
    extra: dict[str, Any] = {}
    if desired is not None:
        extra = {
            "desired_revision": desired.revision, "applied_revision": desired.revision,
            "components": [documents.ComponentReport(
                name=c.name, version=c.version, state=documents.ComponentState.RUNNING)
                for c in desired.components],
            "deployment": documents.DeploymentOutcome(
                revision=desired.revision, outcome=documents.Outcome.SUCCEEDED)}
    report = documents.StatusReport(
        thing=thing, sequence=sequence, time=datetime.datetime.now(datetime.UTC),
        agent_version="bench-simulator", health=documents.Health.HEALTHY,
        platform=documents.PlatformInfo(os="linux", arch="amd64"), **extra)
    return documents.render_bytes(report)


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of ``obj`` and all it holds, each object counted once across calls that
    share ``seen``."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if o is None or isinstance(o, (bool, type)) or id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, pydantic.BaseModel):
            stack.extend((o.__dict__, o.__pydantic_extra__, o.__pydantic_fields_set__))
        elif type(o).__module__.startswith("hedgerow"):
            if hasattr(o, "__dict__"):
                stack.append(vars(o))
            stack.extend(getattr(o, s) for s in getattr(o, "__slots__", ()) if hasattr(o, s))
    return total


class _NoApi:
    def apply_status(self, *args: Any, **kwargs: Any) -> None:
        """The write succeeds; what it costs the API server is not measured here."""


async def measure(n: int) -> tuple[float, float, dict[str, float]]:
    """(bytes traced after the listing, after the rollout, {structure: deep bytes})."""
    settings = operator.Settings(broker=broker_.BrokerSettings(url="mqtt://127.0.0.1:1"))
    c = operator.Controller(settings)
    c.kube = _NoApi()  # type: ignore[assignment]
    objects = _fleet.fleet_objects(n)
    groups = [thinggroup.ThingGroup.model_validate(o) for o in objects
              if o["kind"] == "ThingGroup"]
    components = [component.Component.model_validate(o) for o in objects
                  if o["kind"] == "Component"]
    rollout = deployment.Deployment.model_validate({**_fleet.deployment(), "metadata": {
        "name": "bench", "namespace": "default", "generation": 1, "uid": "bench-uid"}})
    c.indexes = {
        "thinggroup_index": {("default", "all"): groups},
        "component_index": {(o.metadata.namespace, o.metadata.name): [o] for o in components},
        "deployment_index": {}, "namespace_index": {"default": [{}]}}
    uids = [str(uuid.uuid4()) for _ in range(n)]
    things = [_fleet.thing_name(i) for i in range(n)]
    version = n

    async def write_all() -> None:
        """Every device's status written, and its echo through the watch."""
        nonlocal version
        for i, thing in enumerate(things):
            status = operator._device_body(c.devices[thing])
            await c._write_status("CoreDevice", "", thing, status)
            version += 1
            c.informer._on_event({"type": "MODIFIED",
                                  "object": _body(i, uids[i], version, status)})

    gc.collect()
    start = tracemalloc.get_traced_memory()[0]
    for i, thing in enumerate(things):  # the informer's listing
        c.informer._keep(("", thing), str(i + 1), c._parse_coredevice(
            _body(i, uids[i], i + 1, None)))
    c._observe()
    gc.collect()
    listed = tracemalloc.get_traced_memory()[0] - start
    for i, thing in enumerate(things):  # each device's first report
        c.fold_report(thing, _report(thing, 1, None), clock=float(i))
    await write_all()
    c.indexes["deployment_index"] = {("default", "bench"): [rollout]}
    now = datetime.datetime.now(datetime.UTC)
    plan = await c._plan(c._observe(), now)
    desired: dict[str, documents.DesiredState] = {}
    for p in plan.publishes:  # every device notified
        c.devices[p.thing], _ = fleet.render_published(
            c.devices[p.thing], p, c._early_report(p.thing, p.revision), now)
        desired[p.thing] = documents.DesiredState.model_validate_json(p.payload)
    c.deployment_status.update(plan.deployments)
    await write_all()
    for i, thing in enumerate(things):  # and its success
        c.fold_report(thing, _report(thing, 2, desired.get(thing)), clock=float(n + i))
    await write_all()
    seen_now = c._observe()  # a full pass after, with the index it leaves
    await c._plan(seen_now, datetime.datetime.now(datetime.UTC))
    c.index = c._build_index(seen_now)
    del plan, desired
    c.unacked.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - start
    seen: set[int] = set()
    structures = {
        "informer_index": c.informer.index, "informer_versions": c.informer.versions,
        "devices": c.devices, "written": c.written, "reports": c.reports,
        "sequences": c.sequences, "buckets": c.buckets, "uids": c.uids,
        "fingerprints": c.fingerprints, "faults": c.faults, "impact_index": c.index,
        "fleet": c.fleet, "writer": c.writer}
    sizes = {name: float(deep_size(obj, seen)) for name, obj in structures.items()}
    c.work_pool.shutdown()
    c.api_pool.shutdown()
    c.fleet_pool.shutdown()
    return listed, after, sizes


def figures(n: int) -> Iterator[harness.Figure]:
    tracemalloc.start()
    try:
        listed, after, sizes = asyncio.run(measure(n))
    finally:
        tracemalloc.stop()
    yield harness.Figure("controller_kb_per_device", after / n / 1024, "KB", listed / n / 1024,
                         f"{n} devices after a rollout (baseline: after the listing alone; "
                         f"{after / 1e6:.1f} MB traced in all)")
    for name, size in sizes.items():
        yield harness.Figure(f"controller_mb_{name}", size / 1e6, "MB", None,
                             f"deep size at {n} devices ({size / n:.0f} B per device)")


def run() -> Iterator[harness.Figure]:
    yield from figures(int(os.environ.get("HEDGEROW_BENCH_DEVICES", DEFAULT_DEVICES)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controller_memory")
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    args = parser.parse_args(argv)
    for figure in figures(args.devices):
        print(figure.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
