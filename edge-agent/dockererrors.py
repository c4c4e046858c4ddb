"""Docker SDK failures, translated in one place into the two kinds the agent acts on.

The two kinds are the agent's one vocabulary of failures (`failures.py`), shared with
the process runtime. PermanentError: the input is wrong (image does not exist, invalid
spec, a name held by a container we do not own). Retrying cannot help; the component is
ERRORED until the desired state changes. TransientError: the daemon or the network is
(for now) not there. The agent retries with capped, jittered backoff and reports the
runtime unavailable.

Every call into docker-py in `containers.py` goes through `translated()`, so no other
module needs to know docker-py's exception zoo. The agent imports the error classes on
every device, so docker-py (and requests, urllib3) are imported only by the functions
that translate: by then `containers.py` has loaded them, and a process-only device never
pays for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hedgerow.agent import failures

# Docker 20.10 answers 500 to some requests that can never succeed as given; their
# messages are stable enough to recognise (an unmatched 500 stays transient, the safe
# side: a retry costs little, giving up on a flaky daemon costs a deployment).
_PERMANENT_500 = (
    "unable to find user",
    "no matching entries in passwd",
    "executable file not found",
    "no such file or directory: unknown",
    "invalid reference format",
    "repository does not exist",
    "manifest unknown",
    "pull access denied",
)
# 409s that go away by themselves; other conflicts (a name in use) need a spec change.
_TRANSIENT_409 = ("in progress", "is restarting", "is already in progress")


# The one vocabulary of failures (failures.py), under the names docker code uses.
ContainerRuntimeError = failures.Error
PermanentError = failures.PermanentError
TransientError = failures.TransientError


def translate(exc: BaseException, action: str) -> ContainerRuntimeError:
    """The runtime error for a docker-py (or transport) exception raised during `action`."""
    import docker.errors

    if isinstance(exc, ContainerRuntimeError):
        return exc
    message = f"{action}: {_explain(exc)}"
    if isinstance(exc, docker.errors.NotFound):
        return PermanentError(message)
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = _explain(exc).lower()
        if status in (408, 429):  # the daemon or a registry asks us to come back later
            return TransientError(message)
        if status == 409:
            return (TransientError(message) if any(t in text for t in _TRANSIENT_409)
                    else PermanentError(message))
        if status >= 500:
            return (PermanentError(message) if any(p in text for p in _PERMANENT_500)
                    else TransientError(message))
        if 400 <= status < 500:
            return PermanentError(message)
        return TransientError(message)
    if isinstance(exc, docker.errors.ImageLoadError | docker.errors.InvalidArgument
                  | docker.errors.InvalidRepository | docker.errors.ContainerError
                  | docker.errors.BuildError):
        return PermanentError(message)
    # Everything else is the transport: connection refused, socket missing, timeouts,
    # the version probe of a client that could not reach the daemon.
    return TransientError(message)


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block of docker-py calls; whatever they raise leaves as a runtime error."""
    import docker.errors
    import requests.exceptions
    import urllib3.exceptions

    try:
        yield
    except ContainerRuntimeError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, action) from exc


def is_not_found(exc: BaseException) -> bool:
    """A 404 from the daemon: the thing we asked about is simply not there."""
    import docker.errors

    return isinstance(exc, docker.errors.NotFound)


def _explain(exc: BaseException) -> str:
    import docker.errors

    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return f"{exc.explanation} (HTTP {exc.status_code})"
    return str(exc) or type(exc).__name__
