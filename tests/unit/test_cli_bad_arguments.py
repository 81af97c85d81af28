"""Bad arguments to the CLI end in one line that says what was wrong, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app

NOT_UTF8 = b"\xff\xfe token\n"


def run(*args: str | Path) -> tuple[int, str]:
    """Exit code, and the output as one line: rich boxes and wraps its errors."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    assert run("fleet", "ca", "init", "--out", tmp_path / "fleet")[0] == 0
    return tmp_path / "fleet"


def provision(fleet_dir: Path, out: Path, broker: str = "mqtts://broker.example:8883") -> tuple[int, str]:
    site = ["--site", "plaza", "--lat", "40.4", "--lon", "-3.7", "--board", "x86"]
    return run("provision", "node-a", *site, "--broker", broker, "--ca-dir", fleet_dir, "--out", out)


def test_aggregator_run_refuses_bad_arguments_in_a_line(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(NOT_UTF8)
    (tmp_path / "ng112.yaml").write_bytes(b"psap: sip:p@h\n# caf\xe9\n")
    db = ["--db", f"sqlite:///{tmp_path / 'agg.db'}"]
    cases = [
        (["--broker", "mqtt://[::1", *db], "Invalid IPv6 URL"),
        (["--broker", "mqtt://127.0.0.1:1", *db, "--http", "127.0.0.1:99999"], "give HOST:PORT"),
        (["--broker", "mqtt://127.0.0.1:1", *db, "--operator-token-file", tmp_path / "token"], "not UTF-8"),
        (["--broker", "mqtt://127.0.0.1:1", *db, "--ng112", tmp_path / "ng112.yaml"], "not UTF-8"),
    ]
    for args, said in cases:
        code, output = run("aggregator", "run", *args)
        assert code != 0 and said in output and "Traceback" not in output, (args, output)


def test_ng112_send_test_answers_in_a_line(tmp_path: Path) -> None:
    code, output = run(
        "ng112", "send-test", "--psap", "sip:psap@127.0.0.1:5060", "--lat", "48", "--lon", "11", "--t1", "1e308"
    )
    assert code == 2 and "less than or equal to 60" in output
    label = "a" * 70  # over DNS's 63 characters: IDNA cannot encode it, and the socket raised UnicodeError
    psap = f"sip:psap@{label}.example:5060;transport=tcp"
    code, output = run("ng112", "send-test", "--psap", psap, "--lat", "48", "--lon", "11", "--t1", "0.01")
    assert output.startswith("unreachable:") and "Traceback" not in output, output


def test_provision_refuses_what_would_leak_or_clobber(fleet_dir: Path, tmp_path: Path) -> None:
    code, output = provision(fleet_dir, tmp_path / "node", "mqtts://node-a:hunter2@broker.example:8883")
    assert code == 2 and "no user or password in the URL" in output and "hunter2" not in output
    code, output = provision(fleet_dir, fleet_dir)  # the node's files would overwrite the fleet's
    assert code == 2 and "a folder of its own" in output
    assert not (fleet_dir / "node.yaml").exists()


@pytest.mark.parametrize(
    "registry",
    [{"identities": []}, {"identities": {"x": {"name": "x", "role": "node", "site": None}}}],
)
def test_a_damaged_fleet_registry_is_named_not_a_traceback(fleet_dir: Path, registry: dict) -> None:
    (fleet_dir / "fleet.json").write_text(json.dumps(registry))
    code, output = run("fleet", "list", "--fleet-dir", fleet_dir)
    assert code == 2 and "not a fleet registry" in output and "restore it from backup" in output


@pytest.mark.parametrize("host", ["bad host name!", "-broker.example", "broker..example", "a" * 64 + ".example"])
def test_a_server_certificate_for_no_host_name_is_refused(fleet_dir: Path, host: str) -> None:
    # it was issued: a certificate no client could ever match against the broker's name
    code, output = run("fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", host)
    assert code == 2 and "is not a host name" in output
    assert not (fleet_dir / "server.crt").exists()


def test_demo_that_cannot_start_says_why_in_a_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--broker", "mqtt://127.0.0.1:1"], 1, "the demo did not start: could not connect to mqtt://127.0.0.1:1"),
            (["--http-port", str(port)], 1, "the demo did not start: [Errno 98] Address already in use"),
            (["--http-port", "99999"], 2, "less than or equal to 65535"),
        ]
        for args, code, says in cases:  # each was a traceback; run as a user runs it, in a process of its own
            done = subprocess.run(
                [sys.executable, "-m", "s4edge", "demo", *args, "--duration", "1", "--no-vision"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            output = " ".join((done.stdout + done.stderr).replace("│", " ").split())
            assert done.returncode == code and says in output and "Traceback" not in output, (args, output)


def test_schema_export_to_a_folder_it_cannot_make_is_a_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    code, output = run("schema", "export", tmp_path / "a-file" / "schemas")
    assert code == 1 and "error: cannot write to" in output and "Traceback" not in output
