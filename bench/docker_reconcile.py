"""Desired-file change → containers RUNNING through the real agent loop, vs the bare SDK.

What is measured, per sample: the wall time from atomically writing a desired.json with N
new container components (image present) until the agent's status.json shows every one
RUNNING — through the whole loop: watchfiles wake-up, read + resolve, label observation,
plan, PREPARE (image check), record writes, `ContainerRuntime.apply` (create + start in
worker threads), status — against creating and starting the same containers with
docker-py directly (sequentially) and reloading each until Docker says running. N = 1
and N = 20, alternating which side goes first in every round, in the same run, against
the same dockerd. Each round's containers are removed (untimed) before the next.

Figures: p50_ratio / p99_ratio (the worse of N = 1 and N = 20; target ≤ 1.25), and per N
the agent's p50/p99 in ms with the SDK's beside it as the baseline.
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

from bench import _agent
from bench.harness import Figure, percentile
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


def _components(prefix: str, count: int) -> list[documents.ResolvedComponent]:
    return [documents.ResolvedComponent(
        name=f"{prefix}.C{i:02d}", version="1.0.0",
        container=component.Container(image=IMAGE, command=SLEEPER, env={"INDEX": str(i)}))
        for i in range(count)]


def _through_agent(agent: _agent.BenchAgent,
                   comps: list[documents.ResolvedComponent]) -> float:
    names = [c.name for c in comps]
    start = time.perf_counter()
    agent.deploy(comps)
    _agent.wait(lambda: agent.running(names))
    took = time.perf_counter() - start
    agent.deploy([])  # untimed: the next round starts from nothing
    _agent.wait(lambda: agent.states() == {})
    return took


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


def _measure(count: int, rounds: int, client: docker.DockerClient,
             agent: _agent.BenchAgent,
             ) -> tuple[list[float], list[float]]:
    baseline = f"bench-{uuid.uuid4().hex[:10]}"
    configs = _configs(baseline, count)
    agent_times: list[float] = []
    sdk_times: list[float] = []
    round_ = 0

    def through_agent() -> None:
        agent_times.append(_through_agent(agent, _components(f"r{count}x{round_}", count)))

    def through_sdk() -> None:
        sdk_times.append(_through_sdk(client, configs, baseline))
        _clean(client, baseline)

    sides: list[Callable[[], None]] = [through_agent, through_sdk]
    try:
        # Warm-up (clients, connection pools, page cache), not counted.
        _through_agent(agent, _components("warm", 1))
        _through_sdk(client, configs[:1], baseline)
        _clean(client, baseline)
        for round_ in range(rounds):
            for side in sides if round_ % 2 == 0 else reversed(sides):
                side()
    finally:
        _clean(client, baseline)
    return agent_times, sdk_times


def run() -> Iterable[Figure]:
    subprocess.run([str(ROOT / "scripts" / "build-test-image.sh"), IMAGE], check=True)
    rounds = int(os.environ.get("HEDGEROW_BENCH_ROUNDS", "20"))
    client = docker.from_env(timeout=60)
    agent = _agent.BenchAgent(f"bench-{uuid.uuid4().hex[:10]}")
    ratios: dict[str, list[float]] = {"p50": [], "p99": []}
    figures: list[Figure] = []
    try:
        for count, n_rounds in ((1, rounds), (20, max(3, rounds // 4))):
            ours, sdk = _measure(count, n_rounds, client, agent)
            for name, pct in (("p50", 50.0), ("p99", 99.0)):
                value, base = percentile(ours, pct) * 1000, percentile(sdk, pct) * 1000
                ratios[name].append(value / base)
                figures.append(Figure(
                    metric=f"{name}_ms_{count}", value=value, unit="ms", baseline=base,
                    target=f"ratio <= {TARGET} ({n_rounds} rounds)"))
    finally:
        agent.close()
        _clean(client, agent.thing)
        client.close()
    for name in ("p50", "p99"):
        worst = max(ratios[name])
        yield Figure(metric=f"{name}_ratio", value=worst, unit="x", baseline=None,
                     target=f"<= {TARGET} (worse of 1 and 20 containers)", ratio=worst)
    yield from figures
