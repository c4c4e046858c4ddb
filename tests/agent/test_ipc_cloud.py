"""Cloud messaging through the OFFICIAL client: components started by a real agent (as
`nobody`) call PublishToIoTCore / SubscribeToIoTCore with `awsiot.greengrasscoreipc
.clientv2`; the agent carries them on its one MQTT 5 session to a real mosquitto with
mTLS and the ACL `hedgerow broker config` renders; the cloud side is a paho client."""

from __future__ import annotations

import base64
import pathlib
import shutil
from collections.abc import Callable

import pytest

from hedgerow.agent import control
from hedgerow.core import accesscontrol, documents
from tests.identity.conftest import Fleet, fleet  # noqa: F401 (fixture)

from . import ipc_support
from .cloud_support import connected, make_cloud_agent  # noqa: F401 (fixture)
from .conftest import THING, AgentProcess, rc, wait_for
from .ipc_support import policy, start

pytestmark = pytest.mark.mqtt

HERE = pathlib.Path(__file__).resolve().parent
sdk = ipc_support.sdk  # the fixture
PUBLISH, SUBSCRIBE = "aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"
MINE = f"devices/{THING}"  # the device's own namespace, by the default topic rule


@pytest.fixture
def cloud_agent(make_cloud_agent: Callable[..., AgentProcess],  # noqa: F811
                ) -> AgentProcess:
    return make_cloud_agent()


def cloud_component(sdk: pathlib.Path, name: str, resources: list[str],
                    operations: list[str] | None = None) -> documents.ResolvedComponent:
    shutil.copy(HERE / "ipc_cloud_component.py", sdk)
    env = f"PYTHONPATH={sdk}"
    return rc(name, f"exec env {env} {ipc_support.PYTHON} -u {sdk}/ipc_cloud_component.py",
              configuration=policy(name, operations or [PUBLISH, SUBSCRIBE], resources,
                                   service=accesscontrol.MQTTPROXY))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_component_and_cloud_exchange_messages_with_mqtt5_properties(
        cloud_agent: AgentProcess, sdk: pathlib.Path, fleet: Fleet) -> None:  # noqa: F811
    app = fleet.cloud_app()
    app.subscribe(f"{MINE}/#")
    connected(cloud_agent)
    # Greengrass's thing-name variable: a migrated recipe's policy works as written.
    (c,) = start(cloud_agent, cloud_component(sdk, "cloud.a",
                                              ["devices/{iot:thingName}/*"]))
    c.command("iot_publish", topic=f"{MINE}/telemetry", payload=b64(b'{"t": 21}'),
              props=True, tag="t1")
    c.wait(lambda e: e["event"] in ("iot_published", "failed"), "the publish answer")
    assert c.events("failed") == []
    wait_for(lambda: app.on(f"{MINE}/telemetry"), what="the cloud side's copy")
    got = next(m for m in app.messages if m.topic == f"{MINE}/telemetry")
    assert bytes(got.payload) == b'{"t": 21}' and got.qos == 1
    p = got.properties
    assert p.UserProperty == [("unit", "C"), ("site", "b")]
    assert (p.ContentType, p.CorrelationData, p.ResponseTopic, p.PayloadFormatIndicator) \
        == ("application/json", b"\x00corr", f"{MINE}/telemetry/reply", 1)
    assert 590 <= p.MessageExpiryInterval <= 600

    # The reverse: the cloud publishes, the component's SubscribeToIoTCore stream gets it.
    c.command("iot_subscribe", id="cmds", topic=f"{MINE}/commands/+")
    c.wait(lambda e: e["event"] in ("iot_subscribed", "failed"), "subscribed")
    assert c.events("failed") == []
    from paho.mqtt import packettypes
    from paho.mqtt import properties as mqtt_properties
    props = mqtt_properties.Properties(  # type: ignore[no-untyped-call]
        packettypes.PacketTypes.PUBLISH)
    props.UserProperty = [("from", "cloud")]
    props.CorrelationData = b"42"
    app.client.publish(f"{MINE}/commands/light", b"\x01on", qos=1, properties=props)
    event = c.wait(lambda e: e["event"] == "iot_message", "the cloud's command")
    assert (event["topic"], event["payload"], event["user_properties"],
            event["correlation"]) == (f"{MINE}/commands/light", b64(b"\x01on"),
                                      [["from", "cloud"]], b64(b"42"))


def test_the_broker_refuses_what_the_device_may_not_publish_and_the_component_sees_it(
        cloud_agent: AgentProcess, sdk: pathlib.Path, fleet: Fleet) -> None:  # noqa: F811
    """The component's own policy allows everything; the broker's ACL does not: writing
    into another device's namespace or Hedgerow's own desired topic is refused with the
    MQTT 5 reason code, through the SDK's exception — and legitimate work goes on."""
    app = fleet.cloud_app()
    app.subscribe("devices/#")
    connected(cloud_agent)
    (c,) = start(cloud_agent, cloud_component(sdk, "cloud.hostile", ["*"]))
    c.command("iot_publish", topic="devices/other-device/commands", payload=b64(b"evil"),
              tag="other")
    c.command("iot_publish", topic=f"hedgerow/things/{THING}/desired", payload=b64(b"{}"),
              tag="desired")
    c.command("iot_publish", topic=f"{MINE}/fine", payload=b64(b"ok"), tag="fine")
    c.wait(lambda e: e.get("tag") == "fine", "the legitimate publish")
    failed = {e["tag"]: e for e in c.events("failed")}
    assert set(failed) == {"other", "desired"}
    for tag, topic in (("other", "devices/other-device/commands"),
                       ("desired", f"hedgerow/things/{THING}/desired")):
        assert failed[tag]["error"] == "ServiceError"
        assert (f"the cloud broker refused the publish to {topic!r}: Not authorized "
                "(reason code 0x87)") in failed[tag]["message"]
    wait_for(lambda: app.on(f"{MINE}/fine") == [b"ok"], what="the legitimate message")
    assert app.on("devices/other-device/commands") == []


def test_a_publish_no_policy_allows_is_refused_naming_the_policy(
        cloud_agent: AgentProcess, sdk: pathlib.Path, fleet: Fleet) -> None:  # noqa: F811
    app = fleet.cloud_app()
    app.subscribe(f"{MINE}/#")
    connected(cloud_agent)
    (c,) = start(cloud_agent, cloud_component(sdk, "cloud.narrow", [f"{MINE}/allowed"],
                                              operations=[PUBLISH]))
    c.command("iot_publish", topic=f"{MINE}/secret", payload=b64(b"x"), tag="secret")
    c.command("iot_subscribe", id="s", topic=f"{MINE}/allowed", tag="sub")
    c.command("iot_publish", topic=f"{MINE}/allowed", payload=b64(b"y"), tag="allowed")
    c.wait(lambda e: e.get("tag") == "allowed", "the allowed publish")
    failed = {e["tag"]: e for e in c.events("failed")}
    assert set(failed) == {"secret", "sub"}
    assert failed["secret"]["error"] == "UnauthorizedError"
    assert "cloud.narrow" in failed["secret"]["message"]
    assert accesscontrol.MQTTPROXY in failed["secret"]["message"]
    assert f"{MINE}/secret" in failed["secret"]["message"]
    assert failed["sub"]["error"] == "UnauthorizedError"
    wait_for(lambda: app.on(f"{MINE}/allowed") == [b"y"], what="the allowed message")
    assert app.on(f"{MINE}/secret") == []  # nothing reached the cloud


def test_messages_published_while_the_broker_is_down_arrive_in_order(
        cloud_agent: AgentProcess, sdk: pathlib.Path, fleet: Fleet) -> None:  # noqa: F811
    app = fleet.cloud_app()  # persistent session: it gets what arrives while it is away
    app.subscribe(f"{MINE}/#")
    connected(cloud_agent)
    (c,) = start(cloud_agent, cloud_component(sdk, "cloud.offline", [f"{MINE}/*"]))
    c.command("iot_subscribe", id="back", topic=f"{MINE}/back")
    c.wait(lambda e: e["event"] == "iot_subscribed", "subscribed")
    port = fleet.broker.port
    fleet.broker.stop()
    wait_for(lambda: "disconnected from the cloud broker" in cloud_agent.log.read_text(),
             30, "the agent to notice")
    for i in range(12):
        c.command("iot_publish", topic=f"{MINE}/seq", payload=b64(b"%d" % i), tag=f"s{i}")
    # Answered (queued, as Greengrass answers a spooled publish) while the broker is down.
    c.wait(lambda e: e.get("tag") == "s11", "the last offline publish answered")
    assert c.events("failed") == []
    spool = cloud_agent.root / "state" / "cloud-spool"
    assert len(list(spool.iterdir())) == 12
    fleet.broker.start(port=port)
    wait_for(lambda: app.on(f"{MINE}/seq") == [b"%d" % i for i in range(12)], 90,
             "12 messages in order")
    wait_for(lambda: not list(spool.iterdir()), what="the spool to empty")
    # The component's cloud subscription works again after the reconnect.
    app.publish(f"{MINE}/back", b"welcome back")
    event = c.wait(lambda e: e["event"] == "iot_message", "a message after the reconnect")
    assert event["payload"] == b64(b"welcome back")


@pytest.mark.parametrize("policy", ["refuse-new", "drop-oldest"])
def test_a_full_spool_follows_the_agents_policy(
        make_cloud_agent: Callable[..., AgentProcess], sdk: pathlib.Path,  # noqa: F811
        fleet: Fleet, policy: str) -> None:  # noqa: F811
    agent = make_cloud_agent("--cloud-spool-max-messages", "3",
                             "--cloud-spool-policy", policy)
    app = fleet.cloud_app()
    app.subscribe(f"{MINE}/#")
    connected(agent)
    (c,) = start(agent, cloud_component(sdk, "cloud.full", [f"{MINE}/*"]))
    port = fleet.broker.port
    fleet.broker.stop()
    wait_for(lambda: "disconnected from the cloud broker" in agent.log.read_text(),
             30, "the agent to notice")
    for i in range(5):
        c.command("iot_publish", topic=f"{MINE}/n", payload=b64(b"%d" % i), tag=f"n{i}")
    c.wait(lambda e: e.get("tag") == "n4", "the last publish answered")
    failed = {e["tag"]: e for e in c.events("failed")}
    if policy == "refuse-new":
        assert set(failed) == {"n3", "n4"}  # the component is told; nothing accepted is lost
        assert failed["n3"]["error"] == "ServiceError"
        assert "the cloud spool is full" in failed["n3"]["message"]
        assert "policy is refuse-new" in failed["n3"]["message"]
        expected = [b"0", b"1", b"2"]
    else:
        assert failed == {}
        expected = [b"2", b"3", b"4"]  # the oldest made room
    cloud = control.request(agent.root / "agent.sock", {"op": "status"})["cloud"]
    assert (cloud["online"], cloud["queued"], cloud["rejectedFull"], cloud["dropped"]) == (
        False, 3, 2 if policy == "refuse-new" else 0, 0 if policy == "refuse-new" else 2)
    fleet.broker.start(port=port)
    wait_for(lambda: app.on(f"{MINE}/n") == expected, 90, f"{expected} in order")
