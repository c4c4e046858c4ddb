"""Fixtures shared by every test folder: the real services the tests run against.

Nothing here is mocked. A missing service is an error, not a skip: a skipped test must
never be counted as passing. `make test` (scripts/setup-system.sh) installs and starts
what these need.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.support import apiserver as apiserver_

ROOT = pathlib.Path(__file__).parents[1]
TEST_IMAGE = "hedgerow/busybox:latest"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"dockerd is not answering ({exc}); run scripts/setup-system.sh")
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    """The local busybox image (built by `docker import`; no registry involved)."""
    subprocess.run([str(ROOT / "scripts" / "build-test-image.sh"), TEST_IMAGE], check=True)
    docker_client.images.get(TEST_IMAGE)
    return TEST_IMAGE


@pytest.fixture(scope="session")
def apiserver() -> Iterator[apiserver_.ApiServer]:
    """A real Kubernetes API server + etcd on 127.0.0.1 with crds/ installed.

    Built from Debian's Kubernetes sources by tests/apiserver/build.sh on first use (a few
    minutes, cached in ~/.cache/hedgerow), started in about two seconds afterwards.
    """
    with apiserver_.ApiServer() as server:
        server.apply_crds(ROOT / "crds")
        yield server


E2E = "tests/e2e/"


def _work_unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return "e2e" if module.startswith(E2E) else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """How `make test` shares the suite among pytest-xdist workers (--dist loadscope
    --no-loadscope-reorder): a module runs whole on one worker (its module fixtures are
    made once, its tests keep their order), and the end-to-end modules run one after
    another on one worker, as in a serial run, and first (pytest_collection_modifyitems).
    Each of their fleets (a controller, three agents, a broker, rollouts whose minute is
    2 s) is the heaviest and most timing-bound thing the suite starts: two at once timed
    a rollout out. Together they are also the longest chain of the run.
    (Not --dist loadgroup with xdist_group marks: with pytest 9, xdist 3.8 fails to tag
    the node ids it groups by, and every test is scheduled alone.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the e2e chain first (see above)
        items.sort(key=lambda item: _work_unit(item.nodeid) != "e2e")  # stable


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call phase's report on the item: fixtures print logs when it failed."""
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep

