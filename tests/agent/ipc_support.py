"""Components written with the official Greengrass IPC SDK, for tests: the SDK in a
folder `nobody` can read, the component script (ipc_component.py), and a driver."""

from __future__ import annotations

import itertools
import json
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import awscrt
import awsiot
import pytest

from hedgerow.core import accesscontrol, documents
from tests.support.wait import wait_for

from .conftest import AgentProcess, rc

HERE = pathlib.Path(__file__).resolve().parent
PYTHON = shutil.which("python3", path="/usr/bin:/bin")  # one `nobody` may run


@pytest.fixture(scope="module")
def sdk() -> Iterator[pathlib.Path]:
    """The SDK (awsiot + awscrt, as installed for the tests) and the component script in
    a folder `nobody` can read: what a device would have installed for its components."""
    assert PYTHON is not None, "python3 in /usr/bin (Debian's) runs the test components"
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-ipc-sdk-"))
    folder.chmod(0o755)
    for package in (awsiot, awscrt):
        source = pathlib.Path(package.__file__).parent
        shutil.copytree(source, folder / source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for native in pathlib.Path(awscrt.__file__).parent.parent.glob("_awscrt*.so"):
        shutil.copy(native, folder)
    shutil.copy(HERE / "ipc_component.py", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def policy(component: str, operations: list[str], resources: list[str],
           service: str = accesscontrol.PUBSUB) -> dict[str, Any]:
    return {"accessControl": {service: {f"{component}:pubsub:1": {
        "policyDescription": "test", "operations": operations, "resources": resources}}}}


def sdk_component(sdk: pathlib.Path, name: str, configuration: dict[str, Any] | None = None,
                  slow: float = 0, version: str = "1.0.0") -> documents.ResolvedComponent:
    env = f"PYTHONPATH={sdk} IPC_TEST_SLOW={slow}"
    return rc(name, f"exec env {env} {PYTHON} -u {sdk}/ipc_component.py", version=version,
              configuration=configuration or {})


class Client:
    """Drives one test component: commands in, events out (through its work folder)."""

    _seq = itertools.count()

    def __init__(self, agent: AgentProcess, name: str) -> None:
        self.agent, self.name = agent, name
        self.home = agent.root / "work" / name

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.home / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in found if kind is None or e["event"] == kind]

    def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 30.0) -> dict[str, Any]:
        def look() -> dict[str, Any] | None:
            return next((e for e in self.events() if predicate(e)), None)
        found: dict[str, Any] = wait_for(look, timeout, f"{self.name}: {what} "
                                         f"(events: {self.events()[-5:]})")
        return found

    def connected(self) -> None:
        event = self.wait(lambda e: e["event"] == "connected", "connected")
        assert event["ok"], event

    def command(self, op: str, **fields: Any) -> None:
        (self.home / "commands").mkdir(exist_ok=True)
        path = self.home / "commands" / f"{next(self._seq):06d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"op": op, **fields}))
        tmp.replace(path)

    def messages(self, sub: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events("message") if sub is None or e["sub"] == sub]


def start(agent: AgentProcess, *components: documents.ResolvedComponent) -> list[Client]:
    agent.deploy(*components)
    agent.wait_states({c.name: "RUNNING" for c in components}, timeout=30)
    clients = [Client(agent, c.name) for c in components]
    for client in clients:
        client.connected()
    return clients
