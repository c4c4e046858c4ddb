"""examples/greengrass/ as a Greengrass user moves it over: the recipe and the SDK script
exactly as they are, deployed on a real agent with the greengrass-cli flow
(`deployment create --recipes --artifacts --merge`), run as `nobody` with the official
SDK — it reads its configuration, publishes and receives its own message — and a
configuration update reaches it without a restart (same pid)."""

from __future__ import annotations

import json
import pathlib
import pwd
import shutil
import subprocess

import awscrt
import awsiot

from tests.support.wait import wait_for

from .conftest import AgentProcess, pids_with_marker

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "greengrass"
NAME = "com.example.PubSubConfig"


def install_sdk_for(home: pathlib.Path) -> None:
    """What `pip install --user awsiotsdk` leaves in the component's home on a device
    (its HOME is its work folder): the SDK in the user site-packages of the system
    python. Copied from the test environment (no network here)."""
    site = subprocess.run(["/usr/bin/python3", "-c", "import site; print(site.USER_SITE)"],
                          env={"HOME": str(home)}, capture_output=True, text=True,
                          check=True).stdout.strip()
    target = pathlib.Path(site)
    target.mkdir(parents=True)
    for package in (awsiot, awscrt):
        source = pathlib.Path(package.__file__).parent
        shutil.copytree(source, target / source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for native in pathlib.Path(awscrt.__file__).parent.parent.glob("_awscrt*.so"):
        shutil.copy(native, target)
    for path in [home, *home.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_the_greengrass_example_runs_unmodified(agent: AgentProcess) -> None:
    install_sdk_for(agent.root / "work" / NAME)
    created = agent.cli("deployment", "create", "--recipes", str(EXAMPLE / "recipes"),
                        "--artifacts", str(EXAMPLE / "artifacts"), "--merge",
                        f"{NAME}=1.0.0")
    assert created.returncode == 0, created.stderr
    agent.wait_states({NAME: "RUNNING"}, 30)
    log = agent.root / "logs" / f"{NAME}.log"

    def logged(text: str) -> bool:
        return log.exists() and text in log.read_text()
    wait_for(lambda: logged('Received new message on topic my/topic: '
                            '{"message": "Hello, World!"}'), 30,
             f"its own message, received (log: {log.read_text() if log.exists() else ''})")
    assert logged("Successfully subscribed to topic: my/topic")
    assert logged('"message": "Hello, World!"')  # read with GetConfiguration
    pid = agent.record(NAME)["process"]["pid"]
    [script] = [p for p in pids_with_marker(agent.root, NAME)
                if pathlib.Path(f"/proc/{p}/comm").read_text().startswith("python")]
    assert pathlib.Path(f"/proc/{script}").stat().st_uid == pwd.getpwnam("nobody").pw_uid

    update = {NAME: {"merge": {"message": "Hello again", "intervalSeconds": 1}}}
    changed = agent.cli("deployment", "create", "--update-config", json.dumps(update))
    assert changed.returncode == 0, changed.stderr
    wait_for(lambda: logged('Received new message on topic my/topic: '
                            '{"message": "Hello again"}'), 30, "the new message")
    assert logged("Configuration updated at message:")
    assert agent.record(NAME)["process"]["pid"] == pid  # not restarted
    assert script in pids_with_marker(agent.root, NAME)
