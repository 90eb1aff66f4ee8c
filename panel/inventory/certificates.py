"""Reading the certificate a server's proxy serves for a domain, as a browser would get it.

The panel connects to the proxy's HTTPS port (the server's proxy address, else its host) with SNI set to the domain
and reads the certificate without judging it (the proxy may use a private ACME CA the panel does not trust, and a
certificate that is not valid yet is exactly what a person wants to see). Traefik serves its own self-signed
``TRAEFIK DEFAULT CERT`` until ACME delivered one.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from panel.inventory.models import Server

TRAEFIK_DEFAULT = "TRAEFIK DEFAULT CERT"


@dataclass(frozen=True)
class Certificate:
    """What the environment page shows of a served certificate."""

    issuer: str
    subject: str
    not_after: datetime.datetime
    names: tuple[str, ...]

    @property
    def is_traefik_default(self) -> bool:
        """Traefik's placeholder, served while no certificate was issued."""
        return self.subject == TRAEFIK_DEFAULT or self.issuer == TRAEFIK_DEFAULT

    def as_json(self) -> dict[str, object]:
        """For ``Environment.tls_certificate``."""
        return {"issuer": self.issuer, "subject": self.subject, "not_after": self.not_after.isoformat(),
                "names": list(self.names)}  # fmt: skip


def _name(name: x509.Name) -> str:
    parts = name.get_attributes_for_oid(NameOID.COMMON_NAME) or name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(parts[0].value) if parts else name.rfc4514_string()


def parse(der: bytes) -> Certificate:
    """The facts of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return Certificate(issuer=_name(cert.issuer), subject=_name(cert.subject), not_after=cert.not_valid_after_utc,
                       names=names)  # fmt: skip


def proxy_address(server: Server) -> str:
    """Where the panel reaches the proxy's HTTPS port."""
    return server.proxy_bind_address or server.host


def served_certificate(server: Server, domain: str, timeout: float = 5.0) -> Certificate:
    """The certificate the server's proxy serves for ``domain`` (raises OSError when it cannot be read)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # read, not trusted: see the module docstring
    with socket.create_connection((proxy_address(server), server.proxy_https_port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=domain) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError(f"The proxy sent no certificate for {domain}.")
    return parse(der)
