"""The whole system, everything real: the test API server + etcd, mosquitto started from
exactly what `hedgerow broker config` writes (TLS, client certificates, the generated
ACL), `hedgerow controller` as a process with the controller certificate, and three
`hedgerow agent run` processes with their own roots, keys (`hedgerow agent init`),
certificates (`hedgerow device register --csr`, `hedgerow agent install-bundle`) and
labels.

One fleet per module (the steps of a story build on each other); everything it started
-- agents, their components, the controller and the broker -- is stopped even when a
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.agent.conftest import pids_with_marker, remove_cgroups
from tests.conftest import ROOT
from tests.support import passes, procs
from tests.support.apiserver import ApiServer
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for

HEDGEROW = [sys.executable, "-m", "hedgerow"]
# Per test process, so parallel runs (and the demo) never share cgroups or names.
SUFFIX = f"e{os.getpid() % 100000}"
LABELS = {  # as examples/coredevices.yaml has them
    "gateway-1": {"site": "factory-1"},
    "gateway-2": {"site": "factory-1"},
    "gateway-3": {"site": "factory-2", "hedgerow.dev/docker": "true"},
}


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


class Agent:
    """One device: its root, its `hedgerow agent run` process and its files."""

    def __init__(self, home: pathlib.Path, example: str) -> None:
        self.example = example  # gateway-1 … as named in examples/
        self.thing = f"{example}-{SUFFIX}"
        self.dir = home / self.thing
        self.root = self.dir / "root"
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*HEDGEROW, "agent", "run", "--root", str(self.root),
                 "--thing", self.thing, "--resync", "2", "--settle", "0.5",
                 "--deployment-timeout", "30"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: (self.root / "agent.sock").exists(), 20, f"{self.thing} to start")

    def stop(self) -> None:
        """SIGTERM, as systemd would: the components keep running."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill_components(self) -> None:
        for pid in pids_with_marker(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def states(self) -> dict[str, tuple[str, str]]:
        return {c["name"]: (c["version"], c["state"]) for c in self.status().get("components", [])}

    def pids(self) -> dict[str, int]:
        try:
            records = json.loads((self.root / "state" / "components.json").read_text())
        except (OSError, ValueError):
            return {}
        out = {}
        for name, rec in records.items():
            ref = rec.get("process") or {}
            if ref.get("pid"):
                out[name] = int(ref["pid"])
        return out

    def connector(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(
                (self.root / "state" / "connector.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def cli(self, *args: str) -> str:
        return run([*HEDGEROW, *args, "--root", str(self.root)]).stdout


class Fleet:
    def __init__(self, server: ApiServer, home: pathlib.Path) -> None:
        self.server = server
        self.kubeconfig = str(server.kubeconfig)
        self.home = home
        self.ca_dir = home / "fleet-ca"
        self.broker_dir = home / "broker"
        self.broker = Mosquitto(tls=True, directory=self.broker_dir, config=self._broker_config)
        self._configs: dict[int, str] = {}
        self.controller: subprocess.Popen[bytes] | None = None
        self.controller_log = home / "controller.log"
        self.stats_file = home / "controller-stats.json"  # --stats-file: passes, ...
        self.agents = {name: Agent(home, name) for name in LABELS}
        self.applied: list[tuple[str, str]] = []  # (kind, name), removed by down()

    # --- the broker, from `hedgerow broker config` ----------------------------------

    def _broker_config(self, port: int) -> str:
        if port not in self._configs:  # a restart on the same port reuses the same files
            run([*HEDGEROW, "broker", "config", "--out", str(self.broker_dir),
                 "--port", str(port), "--ca-dir", str(self.ca_dir), "--user", "root",
                 "--data-dir", str(self.broker_dir / "data")])
            (self.broker_dir / "data").mkdir(exist_ok=True)
            text = (self.broker_dir / "mosquitto.conf").read_text()
            # Logs go to a file: a pipe nobody reads would block the broker.
            self._configs[port] = text.replace(
                "log_dest stderr", f"log_dest file {self.broker_dir / 'mosquitto.log'}")
        return self._configs[port]

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"

    # --- the controller -------------------------------------------------------------

    def start_controller(self) -> None:
        b = self.broker_dir
        with self.controller_log.open("ab") as out:
            self.controller = subprocess.Popen(
                [*HEDGEROW, "controller", "--kubeconfig", self.kubeconfig,
                 "--broker", self.broker_url, "--ca", str(b / "ca.pem"),
                 "--cert", str(b / "controller.pem"), "--key", str(b / "controller.key"),
                 "--status-interval", "0.2", "--rollout-minute", "2", "--resync", "5",
                 "--ca-dir", str(self.ca_dir),  # GitOps: sign spec.csr
                 "--stats-file", str(self.stats_file),
                 # Steps wait for a device's next report to show in lastSeen.
                 "--last-seen-interval", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "connected to the broker" in self.controller_output(), 30,
                 "the controller to connect to the broker")

    def wait_controller_passes(self, more: int = 2) -> None:
        """Until the controller has completed ``more`` passes after this call."""
        assert self.controller is not None
        passes.wait_controller_passes(self.stats_file, self.controller.pid, more)

    def stop_controller(self) -> None:
        proc, self.controller = self.controller, None
        procs.stop_group(proc)

    def controller_output(self) -> str:
        return self.controller_log.read_text(errors="replace") if self.controller_log.exists() \
            else ""

    # --- devices --------------------------------------------------------------------

    def register(self, agent: Agent) -> None:
        """The CSR round trip, as docs/identity.md tells an operator to do it."""
        agent.dir.mkdir(parents=True, exist_ok=True)
        csr = agent.dir / "device.csr"
        csr.write_text(run([*HEDGEROW, "agent", "init", "--root", str(agent.root),
                            "--thing", agent.thing]).stdout)
        bundle = agent.dir / "bundle.json"
        labels = [f"--label={k}={v}" for k, v in LABELS[agent.example].items()]
        run([*HEDGEROW, "device", "register", agent.thing, "--namespace", "default", *labels,
             "--csr", str(csr),
             "--broker-url", self.broker_url, "--ca-dir", str(self.ca_dir),
             "--kubeconfig", self.kubeconfig, "--out", str(bundle)])
        run([*HEDGEROW, "agent", "install-bundle", "--root", str(agent.root),
             "--thing", agent.thing, str(bundle)])

    # --- the cluster ----------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.server.kubectl(*args, input=stdin).stdout

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            if key not in self.applied:
                self.applied.append(key)

    def devices(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.kubectl("get", "coredevices", "-o", "json"))["items"]
        return {i["metadata"]["name"]: i for i in items}

    def device_status(self, agent: Agent) -> dict[str, Any]:
        status: dict[str, Any] = self.devices().get(agent.thing, {}).get("status") or {}
        return status

    def deployment(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(
            self.kubectl("get", "deployments.hedgerow.dev", name, "-n", "default", "-o", "json"))
        return out

    # --- lifecycle ------------------------------------------------------------------

    def up(self) -> None:
        self.broker.start()
        self.start_controller()
        for agent in self.agents.values():
            self.register(agent)
        for agent in self.agents.values():
            agent.start()

    def down(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
            agent.kill_components()
            remove_cgroups(agent.thing)
        with contextlib.suppress(Exception):
            self.stop_controller()
        self.broker.stop()
        # CoreDevices are cluster-wide and the API server is shared by the session.
        names = [a.thing for a in self.agents.values()]
        self.server.kubectl("delete", "coredevices", "--ignore-not-found", *names, check=False)
        # Only what this fleet applied: the API server is the session's.
        plural = {"Component": "components.hedgerow.dev", "ThingGroup": "thinggroups",
                  "Deployment": "deployments.hedgerow.dev", "CoreDevice": "coredevices"}
        for kind, name in self.applied:
            self.server.kubectl("delete", plural[kind], name, "-n", "default",
                                "--ignore-not-found", "--wait=false", check=False)

    def dump(self) -> str:
        parts = ["---- controller log (tail) ----", self.controller_output()[-4000:]]
        for agent in self.agents.values():
            text = agent.log.read_text(errors="replace") if agent.log.exists() else ""
            parts += [f"---- {agent.thing} log (tail) ----", text[-3000:]]
        log = self.broker_dir / "mosquitto.log"
        if log.exists():
            parts += ["---- mosquitto log (tail) ----", log.read_text(errors="replace")[-2000:]]
        return "\n".join(parts)


def examples(*, docker: bool = False) -> list[dict[str, Any]]:
    """examples/ without the CoreDevices (registered for real instead) and, unless
    ``docker``, without the Docker component and its deployment."""
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] == "CoreDevice":
                continue
            if not docker and doc["metadata"]["name"] in (
                    "com.example.webstatus-1.0.0", "docker-hosts-web"):
                continue
            docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def fleet(apiserver: ApiServer) -> Iterator[Fleet]:
    # Components run as nobody: every folder above the roots must be traversable.
    home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-e2e-"))
    home.chmod(0o711)
    f = Fleet(apiserver, home)
    try:
        try:
            f.up()
        except BaseException:
            print(f.dump())
            raise
        yield f
    finally:
        f.down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "fleet" in request.fixturenames:
        print(request.getfixturevalue("fleet").dump())
