"""The real services the suite depends on answer as the tests expect."""

from __future__ import annotations

import docker


def test_the_local_image_runs_busybox(docker_client: docker.DockerClient, test_image: str) -> None:
    output = docker_client.containers.run(
        test_image, ["sh", "-c", "echo ready; httpd --help 2>&1 | head -1"], remove=True,
    )
    assert output.decode().startswith("ready\n")
    assert "BusyBox" in output.decode()
    image = docker_client.images.get(test_image)
    assert image.labels.get("hedgerow.dev/busybox")
