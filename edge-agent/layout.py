"""The agent's root folder (ARCHITECTURE.md "The device"), in one place.

    desired/        cloud desired-state document (desired.json), written atomically
    deployments/    local Component/Deployment YAML (`hedgerow deployment create`)
    state/          the agent's own records: components.json, status.json, deployments.json,
                    applied.json, last-good.json, docker-used, cloud-spool/,
                    cloud-subscriptions.json — crash-safe writes only;
                    exits/<marker>: steps' exit codes, written by root
    artifacts/      sha256/<digest> content-addressed cache; <name>/<version>/ views
    artifacts-unarchived/<name>/<version>/   unpacked archives
    work/<name>/    each component's working folder, owned by its user
    logs/<name>.log each component's log, rotated
    agent.sock      control socket for the CLI (0660, root:root)
    ipc/ipc.sock    component IPC socket (ipcserver.py, 0666: the token decides), in its own
                    folder (0711) so containers bind the folder and see a re-created socket
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Layout:
    root: pathlib.Path

    @property
    def desired(self) -> pathlib.Path:
        return self.root / "desired"

    @property
    def desired_file(self) -> pathlib.Path:
        return self.desired / "desired.json"

    @property
    def deployments(self) -> pathlib.Path:
        return self.root / "deployments"

    @property
    def state(self) -> pathlib.Path:
        return self.root / "state"

    @property
    def records(self) -> pathlib.Path:
        return self.state / "components.json"

    @property
    def status_file(self) -> pathlib.Path:
        return self.state / "status.json"

    @property
    def history_file(self) -> pathlib.Path:
        return self.state / "deployments.json"

    @property
    def applied_file(self) -> pathlib.Path:
        return self.state / "applied.json"

    @property
    def last_good_file(self) -> pathlib.Path:
        return self.state / "last-good.json"

    @property
    def cloud_spool(self) -> pathlib.Path:
        """Components' cloud publishes waiting for the broker (cloudspool.py)."""
        return self.state / "cloud-spool"

    @property
    def docker_marker(self) -> pathlib.Path:
        """Present once the agent has used Docker here: only then can orphans exist."""
        return self.state / "docker-used"

    @property
    def artifacts(self) -> pathlib.Path:
        return self.root / "artifacts"

    @property
    def unarchived(self) -> pathlib.Path:
        return self.root / "artifacts-unarchived"

    @property
    def work(self) -> pathlib.Path:
        return self.root / "work"

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def control_socket(self) -> pathlib.Path:
        return self.root / "agent.sock"

    @property
    def ipc_dir(self) -> pathlib.Path:
        return self.root / "ipc"

    @property
    def ipc_socket(self) -> pathlib.Path:
        return self.ipc_dir / "ipc.sock"

    @property
    def identity_ca(self) -> pathlib.Path:
        """The fleet CA as installed with the identity (identity.Paths.ca; the identity
        folder is root's alone)."""
        return self.root / "identity" / "ca.pem"

    @property
    def root_ca(self) -> pathlib.Path:
        """A world-readable copy of the fleet CA beside the IPC socket: what components
        get as GG_ROOT_CA_PATH (a container sees it in the folder it mounts)."""
        return self.ipc_dir / "ca.pem"

    def work_of(self, name: str) -> pathlib.Path:
        return self.work / name

    def log_of(self, name: str) -> pathlib.Path:
        return self.logs / f"{name}.log"

    @property
    def exits(self) -> pathlib.Path:
        """Exit codes of steps, written by root (hedgerow-gate, which stays the step's
        parent), read back for processes adopted after a restart. Root's, 0700: no
        component can plant, swap or forge one."""
        return self.state / "exits"

    def exit_file(self, marker: str) -> pathlib.Path:
        return self.exits / marker

    def ensure(self) -> None:
        """Create the folders; private ones 0700, those components traverse 0711/0755."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        for path, mode in ((self.desired, 0o700), (self.deployments, 0o700),
                           (self.state, 0o700), (self.exits, 0o700),
                           (self.artifacts, 0o711), (self.unarchived, 0o711),
                           (self.work, 0o711), (self.logs, 0o750),
                           (self.ipc_dir, 0o711)):
            path.mkdir(exist_ok=True)
            path.chmod(mode)
