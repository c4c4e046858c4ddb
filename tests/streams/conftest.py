"""A real stream manager process (`python -m hedgerow.streams serve`) on a free loopback
port, with a tokens file as the agent writes it, and the official SDK client to talk to it.
The tests that go through the agent (test_agent.py) start it as a component instead."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from stream_manager import StreamManagerClient

from tests.agent.conftest import agent, agent_home  # noqa: F401 (fixtures for test_agent)
from tests.support import net
from tests.support.procs import stop_group
from tests.support.wait import wait_for

SHIFTED_CLOCK = pathlib.Path(__file__).with_name("shifted_clock.py")


class StreamManager:
    def __init__(self, home: pathlib.Path, **config: Any) -> None:
        self.home = home
        self.token = secrets.token_urlsafe(24)
        self.tokens = home / "tokens"
        self.tokens.write_text(hashlib.sha256(self.token.encode()).hexdigest() + "\n")
        self.storage = home / "streams"
        self.log = home / "stream-manager.log"
        self.config = {"storageDir": str(self.storage), "flushIntervalMillis": 100, **config}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.env: dict[str, str] = {}
        self.clock: pathlib.Path | None = None  # see advance()

    def start(self) -> None:
        program = ([str(SHIFTED_CLOCK), str(self.clock)] if self.clock is not None
                   else ["-m", "hedgerow.streams"])
        for _attempt in range(3):  # a free port may be taken before it binds: try another
            self.port = net.free_port()
            self.config["port"] = self.port
            logged = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, *program, "serve", "--tokens",
                     str(self.tokens), "--config", json.dumps(self.config)],
                    stdout=out, stderr=out, start_new_session=True, cwd=self.home,
                    env={**os.environ, **self.env})
            if wait_for(self._listening, 20, "the stream manager's port") == "listening":
                return
            if "[Errno 98]" not in self.log.read_bytes()[logged:].decode(errors="replace"):
                break
        raise AssertionError(f"stream manager exited: {self.log.read_text()[-2000:]}")

    def _listening(self) -> str | None:
        """Whether it listens ("listening") or has exited ("exited"); None: not yet."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return "exited"
        # Ours, not whatever answers: another worker's server may hold the same port.
        return "listening" if net.listens(self.proc.pid, self.port) else None

    def advance(self, seconds: float) -> None:
        """Move the stream manager's wall clock on (started with ``clock=True``)."""
        assert self.clock is not None, "make_manager(clock=True) moves the clock"
        offset = int(self.clock.read_text()) if self.clock.exists() else 0
        tmp = self.clock.with_suffix(".tmp")
        tmp.write_text(str(offset + int(seconds * 1000)))
        tmp.replace(self.clock)  # read whole or not at all

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_group(self.proc)

    def client(self, token: str | None = None, **kw: Any) -> StreamManagerClient:
        """The official SDK client, given the token as a component gets it."""
        old = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = self.token if token is None else token
        try:
            return StreamManagerClient(port=self.port, **kw)
        finally:
            if old is None:
                del os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
            else:
                os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = old


@pytest.fixture
def make_manager(tmp_path: pathlib.Path) -> Iterator[Any]:
    started: list[StreamManager] = []

    def make(env: dict[str, str] | None = None, clock: bool = False,
             **config: Any) -> StreamManager:
        """``clock``: a wall clock the test moves (StreamManager.advance)."""
        sm = StreamManager(tmp_path, **config)
        sm.env = env or {}
        sm.clock = tmp_path / "clock-offset-ms" if clock else None
        sm.start()
        started.append(sm)
        return sm

    yield make
    for sm in started:
        sm.stop()
    for sm in started[:1]:
        print(sm.log.read_text()[-4000:])


@pytest.fixture
def manager(make_manager: Any) -> StreamManager:
    sm: StreamManager = make_manager()
    return sm
