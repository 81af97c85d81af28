"""Live events (new alerts, node changes, acks) fanned out to SSE clients.

Ingest runs in its own thread; each SSE client waits on an asyncio queue in the
server's event loop, so a publish crosses threads with ``call_soon_threadsafe``.
A client that falls ``max_backlog`` events behind is dropped: its browser
reconnects and reloads, which is better than the server buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)  # identity hashing: each client is its own subscription
class Subscription:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, str] | None] = field(default_factory=asyncio.Queue)


class EventBus:
    def __init__(self, max_backlog: int = 1000) -> None:
        self.max_backlog = max_backlog
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> Subscription:
        sub = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Callable from any thread."""
        payload = json.dumps(data, default=str, separators=(",", ":"))
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(self._deliver, sub, (event, payload))
            except RuntimeError:  # its loop has closed: the server is gone
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        with self._lock:
            subs, self._subs = list(self._subs), set()
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # its loop has closed already
                sub.loop.call_soon_threadsafe(sub.queue.put_nowait, None)

    def _deliver(self, sub: Subscription, item: tuple[str, str]) -> None:
        if sub.queue.qsize() >= self.max_backlog:
            self.unsubscribe(sub)
            sub.queue.put_nowait(None)  # tells the stream to end
            return
        sub.queue.put_nowait(item)


def sse_frame(event: str, data: str) -> str:
    # WHATWG HTML "Server-sent events": one event per blank-line-terminated block.
    return f"event: {event}\ndata: {data}\n\n"
