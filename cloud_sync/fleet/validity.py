"""When a certificate of the fleet stops working: its validity period (RFC 5280 §4.1.2.5),
read from the PEM file as TLS will read it, and said in one line that names the file.

An expired certificate fails every handshake with an OpenSSL reason that names neither the
file nor the date ("certificate verify failed: certificate has expired", or the broker just
closing the connection); the fleet centre checks its files before it starts, and warns
``WARN_DAYS`` ahead, so that a renewal is a planned visit, not an outage.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

WARN_DAYS = 30  # a month: time to renew a node's certificate on a planned site visit


class CertificateFileError(ValueError):
    """A file that holds no PEM certificate; the message names it."""


@dataclass(frozen=True)
class Validity:
    """One certificate's name and validity period, and where it was found (a file, a broker)."""

    source: str
    subject: str  # its CN where it has one, else the whole name (RFC 4514)
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, source: str, cert: x509.Certificate) -> Validity:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = f"CN={names[0].value!s}" if names else cert.subject.rfc4514_string()
        return cls(source, subject, cert.not_valid_before_utc, cert.not_valid_after_utc)

    def problem(self, now: dt.datetime) -> str | None:
        """Why TLS refuses it now (RFC 5280 §6.1.3 (a)(2)), or None while it is valid."""
        if now > self.not_after:
            return f"the certificate ({self.subject}) expired on {shown(self.not_after)} (notAfter)"
        if now < self.not_before:
            return (
                f"the certificate ({self.subject}) is not valid before {shown(self.not_before)} (notBefore): "
                "this machine's clock is behind, or the one that issued it was ahead"
            )
        return None

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def expiring(self, now: dt.datetime, within_days: float = WARN_DAYS) -> bool:
        """Valid now, and no longer ``within_days`` from now."""
        return self.problem(now) is None and self.days_left(now) <= within_days

    def expiry(self, now: dt.datetime) -> str:
        """'expires on …, in N days' for a warning."""
        days = self.days_left(now)
        left = f"in {days:.0f} days" if days >= 1.5 else f"in {days * 24:.0f} hours"
        return f"the certificate ({self.subject}) expires on {shown(self.not_after)} (notAfter), {left}"


def shown(when: dt.datetime) -> str:
    return f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def read_certificates(path: str | Path) -> list[x509.Certificate]:
    """Each certificate in the PEM file ``path``, in its order (a CA bundle holds several);
    raises CertificateFileError for a file with none, OSError for one that cannot be read."""
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError as exc:
        raise CertificateFileError(f"{path}: not a PEM certificate ({exc})") from None


def read_validity(path: str | Path) -> list[Validity]:
    """The validity of each certificate in ``path`` (``read_certificates``)."""
    return [Validity.of(str(path), cert) for cert in read_certificates(path)]


def latest(validities: list[Validity]) -> Validity:
    """Of a bundle, the certificate that stays valid longest: a CA rollover bundle holds the
    expired CA beside its successor, and only the bundle's last hope decides whether it works."""
    return max(validities, key=lambda v: v.not_after)
