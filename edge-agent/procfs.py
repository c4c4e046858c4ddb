"""What /proc says about processes: one job, read-only inspection.

A pid alone names nothing (pids are reused): a process is ours when its pid, its kernel
start time and the marker (`HEDGEROW_INSTANCE`) the agent put in its environment all
match a record. Reads are os-level (a scan reads hundreds of files; pathlib objects add
up) and tolerate processes ending while they are read.
"""

from __future__ import annotations

import os
import pathlib

from hedgerow.agent import records


def _read_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2:].split()


def read_start_time(pid: int) -> int | None:
    fields = _read_stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def read_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds: user + system, its reaped children's included; resident bytes)."""
    fields = _read_stat(pid)
    if fields is None:
        return None
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    rss_pages = int(fields[21])
    return ticks / os.sysconf("SC_CLK_TCK"), rss_pages * os.sysconf("SC_PAGE_SIZE")


def is_same_process(ref: records.ProcessRef) -> bool:
    """Pid, kernel start time and our marker must all match: pids get reused."""
    if read_start_time(ref.pid) != ref.start_time:
        return False
    try:
        environ = pathlib.Path(f"/proc/{ref.pid}/environ").read_bytes()
    except OSError:
        return False
    return f"HEDGEROW_INSTANCE={ref.marker}".encode() in environ.split(b"\0")


def _read_proc(path: str) -> bytes:
    """A /proc file, os-level: a scan reads hundreds, and pathlib objects add up."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def scan_groups() -> dict[int, set[int]]:
    """Every live (not zombie) process, by process group: one pass over /proc."""
    out: dict[int, set[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = _read_proc(f"/proc/{entry.name}/stat")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z":
            out.setdefault(int(fields[2]), set()).add(int(entry.name))
    return out


def group_members(pgid: int) -> set[int]:
    return scan_groups().get(pgid, set())


def marked(prefix: bytes, among: set[int] | None = None) -> set[int]:
    """Live processes with an environment entry starting with `prefix` (our marker),
    looked for `among` these pids, or all of /proc."""
    pids = among if among is not None else (
        int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    out = set()
    for pid in pids:
        try:
            environ = _read_proc(f"/proc/{pid}/environ")
        except OSError:
            continue
        if any(v.startswith(prefix) for v in environ.split(b"\0")) and \
                read_start_time(pid) is not None:
            out.add(pid)
    return out
