"""Fixtures of the contract suites: the Cosmos DB emulator the store suite's "cosmos" backend
runs against, and Azurite, the Blob Storage emulator of the file-store suite's "blob" backend.

`@vercel/cosmosdb-server` (npm, installed into tools/cosmosdb-server by `make cosmos-emulator`)
speaks the Cosmos DB REST protocol and keeps its data in memory. One server runs per test
session, on a free loopback port, over TLS with a certificate made for the session, which the
client verifies (tools/cosmosdb-server/serve.js starts it). Each test uses a database of its
own on it.

Azurite (npm `azurite`, installed into tools/azurite by `make azurite`) runs `azurite-blob`
once per test session on a free loopback port, with its data in a temporary directory; each
test uses a container of its own. It stops with the session, and with the test process if that
dies first (the parent-death signal), so no server outlives its tests.

Where a server cannot run (no Node.js, or the npm package not installed) its tests skip with
the reason, except in CI (CI=true), where they fail: CI must test the adapter.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
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
AZURITE_MAIN = REPO_ROOT / "tools" / "azurite" / "node_modules" / "azurite" / "dist" / "src"
AZURITE_MAIN = AZURITE_MAIN / "blob" / "main.js"
START_TIMEOUT_S = 30.0
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class CosmosEmulator:
    endpoint: str
    # Any base64 string: the emulator does not check request signatures.
    key: str
    # The CA bundle (the server's own self-signed certificate) the client verifies with.
    ca_file: str


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str, what: str = "Cosmos DB emulator") -> NoReturn:
    if _in_ci():
        pytest.fail(f"{what} unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")


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


@dataclass(frozen=True)
class Azurite:
    blob_endpoint: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};"
        )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (Linux prctl)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: stopped in the fixture only
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _azurite_port(proc: subprocess.Popen[str], log_path: Path) -> int:
    """The port of the line Azurite prints once it listens."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen.append(line)
            found = re.search(r"listens on https?://[^:/]+:(\d+)", line)
            if found:
                return int(found.group(1))
        if proc.poll() is not None:
            break
    log = "".join(seen)[-2000:] + log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"azurite-blob did not start (exit {proc.poll()}):\n{log}")


def _wait_until_it_answers(endpoint: str) -> None:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient(
        endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            next(iter(client.list_containers()), None)
            return
        except Exception:
            # Not answering yet (connection refused, 5xx): try again until the deadline.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    what = "Azurite (Blob Storage emulator)"
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js (node) is not on PATH; install Node.js 20+", what)
    if not AZURITE_MAIN.is_file():
        _unavailable(f"{AZURITE_MAIN.relative_to(REPO_ROOT)} is missing; run `make azurite`", what)
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError:
        _unavailable("the azure-storage-blob package is missing (make setup)", what)

    directory = tmp_path_factory.mktemp("azurite")
    log_path = directory / "azurite.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                node,
                str(AZURITE_MAIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                str(directory / "data"),
                "--silent",
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=_die_with_parent,
        )
    try:
        endpoint = f"http://127.0.0.1:{_azurite_port(proc, log_path)}/{AZURITE_ACCOUNT}"
        _wait_until_it_answers(endpoint)
        yield Azurite(blob_endpoint=endpoint)
    finally:
        assert proc.stdout is not None
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
