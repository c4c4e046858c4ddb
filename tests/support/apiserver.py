"""A real, throw-away Kubernetes API server (plus etcd) for tests.

The server is built from Debian's Kubernetes Go source packages by
``tests/apiserver/build.sh`` (cached after the first build) and serves CRDs and
core/v1 namespaces, events, configmaps and secrets. There is no
controller-manager: no garbage collection, and deleting a namespace deletes
nothing in it.

In a fixture::

    @pytest.fixture(scope="session")
    def apiserver() -> Iterator[ApiServer]:
        with ApiServer() as server:
            server.apply_crds(REPO / "crds")
            yield server  # server.kubeconfig is the path for kubectl/kopf/clients

From a shell (``make demo``)::

    python -m tests.support.apiserver up --dir .demo   # prints the kubeconfig path
    python -m tests.support.apiserver down --dir .demo
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import net

__all__ = ["ApiServer", "ApiServerError", "Binaries", "locate_binaries"]

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "apiserver" / "build.sh"
LOOPBACK = "127.0.0.1"


class ApiServerError(RuntimeError):
    """The test API server could not be built, started or used."""


@dataclass(frozen=True)
class Binaries:
    apiserver: Path
    etcd: Path


def locate_binaries(*, refresh: bool = False) -> Binaries:
    """Return the server and etcd binaries, building them on first use.

    ``HEDGEROW_APISERVER_BIN`` and ``HEDGEROW_ETCD_BIN`` (both set) skip the
    build. Otherwise ``build.sh`` runs; its progress goes to our stderr, since
    a cold build takes minutes.
    """
    env_server = os.environ.get("HEDGEROW_APISERVER_BIN")
    env_etcd = os.environ.get("HEDGEROW_ETCD_BIN")
    if env_server and env_etcd:
        return Binaries(Path(env_server), Path(env_etcd))
    cmd = ["bash", str(BUILD_SCRIPT), *(["--refresh"] if refresh else [])]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ApiServerError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        return Binaries(Path(found["APISERVER"]), Path(found["ETCD"]))
    except KeyError:
        raise ApiServerError(f"unexpected output from {BUILD_SCRIPT}: {proc.stdout!r}") from None




# --- certificates -----------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path


def make_pki(directory: Path) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and an
    admin client certificate (O=system:masters, which is always authorized)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hedgerow-test-ca")])
    ca = _cert(
        ca_name,
        ca_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    leaf_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    server_key = _key()
    server = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hedgerow-test-apiserver")]),
        server_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (leaf_usage, True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
                        x509.DNSName("localhost"),
                    ]
                ),
                False,
            ),
        ],
    )
    admin_key = _key()
    admin = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        ),
        admin_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (leaf_usage, True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    pki = Pki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_private(pki.server_key, _key_pem(server_key))
    _write_private(pki.admin_key, _key_pem(admin_key))
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write_kubeconfig(path: Path, url: str, pki: Pki) -> None:
    """A self-contained kubeconfig (certificates inline), mode 0600."""
    text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: hedgerow-test
  cluster:
    server: {url}
    certificate-authority-data: {_b64(pki.ca_cert)}
users:
- name: admin
  user:
    client-certificate-data: {_b64(pki.admin_cert)}
    client-key-data: {_b64(pki.admin_key)}
contexts:
- name: hedgerow-test
  context:
    cluster: hedgerow-test
    user: admin
    namespace: default
current-context: hedgerow-test
"""
    _write_private(path, text.encode("ascii"))


# --- processes --------------------------------------------------------------


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    # Own session (and so process group) each: stop() can signal the whole
    # group, and `up` leaves them running after Python exits.
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, parent has not reaped it yet) has stopped running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(
    pid: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0
) -> None:
    """SIGTERM the process group that pid leads; SIGKILL it after timeout.

    Pass proc for our own children, so that Popen (not us) reaps them.
    """
    _signal_group(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(pid, signal.SIGKILL)
            proc.wait()
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)


class ApiServer:
    """etcd + the test API server on free 127.0.0.1 ports.

    Attributes once started: ``kubeconfig`` (Path), ``url``, ``port``,
    ``etcd_url``, ``workdir`` (certificates, logs, etcd data).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binaries: Binaries | None = None,
        startup_timeout: float = 60.0,
        kubectl: str | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hedgerow-apiserver-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self._binaries = binaries
        self.startup_timeout = startup_timeout
        self.kubectl_path = (
            kubectl or os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
        )
        self.kubeconfig = self.workdir / "kubeconfig"
        self.etcd_log = self.workdir / "etcd.log"
        self.server_log = self.workdir / "apiserver.log"
        self.port = 0
        self.url = ""
        self.etcd_url = ""
        self._etcd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._pki: Pki | None = None

    # context manager ------------------------------------------------------

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # lifecycle ------------------------------------------------------------

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = locate_binaries()
        return self._binaries

    @property
    def pids(self) -> dict[str, int]:
        return {
            name: proc.pid
            for name, proc in (("etcd", self._etcd), ("apiserver", self._server))
            if proc is not None
        }

    def start(self) -> None:
        binaries = self.binaries
        try:
            self._pki = make_pki(self.workdir / "pki")
            self._start_etcd(binaries.etcd)
            self._start_server(binaries.apiserver)
            write_kubeconfig(self.kubeconfig, self.url, self._pki)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate both process groups; remove the work dir if we made it."""
        for proc in (self._server, self._etcd):
            if proc is not None:
                _terminate(proc.pid, proc)
        self._server = self._etcd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _start_etcd(self, etcd: Path) -> None:
        last = ""
        for _attempt in range(3):  # a "free" port can be taken before we bind it
            client, peer = net.free_port(), net.free_port()
            self.etcd_url = f"http://{LOOPBACK}:{client}"
            peer_url = f"http://{LOOPBACK}:{peer}"
            data = self.workdir / "etcd-data"
            shutil.rmtree(data, ignore_errors=True)
            self._etcd = _spawn(
                [
                    str(etcd),
                    "--name=hedgerow-test",
                    f"--data-dir={data}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=hedgerow-test={peer_url}",
                    "--listen-metrics-urls=",
                    "--unsafe-no-fsync",  # throw-away data: durability buys nothing
                    "--log-level=warn",
                ],
                self.etcd_log,
            )
            # Healthy and ours: another worker's etcd may answer on a port both were handed
            # (ours then fails to bind), and this API server would store into that one.
            if self._wait_http(self._etcd, f"{self.etcd_url}/health", None,
                               b'"health":"true"') and net.listens(self._etcd.pid, client):
                return
            last = _tail(self.etcd_log)
            _terminate(self._etcd.pid, self._etcd)
        raise ApiServerError(f"etcd did not become healthy; last lines of {self.etcd_log}:\n{last}")

    def _start_server(self, apiserver: Path) -> None:
        assert self._pki is not None
        context = self.ssl_context()
        last = problem = ""
        for _attempt in range(3):
            self.port = net.free_port()
            self.url = f"https://{LOOPBACK}:{self.port}"
            self._server = _spawn(
                [
                    str(apiserver),
                    f"--etcd-servers={self.etcd_url}",
                    f"--bind-address={LOOPBACK}",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={self._pki.server_cert}",
                    f"--tls-private-key-file={self._pki.server_key}",
                    f"--client-ca-file={self._pki.ca_cert}",
                    f"--cert-dir={self.workdir / 'serving'}",
                ],
                self.server_log,
            )
            if self._wait_http(self._server, f"{self.url}/readyz", context, b"ok"):
                return
            last = _tail(self.server_log)
            code = self._server.poll()
            _terminate(self._server.pid, self._server)
            if code is None:  # running but never ready: retrying will not help
                problem = f"not ready at {self.url}/readyz within {self.startup_timeout:.0f} s"
                break
            problem = f"exited with code {code}"
        raise ApiServerError(f"API server {problem}; last lines of {self.server_log}:\n{last}")

    def _wait_http(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        context: ssl.SSLContext | None,
        expect: bytes,
    ) -> bool:
        """True once url answers 200 containing expect; False if proc died or time ran out."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    if resp.status == 200 and expect in resp.read():
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    # using it -------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts only the test CA and presents the admin client certificate."""
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        context.load_cert_chain(str(self._pki.admin_cert), str(self._pki.admin_key))
        return context

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this server; raises with its stderr on failure."""
        cmd = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise ApiServerError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def apply_crds(self, path: Path | str, *, timeout: float = 60) -> list[str]:
        """kubectl apply a CRD file or directory and wait until every CRD in it
        is Established. Returns the applied object names (kind/name)."""
        applied = self.kubectl("apply", "-f", str(path), "-o", "name").stdout.split()
        crds = [n for n in applied if n.startswith("customresourcedefinition")]
        if crds:
            self.kubectl(
                "wait",
                "--for=condition=established",
                f"--timeout={timeout:.0f}s",
                *crds,
                timeout=timeout + 30,
            )
        return applied


# --- command line (make demo) ------------------------------------------------


def _up(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    if any((directory / f"{name}.pid").exists() for name in ("etcd", "apiserver")):
        print(f"already up? pid files in {directory}; run `down` first", file=sys.stderr)
        return 1
    server = ApiServer(directory)
    server.start()
    for name, pid in server.pids.items():
        (directory / f"{name}.pid").write_text(f"{pid}\n")
    print(server.kubeconfig)
    return 0


def _down(directory: Path) -> int:
    binaries = {"etcd": "etcd", "apiserver": "hedgerow-test-apiserver"}
    for name in ("apiserver", "etcd"):  # the server first: it needs etcd to shut down cleanly
        pid_file = directory / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().strip())
        try:  # only signal it if the pid still belongs to what we started
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            cmdline = b""
        if Path(os.fsdecode(cmdline)).name == binaries[name]:
            _terminate(pid)
        pid_file.unlink()
    for leftover in ("kubeconfig", "pki", "etcd-data", "serving"):
        path = directory / leftover
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.apiserver",
        description="Start or stop a throw-away Kubernetes API server with etcd.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start; print the kubeconfig path")
    up.add_argument(
        "--dir", type=Path, required=True, help="state dir (pid files, kubeconfig, logs)"
    )
    down = sub.add_parser("down", help="stop what `up --dir` started")
    down.add_argument("--dir", type=Path, required=True)
    build = sub.add_parser("build", help="build (or refresh) the binaries; print their paths")
    build.add_argument("--refresh", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(args.dir.resolve())
        if args.command == "down":
            return _down(args.dir.resolve())
        binaries = locate_binaries(refresh=args.refresh)
        print(f"APISERVER={binaries.apiserver}\nETCD={binaries.etcd}")
        return 0
    except ApiServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
