"""Broker URLs, read in one place: the node's uplink, its doctor, the aggregator, provisioning
and the demo all turn ``mqtt://``, ``mqtts://``, ``ws://`` or ``wss://`` into the same
``BrokerEndpoint`` (host, port, transport, TLS, WebSocket path), and build their paho client
from it with ``mqtt_client``.

Default ports: 1883 and 8883 are IANA's for MQTT and MQTT over TLS (MQTT 5.0 §4.2); a
WebSocket URI defaults to 80 (``ws``) and 443 (``wss``) (RFC 6455 §3; MQTT over WebSocket,
MQTT 5.0 §6, names no port of its own). The WebSocket path defaults to ``/mqtt``, paho's
and most brokers' (mosquitto serves any path).

Nothing here imports paho at module level: a node config is validated without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from s4edge.shown import shown_url

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

Transport = Literal["tcp", "websockets"]

# scheme: (transport, TLS, default port)
SCHEMES: dict[str, tuple[Transport, bool, int]] = {
    "mqtt": ("tcp", False, 1883),
    "mqtts": ("tcp", True, 8883),
    "ws": ("websockets", False, 80),
    "wss": ("websockets", True, 443),
}
WS_PATH = "/mqtt"
EXAMPLE = "mqtts://broker.example:8883"
ACCEPTED = "mqtt://, mqtts://, ws:// or wss://"
# Schemes other clients take for these four, so that the refusal can name the one meant.
_MEANT = {
    "tcp": "for MQTT over TCP write mqtt://",
    "ssl": "for MQTT over TLS write mqtts://",
    "tls": "for MQTT over TLS write mqtts://",
    "mqtt+ssl": "for MQTT over TLS write mqtts://",
    "http": "for MQTT over WebSocket write ws://",
    "https": "for MQTT over WebSocket and TLS write wss://",
}


class BrokerUrlError(ValueError):
    """A broker URL this code does not take; the message is one line and names a good one."""


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int
    transport: Transport
    tls: bool
    path: str  # the WebSocket request path; "" for plain MQTT
    username: str | None = None
    password: str | None = None


def _check_userinfo(url: str, shown: str) -> None:
    """The authority ends at the first '/', '?' or '#' (RFC 3986 §3.2), so a password holding
    one unencoded is cut there: 'mqtt://n1:pa#ss@host' read as host n1, port 'pa', and the
    rest of the password went into a log line every second as a host that cannot be reached.
    An '@' after the cut is surely such a password where nothing may follow the authority
    (mqtt:// takes no path; no URI here takes a fragment, RFC 6455 §3 for ws://); a WebSocket
    path or query may hold one of its own."""
    scheme, _, rest = url.partition("://")
    authority = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    port = rest[:authority].rpartition("]")[2].partition(":")[2]  # after an IPv6 literal's brackets
    cut_port = bool(port) and not port.isdigit()  # 'admin:pa' of 'admin:pa?ss@host'
    cuts = "/?#" if scheme.lower() not in ("ws", "wss") or cut_port else "#"
    end = min((i for i in (rest.find(c) for c in cuts) if i >= 0), default=len(rest))
    if "@" not in rest[:authority] and "@" in rest[end:]:
        char = rest[end]
        raise BrokerUrlError(
            f"broker URL {shown!r}: the user or password holds a '{char}'; percent-encode it as %{ord(char):02X}"
        )


def broker_endpoint(url: str) -> BrokerEndpoint:
    """Where and how to reach the broker at ``url``; ``BrokerUrlError`` for anything else."""
    shown = shown_url(url)  # a refusal quotes it: never its user, password or ?password=
    _check_userinfo(url.strip(), shown)
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # 'mqtt://[::1' and the like: urllib's words, without the URL
        raise BrokerUrlError(f"broker URL {shown!r}: {exc}; e.g. mqtts://[2001:db8::1]:8883") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        meant = f" ({_MEANT[scheme]})" if scheme in _MEANT else ""
        what = f"{scheme}:// is not a broker scheme" if scheme and "://" in url else "not a URL"
        raise BrokerUrlError(f"broker URL {shown!r}: {what}{meant}; use {ACCEPTED}, e.g. {EXAMPLE}")
    transport, tls, default_port = SCHEMES[scheme]
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {shown!r} names no host; e.g. {scheme}://broker.example:{default_port}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise BrokerUrlError(
            f"broker URL {shown!r}: the port is not a number from 1 to 65535; e.g. {scheme}://{parts.hostname}:"
            f"{default_port}"
        ) from None
    path = ""
    if transport == "websockets":
        path = (parts.path or WS_PATH) + (f"?{parts.query}" if parts.query else "")
    elif parts.path not in ("", "/") or parts.query:
        raise BrokerUrlError(
            f"broker URL {shown!r}: {scheme}:// takes no path{' or query' if parts.query else ''}; for MQTT "
            f"over WebSocket write {'wss' if tls else 'ws'}://{parts.hostname}:PORT{parts.path}"
        )
    return BrokerEndpoint(
        host=parts.hostname,
        port=port,
        transport=transport,
        tls=tls,
        path=path,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def mqtt_client(endpoint: BrokerEndpoint, **client_args: Any) -> mqtt.Client:
    """A paho client (callback API 2) speaking over ``endpoint``'s transport; TLS, credentials
    and callbacks are the caller's."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, transport=endpoint.transport, **client_args)
    if endpoint.transport == "websockets":
        client.ws_set_options(path=endpoint.path)
    return client
