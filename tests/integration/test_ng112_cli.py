"""``s4edge ng112 psap`` and ``s4edge ng112 send-test`` as a technician runs them."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.sip import parse_target
from s4edge.cloud_sync.ng112.transport import Timers, Transaction
from s4edge.resources import packaged
from s4edge.testing import free_port
from s4edge.testing.sipp import SippPsap, run_uac

runner = CliRunner()


def test_the_builtin_psap_prints_the_call_and_answers_200(tmp_path):
    port = free_port()
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "r", runner.invoke(app, ["ng112", "psap", "--listen", f"udp:127.0.0.1:{port}", "--count", "1"])
        )
    )
    thread.start()
    alert = Alert(
        node_id="n2",
        site="mall",
        seq=1,
        kind="smoke",
        severity="Severe",
        state="new",
        incident="inc-smoke-0002",
        status="Exercise",
        location=Location(lat=45.5, lon=9.19, zone="atrium"),
    )
    call = compose(alert, Caller())
    target = parse_target(f"sip:psap@127.0.0.1:{port};transport=udp")
    deadline = time.monotonic() + 10
    while True:  # the receiver may not be bound yet: an ICMP refusal says so
        delivery = Transaction(Timers(t1=0.05)).send(call.message, target)
        if delivery.outcome != "unreachable" or time.monotonic() > deadline:
            break
    thread.join(10)
    assert delivery.ok, delivery
    output = result["r"].output
    assert result["r"].exit_code == 0, output
    assert "Exercise Alert 'smoke' severity=Severe at 45.500000,9.190000" in output
    assert "incident=inc-smoke-0002" in output


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")
def test_the_builtin_psap_answers_a_cap_sent_as_application_cap_xml_with_425(tmp_path):
    port = free_port()
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "r", runner.invoke(app, ["ng112", "psap", "--listen", f"udp:127.0.0.1:{port}", "--count", "1"])
        )
    )
    thread.start()
    # sipp retransmits over UDP (RFC 3261 Timer E) until the PSAP is bound and answers.
    sipp = run_uac(("127.0.0.1", port), "udp", tmp_path, cap_type="application/cap+xml")
    thread.join(10)
    assert sipp.returncode == 0, sipp.errors
    assert sipp.responses[-1].startswith(b"SIP/2.0 425 Bad Alert Message\r\n")
    output = result["r"].output
    assert result["r"].exit_code == 0, output
    assert (
        'MESSAGE answered 425 Bad Alert Message (AlertMsg-Error: 100 ;message="Cannot process the alert payload")'
        in output
    )
    assert "application/cap+xml, not application/EmergencyCallData.cap+xml" in output


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")
@pytest.mark.parametrize(
    ("scenario", "code", "expected"),
    [
        ("psap_200.xml", 0, "ok: 200 OK"),
        ("psap_rfc8876.xml", 0, "ok: 200 OK"),
        ("psap_425.xml", 1, "AlertMsg-Error: 101 Alert payload was not present or could not be found"),
    ],
)
def test_send_test_reports_how_the_psap_answered(tmp_path, scenario, code, expected):
    with SippPsap(scenario, "tcp", tmp_path, calls=1) as psap:
        result = runner.invoke(
            app, ["ng112", "send-test", "--psap", psap.uri, "--lat", "48.1", "--lon", "11.5", "--t1", "0.05"]
        )
        assert psap.wait(10) == 0
    assert result.exit_code == code, result.output
    assert expected in result.output
    (raw,) = psap.received()
    assert b"<status>Test</status>" in raw  # a commissioning call is never Actual


def test_send_test_refuses_a_bad_uri_or_location():
    bad = runner.invoke(app, ["ng112", "send-test", "--psap", "http://psap", "--lat", "1", "--lon", "1"])
    assert bad.exit_code == 2 and "not sent" in bad.output
    nowhere = runner.invoke(app, ["ng112", "send-test", "--psap", "sip:p@127.0.0.1", "--lat", "0", "--lon", "0"])
    assert nowhere.exit_code == 2 and "no usable location" in nowhere.output
    web = ["--psap", "sip:p@127.0.0.1", "--lat", "1", "--lon", "1", "--request-uri", "https://u:s3cret@psap.example/sos"]
    refused = runner.invoke(app, ["ng112", "send-test", *web])  # would have gone out as MESSAGE https://…
    assert refused.exit_code == 2 and "not sent: --request-uri" in refused.output and "s3cret" not in refused.output


def send_test(*args, env=None):
    result = runner.invoke(app, ["ng112", "send-test", *args], env=env)
    return result.exit_code, " ".join(result.output.replace("│", " ").split()), result.exception


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--node", "BAD NODE"], None, "not sent: node_id: String should match pattern"),  # a pydantic dump
        (["--lat", "100"], None, "less than or equal to 90"),
        (["--psap", "sip:alice:S3cretPW@127.0.0.1:99999"], None, "'sip:alice:***@127.0.0.1:99999': port 99999"),
        ([], {"S4EDGE_CAP_XSD": "/nonexistent.xsd"}, "not sent: CAP 1.2 schema not found"),  # a traceback
    ],
)
def test_send_test_refuses_bad_input_in_a_line_that_shows_no_password(args, env, says):
    base = {"--psap": "sip:p@127.0.0.1:1;transport=tcp", "--lat": "1", "--lon": "2"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    code, output, exception = send_test(*[v for k, x in {**base, **given}.items() for v in (k, x)], env=env)
    assert code == 2 and isinstance(exception, SystemExit), (output, exception)
    assert says in output and "S3cretPW" not in output and "Traceback" not in output


def test_the_builtin_psap_refuses_a_port_out_of_range_and_one_taken():
    out_of_range = runner.invoke(app, ["ng112", "psap", "--listen", "tcp:127.0.0.1:99999"])
    assert out_of_range.exit_code == 2 and "port 99999 is out of range" in out_of_range.output
    from s4edge.cloud_sync.ng112.receiver import PsapReceiver

    first = PsapReceiver("udp:127.0.0.1:0", lambda call: None)
    first.start()
    try:  # a second UDP PSAP bound beside the first and took its calls
        host, port = first.address
        taken = runner.invoke(app, ["ng112", "psap", "--listen", f"udp:{host}:{port}"])
        assert taken.exit_code == 2 and "cannot listen on" in taken.output and "in use" in taken.output
    finally:
        first.stop()


def test_check_config_summarises_or_names_the_error(tmp_path):
    good = tmp_path / "ng112.yaml"
    good.write_text("psap: sip:psap@127.0.0.1\ncorrelation: [{name: gas-flame, kinds: [gas, flame]}]\n")
    result = runner.invoke(app, ["ng112", "check-config", str(good)])
    assert result.exit_code == 0 and "rule gas-flame: gas + flame within 120 s -> Extreme" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("psap: sip:psap@127.0.0.1\ntypo_key: 1\n")
    result = runner.invoke(app, ["ng112", "check-config", str(bad)])
    assert result.exit_code == 2 and "typo_key" in result.output


def test_the_shipped_example_config_is_valid():
    example = packaged("cloud_sync", "ng112", "ng112.example.yaml")
    result = runner.invoke(app, ["ng112", "check-config", str(example)])
    assert result.exit_code == 0, result.output
    assert "school-north: confirm" in result.output and "rule smoke-crowd" in result.output
    assert "new readings only at most one per 30 s" in result.output
