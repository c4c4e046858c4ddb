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


@dataclasses.dataclass
class Validation:
    """One revision's question to the components whose configuration it changes."""
    deadline: float
    asked: set[str] = dataclasses.field(default_factory=set)
    answers: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Validity:
    go: bool = True
    until: float = 0.0                        # not yet: look again then
    reason: str = ""                          # not yet: for the status
    rejected: tuple[str, str] | None = None   # (component, its message)


class Store:
    def __init__(self, path: pathlib.Path, configuration_of: ConfigurationOf,
                 on_errored: Callable[[str, str], None],
                 clock: Callable[[], float], wake: Callable[[], None]) -> None:
        self.path, self.configuration_of, self.on_errored = path, configuration_of, on_errored
        self.clock, self.wake = clock, wake
        self.overlays: dict[str, configstore.Overlay] = {}
        self.seen: dict[str, dict[str, Any]] = {}  # what subscribers were last told of
        self.subscriptions: list[Subscription] = []
        self.validators: list[Subscription] = []  # SubscribeToValidateConfigurationUpdates
        self.validations: dict[str, Validation] = {}  # by deployment id (revision)
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

    def rendered(self, name: str, deployed: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration `name`'s steps render with when it (re)starts."""
        return configstore.resolve_rendered(deployed, self.overlays.get(name))

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

    def resolve_validation(self, changes: Mapping[str, Mapping[str, Any]],
                           deployment_id: str, timeout: float) -> Validity:
        """May the revision `deployment_id` change these components' configuration
        (component -> its new configuration)? Each one that subscribes to validation is
        asked once; the answer is "go" once all accepted (or did not answer within
        `timeout` seconds of being asked: silence is not a veto, as in Greengrass),
        "rejected" at the first REJECTED, else "wait until". Level-triggered: asked once
        per pass, never waited on (a report wakes the loop)."""
        now = self.clock()
        for other in [d for d in self.validations if d != deployment_id]:
            del self.validations[other]  # superseded while it waited
        validation = self.validations.get(deployment_id)
        if validation is None:
            validation = self.validations[deployment_id] = Validation(now + timeout)
            for name, configuration in sorted(changes.items()):
                subs = [s for s in self.validators if s.component == name]
                if not subs:
                    continue
                overlay = self.overlays.get(name)
                seen = configstore.resolve_effective(
                    configuration,
                    None if overlay is None else configstore.resolve_rebased(overlay,
                                                                             configuration))
                validation.asked.add(name)
                for sub in subs:
                    sub.stream.send({"validateConfigurationUpdateEvent": {
                        "configuration": seen, "deploymentId": deployment_id}})
                log.info("asked %s to validate its configuration for %s", name,
                         deployment_id)
        for name in sorted(validation.answers):
            status, message = validation.answers[name]
            if status == "REJECTED":
                return Validity(rejected=(name, message))
        silent = sorted(validation.asked - set(validation.answers))
        if silent and now < validation.deadline:
            return Validity(go=False, until=validation.deadline,
                            reason=f"waiting for {', '.join(silent)} to validate its "
                                   "new configuration")
        if silent:
            log.warning("%s did not validate its configuration for %s within %gs: going "
                        "on", ", ".join(silent), deployment_id, timeout)
        return Validity()

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
        validation = self.validations.get(deployment_id)
        name = call.caller.component
        if validation is None or name not in validation.asked or name in \
                validation.answers or self.clock() >= validation.deadline:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{REPORT}: no validation of {name}'s configuration for "
                f"{deployment_id} is waiting (it timed out, was answered, or was never "
                "asked)"))
        message = body.get("message")
        validation.answers[name] = (status, message if isinstance(message, str) else "")
        self.wake()
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
