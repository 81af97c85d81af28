"""The fleet's certificate revocation list (RFC 5280 §5), signed by the fleet CA and kept in
the fleet folder as ``crl.pem``; the broker's TLS listener reads it (mosquitto ``crlfile``).

``ca init`` writes an empty list, so that the broker config names it from the start:
mosquitto rereads a configured ``crlfile`` on SIGHUP, but takes a new ``crlfile`` line only
on a restart. Every revocation re-signs the whole list. Its nextUpdate is the CA's own
expiry: OpenSSL refuses every client once a CRL it checks has expired, and a private fleet
has no distribution point to fetch a fresh one from.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from s4edge.cloud_sync.fleet.ca import CAError, FleetCA

CRL_FILE = "crl.pem"


def crl_path(folder: Path) -> Path:
    return Path(folder) / CRL_FILE


def load_crl(folder: Path) -> x509.CertificateRevocationList | None:
    path = crl_path(folder)
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise CAError(f"{path}: not a PEM CRL ({exc}); restore it from backup") from None


def revoked_serials(folder: Path) -> set[int]:
    crl = load_crl(folder)
    return {entry.serial_number for entry in crl} if crl is not None else set()


def init_crl(ca: FleetCA, folder: Path, now: dt.datetime | None = None) -> Path:
    """Write an empty CRL (number 0) signed by ``ca``, replacing any other: a new CA's."""
    return _issue(ca, folder, [], 0, now or dt.datetime.now(dt.UTC))


def revoke(ca: FleetCA, folder: Path, serials: list[int], now: dt.datetime | None = None) -> Path:
    """Add ``serials`` to the fleet CRL (created on first use) and re-sign it with the CA."""
    now = now or dt.datetime.now(dt.UTC)
    previous = load_crl(folder)
    if previous is not None and not previous.is_signature_valid(ca.key.public_key()):
        raise CAError(f"{crl_path(folder)} was not signed by the fleet CA in {ca.folder}; restore it from backup")
    entries = list(previous) if previous is not None else []
    known = {entry.serial_number for entry in entries}
    for serial in serials:
        if serial not in known:
            entries.append(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now)
                .add_extension(x509.CRLReason(x509.ReasonFlags.cessation_of_operation), critical=False)
                .build()
            )
            known.add(serial)
    return _issue(ca, folder, entries, _crl_number(previous) + 1, now)


def _issue(ca: FleetCA, folder: Path, entries: list[x509.RevokedCertificate], number: int, now: dt.datetime) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(ca.cert.not_valid_after_utc)
        # RFC 5280 §5.2.3: a monotonically increasing number per CRL issued.
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    path = crl_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)
    return path


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0
