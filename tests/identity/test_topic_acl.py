"""Topic rules from `hedgerow broker config` in a real mosquitto (TLS, CN as identity):
a device uses its own namespace and what its labels grant, and the broker refuses the
rest with MQTT 5 reason code 0x87 — what a component will see as its error."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.identity.conftest import Fleet, MqttClient, wait_for
from tests.identity.test_cli import run

pytestmark = pytest.mark.mqtt

NOT_AUTHORIZED = 0x87
ACCEPTED = {0x00, 0x10}  # success, "no matching subscribers" (also a success)

DEVICES = """\
apiVersion: v1
kind: List
items:
- apiVersion: hedgerow.dev/v1alpha1
  kind: CoreDevice
  metadata: {name: acl-a, labels: {site: berlin}}
- apiVersion: hedgerow.dev/v1alpha1
  kind: CoreDevice
  metadata: {name: acl-b, labels: {site: paris}}
"""


class Acks:
    """PUBACK reason codes of one client, by message id."""

    def __init__(self, client: MqttClient) -> None:
        self.codes: dict[int, int] = {}
        self.lock = threading.Lock()
        client.client.on_publish = self._on_publish
        self.client = client

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self.lock:
            self.codes[mid] = reason.value

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """The broker's PUBACK reason code for one QoS 1 publish."""
        mid = self.client.client.publish(topic, payload, qos=1).mid
        code = wait_for(lambda: self._code(mid), what=f"PUBACK for {topic}")
        assert code is not None
        return code - 1

    def _code(self, mid: int) -> int | None:
        with self.lock:
            code = self.codes.get(mid)
        return None if code is None else code + 1  # 0 (success) is falsy


def apply_rules(fleet: Fleet, tmp_path: Path, *rules: str) -> tuple[int, str]:
    (tmp_path / "devices.yaml").write_text(DEVICES)
    flags = [arg for rule in rules for arg in ("--topic-rule", rule)]
    code, out = run("broker", "config", "--acl-only", "--out", str(fleet.broker_dir),
                    "--devices", str(tmp_path / "devices.yaml"), *flags)
    if code == 0:
        assert fleet.broker.proc is not None
        os.kill(fleet.broker.proc.pid, signal.SIGHUP)  # mosquitto re-reads its ACL
    return code, out


def test_devices_get_their_namespace_and_their_labels_rules_only(fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    a, b = fleet.client(fleet.device("acl-a")), fleet.client(fleet.device("acl-b"))
    acks_a, acks_b = Acks(a), Acks(b)
    # Before: the default rules only, so the label rule's topic is refused.
    assert acks_a.publish("sites/berlin/acl-a/alarms") == NOT_AUTHORIZED
    code, out = apply_rules(fleet, tmp_path, "write sites/berlin/%u/alarms site=berlin")
    assert code == 0, out
    # The reload is real once the label rule is in force (no fixed sleep).
    wait_for(lambda: acks_a.publish("sites/berlin/acl-a/alarms") in ACCEPTED,
             what="the reloaded ACL")

    a.subscribe("devices/acl-a/#")
    b.subscribe("devices/acl-b/#")
    assert acks_a.publish("devices/acl-a/hello", b"from a") in ACCEPTED
    wait_for(lambda: a.on("devices/acl-a/hello") == [b"from a"], what="a's own message")

    # Another device's namespace, Hedgerow's topics: refused with the reason code.
    assert acks_a.publish("devices/acl-b/t", b"intruder") == NOT_AUTHORIZED
    assert acks_a.publish("hedgerow/things/acl-b/desired", b"{}") == NOT_AUTHORIZED
    assert acks_a.publish("hedgerow/things/acl-b/status", b"{}") == NOT_AUTHORIZED
    assert acks_b.publish("devices/acl-b/marker", b"m") in ACCEPTED
    wait_for(lambda: b.on("devices/acl-b/marker"), what="b's marker")
    assert b.on("devices/acl-b/t") == []  # the refused message went nowhere

    # The label rule: acl-a (site=berlin) may write its alarms, acl-b (paris) may not,
    # not even under its own name.
    assert acks_a.publish("sites/berlin/acl-a/alarms") in ACCEPTED
    assert acks_b.publish("sites/berlin/acl-b/alarms") == NOT_AUTHORIZED
    assert acks_a.publish("sites/berlin/acl-b/alarms") == NOT_AUTHORIZED


def test_a_bad_rule_names_the_flag_and_writes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    acl = (fleet.broker_dir / "acl").read_bytes()
    code, _ = apply_rules(fleet, tmp_path, "readwrite devices/%u/#", "readwrite +/%u/#")
    assert code == 1
    assert (fleet.broker_dir / "acl").read_bytes() == acl
    (tmp_path / "rules.yaml").write_text("rules:\n- access: write\n  topic: hedgerow/#\n")
    code, _ = run("broker", "config", "--acl-only", "--out", str(fleet.broker_dir),
                  "--topic-rules", str(tmp_path / "rules.yaml"))
    assert code == 1
    code, _ = run("broker", "config", "--acl-only", "--out", str(fleet.broker_dir),
                  "--topic-rule", "read sites/x site=x")  # label rule without --devices
    assert code == 1
    assert (fleet.broker_dir / "acl").read_bytes() == acl


def test_bad_rule_errors_say_where(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   ) -> None:
    out = tmp_path / "never"
    code, _ = run("broker", "config", "--out", str(out), "--ca-dir", str(tmp_path / "ca"),
                  "--topic-rule", "readwrite +/%u/#")
    assert code == 1
    err = capsys.readouterr().err
    assert "--topic-rule 'readwrite +/%u/#': topic: '+/%u/#': the first level" in err
    (tmp_path / "rules.yaml").write_text("rules:\n- access: read\n  topic: ok\n"
                                         "- access: write\n  topic: 'a/#/b'\n")
    code, _ = run("broker", "config", "--out", str(out), "--ca-dir", str(tmp_path / "ca"),
                  "--topic-rules", str(tmp_path / "rules.yaml"))
    assert code == 1
    err = capsys.readouterr().err
    assert f"--topic-rules {tmp_path / 'rules.yaml'}: rules[1].topic: 'a/#/b'" in err
    assert not out.exists() and not (tmp_path / "ca").exists()  # nothing written
