"""The fleet's certificate authority: one EC P-256 CA per fleet, a server certificate for
the broker and, optionally, a client certificate per node (CN = node id).

Everything works offline (air-gapped sites). Private keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 10 * 365
# CA/Browser Forum caps public leaves at 398 days; a private fleet renews by re-provisioning,
# so two years keeps site visits rare without keeping a stolen node key useful forever.
LEAF_DAYS = 2 * 365


class CAError(ValueError):
    """A CA folder or certificate request a technician can fix."""


@dataclass(frozen=True)
class FleetCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    folder: Path

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT


def write_private(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte on (no umask window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # A leftover tmp file would keep its old mode, and a symlink planted there would aim the
    # key elsewhere: remove it, then create a fresh file that follows no link.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # the mode given to open() is narrowed by the umask only
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(folder: Path, name: str = "s4edge fleet CA", days: int = CA_DAYS, force: bool = False) -> FleetCA:
    folder = Path(folder)
    existing = [folder / f for f in (CA_KEY, CA_CERT) if (folder / f).exists()]
    if existing and not force:  # the certificate alone too: its key may be on the stick the docs advise
        raise CAError(
            f"{existing[0]} already exists; a second CA would orphan every issued certificate "
            "(pass --force to replace it on purpose)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "s4edge"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        # RFC 5280 §4.2.1.9: path length 0, this CA signs leaves only.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(folder / CA_KEY, _key_pem(key))
    (folder / CA_CERT).write_bytes(_cert_pem(cert))
    return FleetCA(cert, key, folder)


def load_ca(folder: Path) -> FleetCA:
    folder = Path(folder)
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        if exc.filename == str(folder / CA_KEY):  # the CA is there, its key kept apart (an encrypted stick)
            raise CAError(
                f"{exc.filename} is missing: put the fleet CA's key back in {folder} (it signs every "
                "certificate and CRL); a new CA would orphan every one it issued"
            ) from None
        raise CAError(
            f"{exc.filename} is missing: create the fleet CA first with `s4edge fleet ca init --out {folder}`"
        ) from None
    except ValueError as exc:
        raise CAError(f"{folder}: the CA certificate or key is not valid PEM ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{folder / CA_KEY}: expected an EC private key")
    return FleetCA(cert, key, folder)


def _leaf(
    ca: FleetCA,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
    days: int,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(not_after or now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "s4edge"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - dt.timedelta(minutes=5), not_after - dt.timedelta(days=days)))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


# RFC 1123 §2.1 labels (letters, digits, hyphens; 1-63 each, no hyphen at an end), a
# leading "*." for a wildcard (RFC 6125 §6.4.3), at most 253 characters in all
_HOSTNAME = re.compile(r"(?=.{1,253}$)(\*\.)?(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def issue_server_cert(
    ca: FleetCA,
    hosts: list[str],
    ips: list[str],
    out: Path,
    days: int = LEAF_DAYS,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """The broker's certificate; clients check the hostname against its SAN (RFC 6125 §6.4).
    ``not_after`` as for ``issue_client_cert``."""
    if not hosts and not ips:
        raise CAError("name the broker: at least one --host NAME or --ip ADDRESS that nodes will connect to")
    for host in hosts:
        if not _HOSTNAME.fullmatch(host):  # a name no client could match the SAN against (RFC 1123 §2.1)
            raise CAError(f"--host {host!r} is not a host name; e.g. broker.example.org, or --ip for an address")
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    for ip in ips:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CAError(f"--ip {ip!r} is not an IPv4 or IPv6 address") from None
    cert, key = _leaf(ca, hosts[0] if hosts else ips[0], ExtendedKeyUsageOID.SERVER_AUTH, san, days, not_after)
    return _write_pair(out, "server", cert, key)


def issue_client_cert(
    ca: FleetCA, common_name: str, out: Path, stem: str, days: int = LEAF_DAYS, not_after: dt.datetime | None = None
) -> tuple[Path, Path]:
    """A client certificate; mosquitto's ``use_identity_as_username`` takes the CN as the user.

    ``not_after`` fixes the end of validity instead of ``days`` from now (a past one issues
    an already-expired certificate, which tests use to check that the broker refuses it)."""
    cert, key = _leaf(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days, not_after)
    return _write_pair(out, stem, cert, key)


def _write_pair(out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{stem}.crt", out / f"{stem}.key"
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert))
    return cert_path, key_path
