"""``s4edge provision`` and ``s4edge fleet …``: CA, broker certificate, node and aggregator
credentials, and the broker's config. Everything runs offline on a technician's laptop.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import typer
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from rich.console import Console
from rich.table import Table

from s4edge.cloud_sync.fleet.broker_config import BrokerSettings, render
from s4edge.cloud_sync.fleet.ca import CAError, FleetCA, init_ca, issue_server_cert, load_ca
from s4edge.cloud_sync.fleet.command_key import COMMAND_KEY, init_command_key
from s4edge.cloud_sync.fleet.crl import crl_path, revoke
from s4edge.cloud_sync.fleet.provision import NodeRequest, board_names, provision_aggregator, provision_node
from s4edge.cloud_sync.fleet.registry import Fleet, FleetError

fleet_app = typer.Typer(help="The fleet: CA, broker config, identities.", no_args_is_help=True)
ca_app = typer.Typer(help="The fleet's certificate authority.", no_args_is_help=True)
fleet_app.add_typer(ca_app, name="ca")
command_key_app = typer.Typer(help="The aggregator's command-signing key (Ed25519).", no_args_is_help=True)
fleet_app.add_typer(command_key_app, name="command-key")
console = Console()


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@ca_app.command("init")
def ca_init(
    out: Path = typer.Option(..., "--out", help="Fleet folder to create the CA in (ca.crt, ca.key)."),
    name: str = typer.Option("s4edge fleet CA", help="The CA's common name."),
    days: int = typer.Option(3650, min=1, help="Validity of the CA certificate, days."),
    force: bool = typer.Option(False, help="Replace an existing CA (orphans every issued certificate)."),
) -> None:
    """Create the fleet CA (EC P-256, CA:TRUE with path length 0) and the command-signing key; keys 0600."""
    try:
        ca = init_ca(out, name, days, force)
        if force or not (out / COMMAND_KEY).exists():
            init_command_key(out, force=True)
    except CAError as exc:
        raise _fail(exc) from None
    typer.echo(f"fleet CA {ca.cert.subject.rfc4514_string()} in {ca.folder}")
    typer.echo(f"command-signing key {out / COMMAND_KEY}: give it to `s4edge aggregator run --command-key`")


@command_key_app.command("init")
def command_key_init(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (command.key, command.pub)."),
    force: bool = typer.Option(False, help="Replace an existing key (nodes refuse commands until re-provisioned)."),
) -> None:
    """Create the aggregator's Ed25519 command-signing key pair; `provision` gives nodes the public half."""
    try:
        private, public = init_command_key(fleet_dir, force)
    except CAError as exc:
        raise _fail(exc) from None
    typer.echo(f"{private}\n{public}")


@ca_app.command("server-cert")
def ca_server_cert(
    host: list[str] = typer.Option([], "--host", help="DNS name nodes use for the broker (repeatable)."),
    ip: list[str] = typer.Option([], "--ip", help="IP address nodes use for the broker (repeatable)."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Folder holding ca.crt and ca.key."),
    out: Path | None = typer.Option(None, "--out", help="Where to write server.crt/server.key (default: --ca-dir)."),
    days: int = typer.Option(730, min=1, help="Validity, days."),
) -> None:
    """Issue the broker's TLS certificate for its hostnames and IP addresses."""
    try:
        cert, key = issue_server_cert(load_ca(ca_dir), host, ip, out or ca_dir, days)
    except CAError as exc:
        raise _fail(exc) from None
    typer.echo(f"{cert}\n{key}")


@fleet_app.command("aggregator-credentials")
def aggregator_credentials(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (passwords, acl, fleet.json)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="CA folder (default: --fleet-dir)."),
    out: Path = typer.Option(..., "--out", help="Folder for the aggregator's credential files."),
    name: str = typer.Option("aggregator", help="The aggregator's broker username."),
    client_cert: bool = typer.Option(False, "--client-cert", help="Issue a client certificate instead of a password."),
) -> None:
    """Provision the aggregator's identity: reads s4edge/v1/#, writes s4edge/v1/+/+/cmd/# only."""
    try:
        done = provision_aggregator(name, load_ca(ca_dir or fleet_dir), Fleet(fleet_dir), out, client_cert)
    except (CAError, FleetError) as exc:
        raise _fail(exc) from None
    for path in done.files:
        typer.echo(str(path))


@fleet_app.command("broker-config")
def broker_config(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (ca.crt, server.*, passwords, acl)."),
    out: Path = typer.Option(..., "--out", help="mosquitto.conf to write."),
    port: int = typer.Option(8883, min=1, max=65535, help="MQTT over TLS port."),
    bind: str | None = typer.Option(None, help="Address to bind (default: all)."),
    ws: bool = typer.Option(False, "--ws", help="Also listen for MQTT over secure WebSockets."),
    ws_port: int = typer.Option(8884, min=1, max=65535, help="Port of the --ws listener."),
    admin_port: int | None = typer.Option(None, help="Loopback-only plaintext port for local admin (off by default)."),
    client_certs: bool | None = typer.Option(
        None,
        "--client-certs/--passwords",
        help="Require client certificates (CN = username). Default: if any identity was issued one.",
    ),
    install_dir: Path | None = typer.Option(
        None, help="Where the fleet files sit on the broker host (default: --fleet-dir)."
    ),
    persistence_dir: Path = typer.Option(Path("/var/lib/mosquitto"), help="mosquitto's persistence folder."),
    user: str | None = typer.Option(
        None, help="User mosquitto runs as (mosquitto.conf `user`); `--user current` for the user running this command."
    ),
) -> None:
    """Write a complete mosquitto config: TLS only, no anonymous clients, the fleet's passwords and ACL."""
    try:
        fleet = Fleet(fleet_dir)
    except FleetError as exc:
        raise _fail(exc) from None
    if not fleet.identities:
        raise _fail(
            FleetError(
                f"{fleet_dir} has no identities yet: run `s4edge provision` and "
                "`s4edge fleet aggregator-credentials` first"
            )
        )
    certs = fleet.uses_client_certs if client_certs is None else client_certs
    without = [n for n, i in fleet.identities.items() if i.client_cert != certs]
    if without:
        typer.echo(
            f"warning: {', '.join(sorted(without))} cannot log in to a "
            f"{'certificate' if certs else 'password'} listener; re-provision them",
            err=True,
        )
    settings = BrokerSettings(
        crl=crl_path(fleet_dir).exists(),
        files_dir=(install_dir or fleet_dir).absolute(),
        port=port,
        bind=bind,
        client_certs=certs,
        ws_port=ws_port if ws else None,
        admin_port=admin_port,
        persistence_dir=persistence_dir,
        user=getpass.getuser() if user == "current" else user,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(settings))
    typer.echo(str(out))


@fleet_app.command("list")
def fleet_list(fleet_dir: Path = typer.Option(..., "--fleet-dir")) -> None:
    """The identities the broker knows."""
    try:
        fleet = Fleet(fleet_dir)
    except FleetError as exc:
        raise _fail(exc) from None
    table = Table("name", "role", "site", "auth")
    for name, identity in sorted(fleet.identities.items()):
        table.add_row(name, identity.role, identity.site or "", "certificate" if identity.client_cert else "password")
    console.print(table)


@fleet_app.command("revoke")
def fleet_revoke(
    name: str,
    fleet_dir: Path = typer.Option(..., "--fleet-dir"),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="CA folder that signs the CRL (default: --fleet-dir)."),
    cert: Path | None = typer.Option(None, "--cert", help="Also revoke this certificate (one issued elsewhere)."),
) -> None:
    """Remove an identity from the password and ACL files and put its client certificate on the CRL."""
    try:
        fleet = Fleet(fleet_dir)
        identity = fleet.identities.get(name)
        if identity is None and cert is None:
            raise FleetError(f"{name!r} is not in {fleet_dir}; pass --cert FILE to revoke a certificate alone")
        serials = [int(identity.cert_serial, 16)] if identity is not None and identity.cert_serial else []
        if cert is not None or serials:
            ca = load_ca(ca_dir or fleet_dir)
            serials += [_serial_of(ca, cert)] if cert is not None else []
            revoke(ca, fleet_dir, serials)
        elif identity is not None and identity.client_cert:
            typer.echo(
                f"warning: the certificate of {name} predates recorded serials; pass --cert FILE to put it on the CRL",
                err=True,
            )
        gone = fleet.remove(name) if identity is not None else None
    except (CAError, FleetError) as exc:
        raise _fail(exc) from None
    what = gone.describe() if gone else name
    on_crl = f"; {len(serials)} certificate(s) on {crl_path(fleet_dir)}" if serials else ""
    typer.echo(f"revoked {what}{on_crl}")
    typer.echo(
        "reload the broker: systemctl reload mosquitto (SIGHUP rereads passwords, ACL and CRL); "
        "a broker config without `crlfile` needs `s4edge fleet broker-config` again first"
        if serials
        else "reload the broker: systemctl reload mosquitto"
    )


def _serial_of(ca: FleetCA, path: Path) -> int:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CAError(f"--cert {path}: not a readable PEM certificate ({exc})") from None
    try:
        cert.verify_directly_issued_by(ca.cert)  # CAs may share a name; only the signature tells
    except (ValueError, TypeError, InvalidSignature):
        raise CAError(f"--cert {path} was not signed by the fleet CA in {ca.folder}") from None
    return int(cert.serial_number)


def provision(
    node_id: str = typer.Argument(..., help="The node's id (a topic level and its broker username)."),
    site: str = typer.Option(..., "--site", help="Site id, e.g. plaza-mayor."),
    lat: float = typer.Option(..., "--lat", min=-90, max=90, help="WGS84 latitude."),
    lon: float = typer.Option(..., "--lon", min=-180, max=180, help="WGS84 longitude."),
    broker: str = typer.Option(..., "--broker", help="mqtts://HOST:PORT as the node will reach it."),
    board: str = typer.Option("rpi5", "--board", help=f"Board profile ({', '.join(board_names())})."),
    zone: str | None = typer.Option(None, "--zone", help="Human name of the place."),
    client_cert: bool = typer.Option(False, "--client-cert", help="Issue a client certificate (CN = node id)."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Folder holding ca.crt and ca.key."),
    fleet_dir: Path | None = typer.Option(None, "--fleet-dir", help="Fleet folder (default: --ca-dir)."),
    out: Path = typer.Option(..., "--out", help="Folder for the node's files (copy to /etc/s4edge/)."),
) -> None:
    """Provision a node: its config, credentials, and its password and ACL entries on the broker."""
    request = NodeRequest(node_id, site, lat, lon, broker, board, zone, client_cert)
    try:
        done = provision_node(request, load_ca(ca_dir), Fleet(fleet_dir or ca_dir), out)
    except (CAError, FleetError) as exc:
        raise _fail(exc) from None
    for path in done.files:
        typer.echo(str(path))
    typer.echo(f"next: copy {out}/ to the node's /etc/s4edge/, then `systemctl reload mosquitto` on the broker")


def register(app: typer.Typer) -> None:
    """Add ``provision`` and the ``fleet`` group to the root ``s4edge`` app."""
    app.command("provision")(provision)
    app.add_typer(fleet_app, name="fleet")
