"""One translation from docker-py's exceptions to PermanentError / TransientError."""

from __future__ import annotations

import docker.errors
import pytest
import requests
import requests.exceptions

from hedgerow.agent.dockererrors import (
    PermanentError,
    TransientError,
    translate,
    translated,
)


def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("error", response=response, explanation=explanation)


@pytest.mark.parametrize(("exc", "kind"), [
    (_api_error(404, "No such image: x:1"), PermanentError),
    (docker.errors.ImageNotFound("No such image"), PermanentError),
    (_api_error(400, "Minimum memory limit allowed is 6MB"), PermanentError),
    (_api_error(409, 'Conflict. The container name "/x" is already in use'), PermanentError),
    (_api_error(409, "removal of container x is already in progress"), TransientError),
    (_api_error(500, 'Get "https://registry-1.docker.io/v2/": dial tcp: no such host'),
     TransientError),
    (_api_error(500, "unable to find user nosuchuser: no matching entries in passwd file"),
     PermanentError),
    (_api_error(500, "pull access denied for x, repository does not exist"), PermanentError),
    (_api_error(502, "bad gateway"), TransientError),
    (_api_error(503, "daemon is shutting down"), TransientError),
    (requests.exceptions.ConnectionError("Connection refused"), TransientError),
    (requests.exceptions.ReadTimeout("read timed out"), TransientError),
    (docker.errors.DockerException("Error while fetching server API version"),
     TransientError),
    (FileNotFoundError(2, "No such file or directory"), TransientError),
    (docker.errors.InvalidArgument("bad port"), PermanentError),
])
def test_each_exception_has_one_kind(exc: Exception, kind: type[Exception]) -> None:
    error = translate(exc, "create x")
    assert type(error) is kind
    assert str(error).startswith("create x: ")


def test_translated_keeps_the_cause() -> None:
    cause = requests.exceptions.ConnectionError("refused")
    with pytest.raises(TransientError) as info, translated("ping"):
        raise cause
    assert info.value.__cause__ is cause
