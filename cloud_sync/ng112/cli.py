"""``s4edge ng112``: a built-in PSAP for demos and drills, and a commissioning test call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from s4edge.cloud_sync.ng112.receiver import ReceivedCall

ng112_app = typer.Typer(help="NG112: forward critical alerts to a PSAP (RFC 8876).", no_args_is_help=True)


@ng112_app.command("psap")
def psap(
    listen: str = typer.Option("udp:127.0.0.1:5060", help="udp:HOST:PORT or tcp:HOST:PORT"),
    count: int = typer.Option(0, help="Stop after this many calls (0: run until Ctrl-C)."),
) -> None:
    """Run a small PSAP that prints every call it receives.

    It checks each call as a conformant PSAP does: 200 OK to a conformant one, 425 Bad Alert
    Message with the AlertMsg-Error that says why (RFC 8876 §5) to one whose CAP it could not use.
    """
    from s4edge.cloud_sync.ng112.receiver import PsapReceiver

    done = threading.Event()
    seen = 0

    def on_call(call: ReceivedCall) -> None:
        nonlocal seen
        seen += 1
        if call.accepted:
            typer.echo(f"{call.method} {call.summary()}", color=False)
        else:
            typer.echo(f"{call.method} answered {call.verdict}: {call.verdict.detail}", color=False)
        if count and seen >= count:
            done.set()

    from lxml import etree

    try:
        receiver = PsapReceiver(listen, on_call)
    except (ValueError, OSError, etree.Error) as exc:  # etree: a CAP schema ($S4EDGE_CAP_XSD) it cannot read
        typer.echo(f"cannot listen on {listen}: {exc}", err=True)
        raise typer.Exit(2) from None
    host, port = receiver.address
    typer.echo(f"PSAP listening on {receiver.proto}:{host}:{port}")
    receiver.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


@ng112_app.command("send-test")
def send_test(
    psap_uri: str = typer.Option(..., "--psap", help="SIP URI of the PSAP, e.g. sip:psap@192.0.2.1:5060;transport=tcp"),
    node_id: str = typer.Option(
        "commissioning", "--node", help="Node id the test call comes from (the CAP sender's and SIP From's user)."
    ),
    site: str = typer.Option(
        "test-site", "--site", help="Site id of that node (the SIP From's domain starts with it)."
    ),
    lat: float = typer.Option(..., min=-90, max=90, help="The node's surveyed latitude (WGS 84)."),
    lon: float = typer.Option(..., min=-180, max=180, help="The node's surveyed longitude (WGS 84)."),
    zone: str | None = typer.Option(
        None, help="Human name of the place, the CAP areaDesc the call-taker reads (default: none, the site id)."
    ),
    request_uri: str = typer.Option("urn:service:sos", help="Request-URI and To (urn:service:sos or the PSAP URI)."),
    t1: float = typer.Option(0.5, min=0.001, max=60, help="RFC 3261 T1 in seconds; Timer F is 64·T1."),
) -> None:
    """Send one CAP message with status Test (never Actual) and print how the PSAP answered."""
    from lxml import etree
    from pydantic import ValidationError

    from s4edge.cloud_sync.messages import Alert, Location, Measurement
    from s4edge.cloud_sync.ng112.call import Caller, compose
    from s4edge.cloud_sync.ng112.cap import CapError
    from s4edge.cloud_sync.ng112.pidf import LocationError
    from s4edge.cloud_sync.ng112.policy import checked_request_uri
    from s4edge.cloud_sync.ng112.sip import SipError, parse_target
    from s4edge.cloud_sync.ng112.transport import Timers, Transaction

    try:
        request_uri = checked_request_uri(request_uri)
    except ValueError as exc:  # a web URL on the wire as MESSAGE https://…, as ng112.yaml's request_uri
        typer.echo(f"not sent: --request-uri: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        target = parse_target(psap_uri)
        alert = Alert(
            node_id=node_id,
            site=site,
            seq=0,
            kind="sensor_fault",
            severity="Minor",
            state="new",
            incident=f"commissioning-{node_id}"[:64],
            status="Test",
            location=Location(lat=lat, lon=lon, zone=zone),
            title="s4edge commissioning test call",
            detail="Test message from an automated sensor node during commissioning. No action required.",
            measurements=[Measurement(quantity="test", value=1.0, unit="1")],
        )
        call = compose(alert, Caller(request_uri=request_uri))
    except ValidationError as exc:  # --node, --site, --zone: the alert's own rules, one line
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        typer.echo(f"not sent: {problems}", err=True)
        raise typer.Exit(2) from None
    except (SipError, CapError, LocationError, ValueError, OSError, etree.Error) as exc:  # the last two: the CAP XSD
        typer.echo(f"not sent: {exc}", err=True)
        raise typer.Exit(2) from None
    delivery = Transaction(Timers(t1=t1)).send(call.message, target)
    latency = f"{delivery.latency_s * 1000:.1f} ms" if delivery.latency_s is not None else "-"
    typer.echo(
        f"{delivery.outcome}: {delivery.detail} over {delivery.transport} after {delivery.transmissions} "
        f"transmission(s), latency {latency}"
    )
    error = delivery.response.alert_msg_error if delivery.response else None
    if error is not None:
        typer.echo(f"AlertMsg-Error: {error}")
    if not delivery.ok:
        raise typer.Exit(1)


@ng112_app.command("check-config")
def check_config(path: Path = typer.Argument(..., help="NG112 YAML config (policy, PSAP, correlation).")) -> None:
    """Validate an NG112 config file and summarise what it forwards."""
    from s4edge.cloud_sync.ng112.policy import Ng112ConfigError, load_config
    from s4edge.cloud_sync.ng112.sip import shown_uri

    try:
        config = load_config(path)
    except Ng112ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"PSAP {shown_uri(config.psap)} (Request-URI {shown_uri(config.request_uri)})")
    # the file is checked, not the PSAP: an unreachable one passes the same
    typer.echo(
        f"  not contacted: `s4edge ng112 send-test --psap '{shown_uri(config.psap)}' --lat LAT --lon LON` "
        "places a Test call"
    )
    every = f"at most one per {config.update_interval_s:g} s" if config.update_interval_s else "each at once"
    typer.echo(f"  Updates: at once when what a call-taker sees changes; new readings only {every}")
    for site, policy in {"(default)": config.default, **config.sites}.items():
        typer.echo(f"  {site}: {policy.mode}, {','.join(policy.kinds)} at >= {policy.min_severity}")
    for rule in config.correlation:
        typer.echo(f"  rule {rule.name}: {' + '.join(rule.kinds)} within {rule.within_s:g} s -> {rule.severity}")
    for warning in config.unknown_kinds():
        typer.echo(f"warning: {warning}")
