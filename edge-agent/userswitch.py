"""Who a step runs as, and what may reach it across the drop of privileges: one job.

`resolve_identity` maps a recipe's `posixUser` (`user[:group]`, default the device's
default user) to uid, gid, name and home on this device; a user or group that does not
exist is a permanent failure (`UnknownUserError`), never a KeyError. In the setpriv
fallback (no hedgerow-gate), `split_root_unsafe` keeps what glibc would honour for a
root process out of the environment setpriv sees.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import re
import shlex
from collections.abc import Mapping

from hedgerow.agent import failures

log = logging.getLogger("hedgerow.agent")
# What glibc ignores when it starts a program with privileges (its unsecvars.h), plus
# every LD_* and MALLOC_*: in the setpriv fallback, setpriv — dynamically linked — runs
# as root with the step's environment, so a recipe's LD_PRELOAD would run as root. These
# reach the step through its shell instead (`export`), once it runs as its user.
_ROOT_UNSAFE = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
    "LOCPATH", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"})
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def split_root_unsafe(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """(what setpriv may see, the `export` lines that give the step the rest). A name the
    shell cannot export cannot be among the rest: it is left out, and said so."""
    safe, held = {}, []
    for name, value in env.items():
        if name not in _ROOT_UNSAFE and not name.startswith(("LD_", "MALLOC_")):
            safe[name] = value
        elif _SHELL_NAME.fullmatch(name):
            held.append(f"export {name}={shlex.quote(value)}\n")
        else:
            log.warning("%s is not passed to the step: setpriv would see it as root, and "
                        "the shell cannot export it (build hedgerow-gate)", name)
    return safe, "".join(held)


class UnknownUserError(failures.PermanentError):
    """The user (or group) a component runs as does not exist on this device."""


@dataclasses.dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str
    home: str


def resolve_identity(posix_user: str | None, default_user: str,
                     privileged: bool) -> Identity:
    if os.geteuid() != 0:  # an unprivileged agent can only run things as itself
        me = pwd.getpwuid(os.geteuid())
        return Identity(me.pw_uid, me.pw_gid, me.pw_name, me.pw_dir)
    if privileged:
        return Identity(0, 0, "root", "/root")
    user, _, group = (posix_user or default_user).partition(":")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UnknownUserError(f"no such user on this device: {user!r}") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise UnknownUserError(f"no such group on this device: {group!r}") from None
    return Identity(entry.pw_uid, gid, entry.pw_name, entry.pw_dir)
