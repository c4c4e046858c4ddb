"""MQTT topic names and filters (`+` one level, `#` the rest), as MQTT 3.1.1/5 define
them. Used by local pub/sub, IPC authorization and anything else that matches topics."""

from __future__ import annotations

from typing import Final

MAX_TOPIC_BYTES: Final = 65535  # MQTT's UTF-8 string bound


def resolve_filter_problem(topic_filter: str) -> str | None:
    """Why `topic_filter` is not a valid MQTT topic filter, or None."""
    if not topic_filter:
        return "a topic filter may not be empty"
    if len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        return f"a topic filter may not pass {MAX_TOPIC_BYTES} bytes"
    if "\0" in topic_filter:
        return "a topic filter may not contain NUL"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def resolve_topic_problem(topic: str) -> str | None:
    """Why `topic` is not a valid topic name to publish to, or None."""
    if "+" in topic or "#" in topic:
        return "a topic to publish to may not contain the wildcards '+' or '#'"
    return resolve_filter_problem(topic)


def is_match(topic_filter: str, topic: str) -> bool:
    """`topic` (a name, no wildcards) matches `topic_filter`. Topics starting with `$`
    match no filter starting with a wildcard (MQTT 4.7.2)."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def is_superset(outer: str, inner: str) -> bool:
    """Every topic `inner` (a name or a filter) matches is matched by filter `outer`."""
    o_levels = outer.split("/")
    i_levels = inner.split("/")
    for i, level in enumerate(o_levels):
        if level == "#":
            return True
        if i >= len(i_levels):
            return False
        if level == "+":
            if i_levels[i] == "#":
                return False
        elif level != i_levels[i]:
            return False
    return len(o_levels) == len(i_levels)
