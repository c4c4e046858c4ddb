"""Fixtures for the container runtime against the real dockerd.

Every test gets its own thing name, so its containers are told apart by label from
anything else on the daemon (other tests, other engineers' work), and every container
and image a test made is removed afterwards, even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from hedgerow.agent.containers import ContainerRuntime
from hedgerow.core import component, container, deployment, documents

# Stops at once on SIGTERM (PID 1 ignores signals it has no handler for; `wait` is
# interruptible), so tests do not sit out docker's stop timeout.
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


class Made:
    """What a test created outside the runtime, to be removed afterwards."""

    def __init__(self) -> None:
        self.containers: list[str] = []
        self.images: list[str] = []


@pytest.fixture
def thing() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def made(docker_client: docker.DockerClient, thing: str) -> Iterator[Made]:
    made = Made()
    yield made
    labelled = docker_client.containers.list(
        all=True, filters={"label": f"{container.LABEL_THING}={thing}"}, ignore_removed=True)
    for name in [c.name for c in labelled if c.name] + made.containers:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True, v=True)
    for ref in made.images:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref)


@pytest.fixture
def runtime(thing: str, tmp_path: pathlib.Path, made: Made,
            test_image: str) -> Iterator[ContainerRuntime]:
    runtime = ContainerRuntime(docker.from_env, thing=thing, state_dir=tmp_path / "state")
    yield runtime
    made.images.extend(owned_images(runtime))
    runtime.close()


def owned_images(runtime: ContainerRuntime) -> dict[str, str]:
    """The images `runtime` pulled or loaded (reference -> id), as its record in the
    state folder says: what image GC may remove, and what survives a restart."""
    state = runtime._state_dir  # where the fixture told it to keep its records
    assert state is not None
    path = state / "images.json"
    return dict(json.loads(path.read_text())["images"]) if path.exists() else {}


ConfigMaker = Callable[..., container.ContainerConfig]


@pytest.fixture
def make_config(thing: str, tmp_path: pathlib.Path, test_image: str) -> ConfigMaker:
    def make(name: str = "com.example.App", *, version: str = "1.0.0",
             limits: dict[str, Any] | None = None, **spec: Any) -> container.ContainerConfig:
        spec.setdefault("image", test_image)
        spec.setdefault("command", SLEEPER)
        resolved = documents.ResolvedComponent(
            name=name, version=version,
            container=component.Container.model_validate(spec),
            run_with=None if limits is None else deployment.RunWith(
                system_resource_limits=deployment.SystemResourceLimits(**limits)),
        )
        return container.render_container(
            resolved, thing=thing, root=str(tmp_path / "root"),
            ipc_socket=str(tmp_path / "ipc" / "ipc.sock"), render=lambda text: text)
    return make



from tests.agent_docker.agent_support import dagent, images  # noqa: E402, F401
