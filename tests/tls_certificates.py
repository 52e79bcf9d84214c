"""A throwaway certificate authority, a server certificate for 127.0.0.1 and client
certificates carrying subject alternative names, for tests that speak TLS and mutual TLS
over loopback (made with `cryptography`, which the server already depends on)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "localhost"
_LIFETIME = timedelta(days=1)
_CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files: the authority clients trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class ClientCertificate:
    """PEM files of a client's certificate and key, as a gRPC client presents them."""

    cert_file: Path
    key_file: Path

    @property
    def credentials(self) -> dict[str, bytes]:
        """`private_key` and `certificate_chain`, as `grpc.ssl_channel_credentials` takes them."""
        return {
            "private_key": self.key_file.read_bytes(),
            "certificate_chain": self.cert_file.read_bytes(),
        }


class CertificateAuthority:
    """A new authority (its certificate in `directory`/ca.pem) that issues certificates."""

    def __init__(self, directory: Path, name: str = "fraud-scoring test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SLACK)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue_server(self) -> ServerCertificate:
        """A server certificate for localhost and 127.0.0.1."""
        names = [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert_file, key_file = self._issue(
            "server", SERVER_NAME, names, ExtendedKeyUsageOID.SERVER_AUTH
        )
        return ServerCertificate(self.ca_file, cert_file, key_file)

    def issue_client(
        self, name: str, *, dns_names: Sequence[str] = (), uris: Sequence[str] = ()
    ) -> ClientCertificate:
        """A client certificate for `name` (its common name and file names) carrying
        `dns_names` and `uris` as subject alternative names (none when both are empty)."""
        names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        cert_file, key_file = self._issue(name, name, names, ExtendedKeyUsageOID.CLIENT_AUTH)
        return ClientCertificate(cert_file, key_file)

    def _issue(
        self,
        file_stem: str,
        common_name: str,
        names: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SLACK)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_file = self.directory / f"{file_stem}.pem"
        key_file = self.directory / f"{file_stem}-key.pem"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file


def issue_server_certificate(directory: Path) -> ServerCertificate:
    """A new authority and a server certificate it signed for localhost and 127.0.0.1."""
    return CertificateAuthority(directory).issue_server()
