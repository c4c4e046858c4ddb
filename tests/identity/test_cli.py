"""The identity subcommands end to end: `broker config` output runs a real mosquitto,
`agent init` → `device sign` → `agent install-bundle` gives a device that connects."""

from __future__ import annotations

import argparse
import io
import json
import os
import pwd
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from hedgerow.agent import cli as agent_cli
from hedgerow.agent import connector, identity, identity_cli
from hedgerow.controller import fleet_cli, pki
from tests.support.mosquitto import Mosquitto
from tests.support.net import free_port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hedgerow")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (agent_cli, identity_cli, fleet_cli):  # the order _PLUGINS must keep
        module.register(sub)
    return p


def run(*argv: str) -> tuple[int, str]:
    args = parser().parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code: int = args.handler(args)
    return code, out.getvalue()


@pytest.mark.mqtt
def test_cli_round_trip_and_generated_broker_config(tmp_path: Path) -> None:
    port = free_port()
    etc, ca_dir, root = tmp_path / "broker", tmp_path / "ca", tmp_path / "device"
    user = ["--user", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
    code, out = run("broker", "config", "--out", str(etc), "--ca-dir", str(ca_dir),
                    "--port", str(port), *user)
    assert code == 0, out
    assert (etc / "server.key").stat().st_mode & 0o777 == 0o600
    assert (etc / "controller.key").stat().st_mode & 0o777 == 0o600
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600

    code, csr = run("agent", "init", "--root", str(root), "--thing", "dev-a")
    assert code == 0 and "BEGIN CERTIFICATE REQUEST" in csr and "PRIVATE" not in csr
    (tmp_path / "dev-a.csr").write_text(csr)
    bundle = tmp_path / "dev-a.bundle.json"
    code, _ = run("device", "sign", "dev-a", "--csr", str(tmp_path / "dev-a.csr"),
                  "--ca-dir", str(ca_dir), "--broker-url", f"mqtts://127.0.0.1:{port}",
                  "--out", str(bundle))
    assert code == 0
    assert "PRIVATE" not in bundle.read_text()
    code, _ = run("device", "sign", "dev-b", "--csr", str(tmp_path / "dev-a.csr"),
                  "--ca-dir", str(ca_dir), "--broker-url", f"mqtts://127.0.0.1:{port}",
                  "--out", str(tmp_path / "x.json"))
    assert code == 1  # CN dev-a is not dev-b
    code, out = run("agent", "install-bundle", "--root", str(root), str(bundle))
    assert code == 0, out
    code, out = run("agent", "identity", "--root", str(root), "-o", "json")
    assert json.loads(out)["daysLeft"] in (364, 365)

    conf = (etc / "mosquitto.conf").read_text()
    (tmp_path / "run").mkdir()
    mosq = Mosquitto(tls=True, directory=tmp_path / "run", config=lambda _: conf)
    mosq.start(port=port)  # the generated configuration, unchanged
    conn = connector.Connector.from_root(root, "dev-a", backoff_min_s=0.1,
                                         backoff_max_s=0.5, poll_s=0.05)
    conn.start()
    try:
        assert conn.wait_connected(10), conn.stats.last_error
    finally:
        conn.stop()
        mosq.stop()
    assert identity.load(root).thing == "dev-a"


def test_agent_plugin_order_shares_the_agent_command() -> None:
    actions: Any = parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    agent = actions.choices["agent"]
    names = set(agent._subparsers._group_actions[0].choices)
    assert {"run", "init", "install-bundle", "identity"} <= names


@pytest.mark.apiserver
def test_device_register_creates_coredevice_and_bundle(apiserver: Any, tmp_path: Path,
                                                       ) -> None:
    root = tmp_path / "device"
    csr = identity.init(root, "dev-r")
    pki.FleetCA.create(tmp_path / "ca")  # register signs with a CA, never makes one
    bundle = tmp_path / "b.json"
    code, _ = run("device", "register", "dev-r", "--namespace", "berlin", "--label",
                  "site=berlin", "--csr", str(csr),
                  "--kubeconfig", str(apiserver.kubeconfig), "--ca-dir", str(tmp_path / "ca"),
                  "--broker-url", "mqtts://127.0.0.1:8883", "--out", str(bundle))
    assert code == 0
    obj = json.loads(apiserver.kubectl("get", "coredevice", "dev-r", "-o", "json").stdout)
    assert obj["metadata"]["labels"] == {"site": "berlin"}
    assert obj["spec"]["csr"] == csr.read_text()
    assert "BEGIN CERTIFICATE" in obj["status"]["certificate"]["pem"]
    assert identity.install_bundle(root, bundle.read_bytes()).thing == "dev-r"
    # GitOps path: package the certificate already in the status.
    code, _ = run("device", "bundle", "dev-r", "--kubeconfig", str(apiserver.kubeconfig),
                  "--ca-dir", str(tmp_path / "ca"), "--broker-url", "mqtts://127.0.0.1:8883",
                  "--out", str(tmp_path / "c.json"))
    assert code == 0
    assert json.loads((tmp_path / "c.json").read_text())["certificatePem"] == \
        obj["status"]["certificate"]["pem"]


def test_reregistering_with_a_new_key_revokes_the_old_certificate(apiserver: Any,
                                                                   tmp_path: Path) -> None:
    """Re-signing revokes what it replaces: a device re-registered with a new key (a
    re-imaged device, a stolen key) leaves its old certificate on the CRL; a renewal of
    the same key revokes nothing."""
    ca_dir, broker_dir = tmp_path / "ca", tmp_path / "broker"
    ca = pki.FleetCA.create(ca_dir)
    broker_dir.mkdir()

    def register(csr: Path, out: str) -> dict[str, Any]:
        code, _ = run("device", "register", "dev-rr", "--namespace", "berlin", "--csr",
                      str(csr), "--kubeconfig", str(apiserver.kubeconfig),
                      "--ca-dir", str(ca_dir), "--broker-dir", str(broker_dir),
                      "--broker-url", "mqtts://127.0.0.1:8883", "--out", str(tmp_path / out))
        assert code == 0
        obj: dict[str, Any] = json.loads(
            apiserver.kubectl("get", "coredevice", "dev-rr", "-o", "json").stdout)
        return obj

    first = pki.load_certificate(register(identity.init(tmp_path / "a", "dev-rr"), "1.json")
                                 ["status"]["certificate"]["pem"])
    assert not ca.is_revoked(first)
    # init is idempotent: the same key, a new CSR for it
    renewed = pki.load_certificate(register(identity.init(tmp_path / "a", "dev-rr"), "2.json")
                                   ["status"]["certificate"]["pem"])
    assert not ca.is_revoked(first) and not ca.is_revoked(renewed)  # same key: a renewal
    second = pki.load_certificate(register(identity.init(tmp_path / "b", "dev-rr"), "3.json")
                                  ["status"]["certificate"]["pem"])
    ca = pki.FleetCA.load(ca_dir)
    assert ca.is_revoked(first) and ca.is_revoked(renewed)
    assert not ca.is_revoked(second)
    assert (broker_dir / "crl.pem").exists()  # the broker's CRL was rewritten
