"""apply(config) → container RUNNING through ContainerRuntime vs. the bare Docker SDK.

What is measured, per sample: the wall time from handing N rendered `ContainerConfig`s
to `ContainerRuntime.apply` (image present) until `observe()` maps every container to
RUNNING — against creating and starting the same containers with docker-py directly
and inspecting each once. Both sides run N = 1 and N = 20 containers, one at a time,
alternating which side goes first in every round, in the same run, against the same
dockerd. The runtime's overhead is its ownership checks: the label listing before
create, the image check, and the observation (list + inspect) that confirms RUNNING.

Not measured yet: desired file → RUNNING through the full agent loop (watchfiles wake-up,
resolve, plan); the agent loop will be wired to the runtime by the lead, and the same
harness then needs only a different "apply" side.

Figures: p50_ratio / p99_ratio (the worse of N = 1 and N = 20; target ≤ 1.25), and per N
the runtime's p50/p99 in ms with the SDK's beside it as the baseline.
Rounds: HEDGEROW_BENCH_ROUNDS (default 20 for N = 1; a quarter of that, at least 3,
for N = 20).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import docker
import docker.errors

from bench.harness import Figure, percentile
from hedgerow.agent.containers import ContainerRuntime
from hedgerow.core import component, container, documents

IMAGE = "hedgerow/busybox:latest"
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
TARGET = 1.25
ROOT = Path(__file__).parents[1]


def _configs(thing: str, count: int) -> list[container.ContainerConfig]:
    configs = []
    for i in range(count):
        resolved = documents.ResolvedComponent(
            name=f"bench.C{i:02d}", version="1.0.0",
            container=component.Container(image=IMAGE, command=SLEEPER,
                                          env={"INDEX": str(i)}),
        )
        configs.append(container.render_container(
            resolved, thing=thing, root="/var/lib/hedgerow",
            ipc_socket="/var/lib/hedgerow/ipc.sock", render=lambda text: text))
    return configs


def _through_runtime(runtime: ContainerRuntime,
                     configs: list[container.ContainerConfig]) -> float:
    start = time.perf_counter()
    for config in configs:
        runtime.apply(config)
    while True:
        observed = runtime.observe()
        if len(observed) == len(configs) and all(
            container.render_component_state(o) is documents.ComponentState.RUNNING
            for o in observed
        ):
            return time.perf_counter() - start


def _through_sdk(client: docker.DockerClient,
                 configs: list[container.ContainerConfig], thing: str) -> float:
    start = time.perf_counter()
    created = []
    for config in configs:
        kwargs = config.create_kwargs()
        kwargs["name"] = kwargs["name"].replace(config.thing, thing, 1)
        kwargs["labels"] = {**kwargs["labels"], container.LABEL_THING: thing}
        handle = client.containers.create(**kwargs)
        handle.start()
        created.append(handle)
    pending = list(created)
    while pending:
        for handle in list(pending):
            handle.reload()
            if handle.status == "running":
                pending.remove(handle)
    return time.perf_counter() - start


def _clean(client: docker.DockerClient, *things: str) -> None:
    for thing in things:
        for found in client.containers.list(
                all=True, filters={"label": f"{container.LABEL_THING}={thing}"}):
            with contextlib.suppress(docker.errors.NotFound):
                found.remove(force=True, v=True)


def _measure(count: int, rounds: int, client: docker.DockerClient
             ) -> tuple[list[float], list[float]]:
    ours, baseline = f"bench-{uuid.uuid4().hex[:10]}", f"bench-{uuid.uuid4().hex[:10]}"
    runtime = ContainerRuntime(docker.from_env, thing=ours)
    configs = _configs(ours, count)
    runtime_times: list[float] = []
    sdk_times: list[float] = []
    sides: list[Callable[[], None]] = [
        lambda: runtime_times.append(_through_runtime(runtime, configs)),
        lambda: sdk_times.append(_through_sdk(client, configs, baseline)),
    ]
    try:
        # Warm-up (clients, connection pools, page cache), not counted.
        _through_runtime(runtime, configs[:1])
        _through_sdk(client, configs[:1], baseline)
        _clean(client, ours, baseline)
        for round_ in range(rounds):
            for side in sides if round_ % 2 == 0 else reversed(sides):
                side()
                _clean(client, ours, baseline)
    finally:
        _clean(client, ours, baseline)
        runtime.close()
    return runtime_times, sdk_times


def run() -> Iterable[Figure]:
    subprocess.run([str(ROOT / "scripts" / "build-test-image.sh"), IMAGE], check=True)
    rounds = int(os.environ.get("HEDGEROW_BENCH_ROUNDS", "20"))
    client = docker.from_env(timeout=60)
    ratios: dict[str, list[float]] = {"p50": [], "p99": []}
    figures: list[Figure] = []
    try:
        for count, n_rounds in ((1, rounds), (20, max(3, rounds // 4))):
            ours, sdk = _measure(count, n_rounds, client)
            for name, pct in (("p50", 50.0), ("p99", 99.0)):
                value, base = percentile(ours, pct) * 1000, percentile(sdk, pct) * 1000
                ratios[name].append(value / base)
                figures.append(Figure(
                    metric=f"{name}_ms_{count}", value=value, unit="ms", baseline=base,
                    target=f"ratio <= {TARGET} ({n_rounds} rounds)"))
    finally:
        client.close()
    for name in ("p50", "p99"):
        worst = max(ratios[name])
        yield Figure(metric=f"{name}_ratio", value=worst, unit="x", baseline=None,
                     target=f"<= {TARGET} (worse of 1 and 20 containers)", ratio=worst)
    yield from figures
