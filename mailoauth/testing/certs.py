"""A throwaway certificate authority for tests.

``TestCA`` makes a CA (with trustme) and one server certificate for ``localhost``,
``127.0.0.1`` and ``::1``, writes the PEM files that real servers (Dovecot, Postfix)
read, and builds client ``SSLContext`` objects that trust the CA and nothing else.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertFiles:
    """PEM paths for one server identity."""

    cert: Path
    """Leaf certificate followed by the CA chain."""
    key: Path
    """Unencrypted private key."""
    ca: Path
    """The CA certificate, for clients."""


class TestCA:
    """A CA and a server certificate for the loopback names, written under ``directory``.

    The files are world-readable on purpose: Dovecot and Postfix read them as root, but
    the directory may be shared with unprivileged service users. The key is a test key.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own_directory = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="mo-ca-")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # servers read the files as other users
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*SERVER_NAMES)
        ca_path = self.directory / "ca.pem"
        cert_path = self.directory / "server-chain.pem"
        key_path = self.directory / "server-key.pem"
        self.ca.cert_pem.write_to_path(str(ca_path))
        self.server_cert.private_key_pem.write_to_path(str(key_path))
        with cert_path.open("wb") as f:
            for blob in self.server_cert.cert_chain_pems:
                f.write(blob.bytes())
        for path in (ca_path, cert_path, key_path):
            path.chmod(0o644)
        self.files = CertFiles(cert=cert_path, key=key_path, ca=ca_path)

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies hostnames and trusts only this CA."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the loopback certificate (for Python test servers)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def cleanup(self) -> None:
        """Remove the PEM files' directory if this object created it."""
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
