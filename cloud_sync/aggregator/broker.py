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


class BrokerFileError(BrokerError):
    """A TLS file (--ca-file, --cert-file, --key-file) that cannot be used; the message names it."""


def may_lack_mqtt5(failure: str) -> bool:
    """Whether a connection failure could be a broker that does not speak this protocol version
    (it says so, closes, or never answers the CONNECT); a refused login, a certificate or a port
    nobody listens on fail alike in every version, so trying another would not help."""
    return any(word in failure for word in ("protocol", "Protocol", "closed", "no CONNACK"))


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

    def check_files(self) -> None:
        """Raise BrokerFileError for a TLS file that cannot be used, before anything starts; a
        worker's own (``{worker}`` in its name) are checked when the worker makes its client."""
        if self.tls and "{worker}" not in f"{self.cert_file}{self.key_file}":
            self.tls_context()

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

    def tls_context(self) -> ssl.SSLContext:
        """The client's TLS context; raises BrokerFileError naming the option of a file it cannot use."""
        files = {"--ca-file": self.ca_file, "--cert-file": self.cert_file, "--key-file": self.key_file}
        for option, path in files.items():
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise BrokerFileError(f"{option} {path}: cannot read ({exc.strerror})") from None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)  # the fleet CA alone, or the system's
        except ssl.SSLError as exc:
            raise BrokerFileError(f"--ca-file {self.ca_file}: not a PEM certificate ({exc.reason or exc})") from None
        try:
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            what = f"--cert-file {self.cert_file}" + (f" with --key-file {self.key_file}" if self.key_file else "")
            raise BrokerFileError(f"{what}: not a PEM certificate and its key ({exc.reason or exc})") from None
        return context

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
            client.tls_set_context(self.tls_context())
        # Reconnect with backoff from 1 s up to 60 s (docs/architecture.md, "Delivery guarantees").
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        return client
