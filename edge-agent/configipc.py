"""Configuration and state over component IPC: Greengrass's GetConfiguration,
UpdateConfiguration, SubscribeToConfigurationUpdate and UpdateState.

A component's configuration is what its deployment gave it (its record's spec) with what
it changed itself on top (hedgerow.core.configstore.Overlay). The component's own
changes are written to state/configuration.json (temp, fsync, rename) BEFORE the call is
answered: once UpdateConfiguration returns, the change survives a kill -9 of the agent.
Subscribers learn of every change of the configuration they see — their own update, a
deployment's (a configuration change that does not restart the component, plan.Verb.UPDATE),
or a deployment dropping a key — one event per changed key path: `sync` compares what
each component sees with what it saw (level-triggered: once per pass and after each
update, never from a diff computed elsewhere).

As on Greengrass, any component may read and subscribe to any component's
configuration (no policy is asked: Greengrass has no service for it), and only its own
may be updated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from hedgerow import files
from hedgerow.agent import ipcserver
from hedgerow.core import configstore, limits

log = logging.getLogger("hedgerow.agent.ipc")

GET: Final = "aws.greengrass#GetConfiguration"
UPDATE: Final = "aws.greengrass#UpdateConfiguration"
SUBSCRIBE: Final = "aws.greengrass#SubscribeToConfigurationUpdate"
EVENT: Final = "aws.greengrass#ConfigurationUpdateEvents"
UPDATE_STATE: Final = "aws.greengrass#UpdateState"
VALIDATE: Final = "aws.greengrass#SubscribeToValidateConfigurationUpdates"
VALIDATE_EVENT: Final = "aws.greengrass#ValidateConfigurationUpdateEvents"
REPORT: Final = "aws.greengrass#SendConfigurationValidityReport"
FAILED_CONDITION: Final = "aws.greengrass#FailedUpdateConditionCheckError"
STATES: Final = ("RUNNING", "ERRORED")

# A component's configuration as deployed (None: no such component here).
ConfigurationOf = Callable[[str], Mapping[str, Any] | None]


@dataclasses.dataclass(eq=False)
class Subscription:
    component: str                 # whose configuration
    key_path: tuple[str, ...]
    stream: ipcserver.Stream


class Store:
    def __init__(self, path: pathlib.Path, configuration_of: ConfigurationOf,
                 on_errored: Callable[[str, str], None]) -> None:
        self.path, self.configuration_of, self.on_errored = path, configuration_of, on_errored
        self.overlays: dict[str, configstore.Overlay] = {}
        self.seen: dict[str, dict[str, Any]] = {}  # what subscribers were last told of
        self.subscriptions: list[Subscription] = []
        self.validators: list[Subscription] = []  # SubscribeToValidateConfigurationUpdates
        # (component, deployment id) -> its report, while the agent waits for it
        self.pending: dict[tuple[str, str], asyncio.Future[tuple[str, str]]] = {}
        self._written = b""

    # --- state ------------------------------------------------------------------------

    def load(self) -> None:
        """The component's own changes, as the last run left them."""
        try:
            data = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return
        for name, raw in (data.items() if isinstance(data, dict) else ()):
            try:
                self.overlays[name] = configstore.Overlay.model_validate(raw)
            except ValueError:
                log.error("%s: the configuration %s changed itself is unreadable in %s; "
                          "dropped", name, name, self.path)
        self._written = self.path.read_bytes()

    def _render(self) -> bytes:
        return json.dumps({n: o.to_dict() for n, o in sorted(self.overlays.items())},
                          sort_keys=True).encode()

    def save(self) -> None:
        data = self._render()
        if data != self._written:
            files.write_atomic(self.path, data)
            self._written = data

    def effective(self, name: str) -> dict[str, Any] | None:
        deployed = self.configuration_of(name)
        if deployed is None:
            return None
        return configstore.resolve_effective(deployed, self.overlays.get(name))

    def own_keys(self, name: str) -> list[str]:
        """The keys the component changed itself (for the status), as JSON pointers."""
        overlay = self.overlays.get(name)
        if overlay is None:
            return []
        return sorted(configstore.render_pointer(configstore.resolve_key(k)) or "/"
                      for k in overlay.values)

    def sync(self, names: Iterable[str]) -> None:
        """Once per pass, for the components that have a record (`names`): drop the
        changes of components that are gone, let a deployment's changed keys win over the
        component's own, and tell subscribers what changed."""
        present = set(names)
        for name in [n for n in self.overlays if n not in present]:
            del self.overlays[name]
        for name in present:
            deployed = self.configuration_of(name)
            overlay = self.overlays.get(name)
            if deployed is not None and overlay is not None:
                self.overlays[name] = configstore.resolve_rebased(overlay, deployed)
            self.notify(name)
        for name in [n for n in self.seen if n not in present]:
            del self.seen[name]
        self.save()

    def notify(self, name: str) -> None:
        if not any(s.component == name for s in self.subscriptions):
            self.seen.pop(name, None)  # nobody to tell: nothing to compare (subscribe sets it)
            return
        now = self.effective(name)
        if now is None:
            return
        before = self.seen.get(name)
        self.seen[name] = now
        if before is None:
            return  # first sight: nothing has changed for anyone yet
        for path in configstore.resolve_changed(before, now):
            event = {"configurationUpdateEvent": {"componentName": name,
                                                  "keyPath": list(path)}}
            for sub in self.subscriptions:
                if sub.component == name and configstore.is_under(path, sub.key_path):
                    sub.stream.send(event)

    # --- operations ----------------------------------------------------------------------

    def _target(self, call: ipcserver.Call) -> tuple[str, tuple[str, ...]]:
        name = call.request.get("componentName") or call.caller.component
        key_path = call.request.get("keyPath") or []
        if not isinstance(name, str) or not isinstance(key_path, list) or not all(
                isinstance(k, str) for k in key_path):
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{call.operation}: componentName is a string and keyPath a list of "
                "strings"))
        if self.configuration_of(name) is None:
            raise ipcserver.RefusalError(ipcserver.RESOURCE_NOT_FOUND,
                                         f"{call.operation}: no component {name!r} here",
                                         resourceType="Component", resourceName=name)
        return name, tuple(key_path)

    def get(self, call: ipcserver.Call) -> dict[str, Any]:
        name, key_path = self._target(call)
        config = self.effective(name) or {}
        try:
            value = configstore.resolve_value(config, key_path)
        except KeyError:
            raise ipcserver.RefusalError(
                ipcserver.RESOURCE_NOT_FOUND,
                f"{GET}: {name} has no configuration at "
                f"{configstore.render_pointer(key_path) or '/'}",
                resourceType="Configuration", resourceName=name) from None
        return {"componentName": name, "value": value}

    def update(self, call: ipcserver.Call) -> dict[str, Any]:
        name = call.caller.component
        if call.request.get("componentName") not in (None, "", name):
            raise ipcserver.RefusalError(ipcserver.UNAUTHORIZED, (
                f"{UPDATE}: {name} may update only its own configuration, not "
                f"{call.request['componentName']}'s"))
        _, key_path = self._target(call)
        merge = call.require("valueToMerge", dict)
        timestamp = call.request.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                         f"{UPDATE}: the request needs 'timestamp'")
        deployed = self.configuration_of(name) or {}
        try:
            overlay, changed = configstore.resolve_update(
                deployed, self.overlays.get(name), key_path, merge, float(timestamp))
        except configstore.StaleUpdateError as exc:
            raise ipcserver.RefusalError(FAILED_CONDITION, f"{UPDATE}: {exc}") from None
        size = len(json.dumps(overlay.to_dict()))
        if size > limits.MAX_OWN_CONFIGURATION_BYTES:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{UPDATE}: {name}'s own configuration changes would take {size} bytes "
                f"(at most {limits.MAX_OWN_CONFIGURATION_BYTES})"))
        previous = self.overlays.get(name)
        self.overlays[name] = overlay
        try:
            self.save()  # durable before the component hears "done"
        except OSError as exc:
            if previous is None:
                del self.overlays[name]
            else:
                self.overlays[name] = previous
            raise ipcserver.RefusalError(ipcserver.SERVICE_ERROR, (
                f"{UPDATE}: not saved ({exc.strerror}); the configuration is unchanged"),
            ) from None
        if changed:
            log.info("%s changed its configuration at %s", name, ", ".join(
                configstore.render_pointer(p) for p in changed[:8]))
        self.notify(name)
        return {}

    def subscribe(self, call: ipcserver.Call) -> dict[str, Any]:
        name, key_path = self._target(call)
        assert call.stream is not None
        sub = Subscription(name, key_path, call.stream)
        self.seen.setdefault(name, self.effective(name) or {})
        self.subscriptions.append(sub)
        call.stream.on_close(lambda: self.subscriptions.remove(sub))
        return {}

    def update_state(self, call: ipcserver.Call) -> dict[str, Any]:
        state = call.require("state")
        if state not in STATES:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{UPDATE_STATE}: state {state!r} is neither RUNNING nor ERRORED"))
        if state == "ERRORED":
            self.on_errored(call.caller.component,
                            "reported ERRORED over IPC (UpdateState)")
        return {}

    # --- validation before a deployment changes configuration ------------------------

    async def validate(self, changes: Mapping[str, Mapping[str, Any]], deployment_id: str,
                       timeout: float) -> tuple[str, str] | None:
        """Ask each component in `changes` (component -> its new configuration) that
        subscribes to validation whether it accepts; wait up to `timeout` seconds for all.
        The first rejection as (component, its message); None when all accepted or did
        not answer in time (as Greengrass: silence is not a veto)."""
        waiting: dict[str, asyncio.Future[tuple[str, str]]] = {}
        loop = asyncio.get_running_loop()
        for name, configuration in sorted(changes.items()):
            subs = [s for s in self.validators if s.component == name]
            if not subs:
                continue
            overlay = self.overlays.get(name)
            seen = configstore.resolve_effective(configuration, None if overlay is None else
                                                 configstore.resolve_rebased(overlay,
                                                                             configuration))
            future = self.pending[(name, deployment_id)] = loop.create_future()
            waiting[name] = future
            for sub in subs:
                sub.stream.send({"validateConfigurationUpdateEvent": {
                    "configuration": seen, "deploymentId": deployment_id}})
            log.info("asked %s to validate its configuration for %s", name, deployment_id)
        if not waiting:
            return None
        try:
            await asyncio.wait(waiting.values(), timeout=timeout)
        finally:
            for name in waiting:
                self.pending.pop((name, deployment_id), None)
        for name, future in sorted(waiting.items()):
            if not future.done():
                log.warning("%s did not validate its configuration for %s within %gs: "
                            "going on", name, deployment_id, timeout)
            elif future.result()[0] == "REJECTED":
                return name, future.result()[1]
        return None

    def subscribe_validate(self, call: ipcserver.Call) -> dict[str, Any]:
        assert call.stream is not None
        sub = Subscription(call.caller.component, (), call.stream)
        self.validators.append(sub)
        call.stream.on_close(lambda: self.validators.remove(sub))
        return {}

    def report(self, call: ipcserver.Call) -> dict[str, Any]:
        body = call.require("configurationValidityReport", dict)
        status, deployment_id = body.get("status"), body.get("deploymentId")
        if status not in ("ACCEPTED", "REJECTED") or not isinstance(deployment_id, str):
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{REPORT}: the report needs status ACCEPTED or REJECTED and the "
                "deploymentId of the validation event"))
        future = self.pending.get((call.caller.component, deployment_id))
        if future is None or future.done():
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{REPORT}: no validation of {call.caller.component}'s configuration for "
                f"{deployment_id} is waiting (it timed out, or was never asked)"))
        message = body.get("message")
        future.set_result((status, message if isinstance(message, str) else ""))
        return {}

    def operations(self) -> list[ipcserver.Operation]:
        return [
            ipcserver.Operation(GET, "aws.greengrass#GetConfigurationResponse", self.get),
            ipcserver.Operation(UPDATE, "aws.greengrass#UpdateConfigurationResponse",
                                self.update),
            ipcserver.Operation(SUBSCRIBE,
                                "aws.greengrass#SubscribeToConfigurationUpdateResponse",
                                self.subscribe, stream_event=EVENT),
            ipcserver.Operation(UPDATE_STATE, "aws.greengrass#UpdateStateResponse",
                                self.update_state),
            ipcserver.Operation(VALIDATE,
                                "aws.greengrass#SubscribeToValidateConfigurationUpdatesResponse",
                                self.subscribe_validate, stream_event=VALIDATE_EVENT),
            ipcserver.Operation(REPORT, "aws.greengrass#SendConfigurationValidityReportResponse",
                                self.report),
        ]
