"""Fixtures of the contract suites: the Cosmos DB emulator the store suite's "cosmos" backend
runs against.

`@vercel/cosmosdb-server` (npm, installed into tools/cosmosdb-server by `make cosmos-emulator`)
speaks the Cosmos DB REST protocol and keeps its data in memory. One server runs per test
session, on a free loopback port, over TLS with a certificate made for the session, which the
client verifies (tools/cosmosdb-server/serve.js starts it). Each test uses a database of its
own on it.

Where the server cannot run (no Node.js, or the npm package not installed) the cosmos tests
skip with the reason, except in CI (CI=true), where they fail: CI must test the adapter.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO_ROOT / "tools" / "cosmosdb-server"
PACKAGE_DIR = SERVER_DIR / "node_modules" / "@vercel" / "cosmosdb-server"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CosmosEmulator:
    endpoint: str
    # Any base64 string: the emulator does not check request signatures.
    key: str
    # The CA bundle (the server's own self-signed certificate) the client verifies with.
    ca_file: str


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"Cosmos DB emulator unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Cosmos DB emulator unavailable: {reason}")


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sparkplane cosmosdb-server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _read_ready_line(proc: subprocess.Popen[str], log_path: Path) -> dict[str, object]:
    """The line serve.js prints once it listens."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return json.loads(line)
        if proc.poll() is not None:
            break
    log = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"cosmosdb-server did not start (exit {proc.poll()}):\n{log}")


@pytest.fixture(scope="session")
def cosmos_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CosmosEmulator]:
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js (node) is not on PATH; install Node.js 20+")
    if not PACKAGE_DIR.is_dir():
        _unavailable(f"{PACKAGE_DIR.relative_to(REPO_ROOT)} is missing; run `make cosmos-emulator`")
    try:
        import cryptography  # noqa: F401  (azure-identity's dependency; makes the certificate)
    except ImportError:
        _unavailable("the cryptography package is missing (it makes the server's certificate)")

    directory = tmp_path_factory.mktemp("cosmosdb-server")
    cert, key = _self_signed_certificate(directory)
    log_path = directory / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [node, "serve.js", "--cert", str(cert), "--key", str(key), "--host", "127.0.0.1"],
            cwd=SERVER_DIR,
            stdin=subprocess.PIPE,  # closed at the end (or by our death): the server exits
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        ready = _read_ready_line(proc, log_path)
        yield CosmosEmulator(
            endpoint=f"https://127.0.0.1:{ready['port']}/",
            key="c3BhcmtwbGFuZS1jb250cmFjdC10ZXN0cw==",
            ca_file=str(cert),
        )
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
