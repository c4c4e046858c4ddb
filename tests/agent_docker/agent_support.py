"""A real agent process driving real containers: helpers for the agent-loop docker tests.

Each test gets its own thing name (containers are told apart by label), a root under /tmp
(components run as nobody), and a clean-up that removes every container labelled for that
thing and every image the test made — even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from hedgerow.core import component, container, documents
from tests.agent import conftest as agent_conftest

SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


def cc(name: str, version: str = "1.0.0", *, limits: dict[str, Any] | None = None,
       **spec: Any) -> documents.ResolvedComponent:
    """A container component (image: the local busybox unless told)."""
    spec.setdefault("image", "hedgerow/busybox:latest")
    spec.setdefault("command", SLEEPER)
    extra: dict[str, Any] = {}
    if limits is not None:
        extra["runWith"] = {"systemResourceLimits": limits}
    return documents.ResolvedComponent.model_validate(
        {"name": name, "version": version, "container": spec, **extra})


def pc(name: str, script: str = "sleep 60") -> documents.ResolvedComponent:
    return documents.ResolvedComponent(
        name=name, version="1.0.0",
        lifecycle=component.Lifecycle(run=component.Step(script=script)))


class DockerAgent(agent_conftest.AgentProcess):
    resync = "1"

    def __init__(self, home: pathlib.Path, thing: str, client: docker.DockerClient) -> None:
        super().__init__(home / "root", thing)
        self.home, self.client = home, client
        (self.root / "desired").mkdir(parents=True)
        (self.root / "deployments").mkdir()

    def start(self, docker_host: str | None = None) -> None:  # type: ignore[override]
        env = dict(os.environ)
        if docker_host is not None:
            env["DOCKER_HOST"] = docker_host
        super().start(env=env)

    def containers(self) -> list[Any]:
        # ignore_removed: docker-py inspects each listed container, and one the agent
        # removes in between (replaced, collected) would fail a poll with NotFound.
        return list(self.client.containers.list(
            all=True, filters={"label": f"{container.LABEL_THING}={self.thing}"},
            ignore_removed=True))

    def container(self, name: str) -> Any:
        return self.client.containers.get(container.render_container_name(self.thing, name))

    def container_id(self, name: str) -> str | None:
        """The component's container id, or None while it is being replaced."""
        try:
            return str(self.container(name).id)
        except docker.errors.NotFound:
            return None

    def label(self, name: str, label: str) -> str | None:
        """A label of the component's container, or None while there is none (being
        replaced: a poll must not fail on a moment the agent is entitled to)."""
        try:
            return str(self.container(name).labels.get(label))
        except docker.errors.NotFound:
            return None


@pytest.fixture
def images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image references a test made; removed afterwards."""
    made: list[str] = []
    yield made
    for ref in made:
        with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
            docker_client.images.remove(ref, force=True)


@pytest.fixture
def dagent(docker_client: docker.DockerClient, test_image: str) -> Iterator[DockerAgent]:
    home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-dagent-"))
    home.chmod(0o711)
    agent = DockerAgent(home, f"d-{uuid.uuid4().hex[:10]}", docker_client)
    try:
        yield agent
    finally:
        agent.stop()
        # Process components (and their gates) too: not one test workload left behind.
        for pid in agent_conftest.pids_with_marker(agent.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent_conftest.remove_cgroups(agent.thing)
        for found in agent.containers():
            with contextlib.suppress(docker.errors.NotFound):
                found.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):  # from the orphan test
            docker_client.containers.get(f"unlabelled-{agent.thing}").remove(force=True)
        with contextlib.suppress(FileNotFoundError, ValueError):
            owned = json.loads((agent.root / "state" / "images.json").read_text())["images"]
            for ref in owned:
                with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
                    docker_client.images.remove(ref)
        print((home / "agent.log").read_text()[-4000:])
        shutil.rmtree(home, ignore_errors=True)


class SocketProxy:
    """A Unix-socket relay to dockerd that can be cut: dockerd unreachable for the agent
    (and only for it) without stopping the machine's dockerd."""

    def __init__(self, path: pathlib.Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.path.unlink(missing_ok=True)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
