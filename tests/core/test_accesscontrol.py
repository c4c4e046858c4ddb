"""Greengrass accessControl policies: default deny, wildcards, validation, refusals."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hedgerow.core import accesscontrol as ac
from hedgerow.core import environment, mqtttopic

PUB = "aws.greengrass#PublishToTopic"
SUB = "aws.greengrass#SubscribeToTopic"
IOT_PUB = "aws.greengrass#PublishToIoTCore"


def config(service: str, operations: list[str], resources: list[str]) -> dict[str, Any]:
    return {"accessControl": {service: {"c:pubsub:1": {
        "policyDescription": "d", "operations": operations, "resources": resources}}}}


@pytest.mark.parametrize(("operations", "resources", "operation", "resource", "allowed"), [
    ([PUB], ["a/b"], PUB, "a/b", True),
    ([PUB], ["a/b"], PUB, "a/c", False),                    # another topic
    ([PUB], ["a/b"], SUB, "a/b", False),                    # another operation
    (["*"], ["a/b"], SUB, "a/b", True),                     # every operation
    ([PUB], ["*"], PUB, "anything/at/all", True),
    ([PUB], ["a/*"], PUB, "a/b/c", True),                   # glob: any characters
    ([PUB], ["a/*/c"], PUB, "a/x/y/c", True),
    ([PUB], ["a/*"], PUB, "b/a", False),
    ([PUB], ["a/+/c"], PUB, "a/b/c", True),                 # MQTT +: one level
    ([PUB], ["a/+/c"], PUB, "a/b/x/c", False),
    ([PUB], ["a/#"], PUB, "a", True),                       # MQTT #: the parent too
    ([PUB], ["a/#"], PUB, "a/b/c", True),
    ([PUB], ["a/#"], PUB, "ab/c", False),
    ([SUB], ["a/#"], SUB, "a/+/c", True),                   # a filter within the policy's
    ([SUB], ["a/+"], SUB, "a/#", False),                    # a wider filter is not
    ([SUB], ["a/b"], SUB, "a/+", False),
    ([SUB], ["a/+"], SUB, "a/+", True),
    ([PUB], ["things/{iot:thingName}/x"], PUB, "things/gw-1/x", True),
    ([PUB], ["things/{iot:thingName}/x"], PUB, "things/gw-2/x", False),
])
def test_pubsub_decisions(operations: list[str], resources: list[str], operation: str,
                          resource: str, allowed: bool) -> None:
    policies = ac.resolve_policies("c", config(ac.PUBSUB, operations, resources))
    assert policies.problems == ()
    assert ac.is_allowed(policies, ac.PUBSUB, operation, resource, thing="gw-1") is allowed


@pytest.mark.parametrize("configuration", [
    {},                                                      # no policies at all
    config(ac.MQTTPROXY, ["*"], ["*"]),                     # another service's policy
    config(ac.PUBSUB, ["*"], ["a"]) | {"other": 1},
])
def test_default_deny(configuration: dict[str, Any]) -> None:
    policies = ac.resolve_policies("c", configuration)
    assert not ac.is_allowed(policies, ac.PUBSUB, PUB, "b")


def test_mqttproxy_is_separate_from_pubsub() -> None:
    policies = ac.resolve_policies("c", config(ac.MQTTPROXY, [IOT_PUB], ["devices/#"]))
    assert ac.is_allowed(policies, ac.MQTTPROXY, IOT_PUB, "devices/x")
    assert not ac.is_allowed(policies, ac.PUBSUB, PUB, "devices/x")


@pytest.mark.parametrize(("access_control", "named"), [
    ("nope", "c: configuration.accessControl: must be a map"),
    ({ac.PUBSUB: []}, f"c: configuration.accessControl.{ac.PUBSUB}: must be a map"),
    ({ac.PUBSUB: {"p1": "x"}}, f"accessControl.{ac.PUBSUB}.p1: must be a map"),
    ({ac.PUBSUB: {"p1": {"operations": [PUB]}}},
     f"accessControl.{ac.PUBSUB}.p1.resources: must be a non-empty list of strings"),
    ({ac.PUBSUB: {"p1": {"operations": "x", "resources": ["a"]}}},
     f"accessControl.{ac.PUBSUB}.p1.operations: must be a non-empty list"),
    ({ac.PUBSUB: {"p1": {"operations": ["aws.greengrass#PublishToTopics"],
                         "resources": ["a"]}}},
     f"accessControl.{ac.PUBSUB}.p1.operations: unknown operation(s) "
     "['aws.greengrass#PublishToTopics'] for service aws.greengrass.ipc.pubsub"),
    ({ac.MQTTPROXY: {"p1": {"operations": [PUB], "resources": ["a"]}}},
     f"accessControl.{ac.MQTTPROXY}.p1.operations: unknown operation(s)"),
    ({ac.PUBSUB: {"p1": {"operations": [PUB], "resources": ["a/#/b"]}}},
     "p1.resources: not MQTT topic filters: ['a/#/b']"),
    ({ac.PUBSUB: {"p1": {"operations": [PUB], "resources": ["a"], "resource": ["b"]}}},
     "p1: unknown field(s) ['resource']"),
])
def test_invalid_policies_are_named(access_control: Any, named: str) -> None:
    policies = ac.resolve_policies("c", {"accessControl": access_control})
    assert len(policies.problems) == 1 and named in policies.problems[0], policies.problems
    assert not ac.is_allowed(policies, ac.PUBSUB, PUB, "a")  # a broken policy grants nothing


def test_unknown_services_are_kept_but_not_validated() -> None:
    """A Greengrass recipe may carry policies for services Hedgerow does not serve yet
    (or a component's own): they are no error, and they grant nothing here."""
    policies = ac.resolve_policies("c", config("com.example.Custom", ["x#Y"], ["*"]))
    assert policies.problems == () and len(policies.policies) == 1


@pytest.mark.parametrize("resource", ["factory/secrets", "factory/#", "a b: c", "#",
                                      "x/'q'\"", "+/x", "{iot:thingName}/x", "- a"])
def test_refusal_names_everything_and_its_yaml_is_the_policy(resource: str) -> None:
    message = ac.render_refusal("com.example.Pub", ac.PUBSUB, PUB, resource)
    assert message.startswith("com.example.Pub is not authorized to call "
                              "aws.greengrass#PublishToTopic on resource ")
    snippet = yaml.safe_load(message[message.index("accessControl:"):])
    policies = ac.resolve_policies("com.example.Pub", snippet)
    assert policies.problems == ()
    assert ac.is_allowed(policies, ac.PUBSUB, PUB, resource)  # pasting it allows exactly that


def test_permissions_for_plan() -> None:
    policies = ac.resolve_policies("c", {"accessControl": {
        ac.PUBSUB: {"p1": {"operations": ["*"], "resources": ["a/#"]},
                    "p2": {"operations": [PUB], "resources": ["b"]}}}})
    assert ac.render_permissions(policies) == [
        f"{ac.PUBSUB} {PUB}: a/#, b", f"{ac.PUBSUB} {SUB}: a/#"]


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("#", "a/b", True), ("+/+", "a/b", True), ("+", "/a", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
    ("a/+/c", "a//c", True),
])
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert mqtttopic.is_match(topic_filter, topic) is matches


@pytest.mark.parametrize(("text", "is_filter_ok", "is_topic_ok"), [
    ("a/b", True, True), ("a/+", True, False), ("a/#", True, False), ("a/#/b", False, False),
    ("a+/b", False, False), ("", False, False), ("a\0", False, False), ("a/b#", False, False),
])
def test_topic_validation(text: str, is_filter_ok: bool, is_topic_ok: bool) -> None:
    assert (mqtttopic.resolve_filter_problem(text) is None) is is_filter_ok
    assert (mqtttopic.resolve_topic_problem(text) is None) is is_topic_ok


def test_one_environment_for_processes_and_containers() -> None:
    facts = environment.AgentFacts(thing="gw", region="eu-west-1", ipc_socket="/s/ipc.sock",
                                   root_ca="/r/ca.pem", root="/r")
    env = environment.render_component_env("c", "1.0.0", "tok", facts)
    assert env[environment.SOCKET_ENV] == "/s/ipc.sock" and env["SVCUID"] == "tok"
    assert env["AWS_IOT_THING_NAME"] == "gw" and env["AWS_REGION"] == "eu-west-1"
    assert env["GG_ROOT_CA_PATH"] == "/r/ca.pem" and env["HEDGEROW_ROOT"] == "/r"
    no_socket = environment.render_component_env("c", "1.0.0", "tok", environment.AgentFacts(
        thing="gw", region="r", ipc_socket=None, root_ca="/ca"))
    assert environment.SOCKET_ENV not in no_socket and "HEDGEROW_ROOT" not in no_socket
