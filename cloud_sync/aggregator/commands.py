"""Commands to nodes: build a ``Command`` naming the aggregator as issuer, sign it, record it,
publish it.

With a command key (``s4edge fleet command-key init``), every command carries an Ed25519
signature (RFC 8032) over ``messages.signing_bytes``; a node configured with the public key
(``commands.verify_key``) runs nothing else, so a broker account alone cannot command it.

The node's answer arrives as a ``cmd_result`` through ingest and is joined to the
command by ``cmd_id`` when the API lists a node's commands, and only when it came on the
topic of the node the command was addressed to (``Store.commands_for``): no node can
answer for another. Both are stored redacted of
credentials (``redaction``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from s4edge.cloud_sync.aggregator.redaction import redact
from s4edge.cloud_sync.aggregator.store import Store
from s4edge.cloud_sync.aggregator.views import utc
from s4edge.cloud_sync.messages import Command, CommandName, Scalar, encode, signing_bytes, topic_for

Publish = Callable[[str, bytes, int], bool]


class CommandError(ValueError):
    pass


class CommandSigner:
    """Signs commands with the aggregator's Ed25519 command key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load(cls, path: str | Path) -> CommandSigner:
        """Read the PEM private key; ValueError names the file and what to do."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"command key {path}: cannot read it ({exc.strerror})") from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(
                f"command key {path}: not an unencrypted PEM private key ({exc}); "
                "create one with `s4edge fleet command-key init`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"command key {path}: holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def sign(self, command: Command) -> Command:
        # Standard base64 of the 64-byte signature (RFC 8032 §5.1.6), as the node decodes it.
        signature = base64.b64encode(self.key.sign(signing_bytes(command))).decode()
        return command.model_copy(update={"signature": signature})


class CommandDesk:
    """Issues commands in the name of the aggregator's identity (``issuer``)."""

    def __init__(self, store: Store, publish: Publish, issuer: str, signer: CommandSigner | None = None) -> None:
        self.store = store
        self.publish = publish
        self.issuer = issuer
        self.signer = signer
        self._last_seq = 0

    def _next_seq(self) -> int:
        # Milliseconds since the epoch keep seq increasing across restarts without a counter on disk.
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1_000_000)
        return self._last_seq

    def issue(self, site: str, node_id: str, name: CommandName, args: dict[str, Scalar], ttl_s: int) -> dict[str, Any]:
        now = self.store.clock()
        try:
            command = Command(
                site=site,
                node_id=node_id,
                seq=self._next_seq(),
                ts=now,
                name=name,
                issuer=self.issuer,
                expires=now + timedelta(seconds=ttl_s),
                args=args,
            )
            if self.signer is not None:
                command = self.signer.sign(command)
            payload = encode(command)
        except ValueError as exc:  # pydantic's ValidationError and MessageError are ValueErrors
            raise CommandError(str(exc)) from None
        self.store.record_command(
            {
                "id": command.id,
                "site": site,
                "node_id": node_id,
                "name": name,
                "args": redact(dict(command.args)),  # the node gets them whole; history never does
                "issuer": self.issuer,
                "issued_at": utc(command.ts),
                "expires": utc(command.expires),
            }
        )
        published = self.publish(topic_for(command), payload, 1)
        return {
            "id": command.id,
            "topic": topic_for(command),
            "name": name,
            "expires": utc(command.expires).isoformat(),
            "published": published,
        }
