"""Metrics as an operator sees them: a real Prometheus server scrapes a real controller
(real API server, mosquitto, devices reporting) and a real agent running a real process
component, and the series answer the questions a dashboard asks."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from tests.agent.conftest import AgentProcess, pids_with_marker, rc, remove_cgroups
from tests.conftest import ROOT
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.support.net import LOOPBACK, free_port
from tests.support.prometheus import Prometheus
from tests.support.wait import wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.mqtt]

THING = f"gw-metrics-{os.getpid()}"


@pytest.fixture
def metered_agent() -> Iterator[tuple[AgentProcess, int]]:
    home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-metrics-"))
    home.chmod(0o711)  # components run as nobody and must traverse it
    root = home / "root"
    (root / "desired").mkdir(parents=True)
    (root / "deployments").mkdir()
    port = free_port()
    agent = AgentProcess(root, THING)
    agent.start("--metrics-port", str(port))
    try:
        yield agent, port
    finally:
        agent.stop()
        for pid in pids_with_marker(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_cgroups(THING)
        shutil.rmtree(home, ignore_errors=True)


def test_prometheus_scrapes_the_controller_and_the_agent(
    cluster: Cluster, devices: Devices, tmp_path: pathlib.Path,
    controller_factory: Callable[..., ControllerProcess],
    metered_agent: tuple[AgentProcess, int],
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(ROOT / "examples"))
    devices.responder = lambda thing, doc: "SUCCEEDED"
    controller_port = free_port()
    controller_factory("--metrics", f"{LOOPBACK}:{controller_port}")
    agent, agent_port = metered_agent
    # A component that uses memory and CPU, so its cgroup has something to show.
    agent.deploy(rc("com.example.Busy", run="while :; do :; done & exec sleep 300"))
    agent.wait_states({"com.example.Busy": "RUNNING"}, timeout=30)

    with Prometheus(tmp_path / "prometheus", {
            "controller": f"{LOOPBACK}:{controller_port}",
            "agent": f"{LOOPBACK}:{agent_port}"}) as prom:
        wait_for(lambda: prom.targets_up() == {"controller": "up", "agent": "up"}, 60,
                 "both targets up")

        # Controller: the examples' three devices got documents and reported success.
        wait_for(lambda: prom.value("hedgerow_controller_desired_published_total") == 3,
                 60, "3 documents published")
        wait_for(lambda: prom.value('hedgerow_controller_devices{health="HEALTHY"}') == 3,
                 60, "3 healthy devices")
        assert prom.query("hedgerow_controller_devices") == {
            (("health", "HEALTHY"),): 3.0, (("health", "UNHEALTHY"),): 0.0,
            (("health", "UNKNOWN"),): 0.0}
        wait_for(lambda: prom.value(
            'hedgerow_controller_devices_by_revision{state="current"}') == 3, 30,
            "3 devices on their desired revision")
        wait_for(lambda: prom.value(
            'hedgerow_controller_deployment_devices{deployment="factory-1-apps",'
            'state="succeeded"}') == 2, 30, "factory-1-apps succeeded on 2 devices")
        assert prom.value('hedgerow_controller_deployment_devices{deployment='
                          '"factory-1-apps",state="targeted"}') == 2
        assert (prom.value('sum(hedgerow_controller_status_writes_total{kind="CoreDevice",'
                           'result="ok"})') or 0) >= 3
        assert (prom.value('hedgerow_controller_reports_received_total') or 0) >= 3
        assert (prom.value("hedgerow_controller_pass_duration_seconds_count") or 0) >= 1
        assert (prom.value("hedgerow_controller_publish_duration_seconds_count") or 0) >= 1
        assert prom.value("hedgerow_controller_leader") == 1
        assert set(prom.query("hedgerow_controller_queue_depth")) == {
            (("queue", q),) for q in ("api", "status", "work")}
        # Bounded labels: no series names a device.
        for series in prom.api("series", **{"match[]": '{job="controller"}'}):
            assert not any("gateway" in v for v in series.values()), series

        # Agent: its component by state, its passes, its cgroup's use.
        wait_for(lambda: prom.value('hedgerow_agent_components{state="RUNNING"}') == 1, 30,
                 "1 running component")
        assert (prom.value("hedgerow_agent_pass_duration_seconds_count") or 0) >= 1
        assert prom.value("hedgerow_agent_ipc_clients") == 0
        wait_for(lambda: (prom.value('hedgerow_agent_component_memory_bytes{component='
                                     '"com.example.Busy"}') or 0) > 0, 30, "memory in use")
        wait_for(lambda: (prom.value('rate(hedgerow_agent_component_cpu_seconds_total{'
                                     'component="com.example.Busy"}[5s])') or 0) > 0.2,
                 45, "the busy loop's CPU")

        # The Grafana dashboard shipped in manifests/ asks valid queries of series that
        # exist.
        _check_dashboard(prom)

        # A restart command shows as a restart.
        assert agent.cli("component", "restart", "com.example.Busy").returncode == 0
        wait_for(lambda: prom.value('hedgerow_agent_component_restarts_total{'
                                    'component="com.example.Busy"}') == 1, 30, "1 restart")


def _check_dashboard(prom: Prometheus) -> None:
    dashboard = json.loads((ROOT / "manifests" / "monitoring" / "grafana-dashboard.json")
                           .read_text())
    exported = set(prom.api("label/__name__/values"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 15
    for expr in exprs:
        query = expr.replace("$controller_job", "controller").replace("$agent_job", "agent")
        prom.query(query)  # the API refuses invalid PromQL (asserted in Prometheus.api)
        for name in re.findall(r"hedgerow_[a-z_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in exported or f"{base}_bucket" in exported, (name, expr)


def test_agent_metrics_are_loopback_and_off_by_default(
    metered_agent: tuple[AgentProcess, int],
) -> None:
    _, port = metered_agent
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as r:
        assert b"hedgerow_agent_passes_total" in r.read()
    listening = pathlib.Path("/proc/net/tcp").read_text()
    # 0100007F is 127.0.0.1 in /proc/net/tcp's byte order; never 00000000 (all).
    assert f"0100007F:{port:04X}" in listening
    assert f"00000000:{port:04X}" not in listening
    # Off (no flag), the agent does not even import prometheus_client: its memory is
    # a product requirement (bench/agent_memory.py).
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from hedgerow.agent import agent, cli, metrics; "
         "agent.Agent; "
         "print('prometheus_client' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip() == "False"
