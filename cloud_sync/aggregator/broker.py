"""How the aggregator reaches the fleet broker: URL, TLS, credentials, protocol.

The URL is read by ``cloud_sync.broker_url`` (mqtt://, mqtts://, ws://, wss://), as the node reads it."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import warnings
from dataclasses import dataclass, replace

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import MQTTProtocolVersion

from s4edge.cloud_sync.broker_url import BrokerEndpoint, BrokerUrlError, broker_endpoint, mqtt_client
from s4edge.cloud_sync.fleet.validity import WARN_DAYS, CertificateFileError, Validity, latest, read_validity
from s4edge.shown import shown_url

# OpenSSL's verify results for a certificate out of its validity period (x509_vfy.h)
X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10
PROBE_TIMEOUT_S = 5.0
# What renews each file (docs/architecture.md, "Credentials")
RENEW = {
    "--cert-file": "issue it again with `s4edge fleet aggregator-credentials --client-cert` and restart the aggregator",
    "--ca-file": "the fleet CA itself: give the aggregator (and every node) the fleet's current ca.crt",
}
RENEW_SERVER = (
    "renew it on the broker with `s4edge fleet ca server-cert --ca-dir FLEET_DIR --host BROKER_HOST` and restart "
    "mosquitto (`s4edge fleet ca expiry --ca-dir FLEET_DIR` lists the fleet's dates)"
)

log = logging.getLogger(__name__)


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

    def check_files(self, workers: int = 1) -> None:
        """Raise BrokerFileError for a TLS file that cannot be used, before anything starts:
        each worker's own too (``{worker}`` in its name), for ``workers`` of them."""
        if self.tls:
            for index in range(workers if self.per_worker_files else 1):
                self.for_worker(index).tls_context()

    @property
    def per_worker_files(self) -> bool:
        return "{worker}" in f"{self.cert_file}{self.key_file}"

    def for_worker(self, index: int) -> BrokerConfig:
        """The config of ingest worker ``index``: ``{worker}`` in the username or the certificate's
        file names is its number, so that each signs in as an identity of its own."""

        def numbered(value: str | None) -> str | None:
            return value.replace("{worker}", str(index)) if value is not None else None

        return replace(
            self, username=numbered(self.username), cert_file=numbered(self.cert_file), key_file=numbered(self.key_file)
        )

    def expiry_warnings(self, now: dt.datetime, workers: int = 1, within_days: float = WARN_DAYS) -> list[str]:
        """One line for each TLS file whose certificate expires within ``within_days`` (the files
        are known to be good: ``check_files``)."""
        found: dict[str, str] = {}
        for index in range(workers if self.per_worker_files else 1):
            for option, validity in self.for_worker(index)._validities():
                if validity.expiring(now, within_days):
                    found.setdefault(
                        validity.source, f"{option} {validity.source}: {validity.expiry(now)}; {RENEW[option]}"
                    )
        return list(found.values())

    def _validities(self) -> list[tuple[str, Validity]]:
        """The certificate that decides whether each TLS file works: a client certificate's
        first (its chain follows it), a CA bundle's longest-lived."""
        found = []
        for option, path in (("--ca-file", self.ca_file), ("--cert-file", self.cert_file)):
            if path is not None:
                try:
                    with warnings.catch_warnings():  # a system bundle's odd serials: cryptography's, not ours
                        warnings.simplefilter("ignore")
                        validities = read_validity(path)
                except CertificateFileError as exc:
                    # OpenSSL reads what cryptography may not (BEGIN TRUSTED CERTIFICATE, from
                    # `openssl x509 -trustout`), and refuses a file neither can (tls_context):
                    # such a file works, its dates are just not checked here
                    log.debug("%s %s: dates not checked: %s", option, path, exc)
                    continue
                found.append((option, latest(validities) if option == "--ca-file" else validities[0]))
        return found

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
        # TLS would fail the handshake with a reason that names neither the file nor the date
        # (an expired client certificate: the broker just closes the connection)
        now = dt.datetime.now(dt.UTC)
        for option, validity in self._validities():
            if (problem := validity.problem(now)) is not None:
                raise BrokerFileError(f"{option} {validity.source}: {problem}; {RENEW[option]}")
        return context

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the broker presents, read without verifying it (to say what is wrong
        with it, or when it expires); None when the broker cannot be reached or refuses us."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            if self.cert_file is not None:  # a broker that requires one ends the handshake without it
                context.load_cert_chain(self.cert_file, self.key_file)
            with (
                socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except (OSError, ValueError):
            return None
        return x509.load_der_x509_certificate(der) if der else None

    def connect_failure(self, exc: Exception) -> str:
        """Why ``client.connect`` failed, in one line: a broker certificate out of its validity
        period is named with its date and what renews it, not as OpenSSL's verify failure."""
        failure = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, ssl.SSLCertVerificationError) or exc.verify_code not in (
            X509_V_ERR_CERT_HAS_EXPIRED,
            X509_V_ERR_CERT_NOT_YET_VALID,
        ):
            return failure
        presented = self.peer_certificate()
        problem = Validity.of(self.shown_url, presented).problem(dt.datetime.now(dt.UTC)) if presented else None
        if problem is None:  # one of the chain's CAs, or the broker changed meanwhile: OpenSSL's words
            return failure
        return f"the broker's {problem.removeprefix('the ')}: {RENEW_SERVER}"

    def expiry_warning(self, now: dt.datetime, within_days: float = WARN_DAYS) -> str | None:
        """A line when the broker's certificate expires within ``within_days``, else None."""
        presented = self.peer_certificate() if self.tls else None
        validity = Validity.of(self.shown_url, presented) if presented is not None else None
        if validity is None or not validity.expiring(now, within_days):
            return None
        return f"the broker's {validity.expiry(now).removeprefix('the ')}: {RENEW_SERVER}"

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
