"""The agent's tunables (`hedgerow agent run` flags map onto these)."""

from __future__ import annotations

import dataclasses

from hedgerow.core import lifecycle, privilege

DEFAULT_REGION = "us-east-1"


@dataclasses.dataclass(frozen=True)
class Settings:
    resync_s: float = 30.0
    deployment_timeout_s: float = 600.0
    # A revision succeeds once every component has been RUNNING/FINISHED this long: a
    # process that crashes right after starting must fail the deployment, not pass it.
    settle_s: float = 2.0
    kill_grace_s: float = 5.0
    default_user: str = "nobody"
    # The device's ceiling (issue 11, defense in depth): a desired document with a
    # component that needs more is refused as a whole, and no step runs as uid/gid 0
    # below `privileged`, whatever the controller was made to publish.
    max_privilege: privilege.Level = privilege.Level.BASELINE
    log_max_bytes: int = 1 << 20
    log_keep: int = 3
    policy: lifecycle.Policy = dataclasses.field(default_factory=lifecycle.Policy)
    container_stop_s: int = 10         # SIGTERM → SIGKILL for containers
    docker_backoff_base_s: float = 1.0  # retrying an unreachable dockerd
    docker_backoff_cap_s: float = 30.0
    orphan_scan_s: float = 60.0        # look for our labels even with no container wanted
    # AWS_REGION for components (Greengrass gives the core's region). Hedgerow's cloud is
    # no AWS region; the SDKs components use need *some* region to start, and us-east-1
    # is what they assume elsewhere: set the real one when components call AWS services.
    aws_region: str = DEFAULT_REGION
