"""File operations the agent (root) does where a component could have a hand in what it
finds: by descriptor, never following a link, never trusting a name.

A component owns its work folder and, as its user, may plant links, FIFOs, huge files or
swap entries while the agent looks. So the agent
- keeps what it writes in folders only root can change (state/, artifact views and
  unpack staging), so a name there means what the agent made;
- opens with O_NOFOLLOW (a link is refused, not followed) and O_NONBLOCK (a FIFO does
  not hang the open), checks with fstat that it got a regular file or a folder, and
  changes owner and mode with fchown/fchmod on that descriptor — never chmod/chown by
  path where a component can write;
- reads such files only up to a bound;
- removes trees with shutil.rmtree, which walks by descriptor and never follows a link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnexpectedFileError(OSError):
    """What was found under a name is not a plain file or folder of the expected owner."""


def open_dir(name: str | os.PathLike[str], dir_fd: int | None = None) -> int:
    """A folder's descriptor; a link (even to a folder) raises OSError (ELOOP/ENOTDIR)."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def make_private_dir(parent_fd: int, name: str, gid: int, mode: int) -> int:
    """`name` in `parent_fd` as a folder of the agent's user (group `gid` when root) with
    `mode`, opened; made if missing. Whatever else stands there — a link, a file, a FIFO,
    a folder someone else owns (an older version gave views to the component) — is
    removed first, without following anything. The caller closes the descriptor."""
    for _ in range(3):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        try:
            fd = open_dir(name, parent_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            remove_entry(parent_fd, name)  # a link or a file where the folder goes
            continue
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            remove_entry(parent_fd, name)
            continue
        if os.geteuid() == 0 and st.st_gid != gid:
            os.fchown(fd, -1, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        return fd
    raise UnexpectedFileError(f"{name}: cannot be made a folder of the agent's (something keeps "
                     "replacing it)")


def remove_entry(parent_fd: int, name: str) -> None:
    """Remove `name` from `parent_fd`, whatever it is; a folder with all it holds (by
    descriptor: a link inside is removed, never followed)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)


def open_regular(name: str | os.PathLike[str], dir_fd: int | None = None,
                 owner: int | None = None) -> int:
    """A regular file opened for reading, never a link (O_NOFOLLOW), never blocking on a
    FIFO or a device (O_NONBLOCK, then fstat); with `owner`, owned by that uid."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
        os.close(fd)
        raise UnexpectedFileError(f"{os.fspath(name)}: not a regular file"
                         + ("" if owner is None else f" owned by uid {owner}"))
    return fd


def read_small(name: str | os.PathLike[str], limit: int, dir_fd: int | None = None,
               owner: int | None = None) -> bytes:
    """At most `limit` bytes of a regular file (see open_regular); a longer one raises."""
    fd = open_regular(name, dir_fd, owner)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnexpectedFileError(f"{os.fspath(name)}: longer than {limit} bytes")
    return data


def chown_dir(path: str | os.PathLike[str], uid: int, gid: int, mode: int) -> None:
    """Give a folder to uid:gid with `mode`, by descriptor: a link in its place is
    refused (OSError), not followed."""
    fd = open_dir(path)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
