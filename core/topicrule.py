"""Components' cloud topics: the rules `hedgerow broker config` renders into the broker ACL.

Pure: parse and check rules, render ACL text. The broker ACL is the authority on cloud
topics (ARCHITECTURE.md); IPC policies only decide what a component may *ask* the agent
to send. A rule grants devices ``read`` (subscribe and receive), ``write`` (publish) or
``readwrite`` on a topic filter in which ``%u`` stands for the device's thing name (its
certificate CN: mosquitto's and VerneMQ's ``pattern`` substitution). A rule applies to
all devices, or to the devices whose CoreDevice labels match its ``selector``.

By default (no rule given) each device may publish and subscribe under its own namespace
``devices/<thing>/#`` and nowhere else. Hedgerow's own topics (``hedgerow/…``) are never
reachable through a rule: a rule's first topic level must be a literal other than
``hedgerow`` (a rule such as ``+/%u/#`` would give a device called ``things`` write access
to ``hedgerow/things/…``, every device's desired document included), and ``$SYS`` is the
broker's.

Why label rules render per device: mosquitto ACLs key on the username (the CN), not on
attributes, so a label rule becomes a ``user <thing>`` block for each device carrying the
label *when the ACL is rendered*. A device registered or relabelled later gets its label
rules when the ACL is rendered again (and mosquitto reloads it on SIGHUP).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final

import pydantic
import yaml

from hedgerow.core import base, broker, manifest, mqtttopic, thinggroup

THING: Final = "%u"
MAX_TOPIC_CHARS: Final = 512  # far above any real filter; keeps one ACL line bounded
MAX_RULES: Final = 1000
RESERVED_FIRST_LEVELS: Final = frozenset({broker.TOPIC_ROOT.split("/")[0], "$SYS"})
# Printable, no whitespace (an ACL line is space-separated), no NUL or control characters.
_TOPIC_CHARS = re.compile(r"^[^\s\x00-\x1f\x7f]+$")


class Access(base.StrEnum):
    READ = "read"        # subscribe, and receive what matches
    WRITE = "write"      # publish
    READWRITE = "readwrite"


class RuleError(ValueError):
    """A rule that cannot be rendered; ``field`` says which part (e.g. ``rules[2].topic``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}" if field else reason)


def check_topic(topic: str) -> str:
    """``topic`` if it is a filter a rule may grant; ValueError saying why not."""
    if not topic:
        raise ValueError("the topic is empty")
    if len(topic) > MAX_TOPIC_CHARS:
        raise ValueError(f"the topic is longer than {MAX_TOPIC_CHARS} characters")
    if not _TOPIC_CHARS.fullmatch(topic):
        raise ValueError(f"{topic!r} has whitespace or control characters")
    problem = mqtttopic.resolve_filter_problem(topic)
    if problem is not None:
        raise ValueError(f"{topic!r}: {problem}")
    levels = topic.split("/")
    for level in levels:
        if "%" in level and level != THING:
            raise ValueError(f"{topic!r}: '%' may only appear as a whole level {THING} "
                             "(the device's thing name)")
    first = levels[0]
    if first in ("+", "#", THING, ""):
        raise ValueError(f"{topic!r}: the first level must be a literal name, not "
                         f"{first!r} (a wildcard first level would reach Hedgerow's "
                         f"own {broker.TOPIC_ROOT}/… topics)")
    if first in RESERVED_FIRST_LEVELS:
        raise ValueError(f"{topic!r}: topics under {first}/ are reserved "
                         f"({'the broker' if first == '$SYS' else 'Hedgerow'}'s own)")
    return topic


Topic = Annotated[str, pydantic.AfterValidator(check_topic)]


class TopicRule(base.Model):
    """One grant. ``selector`` None: every device."""

    access: Access
    topic: Topic
    selector: thinggroup.LabelSelector | None = None


class TopicRules(base.Model):
    """The rules file (YAML) `hedgerow broker config --topic-rules FILE` reads."""

    rules: Annotated[list[TopicRule], pydantic.Field(max_length=MAX_RULES)]


DEFAULT_RULES: Final = (TopicRule(access=Access.READWRITE, topic=f"devices/{THING}/#"),)


def _reason(error: Any) -> str:
    ctx = error.get("ctx") or {}
    if "error" in ctx:
        return str(ctx["error"])
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    return f"{error['msg']}{shown}"


def _first_problem(exc: pydantic.ValidationError, prefix: tuple[int | str, ...] = ()
                   ) -> RuleError:
    first = exc.errors()[0]
    return RuleError(manifest.render_field(prefix + tuple(first["loc"])), _reason(first))


def parse_flag(text: str) -> TopicRule:
    """``ACCESS TOPIC`` or ``ACCESS TOPIC KEY=VALUE[,KEY=VALUE…]`` (the --topic-rule form);
    RuleError naming the part that is wrong."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise RuleError("", f"expected 'ACCESS TOPIC [KEY=VALUE,…]' (got {text!r})")
    selector: dict[str, Any] | None = None
    if len(parts) == 3:
        labels: dict[str, str] = {}
        for pair in parts[2].split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise RuleError("labels", f"expected KEY=VALUE (got {pair!r})")
            labels[key] = value
        selector = {"matchLabels": labels}
    try:
        return TopicRule.model_validate(
            {"access": parts[0], "topic": parts[1], "selector": selector})
    except pydantic.ValidationError as exc:
        raise _first_problem(exc) from None


def parse_rules(text: str) -> tuple[TopicRule, ...]:
    """The rules of a rules file; RuleError naming the field (``rules[1].topic``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError("", f"not valid YAML: {exc}") from None
    try:
        return tuple(TopicRules.model_validate(data).rules)
    except pydantic.ValidationError as exc:
        raise _first_problem(exc) from None


def parse_devices(text: str) -> dict[str, dict[str, str]]:
    """thing → labels from `kubectl get coredevices -o yaml|json` (a List) or CoreDevice
    documents; only names and labels are read."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise RuleError("", f"not valid YAML: {exc}") from None
    items: list[tuple[str, Any]] = []
    for n, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") in ("List", "CoreDeviceList"):
            items += [(f"items[{i}]", item) for i, item in enumerate(doc.get("items") or [])]
        else:
            items.append((f"document {n + 1}", doc))
    devices: dict[str, dict[str, str]] = {}
    for where, item in items:
        if not isinstance(item, dict) or item.get("kind") != "CoreDevice":
            raise RuleError(where, "not a CoreDevice")
        meta = item.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not broker.is_thing_name(name):
            raise RuleError(f"{where}.metadata.name", f"not a thing name: {name!r}")
        labels = meta.get("labels") or {}
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise RuleError(f"{where}.metadata.labels", "must map strings to strings")
        devices[name] = labels
    return devices


def _line(rule: TopicRule, kind: str, thing: str | None = None) -> str:
    topic = rule.topic if thing is None else "/".join(
        thing if level == THING else level for level in rule.topic.split("/"))
    return f"{kind} {rule.access.value} {topic}"


def resolve_unmatched(rules: Iterable[TopicRule],
                      devices: Mapping[str, Mapping[str, str]]) -> list[TopicRule]:
    """Label rules no known device carries (worth a warning: a typo in a selector)."""
    return [r for r in rules if r.selector is not None
            and not any(r.selector.matches(labels) for labels in devices.values())]


def render_acl(controller_identity: str = broker.CONTROLLER_IDENTITY,
               rules: Sequence[TopicRule] = DEFAULT_RULES,
               devices: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The whole ACL: Hedgerow's own topics (core.broker), then the rules for all
    devices as ``pattern`` lines, then a ``user`` block per device that label rules
    select. Label rules need ``devices`` (thing → labels): RuleError otherwise."""
    text = broker.render_acl(controller_identity)
    everyone = [r for r in rules if r.selector is None]
    labelled = [r for r in rules if r.selector is not None]
    if labelled and devices is None:
        raise RuleError("selector", "rules for device labels need the fleet's devices and "
                        "their labels (`kubectl get coredevices -o yaml`)")
    if everyone:
        text += ("\n# Components' cloud topics, for every device (%u = its thing name).\n"
                 + "".join(_line(r, "pattern") + "\n" for r in everyone))
    for thing in sorted(devices or {}):
        if not broker.is_thing_name(thing):
            raise RuleError("devices", f"{thing!r} is not a thing name")
        mine = [r for r in labelled if r.selector is not None
                and r.selector.matches((devices or {})[thing])]
        if mine:
            text += (f"\n# {thing}: rules for its labels.\nuser {thing}\n"
                     + "".join(_line(r, "topic", thing) + "\n" for r in mine))
    return text
