"""How the aggregator reaches the fleet broker: URL, TLS, credentials, protocol."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30

    @property
    def host(self) -> str:
        return self._parts()[0]

    @property
    def port(self) -> int:
        return self._parts()[1]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl") or self.ca_file is not None

    def _parts(self) -> tuple[str, int]:
        parts = urlsplit(self.url if "://" in self.url else f"mqtt://{self.url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise BrokerError(f"broker URL {self.url!r}: use mqtt://host:port or mqtts://host:port")
        if not parts.hostname:
            raise BrokerError(f"broker URL {self.url!r} names no host")
        default = 8883 if parts.scheme in ("mqtts", "ssl") else 1883
        return parts.hostname, parts.port or default

    def credentials(self) -> tuple[str | None, str | None]:
        parts = urlsplit(self.url)
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password or (unquote(parts.password) if parts.password else None)
        return user, password

    def client(self, client_id: str, protocol: MQTTProtocolVersion, manual_ack: bool) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if protocol == mqtt.MQTTv5 else False,
            manual_ack=manual_ack,
        )
        user, password = self.credentials()
        if user:
            client.username_pw_set(user, password)
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
            client.tls_set_context(context)
        # Reconnect with backoff from 1 s up to 60 s (docs/architecture.md, "Delivery guarantees").
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        return client
