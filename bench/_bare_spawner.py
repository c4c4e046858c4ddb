"""The baseline of agent_reconcile: bare `subprocess` in a process of its own.

`python -I -S _bare_spawner.py SCRIPT` reads lines "N UID GID" (UID -1: no user switch)
and answers each with the milliseconds `subprocess.Popen` took to start N copies of
`/bin/sh -c SCRIPT`, each in its own session, then kills them. A separate, small
interpreter (stdlib only): Popen with a user switch forks the caller, and forking the
benchmark's own process (tens of MB of models) would make the baseline slow for reasons
that have nothing to do with spawning.
"""

import os
import signal
import subprocess
import sys
import time


def spawn(n: int, uid: int, gid: int, script: str) -> float:
    user: dict[str, object] = (
        {"user": uid, "group": gid, "extra_groups": []} if uid >= 0 else {})
    start = time.perf_counter()
    procs = [subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True,
                              **user)  # type: ignore[call-overload]
             for _ in range(n)]
    elapsed = time.perf_counter() - start
    for p in procs:  # the whole group: sh may have forked rather than exec'd
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return elapsed * 1000


def main() -> None:
    script = sys.argv[1]
    for line in sys.stdin:
        n, uid, gid = (int(x) for x in line.split())
        print(f"{spawn(n, uid, gid, script):.4f}", flush=True)


if __name__ == "__main__":
    main()
