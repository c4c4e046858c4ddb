"""Loopback ports for the services tests start."""

from __future__ import annotations

import collections
import os
import pathlib
import socket

LOOPBACK = "127.0.0.1"
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


# The sockets behind the ports free_port() handed out lately (see there).
_held: collections.deque[socket.socket] = collections.deque()
_HELD = 256


def free_port() -> int:
    """A loopback port no other free_port(), in this process or another, hands out for a
    while: the socket it was found with stays bound (SO_REUSEADDR, never listening) for
    the next 255 calls. The kernel's bind(0) skips a port with a socket bound to it, so
    another worker cannot be handed it between now and our server's bind, which
    SO_REUSEADDR lets through (every server the tests start sets it: Go's net.Listen,
    mosquitto, asyncio's and http.server's servers, docker-proxy). A server that does
    not set it fails to bind: callers retry on another port."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind((LOOPBACK, 0))
    _held.append(held)
    while len(_held) > _HELD:
        _held.popleft().close()
    port: int = held.getsockname()[1]
    return port


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds the socket listening on ``port``.

    Not "something answers on the port": a free_port() another worker was handed too
    may be bound by that worker's server, while ours failed to bind and is exiting. A
    connect would reach the stranger, and the test would talk to another test's broker.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            return True
    return False
