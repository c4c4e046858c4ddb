"""A real Prometheus server (Debian's `prometheus`) on loopback with a generated config
and a temporary storage folder, scraping the targets a test names."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import urllib.parse
import urllib.request
from typing import Any

import yaml

from tests.support import net, procs
from tests.support.net import LOOPBACK, free_port
from tests.support.wait import wait_for


class Prometheus:
    def __init__(self, directory: pathlib.Path, targets: dict[str, str],
                 interval: str = "1s") -> None:
        """``targets``: job name -> host:port of a /metrics endpoint."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (scripts/setup-system.sh "
                               "installs Debian's package)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.config = directory / "prometheus.yml"
        self.log = directory / "prometheus.log"
        self.targets = targets
        self.interval = interval
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in self.targets.items()],
        }))
        for attempt in range(3):
            logged = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={self.config}",
                     f"--storage.tsdb.path={self.directory / 'data'}",
                     f"--web.listen-address={LOOPBACK}:{self.port}"],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_for(self._ready, 60, "prometheus to be ready")
                return self
            except AssertionError:
                procs.stop_group(self.proc)  # __exit__ does not run when __enter__ raises
                # The free port was bound by another worker in between: another port.
                if attempt == 2 or "address already in use" not in self.output()[logged:]:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def __exit__(self, *_: object) -> None:
        proc, self.proc = self.proc, None
        procs.stop_group(proc)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.output()[-3000:]}")
        if self.proc is None or not net.listens(self.proc.pid, self.port):
            return False  # not yet, or another worker's server answers on the port
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/-/ready",
                                        timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"http://{LOOPBACK}:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def targets_up(self) -> dict[str, str]:
        """job -> health of its target ("up", "down", "unknown")."""
        return {t["labels"]["job"]: t["health"]
                for t in self.api("targets")["activeTargets"]}

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without __name__, job, instance) ->
        value."""
        out = {}
        for item in self.api("query", query=expr)["result"]:
            labels = tuple(sorted((k, v) for k, v in item["metric"].items()
                                  if k not in ("__name__", "job", "instance")))
            out[labels] = float(item["value"][1])
        return out

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series (None: none yet)."""
        result = self.query(expr)
        return next(iter(result.values())) if len(result) == 1 else None
