"""Operator set-up without surprises: a fleet CA is never made quietly, and the broker
URL a bundle carries defaults to what `broker config` set up, saying where it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import hedgerow
from hedgerow.agent import identity

from .test_cli import run


def test_broker_config_creating_a_ca_says_so_loudly_and_register_never_creates_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csr = identity.init(tmp_path / "device", "dev-q")
    empty = tmp_path / "not-the-ca"
    code, _ = run("device", "sign", "dev-q", "--csr", str(csr), "--ca-dir", str(empty),
                  "--broker-url", "mqtts://127.0.0.1:8883", "--out", str(tmp_path / "b.json"))
    err = capsys.readouterr().err
    assert code == 1
    assert f"no fleet CA in {empty}" in err and "--ca-dir" in err
    assert not empty.exists() and not (tmp_path / "b.json").exists()  # nothing written

    code, _ = run("broker", "config", "--out", str(tmp_path / "broker"),
                  "--ca-dir", str(tmp_path / "ca"))
    err = capsys.readouterr().err
    assert code == 0
    assert f"WARNING: created a NEW fleet CA in {tmp_path / 'ca'}" in err
    code, _ = run("broker", "config", "--out", str(tmp_path / "broker"),
                  "--ca-dir", str(tmp_path / "ca"))
    assert code == 0 and "WARNING" not in capsys.readouterr().err  # reused, nothing new

    # and the CA `broker config` made signs; the device shows its Hedgerow version
    code, _ = run("device", "sign", "dev-q", "--csr", str(csr), "--ca-dir", str(tmp_path / "ca"),
                  "--out", str(tmp_path / "b.json"))
    assert code == 0
    assert run("agent", "install-bundle", "--root", str(tmp_path / "device"),
               str(tmp_path / "b.json"))[0] == 0
    code, out = run("agent", "identity", "--root", str(tmp_path / "device"), "-o", "json")
    assert json.loads(out)["version"] == hedgerow.__version__


@pytest.mark.apiserver
def test_register_with_a_csr_takes_the_broker_url_from_broker_config(
        apiserver: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEDGEROW_BROKER_URL", raising=False)
    ca = tmp_path / "ca"
    code, _ = run("broker", "config", "--out", str(tmp_path / "broker"), "--ca-dir", str(ca),
                  "--host", "mqtt.example.com", "--port", "8884")
    assert code == 0
    csr = identity.init(tmp_path / "device", "dev-u")
    capsys.readouterr()
    bundle = tmp_path / "dev-u.json"
    code, _ = run("device", "register", "dev-u", "-n", "default", "--csr", str(csr),
                  "--ca-dir", str(ca), "--kubeconfig", str(apiserver.kubeconfig),
                  "--out", str(bundle))
    err = capsys.readouterr().err
    assert code == 0, err
    assert json.loads(bundle.read_text())["brokerUrl"] == "mqtts://mqtt.example.com:8884"
    assert (f"broker URL for the bundle: mqtts://mqtt.example.com:8884 (from "
            f"{ca / 'broker.json'}, written by `hedgerow broker config`)") in err

    monkeypatch.setenv("HEDGEROW_BROKER_URL", "mqtts://other.example.com:8883")
    code, _ = run("device", "sign", "dev-u", "--csr", str(csr), "--ca-dir", str(ca),
                  "--out", str(bundle))
    assert code == 0
    assert json.loads(bundle.read_text())["brokerUrl"] == "mqtts://other.example.com:8883"
    assert "(from $HEDGEROW_BROKER_URL)" in capsys.readouterr().err
