"""The local control socket: one JSON request per connection, one JSON answer.

agent.sock is created 0660 owner root (group: the agent's), so only an operator who could
read the agent's state anyway can drive it. Auth tokens are never part of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import shutil
import socket
import time
from typing import TYPE_CHECKING, Any

import yaml

from hedgerow import files
from hedgerow.agent import desired
from hedgerow.core import deployment, greengrass, manifest, outcome

if TYPE_CHECKING:
    from hedgerow.agent.agent import Agent

LOCAL_DEPLOYMENT = "local"
log = logging.getLogger("hedgerow.agent")


class CommandError(ValueError):
    pass


async def serve(agent: Agent) -> asyncio.AbstractServer:
    path = agent.layout.control_socket
    path.unlink(missing_ok=True)
    old = os.umask(0o117)  # no window in which the socket is wider than 0660
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _handle(agent, r, w), path=str(path))
    finally:
        os.umask(old)
    path.chmod(0o660)
    return server


async def _handle(agent: Agent, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """One request. Whatever happens — a full disk while writing a local deployment, a
    client that went away, a bug — is answered if it can be and the connection closed:
    the server (a long-lived part of the agent) never loses a handler's descriptor."""
    try:
        try:
            request = json.loads(await reader.readline())
            answer = {"ok": True, "result": await dispatch(agent, request)}
        except (CommandError, manifest.InvalidDocumentError, ValueError, KeyError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except OSError as exc:  # ENOSPC, EIO, EMFILE: the operator is told, nothing else
            answer = {"ok": False, "error": f"the agent cannot do that now: {exc}"}
        except Exception as exc:
            log.exception("control request failed")
            answer = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the client is gone, or cannot be written to: nothing to tell
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _public(rec: Any) -> dict[str, Any]:
    return {"name": rec.name, "version": rec.version, "state": str(rec.state),
            "message": rec.message, "pid": rec.process.pid if rec.process else None}


async def dispatch(agent: Agent, request: dict[str, Any]) -> Any:
    op = request.get("op")
    name = request.get("name", "")
    if op == "status":
        # passes (begun) and passesReported (that also wrote their status): a caller (a
        # test, an operator) waits for "two more passes" instead of sleeping to show that
        # nothing happened.
        return {**agent.report().to_dict(), "passes": agent.passes,
                "passesReported": agent.passes_reported,
                "runtimes": {"container": {
            "available": agent.containers.available, "message": agent.containers.message}},
                "cloud": agent.cloud.summary()}
    if op == "wake":  # look again now (a test proving "nothing changed", an operator)
        agent.wake.set()
        return {"passes": agent.passes}
    if op == "logs.get":
        return await _logs(agent, name, float(request.get("since") or 0))
    if op == "component.list":
        return [_public(r) for r in sorted(agent.records.values(), key=lambda r: r.name)]
    if op in ("component.details", "component.restart", "component.stop"):
        rec = agent.records.get(name)
        if rec is None:
            raise CommandError(f"no component {name!r} on this device")
        if op == "component.details":
            spec = rec.component()
            return {**_public(rec), "specHash": rec.spec_hash,
                    "errors": len(rec.errors), "retryAt": rec.retry_at,
                    "hold": rec.hold_revision is not None,
                    # What the component sees: its own IPC changes on top.
                    "configuration": agent.config.effective(name) or spec.configuration,
                    "ownConfiguration": agent.config.own_keys(name),
                    "dependencies": [d.to_dict() for d in spec.dependencies],
                    "limits": agent.processes.cgroups.limit_files(name),
                    "log": str(agent.layout.log_of(name)),
                    "ipc": agent.ipc.details_of(name)}
        async with agent.lock:
            await agent.stop(name, hold=op == "component.stop")
            if op == "component.restart":  # also lifts an earlier `component stop`
                rec.hold_revision = None
                agent.records[name] = rec
                agent.save()
            agent.flush()
        agent.wake.set()
        return _public(rec)
    if op == "deployment.create":
        async with agent.lock:
            return create_local_deployment(agent, request)
    if op == "deployment.list":
        return list_deployments(agent)
    if op == "deployment.status":
        found = [d for d in list_deployments(agent) if d["id"] == request.get("id")]
        if not found:
            raise CommandError(f"no deployment {request.get('id')!r}")
        return found[0]
    raise CommandError(f"unknown operation {op!r}")


async def _logs(agent: Agent, name: str, since: float) -> list[str]:
    """A component's log lines, by runtime: the process log files, or (containers) what
    Docker kept — so lines written while the agent was down are there too."""
    rec = agent.records.get(name)
    if rec is None:
        raise CommandError(f"no component {name!r} on this device")
    if "container" in rec.spec:
        from hedgerow.agent.dockererrors import ContainerRuntimeError

        def read() -> list[str]:
            return list(agent.containers.runtime.logs(name, since=since or None))
        try:
            return await asyncio.to_thread(read)
        except ContainerRuntimeError as exc:
            raise CommandError(str(exc)) from None
    path = agent.layout.log_of(name)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since)) if since else ""
    lines: list[str] = []
    for file in [*sorted(path.parent.glob(f"{name}.log.*"), reverse=True), path]:
        if file.exists():
            lines += [line for line in file.read_text(errors="replace").splitlines()
                      if line[:19] >= stamp]
    return lines


def list_deployments(agent: Agent) -> list[dict[str, Any]]:
    """`hedgerow deployment create` requests first, then every other revision with where
    it came from (the controller, deployment files dropped into deployments/, or both)."""
    history = agent.history
    out = []
    for local in history.local:
        entry = history.outcome_of(local.revision)
        out.append({**local.model_dump(mode="json"), "source": outcome.Source.LOCAL.value,
                    **_outcome_fields(entry)})
    for revision, entry in history.outcomes.items():
        if not any(local.revision == revision for local in history.local):
            out.append({"id": revision[:12], "revision": revision,
                        "source": entry.source.value, **_outcome_fields(entry)})
    return out


def _outcome_fields(entry: outcome.Entry | None) -> dict[str, Any]:
    if entry is None:
        return {"outcome": "PENDING", "reason": "", "rolledBackTo": None,
                "cloudRevision": None}
    # cloud+local: the controller's revision the merge was made from (what the status
    # reports as applied).
    return {"outcome": entry.outcome.value, "reason": entry.reason,
            "rolledBackTo": entry.rolled_back_to, "cloudRevision": entry.cloud_revision}


def create_local_deployment(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    """Merge the request into the one cumulative local Deployment (as Greengrass does)."""
    folder = agent.layout.deployments
    recipes = folder / desired.RECIPES
    for filename, text in request.get("recipes", {}).items():
        try:  # a Greengrass recipe as it is, or Component manifests
            resources = desired.parse_local(recipes / pathlib.Path(filename).name, text,
                                            agent.layout)
        except greengrass.RecipeError as exc:
            raise CommandError(str(exc)) from None
        for resource in resources:
            if resource.kind != "Component":
                raise CommandError(f"{filename}: only Component documents are recipes")
        recipes.mkdir(exist_ok=True, mode=0o700)
        files.write_atomic(recipes / pathlib.Path(filename).name, text.encode())
    if request.get("artifacts"):
        target = agent.layout.root / desired.LOCAL_ARTIFACTS
        shutil.copytree(request["artifacts"], target, dirs_exist_ok=True)
    local = folder / f"{LOCAL_DEPLOYMENT}.yaml"
    previous = local.read_bytes() if local.exists() else None
    current: dict[str, dict[str, Any]] = {}
    generation = 0
    if local.exists():
        doc = manifest.parse_documents(local.read_text(), str(local))[0]
        assert isinstance(doc, deployment.Deployment)
        current = {c.name: c.to_dict() for c in doc.spec.components}
        generation = doc.metadata.generation or 0
    for name, version in request.get("merge", {}).items():
        current.setdefault(name, {"name": name})["version"] = version
    for name, update in request.get("update_config", {}).items():
        if name not in current:
            raise CommandError(f"--update-config names {name}, which is not deployed")
        current[name]["configurationUpdate"] = update
    for name in request.get("remove", []):
        current.pop(name, None)
    generation += 1
    ident = f"local-{generation}"
    if current:
        body = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
                "metadata": {"name": LOCAL_DEPLOYMENT, "generation": generation},
                "spec": {"target": {"thing": agent.thing},
                         "components": [current[n] for n in sorted(current)],
                         "policies": {"failureHandling":
                                      request.get("failure_handling", "ROLLBACK")}}}
        text = yaml.safe_dump(body, sort_keys=False)
        manifest.parse_documents(text, str(local))  # refuse before writing anything
        files.write_atomic(local, text.encode())
    else:
        files.remove_file(local)
    # The device's ceiling, now rather than as a REJECTED status later: the operator who
    # asked is told, and the local deployment stays what it was.
    reading = desired.fetch_desired(agent.layout, agent.thing, agent.platform,
                                    agent.settings.max_privilege)
    if reading.revision is not None:
        if previous is None:
            files.remove_file(local)
        else:
            files.write_atomic(local, previous)
        raise CommandError("refused: " + "; ".join(reading.problems))
    entry = outcome.LocalEntry(id=ident, created=time.time(), components=sorted(current))
    agent.history = outcome.resolve_local_requested(agent.history, entry)
    agent.pending_local = ident
    agent.wake.set()
    return {**entry.model_dump(mode="json"), "source": outcome.Source.LOCAL.value}


def request(socket_path: pathlib.Path, payload: dict[str, Any], timeout: float = 120.0) -> Any:
    """Client side: send one command, return its result or raise CommandError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise CommandError(f"no agent answers on {socket_path}; is `hedgerow agent run` "
                               "running with this --root?") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answer = json.loads(data)
    if not answer["ok"]:
        raise CommandError(answer["error"])
    return answer["result"]
