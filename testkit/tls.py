"""Throw-away TLS certificates for tests: a CA and a server certificate for 127.0.0.1 and localhost.

Made with the ``openssl`` CLI in a temp dir (EC P-256 keys: quick to make; RabbitMQ's Erlang and Redis
take them). The server certificate names ``IP:127.0.0.1`` and ``DNS:localhost`` in its subjectAltName,
so that clients that check the host (Python's default context: aiormq, redis-py) accept it for the URL
``amqps://127.0.0.1:…`` or ``rediss://127.0.0.1:…``. Running as root, the directory and its files are
given to the ``rabbitmq`` user, as RabbitMQ runs as that user and reads them itself. Removed on exit::

    with throwaway_certificates() as tls:
        tls.ca, tls.cert, tls.key          # paths
    with throwaway_certificates("other") as other:
        other.ca                           # a CA that signed nothing the server presents
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_USER = "rabbitmq"

_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA's certificate, the server's certificate (signed by it) and the server's key."""

    directory: Path
    ca: Path
    cert: Path
    key: Path


def _openssl(directory: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {result.stderr.decode()[-1000:]}")


def make_certificates(directory: Path, name: str = "test") -> TlsFiles:
    """A CA ``<name>-ca`` and a server certificate it signed for 127.0.0.1 / localhost, in ``directory``."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        directory, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", f"/CN={name}-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(directory, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS)
    _openssl(
        directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return TlsFiles(
        directory=directory,
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
    )


def _give_to_rabbitmq(directory: Path) -> None:
    """RabbitMQ (Debian's scripts run it as ``rabbitmq`` even when root starts it) reads the files
    itself; the key stays unreadable to anyone else. Root (the tests, redis-server) reads them anyway."""
    if os.geteuid() != 0:
        directory.chmod(0o755)
        return
    user = pwd.getpwnam(RABBITMQ_USER)
    directory.chmod(0o755)
    for path in [directory, *directory.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid)
        if path.is_file():
            path.chmod(0o600 if path.suffix == ".key" else 0o644)


@contextlib.contextmanager
def throwaway_certificates(name: str = "test") -> Iterator[TlsFiles]:
    directory = Path(tempfile.mkdtemp(prefix=f"tls-{name}-"))
    try:
        files = make_certificates(directory, name)
        _give_to_rabbitmq(directory)
        yield files
    finally:
        shutil.rmtree(directory, ignore_errors=True)
