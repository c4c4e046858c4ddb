"""The environment the agent gives every component, process or container: ONE function.

Greengrass's names (so components written for Greengrass find their socket, token, thing
and region where the SDK looks for them) beside Hedgerow's own. A later service adds its
variables here (and a field to `AgentFacts` if it needs a fact of the agent's).
"""

from __future__ import annotations

import dataclasses
from typing import Final

# Read by `awsiot.greengrasscoreipc.connect()` / clientv2 when no arguments are given.
SOCKET_ENV: Final = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV: Final = "SVCUID"  # noqa: S105 (the name of the variable, not a secret)


@dataclasses.dataclass(frozen=True)
class AgentFacts:
    """What the agent knows that every component is told, as the component sees it (a
    container sees the IPC socket at its mount path, not the host's)."""
    thing: str
    region: str
    # None: the component cannot reach it (a container without mountIpcSocket), so no
    # variable points at nothing.
    ipc_socket: str | None
    root_ca: str | None
    root: str | None = None  # the agent's root folder: only processes see the host's


def render_component_env(name: str, version: str, token: str,
                         facts: AgentFacts) -> dict[str, str]:
    env = {
        "HEDGEROW_THING_NAME": facts.thing, "AWS_IOT_THING_NAME": facts.thing,
        "HEDGEROW_COMPONENT": name, "HEDGEROW_COMPONENT_VERSION": version,
        "AWS_REGION": facts.region, "AWS_DEFAULT_REGION": facts.region,
        "HEDGEROW_AUTH_TOKEN": token, TOKEN_ENV: token,
    }
    if facts.root_ca is not None:
        env["GG_ROOT_CA_PATH"] = facts.root_ca
    if facts.ipc_socket is not None:
        env["HEDGEROW_IPC_SOCKET"] = env[SOCKET_ENV] = facts.ipc_socket
    if facts.root is not None:
        env["HEDGEROW_ROOT"] = facts.root
    return env
