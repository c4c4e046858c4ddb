"""The two kinds of failure every runtime reports (principle 6), whatever went wrong.

PermanentError: the input is wrong (no such user, a recipe variable that does not
resolve, an identity above the device's ceiling, an image that does not exist). Retrying
cannot help: the component is ERRORED and the state table's backoff, then BROKEN, take
over until the desired state changes. TransientError: the device or a daemon is (for now)
not up to it (out of descriptors, memory or space; dockerd away): not the component's
fault, retried soon, no error counted against it.

Docker's errors are translated into these in `dockererrors`, the process runtime's here
(`of_os_error`), so the loop and every runtime speak of failures in one vocabulary.
"""

from __future__ import annotations

import errno

# What running out of the device's resources looks like: the agent's trouble, not the
# component's. A spawn that fails with one of these is retried, not charged as an error.
_DEVICE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT,
                            errno.EIO, errno.ENOMEM, errno.EAGAIN})


class Error(Exception):
    """Base of the failures a runtime reports."""


class PermanentError(Error):
    """Retrying will not help until the desired state changes."""


class TransientError(Error):
    """The device or a daemon failed for now; retry later."""


def of_os_error(exc: OSError, action: str) -> Error:
    """The failure an OSError raised while the agent did `action` for a component is."""
    kind = TransientError if exc.errno in _DEVICE_ERRNOS else PermanentError
    return kind(f"{action}: {exc}")
