"""Local control over component IPC: Greengrass's `aws.greengrass.Cli` operations —
ListComponents, GetComponentDetails, RestartComponent, StopComponent, PauseComponent,
ResumeComponent, CreateLocalDeployment, GetLocalDeploymentStatus, ListLocalDeployments,
ValidateAuthorizationToken.

Every call is authorized by an `aws.greengrass.Cli` policy in the caller's
configuration, default deny (the resource: the component named, or `*` for the listing
and deployment operations). They do what the control socket's commands do (`control`:
the same functions, so the CLI, the `deployments/` folder and IPC are one set of local
deployments), answered in Greengrass's shapes. A restart or stop is answered first and
carried out after (a component may restart itself).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any, Final

from hedgerow.agent import control, failures, ipcserver
from hedgerow.core import documents

if TYPE_CHECKING:
    from hedgerow.agent.agent import Agent

log = logging.getLogger("hedgerow.agent.ipc")

CLI: Final = "aws.greengrass.Cli"
_OUTCOME = {"PENDING": "QUEUED", "IN_PROGRESS": "IN_PROGRESS", "SUCCEEDED": "SUCCEEDED",
            "FAILED": "FAILED", "ROLLED_BACK": "FAILED", "REJECTED": "FAILED",
            "SUPERSEDED": "CANCELED"}


def _op(name: str) -> str:
    return f"aws.greengrass#{name}"


def _details(agent: Agent, name: str) -> dict[str, Any]:
    rec = agent.records[name]
    return {"componentName": rec.name, "version": rec.version, "state": rec.state.value,
            "configuration": agent.config.effective(name) or {}}


def _deployment(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"deploymentId": row["id"],
                           "status": _OUTCOME.get(row["outcome"], "FAILED")}
    if row.get("created") is not None:
        out["createdOn"] = str(row["created"])
    if row.get("reason"):
        out["deploymentStatusDetails"] = {
            "detailedDeploymentStatus": "FAILED_ROLLBACK_COMPLETE"
            if row["outcome"] == "ROLLED_BACK" else "FAILED_NO_STATE_CHANGE"
            if row["outcome"] in ("FAILED", "REJECTED") else "SUCCESSFUL",
            "deploymentFailureCause": row["reason"]}
    return out


class Service:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._tasks: set[asyncio.Task[Any]] = set()

    def _component(self, call: ipcserver.Call) -> str:
        name: str = call.require("componentName")
        call.authorize(CLI, name)
        if name not in self.agent.records:
            raise ipcserver.RefusalError(ipcserver.RESOURCE_NOT_FOUND,
                                         f"{call.operation}: no component {name!r} here",
                                         resourceType="Component", resourceName=name)
        return name

    def _later(self, what: str, request: dict[str, Any]) -> None:
        async def run() -> None:
            try:
                await control.dispatch(self.agent, request)
            except Exception as exc:
                log.error("IPC %s of %s failed: %s", what, request.get("name"), exc)
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def list_components(self, call: ipcserver.Call) -> dict[str, Any]:
        call.authorize(CLI, "*")
        return {"components": [_details(self.agent, n) for n in sorted(self.agent.records)]}

    def get_component_details(self, call: ipcserver.Call) -> dict[str, Any]:
        return {"componentDetails": _details(self.agent, self._component(call))}

    def restart(self, call: ipcserver.Call) -> dict[str, Any]:
        name = self._component(call)
        self._later("restart", {"op": "component.restart", "name": name})
        return {"restartStatus": "SUCCEEDED", "message": f"{name} is restarting"}

    def stop(self, call: ipcserver.Call) -> dict[str, Any]:
        name = self._component(call)
        self._later("stop", {"op": "component.stop", "name": name})
        return {"stopStatus": "SUCCEEDED", "message": f"{name} is stopping"}

    async def _pause(self, call: ipcserver.Call, frozen: bool) -> dict[str, Any]:
        """Processes: the cgroup freezer; containers: Docker's pause. Recorded on the
        component (`paused`): a paused container is not taken for a failed one, and a
        paused component that is stopped or recovered is resumed first."""
        name = self._component(call)
        rec = self.agent.records[name]
        if rec.state not in (documents.ComponentState.RUNNING,
                             documents.ComponentState.STARTING):
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{call.operation}: {name} is {rec.state.value}, not running"))
        try:
            if self.agent.runtime_of(rec) is self.agent.containers:
                rec.paused = frozen  # before Docker says "paused": never taken for a failure
                await asyncio.to_thread(self.agent.containers.runtime.pause, name, frozen)
            elif self.agent.runtime_of(rec) is self.agent.processes:
                self.agent.processes.cgroups.freeze(name, frozen)
                rec.paused = frozen
            else:
                raise ipcserver.RefusalError(ipcserver.SERVICE_ERROR, (
                    f"{call.operation}: {name} runs in a runtime that cannot pause"))
        except (OSError, failures.PermanentError, failures.TransientError) as exc:
            raise ipcserver.RefusalError(ipcserver.SERVICE_ERROR,  # dockerd's, the kernel's
                                         f"{call.operation}: {name}: {exc}") from None
        finally:
            self.agent.save()
        log.info("%s: %s over IPC by %s", name, "paused" if frozen else "resumed",
                 call.caller.component)
        return {}

    async def pause(self, call: ipcserver.Call) -> dict[str, Any]:
        return await self._pause(call, True)

    async def resume(self, call: ipcserver.Call) -> dict[str, Any]:
        return await self._pause(call, False)

    async def create_local_deployment(self, call: ipcserver.Call) -> dict[str, Any]:
        call.authorize(CLI, "*")
        request = call.request
        for field in ("recipeDirectoryPath", "artifactsDirectoryPath"):
            if request.get(field):
                raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                    f"{call.operation}: {field} is not taken over IPC (the agent, as root, "
                    "would read a path a component names); put recipes in the device's "
                    "deployments/recipes/ or use `hedgerow deployment create --recipes`"))
        update: dict[str, Any] = {}
        for name, value in (request.get("componentToConfiguration") or {}).items():
            body = value if isinstance(value, dict) else {}
            if "MERGE" in body or "RESET" in body:  # greengrass-cli's --update-config
                update[name] = {"merge": body.get("MERGE") or {},
                                "reset": body.get("RESET") or []}
            else:
                update[name] = {"merge": body}
        try:
            result = await control.dispatch(self.agent, {
                "op": "deployment.create",
                "merge": dict(request.get("rootComponentVersionsToAdd") or {}),
                "remove": list(request.get("rootComponentsToRemove") or []),
                "update_config": update,
                "failure_handling": "DO_NOTHING" if request.get("failureHandlingPolicy")
                == "DO_NOTHING" else "ROLLBACK"})
        except (control.CommandError, ValueError) as exc:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS,
                                         f"{call.operation}: {exc}") from None
        return {"deploymentId": result["id"]}

    def list_local_deployments(self, call: ipcserver.Call) -> dict[str, Any]:
        call.authorize(CLI, "*")
        rows = control.list_deployments(self.agent)
        return {"localDeployments": [_deployment(r) for r in rows if r["source"] == "local"]}

    def get_local_deployment_status(self, call: ipcserver.Call) -> dict[str, Any]:
        call.authorize(CLI, "*")
        wanted = call.require("deploymentId")
        for row in control.list_deployments(self.agent):
            if row["id"] == wanted:
                return {"deployment": _deployment(row)}
        raise ipcserver.RefusalError(ipcserver.RESOURCE_NOT_FOUND,
                                     f"{call.operation}: no deployment {wanted!r}",
                                     resourceType="LocalDeployment", resourceName=wanted)

    def validate_token(self, call: ipcserver.Call) -> dict[str, Any]:
        call.authorize(CLI, "*")
        token: str = call.require("token")
        valid = any(rec.token and hmac.compare_digest(rec.token.encode(), token.encode())
                    for rec in self.agent.records.values())
        return {"isValid": valid}

    def operations(self) -> list[ipcserver.Operation]:
        table: dict[str, ipcserver.Handler] = {
            "ListComponents": self.list_components,
            "GetComponentDetails": self.get_component_details,
            "RestartComponent": self.restart, "StopComponent": self.stop,
            "PauseComponent": self.pause, "ResumeComponent": self.resume,
            "CreateLocalDeployment": self.create_local_deployment,
            "ListLocalDeployments": self.list_local_deployments,
            "GetLocalDeploymentStatus": self.get_local_deployment_status,
            "ValidateAuthorizationToken": self.validate_token,
        }
        return [ipcserver.Operation(_op(name), _op(f"{name}Response"), handler)
                for name, handler in table.items()]
