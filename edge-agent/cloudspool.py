"""The offline spool's files: components' cloud publishes that wait for the broker.

One file per message in ``state/cloud-spool/`` (folder 0700, files 0600: payloads are
the components' data and only root reads them), named by a sequence number that keeps
growing across restarts, so listing the folder gives the send order. Each file is written
atomically (temp, fsync, rename, fsync folder): after a crash a message is either whole
or absent, never torn. A file is removed once the broker acknowledged it (QoS 1) or it
was written to the connection (QoS 0), dropped by the drop-oldest policy, or expired.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Iterable

import pydantic

from hedgerow import files
from hedgerow.core import cloudmessage

log = logging.getLogger("hedgerow.agent.cloudspool")

_SUFFIX = ".json"


@dataclasses.dataclass(frozen=True)
class Record:
    seq: int
    queued_at: float  # wall clock (seconds): a restart in between still counts the wait
    message: cloudmessage.CloudMessage


class SpoolFiles:
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder

    def path_of(self, seq: int) -> pathlib.Path:
        return self.folder / f"{seq:016d}{_SUFFIX}"

    def load(self) -> list[Record]:
        """What a previous run left, oldest first. An unreadable file (a bug, or a disk
        that corrupted it) is logged and removed: it would otherwise block the queue."""
        self.folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # state/: 0700
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.folder.chmod(0o700)
        records = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith("."):  # a temp file a crash left mid-write
                files.remove_file(path)
                continue
            try:
                seq = int(path.name.removesuffix(_SUFFIX))
                raw = json.loads(path.read_bytes())
                records.append(Record(seq, float(raw["queuedAt"]),
                                      cloudmessage.CloudMessage.model_validate(
                                          raw["message"])))
            except (OSError, ValueError, KeyError, TypeError,
                    pydantic.ValidationError) as exc:
                log.error("dropping unreadable spooled cloud message %s: %s", path,
                          str(exc)[:200])
                files.remove_file(path)
        return records

    def write(self, records: Iterable[Record]) -> None:
        """Persist ``records`` (one folder fsync for them all)."""
        contents = {
            self.path_of(r.seq): json.dumps({
                "queuedAt": r.queued_at,
                "message": json.loads(r.message.model_dump_json()),
            }).encode()
            for r in records}
        if contents:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            files.write_atomic_all(contents, mode=0o600)

    def remove(self, seq: int) -> None:
        files.remove_file(self.path_of(seq))
