"""Commands to nodes: build a ``Command`` naming the aggregator as issuer, record it, publish it.

The node's answer arrives as a ``cmd_result`` through ingest and is joined to the
command by ``cmd_id`` when the API lists a node's commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cloud_sync.aggregator.store import Store
from cloud_sync.aggregator.views import utc
from cloud_sync.messages import Command, CommandName, Scalar, encode, topic_for

Publish = Callable[[str, bytes, int], bool]


class CommandError(ValueError):
    pass


class CommandDesk:
    """Issues commands in the name of the aggregator's identity (``issuer``)."""

    def __init__(self, store: Store, publish: Publish, issuer: str) -> None:
        self.store = store
        self.publish = publish
        self.issuer = issuer
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
            payload = encode(command)
        except ValueError as exc:  # pydantic's ValidationError and MessageError are ValueErrors
            raise CommandError(str(exc)) from None
        self.store.record_command(
            {
                "id": command.id,
                "site": site,
                "node_id": node_id,
                "name": name,
                "args": dict(command.args),
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
