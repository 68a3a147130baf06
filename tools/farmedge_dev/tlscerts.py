"""Certificates for the TLS tests: a CA of their own and a server
certificate for 127.0.0.1 signed by it, made with the ``openssl`` command
(as an operator would make a site's own). The server certificate has no
extended key usage, so the NATS nodes also present it to each other on
their routes (mutual TLS)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertFiles", "make_certs", "openssl_available"]


@dataclass(frozen=True)
class CertFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_certs(folder: Path, *, days: int = 2) -> CertFiles:
    """``ca.crt``, ``server.crt`` and ``server.key`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj",
        "/CN=farmedge test CA", "-keyout", "ca.key", "-out", "ca.crt")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", str(days), "-extfile", "ext.cnf", "-out", "server.crt")
    return CertFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
