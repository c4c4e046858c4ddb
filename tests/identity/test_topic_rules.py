"""Components' cloud topics in the broker ACL (hedgerow.core.topicrule): pure rendering,
table-driven, and the rules an attacker would like to slip in."""

from __future__ import annotations

import pytest

from hedgerow.core import topicrule


def _rules(acl: str) -> list[str]:
    """The ACL lines after Hedgerow's own (which test_broker_config pins)."""
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    return lines[lines.index("pattern write hedgerow/things/%u/status") + 1:]


def test_by_default_a_device_has_its_own_namespace_only() -> None:
    acl = topicrule.render_acl()
    assert _rules(acl) == ["pattern readwrite devices/%u/#"]
    assert "pattern read hedgerow/things/%u/desired" in acl  # Hedgerow's own unchanged
    assert acl.endswith("\n")


FLAGS = [
    ("readwrite devices/%u/#", "pattern readwrite devices/%u/#"),
    ("read fleet/announcements", "pattern read fleet/announcements"),
    ("write telemetry/%u/+/raw", "pattern write telemetry/%u/+/raw"),
    ("read $aws/things/%u/shadow/#", "pattern read $aws/things/%u/shadow/#"),
]


@pytest.mark.parametrize(("flag", "line"), FLAGS)
def test_rules_for_all_devices_are_patterns(flag: str, line: str) -> None:
    acl = topicrule.render_acl(rules=[topicrule.parse_flag(flag)])
    assert _rules(acl) == [line]


def test_label_rules_become_user_blocks_for_the_devices_carrying_the_labels() -> None:
    rules = [*topicrule.DEFAULT_RULES,
             topicrule.parse_flag("read sites/berlin/# site=berlin"),
             topicrule.parse_flag("write sites/berlin/%u/alarms site=berlin,tier=prod")]
    devices = {"dev-b": {"site": "berlin"}, "dev-a": {"site": "berlin", "tier": "prod"},
               "dev-c": {"site": "paris"}}
    assert _rules(topicrule.render_acl(rules=rules, devices=devices)) == [
        "pattern readwrite devices/%u/#",
        "user dev-a",  # sorted: the same fleet renders the same bytes
        "topic read sites/berlin/#",
        "topic write sites/berlin/dev-a/alarms",  # %u substituted: topic lines have none
        "user dev-b",
        "topic read sites/berlin/#",
    ]
    assert topicrule.resolve_unmatched(rules, devices) == []
    lonely = topicrule.parse_flag("read x/y site=mars")
    assert topicrule.resolve_unmatched([lonely], devices) == [lonely]


def test_a_rules_file_with_selectors() -> None:
    rules = topicrule.parse_rules(
        "rules:\n"
        "- access: write\n  topic: ingest/%u\n"
        "- access: read\n  topic: sites/berlin/#\n"
        "  selector:\n    matchExpressions:\n"
        "    - {key: site, operator: In, values: [berlin, potsdam]}\n")
    devices = {"dev-a": {"site": "potsdam"}, "dev-b": {}}
    assert _rules(topicrule.render_acl(rules=rules, devices=devices)) == [
        "pattern write ingest/%u", "user dev-a", "topic read sites/berlin/#"]


BAD_FLAGS = [
    # An attacker's favourites: each would reach Hedgerow's own topics or the broker's.
    ("readwrite +/%u/#", "topic", "first level must be a literal"),  # device 'things'
    ("readwrite #", "topic", "first level must be a literal"),
    ("write %u/status", "topic", "first level must be a literal"),
    ("write hedgerow/things/%u/desired", "topic", "reserved"),
    ("read $SYS/#", "topic", "reserved"),
    # Malformed filters the broker would misread.
    ("read a/b#", "topic", "'#' must be a whole level"),
    ("read a/#/b", "topic", "'#' must be a whole level"),
    ("read a/b+", "topic", "'+' must be a whole level"),
    ("read a/%c", "topic", "'%' may only appear"),
    ("read a/dev-%u", "topic", "'%' may only appear"),
    ("rw devices/%u/#", "access", "'read', 'write' or 'readwrite'"),
    ("read a/b site", "labels", "expected KEY=VALUE"),
    ("read", "", "expected 'ACCESS TOPIC"),
    ("read a b c d", "", "expected 'ACCESS TOPIC"),
]


@pytest.mark.parametrize(("flag", "field", "reason"), BAD_FLAGS)
def test_bad_rules_name_the_field_and_why(flag: str, field: str, reason: str) -> None:
    with pytest.raises(topicrule.RuleError) as caught:
        topicrule.parse_flag(flag)
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("rules:\n- access: read\n  topic: ok/x\n- access: write\n  topic: 'hedgerow/x'\n",
     "rules[1].topic", "reserved"),
    ("rules:\n- access: read\n  topic: a\n  selectr: {}\n", "rules[0].selectr",
     "Extra inputs"),
    ("rules:\n- {access: read, topic: 'a b'}\n", "rules[0].topic", "whitespace"),
    ("rules: [\n", "", "not valid YAML"),
    ("- access: read\n", "", "valid dictionary"),
])
def test_bad_rules_files_name_the_rule(text: str, field: str, reason: str) -> None:
    with pytest.raises(topicrule.RuleError) as caught:
        topicrule.parse_rules(text)
    assert (caught.value.field, reason in caught.value.reason) == (field, True), caught.value


def test_label_rules_need_the_fleet() -> None:
    with pytest.raises(topicrule.RuleError, match="need the fleet's devices"):
        topicrule.render_acl(rules=[topicrule.parse_flag("read a/b site=x")])


def test_devices_from_kubectl_output() -> None:
    listed = ("apiVersion: v1\nkind: List\nitems:\n"
              "- apiVersion: hedgerow.dev/v1alpha1\n  kind: CoreDevice\n"
              "  metadata: {name: dev-a, labels: {site: berlin}}\n  status: {health: OK}\n"
              "- apiVersion: hedgerow.dev/v1alpha1\n  kind: CoreDevice\n"
              "  metadata: {name: dev-b}\n")
    assert topicrule.parse_devices(listed) == {"dev-a": {"site": "berlin"}, "dev-b": {}}
    for bad, field in [
            ("kind: CoreDevice\nmetadata: {name: 'x/#'}\n", "document 1.metadata.name"),
            ("kind: List\nitems:\n- kind: Pod\n  metadata: {name: a}\n", "items[0]"),
            ("kind: CoreDevice\nmetadata: {name: a, labels: {n: 1}}\n",
             "document 1.metadata.labels")]:
        with pytest.raises(topicrule.RuleError) as caught:
            topicrule.parse_devices(bad)
        assert caught.value.field == field
