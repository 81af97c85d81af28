"""The integrator's side of NG112: ``s4edge ng112 check-config`` refuses a config that every
call would fail with, in a line that names the key and shows no password, and says what it
did not check; and what a configured sender makes of the call a PSAP parses."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose

runner = CliRunner()
PSAP = "psap: sip:psap@192.0.2.10:5060;transport=tcp\n"


def check_config(tmp_path, text: str) -> tuple[int, str]:
    path = tmp_path / "ng112.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["ng112", "check-config", str(path)])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("line", "says"),
    [
        # each was taken, and every call then failed at send time (CapError) or was refused by the PSAP
        ("language: en_US", "language: 'en_US' is not a language tag like en-US"),
        ("sender_domain: my site.example", "sender_domain: 'my site.example' is not a host name"),
        ("sender: sip:alarm system@example.org", "sender: 'sip:alarm system@example.org' holds a space"),
        ("sender: alarm@example.org", "sender: 'alarm@example.org' is not a SIP URI"),
        ("request_uri: https://psap.example.org/sos", "request_uri: 'https://psap.example.org/sos' is neither"),
        ("readings_base_url: aggregator.example.org", "readings_base_url: 'aggregator.example.org' is not an absolute"),
        ("readings_base_url: https://agg.example.org/?x=1", "readings_base_url: 'https://agg.example.org/?x=1' holds"),
        # a readings link that never answered, or answered for a year
        ("readings_link_ttl_s: 0", "readings_link_ttl_s: Input should be greater than or equal to 60"),
        ("readings_link_ttl_s: 31536000", "readings_link_ttl_s: Input should be less than or equal to 604800"),
    ],
)
def test_check_config_refuses_what_every_call_would_fail_with(tmp_path, line, says):
    code, output = check_config(tmp_path, PSAP + line + "\n")
    assert code == 2 and says in output, output


@pytest.mark.parametrize(
    "line",
    [
        "psap: https://alice:S3cretPW@psap.example.org/ng112",
        PSAP + "request_uri: sip:psap:S3cretPW@psap.example.org",
        PSAP + "sender: sip:alarm:S3cretPW@example.org",
        PSAP + "readings_base_url: https://alice:S3cretPW@agg.example.org",
    ],
)
def test_a_password_in_a_uri_is_named_never_shown(tmp_path, line):
    # an https:// PSAP URI's password was shown in full; in request_uri, sender or the readings
    # link it would go out with every call, on the PSAP's screen (RFC 3261 §19.1.1: NOT RECOMMENDED)
    code, output = check_config(tmp_path, line + "\n")
    assert code == 2 and "S3cretPW" not in output, output
    assert "***" in output


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (PSAP + "updat_interval_s: 10\n", "updat_interval_s: Extra inputs are not permitted (update_interval_s?)"),
        (
            PSAP + "sites: {school: {min_severty: Minor}}\n",
            "sites.school.min_severty: Extra inputs are not permitted (min_severity?)",
        ),
    ],
)
def test_a_misspelled_key_is_named_with_the_closest_one(tmp_path, text, says):
    code, output = check_config(tmp_path, text)
    assert code == 2 and says in output, output


def test_check_config_says_the_psap_was_not_called_and_how_to_call_it(tmp_path):
    # "PSAP sip:…" alone read as if the PSAP had been reached: an unreachable one passed the same
    code, output = check_config(tmp_path, "psap: sip:psap@192.0.2.99:5060;transport=tcp\n")
    assert code == 0
    assert "not contacted" in output and "s4edge ng112 send-test --psap" in output


def test_check_config_names_a_kind_no_node_sends(tmp_path):
    # kinds: [gass] was taken without a word, and that site never forwarded a gas alarm
    code, output = check_config(tmp_path, PSAP + "default: {kinds: [gass, flame]}\n")
    assert code == 0
    assert "warning: default.kinds: gass is no kind s4edge nodes send (gas?)" in output


def test_the_shipped_example_passes_unchanged(tmp_path):
    from s4edge.resources import packaged

    code, output = check_config(tmp_path, packaged("cloud_sync", "ng112", "ng112.example.yaml").read_text())
    assert code == 0 and "warning" not in output, output


# RFC 2392 §2: a cid: URL names a Content-ID, a msg-id (RFC 5322 §3.6.4): dot-atom "@" dot-atom
# or a [literal]; a ':' or ';' is neither, and a strict PSAP finds no CAP part (425, code 101).
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
MSG_ID = re.compile(rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[^\[\]\\]*\])>")


@pytest.mark.parametrize(
    "sender",
    ["sip:alarm@example.org:5070;transport=tcp", "sip:example.org", "sips:alarm@[2001:db8::1]:5061", None],
)
def test_every_content_id_is_a_msg_id_whatever_the_sender(sender):
    alert = Alert(
        node_id="n1",
        site="plaza",
        seq=1,
        kind="gas",
        severity="Severe",
        state="new",
        incident="inc-gas-0001",
        location=Location(lat=48.2, lon=16.37),
    )
    message = compose(alert, Caller(sender=sender)).message
    raw = message.render("tcp", "127.0.0.1:5060", "z9hG4bKtest").decode()
    ids = re.findall(r"^Content-ID: (.*)\r$", raw, re.MULTILINE)
    assert len(ids) == 3 and all(MSG_ID.fullmatch(found) for found in ids), ids
    for part in (message.cap, message.pidf, message.device_info):  # each still found from its header
        assert f"<cid:{part.content_id}>" in raw
