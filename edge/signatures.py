"""Command signatures, node side: with ``commands.verify_key`` set, a command runs only if
its ``signature`` is an Ed25519 signature (RFC 8032) by the aggregator's command key over
``cloud_sync.messages.signing_bytes`` — a broker account alone can no longer command a node.
A command also runs only before its expiry, and only if that lies at most
``commands.max_expiry_s`` ahead.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from s4edge.cloud_sync.messages import Command, signing_bytes
from s4edge.edge.config import ConfigError

SIGNATURE_BYTES = 64  # RFC 8032 §5.1.6: R || S, 32 bytes each
# The aggregator's clock may run this far ahead of the node's: a command issued with the
# longest lifetime is still accepted.
EXPIRY_SKEW_S = 300.0


def expiry_problem(command: Command, max_expiry_s: float, now: datetime) -> str | None:
    """None when ``command`` is still valid and expires within ``max_expiry_s``. The node keeps
    each command id until its expiry to refuse replays: one dated year 9999 would stay forever."""
    if command.expires <= now:
        return f"expired at {command.expires.isoformat()}"
    if command.expires > now + timedelta(seconds=max_expiry_s + EXPIRY_SKEW_S):
        return (
            f"expires at {command.expires.isoformat()}, further ahead than commands.max_expiry_s "
            f"({max_expiry_s:g} s) allows"
        )
    return None


class CommandVerifier:
    def __init__(self, key: Ed25519PublicKey, origin: str = "commands.verify_key") -> None:
        self.key = key
        self.origin = origin

    @classmethod
    def load(cls, path: Path) -> CommandVerifier:
        """Read the PEM public key; raises ConfigError naming the file and what it holds instead."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"commands.verify_key: cannot read {path} ({exc.strerror})") from None
        try:
            key = load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"commands.verify_key: {path} is not a PEM public key ({exc}); "
                "copy the aggregator's command public key (-----BEGIN PUBLIC KEY-----)"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"commands.verify_key: {path} holds a {type(key).__name__}, not an Ed25519 public key")
        return cls(key, str(path))

    def problem(self, command: Command) -> str | None:
        """None when the signature verifies; otherwise what is wrong with it."""
        if not command.signature:
            return "the command is unsigned and this node requires signed commands"
        try:
            raw = base64.b64decode(command.signature, validate=True)
        except (binascii.Error, ValueError):
            return "not standard base64"
        if len(raw) != SIGNATURE_BYTES:
            return f"{len(raw)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}"
        try:
            self.key.verify(raw, signing_bytes(command))
        except InvalidSignature:
            return f"does not verify against {self.origin} (tampered, or signed with another key)"
        return None
