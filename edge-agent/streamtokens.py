"""Who may connect to the stream manager: the agent publishes the SHA-256 of the token of
every component that depends on hedgerow.StreamManager in `services/stream-manager/tokens`
under its root. The folder and file are root's (0755/0644), written atomically: the stream
manager (running as its own user) reads them and re-reads on change, and no component can
write them; root never touches a path a component controls."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Mapping

from hedgerow import files
from hedgerow.agent import records
from hedgerow.core import streams


def apply_tokens(root: pathlib.Path, recs: Mapping[str, records.Record]) -> None:
    """Rewrite the tokens file when the set of dependents or their tokens changed."""
    dependents = streams.resolve_dependents({n: r.spec for n, r in recs.items()})
    if not dependents and not (root / streams.TOKENS_FILE).exists():
        return  # no stream manager here: leave no trace
    data = streams.render_tokens_file([recs[n].token for n in dependents])
    path = root / streams.TOKENS_FILE
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    for folder, mode in ((path.parent.parent, 0o711), (path.parent, 0o755)):
        folder.mkdir(exist_ok=True, mode=mode)
    files.write_atomic(path, data, mode=0o644)
