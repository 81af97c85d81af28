"""The aggregator's command-signing key pair (Ed25519, RFC 8032), kept in the fleet folder.

The aggregator signs every command with ``command.key`` (``s4edge aggregator run
--command-key``); ``s4edge provision`` copies ``command.pub`` next to each node's config
and names it as ``commands.verify_key``, so a node runs only commands the aggregator signed.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from s4edge.cloud_sync.fleet.ca import CAError, write_private

COMMAND_KEY = "command.key"
COMMAND_PUB = "command.pub"


def init_command_key(folder: Path, force: bool = False) -> tuple[Path, Path]:
    """Create the key pair; the private key is written 0600. Returns (private, public)."""
    folder = Path(folder)
    private, public = folder / COMMAND_KEY, folder / COMMAND_PUB
    if private.exists() and not force:
        raise CAError(
            f"{private} already exists; a new key would make every provisioned node refuse the "
            "aggregator's commands until re-provisioned (pass --force to replace it on purpose)"
        )
    key = Ed25519PrivateKey.generate()
    write_private(
        private,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def command_public_key(folder: Path) -> Path | None:
    """The fleet's command public key, or None when the fleet has none (unsigned commands)."""
    path = Path(folder) / COMMAND_PUB
    return path if path.exists() else None
