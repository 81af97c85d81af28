"""``s4edge provision`` and ``s4edge fleet …``: CA, broker certificate, node and aggregator
credentials, and the broker's config. Everything runs offline on a technician's laptop.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
from pathlib import Path

import typer
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console
from rich.table import Table

from s4edge.cloud_sync.fleet.broker_config import (
    LOCAL_STATE_DIR,
    SERVER_CERT,
    SYSTEM_STATE_DIR,
    BrokerSettings,
    missing_tls_files,
    render,
)
from s4edge.cloud_sync.fleet.ca import CA_CERT, CAError, FleetCA, init_ca, issue_server_cert, load_ca
from s4edge.cloud_sync.fleet.command_key import COMMAND_KEY, init_command_key
from s4edge.cloud_sync.fleet.crl import crl_path, init_crl, revoke
from s4edge.cloud_sync.fleet.provision import (
    NodeRequest,
    board_names,
    provision_aggregator,
    provision_aggregator_workers,
    provision_node,
)
from s4edge.cloud_sync.fleet.registry import Fleet, FleetError
from s4edge.cloud_sync.fleet.validity import WARN_DAYS, CertificateFileError, Validity, read_certificates

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
    """Create the fleet CA (EC P-256, CA:TRUE with path length 0), its empty CRL and the command-signing
    key; keys 0600."""
    try:
        ca = init_ca(out, name, days, force)
        init_crl(ca, out)  # the broker config names it from the start: a revocation then needs only SIGHUP
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


def _renewal(cert: x509.Certificate, ca_dir: Path, fleet_dir: Path, fleet: Fleet | None) -> str:
    """The command that issues this certificate again (it is never extended in place: a new
    certificate, and the old one's serial on the CRL where it was an identity's)."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return (
                f"the fleet CA itself: a new one (`s4edge fleet ca init --out {ca_dir} --force`), then every "
                "certificate issued again and the new ca.crt given to the aggregator and every node"
            )
    except x509.ExtensionNotFound:
        pass
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return f"`s4edge fleet ca server-cert --ca-dir {ca_dir} --host BROKER_HOST`, then restart mosquitto"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    identity = fleet.identities.get(name) if fleet is not None else None
    if identity is not None and identity.role == "aggregator":
        worker = re.fullmatch(r"(.+)-w\d+", name)
        named = f"--name {worker.group(1)} --workers N" if worker else f"--name {name}"
        folders = f"--fleet-dir {fleet_dir} --ca-dir {ca_dir}"
        return f"`s4edge fleet aggregator-credentials {folders} {named} --client-cert --out DIR`"
    if identity is not None:
        return (
            f"`s4edge provision {name} --site {identity.site} --client-cert --ca-dir {ca_dir} "
            f"--fleet-dir {fleet_dir} ...` "
            "as it was provisioned, then copy its files to the node"
        )
    return "issue it again where it was issued (its name is not in this fleet's fleet.json)"


@ca_app.command("expiry")
def ca_expiry(
    certs: list[Path] = typer.Argument(
        None,
        help="More certificate files to check: an aggregator's aggregator.crt, a node's node.crt (default: none).",
        show_default=False,
    ),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Fleet folder holding ca.crt, and server.crt when kept there."),
    fleet_dir: Path | None = typer.Option(
        None, "--fleet-dir", help="Fleet folder with fleet.json, to name what renews a certificate (default: --ca-dir)."
    ),
    within: int = typer.Option(
        WARN_DAYS, "--within", min=0, help="Flag certificates that expire within this many days."
    ),
) -> None:
    """When each of the fleet's certificates expires (RFC 5280 notAfter) and what renews it; exits 1
    when one has expired or expires within --within days (for a monthly cron job)."""
    files = [path for path in (ca_dir / CA_CERT, ca_dir / SERVER_CERT) if path.exists()] + list(certs or [])
    if not files:
        raise _fail(CAError(f"{ca_dir / CA_CERT} is missing: give the fleet folder as --ca-dir"))
    try:
        fleet: Fleet | None = Fleet(fleet_dir or ca_dir)
    except FleetError as exc:
        typer.echo(f"warning: {exc}", err=True)
        fleet = None
    now = dt.datetime.now(dt.UTC)
    table = Table("file", "certificate", "not after (UTC)", "days left", "state")
    due: list[str] = []
    for path in files:
        try:
            found = read_certificates(path)
        except (CertificateFileError, OSError) as exc:
            why = str(exc) if isinstance(exc, CertificateFileError) else f"{path}: cannot read ({exc.strerror})"
            raise _fail(CAError(why)) from None
        for cert in found:
            validity = Validity.of(str(path), cert)
            problem = validity.problem(now)
            state = "expired" if now > validity.not_after else "not yet valid" if problem else "ok"
            if validity.expiring(now, within):
                state = "expiring"
            days = f"{validity.days_left(now):.0f}"
            table.add_row(str(path), validity.subject, f"{validity.not_after:%Y-%m-%d %H:%M}", days, state)
            if state != "ok":
                due.append(
                    f"{path} ({validity.subject}, {state}): {_renewal(cert, ca_dir, fleet_dir or ca_dir, fleet)}"
                )
    console.print(table)
    for line in due:
        typer.echo(f"renew {line}")
    if due:
        raise typer.Exit(1)


@fleet_app.command("aggregator-credentials")
def aggregator_credentials(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (passwords, acl, fleet.json)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="CA folder (default: --fleet-dir)."),
    out: Path = typer.Option(..., "--out", help="Folder for the aggregator's credential files."),
    name: str = typer.Option("aggregator", help="The aggregator's broker username."),
    client_cert: bool = typer.Option(False, "--client-cert", help="Issue a client certificate instead of a password."),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="One identity per ingest worker of `aggregator run --workers N`: NAME-w0 … NAME-w(N-1), "
        "sharing one password (or each with its certificate)",
    ),
) -> None:
    """Provision the aggregator's identity: reads s4edge/v1/#, writes only commands and receipts."""
    try:
        if workers:
            done = provision_aggregator_workers(
                name, load_ca(ca_dir or fleet_dir), Fleet(fleet_dir), out, workers, client_cert
            )
            files = list(dict.fromkeys(path for provisioned in done for path in provisioned.files))
        else:
            files = provision_aggregator(name, load_ca(ca_dir or fleet_dir), Fleet(fleet_dir), out, client_cert).files
    except (CAError, FleetError) as exc:
        raise _fail(exc) from None
    for path in files:
        typer.echo(str(path))
    if workers:
        given = (
            f"--cert-file {out}/aggregator-w{{worker}}.crt --key-file {out}/aggregator-w{{worker}}.key"
            if client_cert
            else f"--username {name}-w{{worker}} and the password in {out}/aggregator-workers.password"
        )
        typer.echo(f"run it with: s4edge aggregator run --workers {workers} {given}", err=True)


@fleet_app.command("broker-config")
def broker_config(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (ca.crt, server.*, passwords, acl)."),
    out: Path = typer.Option(..., "--out", help="mosquitto.conf to write."),
    port: int = typer.Option(8883, min=1, max=65535, help="MQTT over TLS port."),
    bind: str | None = typer.Option(None, help="Address to bind (default: all)."),
    ws: bool = typer.Option(False, "--ws", help="Also listen for MQTT over secure WebSockets."),
    ws_port: int = typer.Option(8884, min=1, max=65535, help="Port of the --ws listener."),
    admin_port: int | None = typer.Option(
        None, min=1, max=65535, help="Loopback-only plaintext port for local admin (off by default)."
    ),
    client_certs: bool | None = typer.Option(
        None,
        "--client-certs/--passwords",
        help="Require client certificates (CN = username), or passwords. Default: as the fleet's identities "
        "were issued; a fleet with both kinds gets a certificate listener on --cert-port too.",
    ),
    cert_port: int = typer.Option(
        8885, min=1, max=65535, help="Port of the certificate listener of a fleet with both kinds of identity."
    ),
    install_dir: Path | None = typer.Option(
        None,
        help="Where the fleet files sit on the broker host. Default: --fleet-dir, read in place by a mosquitto "
        "on this machine.",
    ),
    persistence_dir: Path | None = typer.Option(
        None,
        help="mosquitto's persistence folder. Default: /var/lib/mosquitto with --install-dir, "
        "else mosquitto-state/ beside --out (created).",
    ),
    user: str | None = typer.Option(
        None,
        help="User mosquitto runs as (mosquitto.conf `user`); `current` for you. Default: you when it reads "
        "--fleet-dir in place (the keys there are yours, mode 0600), else mosquitto's own user.",
    ),
) -> None:
    """Write a complete mosquitto config: TLS only, no anonymous clients, the fleet's passwords and ACL."""
    missing, make = missing_tls_files(fleet_dir)
    if missing:
        raise _fail(
            FleetError(
                f"{', '.join(map(str, missing))} missing, and mosquitto cannot start without them: "
                f"run `{' && '.join(make)}` (BROKER_HOST: the name nodes connect to)"
            )
        )
    _check_broker_certificates(fleet_dir)
    in_place = install_dir is None
    state = persistence_dir or (out.parent / LOCAL_STATE_DIR if in_place else SYSTEM_STATE_DIR)
    try:
        fleet = Fleet(fleet_dir)
        created = [path for path in (fleet.passwords_path, fleet.acl_path) if not path.exists()]
        if created:
            fleet.save()  # rendered from fleet.json: empty until the first `s4edge provision`
        if in_place:  # mosquitto does not create its persistence folder
            state = state.absolute()
            state.mkdir(parents=True, exist_ok=True)
    except FleetError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(FleetError(f"cannot write {exc.filename}: {exc.strerror}")) from None
    kinds = {identity.client_cert for identity in fleet.identities.values()}
    mixed = client_certs is None and kinds == {True, False}  # a listener of each kind
    certs = (fleet.uses_client_certs and not mixed) if client_certs is None else client_certs
    without = [n for n, i in fleet.identities.items() if i.client_cert != certs and not mixed]
    if without:
        typer.echo(
            f"warning: {', '.join(sorted(without))} cannot log in to a "
            f"{'certificate' if certs else 'password'} listener; re-provision them",
            err=True,
        )
    if mixed:
        certified = ", ".join(sorted(n for n, i in fleet.identities.items() if i.client_cert))
        typer.echo(
            f"{certified}: certificate identities, connect on port {cert_port} (--broker mqtts://HOST:{cert_port})"
        )
    if (certs or mixed) and not crl_path(fleet_dir).exists():
        try:  # a fleet from before `ca init` wrote one; mosquitto does not start without its crlfile
            init_crl(load_ca(fleet_dir), fleet_dir)
        except CAError as exc:
            raise _fail(FleetError(f"{crl_path(fleet_dir)} is missing and cannot be signed here: {exc}")) from None
    settings = BrokerSettings(
        files_dir=(install_dir or fleet_dir).absolute(),
        port=port,
        bind=bind,
        client_certs=certs,
        cert_port=cert_port if mixed else None,
        ws_port=ws_port if ws else None,
        admin_port=admin_port,
        persistence_dir=state,
        user=getpass.getuser() if user == "current" or (user is None and in_place) else user,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(settings))
    if created:
        nobody = "" if fleet.identities else " (nobody may log in until `s4edge provision`, then reload mosquitto)"
        typer.echo(f"created {' and '.join(map(str, created))}{nobody}")
    typer.echo(str(out))


def _check_broker_certificates(fleet_dir: Path) -> None:
    """mosquitto starts with an expired certificate and every client then refuses it, with
    OpenSSL's reason and no date: refuse to write its config until it is renewed."""
    now = dt.datetime.now(dt.UTC)
    for path, what in ((fleet_dir / CA_CERT, "the fleet CA"), (fleet_dir / SERVER_CERT, "the broker's certificate")):
        try:
            cert = read_certificates(path)[0]
        except (CertificateFileError, OSError) as exc:
            why = str(exc) if isinstance(exc, CertificateFileError) else f"{path}: cannot read ({exc.strerror})"
            raise _fail(FleetError(why)) from None
        validity = Validity.of(str(path), cert)
        renew = _renewal(cert, fleet_dir, fleet_dir, None)
        if (problem := validity.problem(now)) is not None:
            raise _fail(FleetError(f"{path}: {problem}: every client refuses {what}; renew it: {renew}"))
        if validity.expiring(now):
            typer.echo(f"warning: {path}: {validity.expiry(now)}; renew it before then: {renew}", err=True)


@fleet_app.command("list")
def fleet_list(
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (fleet.json, passwords, acl)."),
) -> None:
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
    name: str = typer.Argument(..., help="The identity to revoke: a name that `s4edge fleet list` shows."),
    fleet_dir: Path = typer.Option(..., "--fleet-dir", help="Fleet folder (fleet.json, passwords, acl, crl.pem)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="CA folder that signs the CRL (default: --fleet-dir)."),
    cert: Path | None = typer.Option(
        None, "--cert", help="Also revoke this certificate, one issued elsewhere (default: none)."
    ),
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
        "a broker config written before `crlfile` was in it needs `s4edge fleet broker-config` and a restart"
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
    broker: str = typer.Option(
        ..., "--broker", help="mqtts://HOST:PORT (or wss://HOST:PORT/PATH) as the node will reach it."
    ),
    board: str = typer.Option("rpi5", "--board", help=f"Board profile ({', '.join(board_names())})."),
    zone: str | None = typer.Option(
        None, "--zone", help="Human name of the place, the config's location.zone (default: none)."
    ),
    client_cert: bool = typer.Option(False, "--client-cert", help="Issue a client certificate (CN = node id)."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Folder holding ca.crt and ca.key."),
    fleet_dir: Path | None = typer.Option(None, "--fleet-dir", help="Fleet folder (default: --ca-dir)."),
    out: Path = typer.Option(..., "--out", help="Folder for the node's files (copy to /etc/s4edge/)."),
    outbox: Path | None = typer.Option(
        None,
        "--outbox",
        help="The node's outbox file. Default: the board profile's, /var/lib/s4edge/outbox.db, which the "
        "systemd unit creates; give a writable path to run `s4edge agent run` by hand.",
    ),
) -> None:
    """Provision a node: its config, credentials, and its password and ACL entries on the broker."""
    where = outbox.absolute() if outbox else None
    request = NodeRequest(node_id, site, lat, lon, broker, board, zone, client_cert, where)
    if out.resolve() in {ca_dir.resolve(), (fleet_dir or ca_dir).resolve()}:  # its files would overwrite theirs
        raise _fail(FleetError(f"--out {out} is the fleet's or the CA's folder: give the node a folder of its own"))
    try:
        done = provision_node(request, load_ca(ca_dir), Fleet(fleet_dir or ca_dir), out)
    except (CAError, FleetError) as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(FleetError(f"cannot write {exc.filename or out}: {exc.strerror}")) from None
    for path in done.files:
        typer.echo(str(path))
    fleet = Fleet(fleet_dir or ca_dir)
    kinds = {identity.client_cert for identity in fleet.identities.values()}
    if client_cert and len(kinds) > 1:  # broker-config keeps the main port for passwords
        typer.echo(
            "note: this fleet mixes passwords and certificates: `fleet broker-config` gives certificates a "
            "listener of their own (--cert-port, 8885 by default), which this node's --broker must name",
            err=True,
        )
    broker_files = "passwords, acl and crl.pem" if client_cert else "passwords and acl"  # crl.pem: a rotation revokes
    broker = f"the fleet's {broker_files} to the broker, then `systemctl reload mosquitto` on the broker"
    if not done.again:
        typer.echo(f"next: copy {out}/ to the node's /etc/s4edge/, and {broker}")
        return
    # The node's own node.yaml was adapted on site (its sources, its tuning): copying the folder
    # would put this one over it.
    credentials = _and([str(path) for path in done.files if path != done.config_path])
    typer.echo(
        f"next: copy only {credentials} to the node's /etc/s4edge/, not node.yaml (the node's own, adapted on "
        f"site, stays), then `sudo systemctl restart s4edge-agent` there to use them; and {broker}"
    )
    if done.changed:
        typer.echo(
            f"note: {done.config_path}: {_and(list(done.changed))} changed: make the same change in the node's "
            "/etc/s4edge/node.yaml, then check it with `s4edge agent check -c /etc/s4edge/node.yaml`"
        )


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return f"{', '.join(items[:-1])} and {items[-1]}" if len(items) > 1 else "".join(items)
