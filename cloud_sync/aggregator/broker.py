"""How the aggregator reaches the fleet broker: URL, TLS, credentials, protocol.

The URL is read by ``cloud_sync.broker_url`` (mqtt://, mqtts://, ws://, wss://), as the node reads it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from s4edge.cloud_sync.broker_url import BrokerEndpoint, BrokerUrlError, broker_endpoint, mqtt_client
from s4edge.shown import shown_url


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

    def __post_init__(self) -> None:
        self.endpoint  # noqa: B018 - a URL that cannot be used is refused here, before anything starts

    @property
    def endpoint(self) -> BrokerEndpoint:
        try:
            return broker_endpoint(self.url)
        except BrokerUrlError as exc:
            raise BrokerError(str(exc)) from None

    @property
    def shown_url(self) -> str:
        """The URL for logs and messages: no user, password or query credential (``wss://…?token=``)."""
        return shown_url(self.url)

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def tls(self) -> bool:
        return self.endpoint.tls or self.ca_file is not None

    def credentials(self) -> tuple[str | None, str | None]:
        endpoint = self.endpoint
        return self.username or endpoint.username, self.password or endpoint.password

    def client(self, client_id: str, protocol: MQTTProtocolVersion, manual_ack: bool) -> mqtt.Client:
        client = mqtt_client(
            self.endpoint,
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
