"""The agent's tunables (`hedgerow agent run` flags map onto these)."""

from __future__ import annotations

import dataclasses

from hedgerow.core import cloudmessage, lifecycle, limits, privilege

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
    # A full cloud spool (components' publishes waiting for the broker, bounded by
    # core.limits.CLOUD_SPOOL_*): refuse-new by default — a message once accepted (and
    # answered with success) is never thrown away, the component whose publish does not
    # fit is told; drop-oldest suits telemetry where the newest reading matters most.
    cloud_spool_policy: cloudmessage.SpoolPolicy = cloudmessage.DEFAULT_SPOOL_POLICY
    # A smaller spool for a small device (never above the limits).
    cloud_spool_max_messages: int = limits.CLOUD_SPOOL_MAX_MESSAGES
    cloud_spool_max_bytes: int = limits.CLOUD_SPOOL_MAX_BYTES
