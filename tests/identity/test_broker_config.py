"""Pure: the broker contract as text (hedgerow.core.broker) and identity rules."""

from __future__ import annotations

import datetime

import pydantic
import pytest

from hedgerow.core import base, broker, identity


def test_acl_devices_own_topics_only_controller_everything() -> None:
    acl = broker.render_acl()
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "user hedgerow_controller",
        "topic readwrite hedgerow/things/#",
        "pattern read hedgerow/things/%u/desired",
        "pattern write hedgerow/things/%u/status",
    ]
    assert acl.endswith("\n")  # VerneMQ drops a last line without one


@pytest.mark.parametrize("name", ["controller", "hedgerow-controller", "dev-a",
                                  "", "a b", "x/y", "#", "+", "a" * 65])
def test_controller_identity_can_never_be_a_device(name: str) -> None:
    with pytest.raises(ValueError):
        broker.render_acl(name)


def test_mosquitto_config_tls_only_certs_required() -> None:
    text = broker.render_mosquitto_config(broker.MosquittoSettings(
        cafile="/etc/h/ca.pem", certfile="/etc/h/server.pem", keyfile="/etc/h/server.key",
        acl_file="/etc/h/acl", port=8883, persistence_location="/var/lib/mosquitto"))
    lines = text.splitlines()
    for line in ("listener 8883 127.0.0.1", "require_certificate true",
                 "use_identity_as_username true", "use_username_as_clientid true",
                 "allow_anonymous false", "acl_file /etc/h/acl", "cafile /etc/h/ca.pem",
                 "persistence true", "persistence_location /var/lib/mosquitto/"):
        assert line in lines
    assert [line for line in lines if line.startswith("listener")] == [
        "listener 8883 127.0.0.1"]  # one listener, and it is TLS
    assert "password_file" not in text and "psk" not in text


def test_mosquitto_config_refuses_injection() -> None:
    with pytest.raises(ValueError):
        broker.render_mosquitto_config(broker.MosquittoSettings(
            cafile="/ca\nallow_anonymous true", certfile="c", keyfile="k", acl_file="a"))


def test_topics_refuse_wildcards_and_bad_names() -> None:
    assert broker.desired_topic("dev-a") == "hedgerow/things/dev-a/desired"
    assert broker.status_topic("dev-a") == "hedgerow/things/dev-a/status"
    for bad in ("+", "#", "a/b", "Dev", ""):
        with pytest.raises(ValueError):
            broker.desired_topic(bad)


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n"


def test_bundle_public_material_over_tls_only() -> None:
    ok = identity.Bundle(thing="dev-a", broker_url="mqtts://mqtt.example.com:8883",
                         ca_pem=PEM, certificate_pem=PEM,
                         signing_key_pem=KEY)
    assert set(ok.to_dict()) == {"apiVersion", "kind", "thing", "brokerUrl", "caPem",
                                 "certificatePem", "signingKeyPem"}
    for url in ("mqtt://h:1883", "mqtts://", "https://h", "mqtts://u:p@h:1"):
        with pytest.raises(pydantic.ValidationError):
            identity.Bundle(thing="dev-a", broker_url=url, ca_pem=PEM, certificate_pem=PEM,
                            signing_key_pem=KEY)
    with pytest.raises(pydantic.ValidationError):
        identity.Bundle(thing="dev-a", broker_url="mqtts://h", ca_pem=PEM,
                        certificate_pem=PEM + "-----BEGIN PRIVATE KEY-----\n",
                        signing_key_pem=KEY)


def test_expiry_condition() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert identity.days_left(now + datetime.timedelta(days=10, hours=23), now) == 10
    assert identity.days_left(now - datetime.timedelta(hours=1), now) == -1
    cases = {None: ("Unknown", "NotReported"), 200: ("True", "Valid"),
             30: ("False", "ExpiringSoon"), -1: ("False", "Expired")}
    for days, (status, reason) in cases.items():
        c = identity.expiry_condition(days, now)
        assert (c.type, c.status, c.reason) == ("CertificateValid",
                                                base.ConditionStatus(status), reason)
