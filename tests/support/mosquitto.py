"""A throw-away mosquitto broker on a free 127.0.0.1 port, for tests.

Plain MQTT by default; ``tls=True`` makes a test CA, a server certificate and client
certificates (``client_cert(cn)``), requires them, uses the CN as the username and applies
the Hedgerow ACL (a device reads only its own desired topic and writes only its own
status topic; ``hedgerow_controller`` may do anything under ``hedgerow/``).

    with Mosquitto() as broker:
        broker.url  # mqtt://127.0.0.1:PORT

Started as root, mosquitto switches to the ``mosquitto`` user unless its configuration
names another; the configuration here names the user running the tests, so key files
that only this user can read still load.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import net

LOOPBACK = "127.0.0.1"
ACL = """\
user hedgerow_controller
topic readwrite hedgerow/#

pattern read hedgerow/things/%u/desired
pattern write hedgerow/things/%u/status
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


class Mosquitto:
    def __init__(
        self,
        *,
        tls: bool = False,
        directory: Path | None = None,
        config: Callable[[int], str] | None = None,
    ) -> None:
        """``config``, if given, renders the whole configuration for a port (certificates
        and ACL are then the caller's; ``tls`` only sets the URL scheme)."""
        self.tls = tls
        self._external_config = config
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="hedgerow-mqtt-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._held: socket.socket | None = None  # the port, while stopped (_hold)
        self._ca_key: ec.EllipticCurvePrivateKey | None = None
        self._ca_cert: x509.Certificate | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{LOOPBACK}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def log(self) -> Path:
        return self.dir / "mosquitto.log"

    # --- certificates -------------------------------------------------------------

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("hedgerow test CA"))
            .issuer_name(_name("hedgerow test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self._ca_key, self._ca_cert = key, cert
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, cn: str, *, server: bool) -> tuple[Path, Path]:
        assert self._ca_key is not None and self._ca_cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        """(certificate, key) for a client whose username becomes ``cn``."""
        if not self.tls:
            raise RuntimeError("client certificates need Mosquitto(tls=True)")
        return self._issue(cn, server=False)

    # --- process --------------------------------------------------------------------

    def _config(self) -> str:
        if self._external_config is not None:
            return self._external_config(self.port)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.tls:
            cert, key = self._issue("localhost", server=True)
            (self.dir / "acl").write_text(ACL)
            lines += [
                f"cafile {self.ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"acl_file {self.dir / 'acl'}",
            ]
        else:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0, *, port: int | None = None) -> None:
        """``port`` restarts on a known port (e.g. after stop(), so clients reconnect)."""
        if self.tls and self._ca_cert is None and self._external_config is None:
            self._make_ca()
        for _ in range(5):  # the free port may be taken in between; try another
            if port is None:
                self._release()
            self.port = port or net.free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(self._config())
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                # Ours, not whatever answers: another worker's broker may hold the port.
                if net.listens(self.proc.pid, self.port):
                    self._release()
                    return
                time.sleep(0.05)
            self.stop()
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"mosquitto did not start on {LOOPBACK}:\n{log[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        self._hold()

    def _hold(self) -> None:
        """Keep the stopped broker's port from other workers' free_port() until start()
        on it again: tests stop a broker and restart it on the same port for clients to
        reconnect to, and meanwhile the kernel may hand that free port to another
        worker's bind(0). A bound, not listening, SO_REUSEADDR socket makes bind(0) skip
        the port, and lets mosquitto (SO_REUSEADDR too) bind and listen on it."""
        self._release()
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            held.bind((LOOPBACK, self.port))
        except OSError:  # taken already: start(port=) will say so
            held.close()
            return
        self._held = held

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._release()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def raw_connect(port: int, ca: Path, cert: Path, key: Path, client_id: str,
                tls_max: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
                timeout: float = 10.0) -> bytes:
    """One MQTT 5 CONNECT over mutual TLS with no client library in between, so a test
    sees exactly how the broker answers: its CONNACK packet, or how it refused.

    Raises ssl.SSLError when TLS refuses (an alert in the handshake, or the connection
    torn down under TLS 1.3, where the server judges the client certificate after the
    client's handshake is done), ConnectionError when the broker closes without a word.
    A broker that answers nothing at all is a TimeoutError: not a refusal.
    """
    ident = client_id.encode()
    body = (b"\x00\x04MQTT\x05\x02\x00\x05\x00"  # MQTT 5, clean start, keepalive 5 s
            + struct.pack("!H", len(ident)) + ident)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the server certificate is checked against the CA only
    ctx.maximum_version = tls_max
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection((LOOPBACK, port), timeout) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(bytes([0x10, len(body)]) + body)
        answer = tls.recv(64)
    if not answer:
        raise ConnectionError("the broker closed the connection without a CONNACK")
    return answer
