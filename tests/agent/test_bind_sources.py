"""How the agent resolves a container's bind source before anything is checked or handed
to Docker (containerbridge.observe_bind_source), on the real file system as root: links
are followed to what the kernel would mount, and a path under a folder someone other than
root can change is refused (a link planted there later would redirect the mount)."""

from __future__ import annotations

import os
import pathlib
import pwd

import pytest

from hedgerow.agent import containerbridge
from hedgerow.core.container import ContainerSpecError


@pytest.fixture
def home(agent_home: pathlib.Path) -> pathlib.Path:
    """A root-owned 0711 folder (the agents' test home)."""
    return agent_home


def test_links_are_followed_to_what_the_kernel_mounts(home: pathlib.Path) -> None:
    (home / "real").mkdir()
    (home / "link").symlink_to(home / "real")
    assert containerbridge.observe_bind_source(str(home / "link")) == str(home / "real")
    assert containerbridge.observe_bind_source(f"/proc/self/root{home}/link") == \
        str(home / "real")
    assert containerbridge.observe_bind_source("/var/run") == "/run"
    # a missing last part: Docker creates it, as root, in a folder only root changes
    assert containerbridge.observe_bind_source(str(home / "new")) == str(home / "new")


def test_a_path_under_a_folder_another_user_can_change_is_refused(home: pathlib.Path) -> None:
    nobody = pwd.getpwnam("nobody")
    theirs = home / "theirs"
    (theirs / "inside").mkdir(parents=True)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ContainerSpecError, match=f"{theirs} can be changed by a user other "
                                                 "than root"):
        containerbridge.observe_bind_source(str(theirs / "inside"))
    shared = home / "shared"
    (shared / "inside").mkdir(parents=True)
    shared.chmod(0o777)  # root's, but anyone may swap what it holds
    with pytest.raises(ContainerSpecError, match="can be changed by a user other than root"):
        containerbridge.observe_bind_source(str(shared / "inside"))


def test_a_missing_folder_on_the_way_is_refused(home: pathlib.Path) -> None:
    with pytest.raises(ContainerSpecError, match="does not exist"):
        containerbridge.observe_bind_source(str(home / "missing" / "deeper"))
