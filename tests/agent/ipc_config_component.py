"""A component that uses the official Greengrass IPC SDK for its configuration and state
(GetConfiguration, UpdateConfiguration, SubscribeToConfigurationUpdate, UpdateState), as
a user writes one. Driven like ipc_component.py: commands from $HOME/commands/*.json,
what happened to $HOME/events.jsonl. Stdlib + awsiotsdk."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import time

from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

HOME = pathlib.Path(os.environ["HOME"])
COMMANDS = HOME / "commands"
EVENTS = HOME / "events.jsonl"
DEFERRING: set[str] = set()  # revisions the `updates` command is deferring


def note(**fields: object) -> None:
    with EVENTS.open("a") as out:
        out.write(json.dumps(fields) + "\n")


def run(ipc: GreengrassCoreIPCClientV2, command: dict[str, object]) -> None:
    op, tag = command["op"], command.get("tag")
    try:
        if op == "get":
            response = ipc.get_configuration(component_name=command.get("component"),
                                             key_path=command.get("keyPath"))
            note(event="got", tag=tag, component=response.component_name,
                 value=response.value)
        elif op == "update":
            stamp = datetime.datetime.fromtimestamp(
                float(command.get("timestamp") or time.time()))  # type: ignore[arg-type]
            ipc.update_configuration(key_path=command.get("keyPath"), timestamp=stamp,
                                     value_to_merge=command["value"])
            note(event="updated", tag=tag)
        elif op == "subscribe":
            def changed(event: model.ConfigurationUpdateEvents) -> None:
                update = event.configuration_update_event
                note(event="changed", component=update.component_name,
                     keyPath=update.key_path)
            ipc.subscribe_to_configuration_update(
                component_name=command.get("component"), key_path=command.get("keyPath"),
                on_stream_event=changed)
            note(event="subscribed", tag=tag)
        elif op == "validate":  # reject a configuration whose `key` is `reject`
            key, bad = str(command["key"]), command["reject"]

            def check(event: model.ValidateConfigurationUpdateEvents) -> None:
                asked = event.validate_configuration_update_event
                ok = asked.configuration.get(key) != bad
                note(event="validating", deployment=asked.deployment_id,
                     value=asked.configuration.get(key), ok=ok)
                if command.get("silent"):
                    return  # asked, never answers
                ipc.send_configuration_validity_report(
                    configuration_validity_report=model.ConfigurationValidityReport(
                        status="ACCEPTED" if ok else "REJECTED",
                        deployment_id=asked.deployment_id,
                        message="" if ok else f"{key} may not be {bad!r}"))
            ipc.subscribe_to_validate_configuration_updates(on_stream_event=check)
            note(event="subscribed", tag=tag)
        elif op == "call":  # any operation by its SDK method, the response noted
            response = getattr(ipc, str(command["method"]))(**dict(command.get("args", {})))
            note(event="called", tag=tag, response=response._to_payload())
        elif op == "updates":  # defer each update `times` times by `ms`, then allow it
            times, ms = int(command["times"]), int(command["ms"])  # type: ignore[call-overload]
            asked: dict[str, int] = {}

            def on_update(event: model.ComponentUpdatePolicyEvents) -> None:
                if event.post_update_event is not None:
                    note(event="post", deployment=event.post_update_event.deployment_id)
                    return
                revision = event.pre_update_event.deployment_id
                asked[revision] = asked.get(revision, 0) + 1
                later = asked[revision] <= times
                (DEFERRING.add if later else DEFERRING.discard)(revision)
                note(event="pre", deployment=revision, deferring=later)
                ipc.defer_component_update(deployment_id=revision,
                                           message="finishing a batch" if later else "",
                                           recheck_after_ms=ms if later else 0)
            ipc.subscribe_to_component_updates(on_stream_event=on_update)
            note(event="subscribed", tag=tag)
        elif op == "release":  # the batch is done: let what it defers go on now
            released = sorted(DEFERRING)
            for revision in released:
                DEFERRING.discard(revision)
                ipc.defer_component_update(deployment_id=revision, recheck_after_ms=0)
            note(event="released", tag=tag, deployments=released)
        elif op == "state":
            ipc.update_state(state=str(command["state"]))
            note(event="state", tag=tag)
    except Exception as exc:
        note(event="failed", op=op, tag=tag, error=type(exc).__name__,
             message=str(getattr(exc, "message", "") or exc))


def main() -> None:
    COMMANDS.mkdir(exist_ok=True)
    ipc = GreengrassCoreIPCClientV2()
    # Commands of an earlier run of this component (same work folder) are not replayed.
    done = {p.name for p in COMMANDS.glob("*.json")}
    note(event="connected", ok=True, pid=os.getpid())
    while True:
        for path in sorted(COMMANDS.glob("*.json")):
            if path.name not in done:
                done.add(path.name)
                run(ipc, json.loads(path.read_text()))
        time.sleep(0.05)


if __name__ == "__main__":
    main()
