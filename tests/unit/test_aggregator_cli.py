"""``s4edge aggregator run`` refuses bad arguments and unreachable brokers with a clear message."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from s4edge.cli import app

runner = CliRunner()


def test_http_must_be_host_and_port(tmp_path: Path) -> None:
    result = runner.invoke(app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--http", "8080"])
    assert result.exit_code == 2
    assert "HOST:PORT" in result.output


def test_an_unreachable_broker_stops_it_with_a_reason(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    result = runner.invoke(
        app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    )
    assert result.exit_code == 1
    assert "aggregator did not start: could not connect to mqtt://127.0.0.1:1" in result.output


def test_a_broker_url_with_another_scheme_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    result = runner.invoke(app, ["aggregator", "run", "--broker", "http://x:1", "--db", db, "--http", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert "use mqtt://, mqtts://, ws:// or wss://, e.g. mqtts://broker.example:8883" in result.output


def test_a_bad_ng112_file_stops_it_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "ng112.yaml"
    bad.write_text("psap: not-a-sip-uri\nmax_attempts: many\n")
    db = tmp_path / "agg.db"
    result = runner.invoke(
        app,
        ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{db}", "--ng112", str(bad)],
    )
    assert result.exit_code == 2
    assert f"--ng112: {bad}: psap:" in result.output and "max_attempts" in result.output
    assert "s4edge ng112 check-config" in result.output
    assert not db.exists(), "nothing may start before the NG112 config is known to be good"


def test_a_missing_ng112_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--ng112", str(missing)])
    assert result.exit_code == 2 and f"{missing}: cannot read YAML" in result.output


def test_the_log_format_is_text_or_json() -> None:
    result = runner.invoke(app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--log-format", "xml"])
    assert result.exit_code == 2 and "text or json" in result.output


def test_a_command_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "command.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    db = tmp_path / "agg.db"
    args = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{db}", "--command-key", key]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1
    assert f"command key {key}: not an unencrypted PEM private key" in result.output
    assert "s4edge fleet command-key init" in result.output and not db.exists()


def test_a_network_address_without_an_operator_token_is_warned_about(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    args = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db]
    open_to_all = runner.invoke(app, [*args, "--http", "0.0.0.0:0"], env={"S4EDGE_OPERATOR_TOKEN": ""})
    assert "no operator token" in open_to_all.output
    local = runner.invoke(app, [*args, "--http", "127.0.0.1:0"], env={"S4EDGE_OPERATOR_TOKEN": ""})
    assert "no operator token" not in local.output
    with_env = runner.invoke(app, [*args, "--http", "0.0.0.0:0"], env={"S4EDGE_OPERATOR_TOKEN": "t0ken"})
    assert "no operator token" not in with_env.output and with_env.exit_code == 1  # the broker, not the token


def test_the_operator_token_file_must_be_readable_and_not_empty(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    base = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "0.0.0.0:0"]
    wide = {"COLUMNS": "400", "S4EDGE_OPERATOR_TOKEN": ""}  # rich wraps the error box at the terminal width
    result = runner.invoke(app, [*base, "--operator-token-file", str(empty)], env=wide)
    assert result.exit_code == 2 and "the file is empty" in result.output
    result = runner.invoke(app, [*base, "--operator-token-file", str(tmp_path / "nope")], env=wide)
    assert result.exit_code == 2 and "cannot read" in result.output
    good = tmp_path / "good"
    good.write_text("t0ken\n")
    result = runner.invoke(app, [*base, "--operator-token-file", str(good)], env={"S4EDGE_OPERATOR_TOKEN": ""})
    assert result.exit_code == 1 and "no operator token" not in result.output


def test_it_runs_without_the_ng112_extra(tmp_path: Path) -> None:
    # `pip install 's4edge[aggregator]'` has no lxml: it was refused as "needs the ng112 extra"
    # before reading any option, though forwarding to a PSAP (--ng112) is optional
    code = (
        "import sys; sys.modules['lxml'] = None\n"  # as if lxml were not installed
        "from s4edge.cli import main\n"
        f"sys.argv = ['s4edge', 'aggregator', 'run', '--broker', 'mqtt://127.0.0.1:1', '--db', "
        f"'sqlite:///{tmp_path / 'agg.db'}', '--http', '127.0.0.1:0']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "aggregator did not start: could not connect to mqtt://127.0.0.1:1" in done.stderr
    assert "ng112" not in done.stderr


def test_a_tls_file_that_cannot_be_used_is_named_before_anything_starts(tmp_path: Path) -> None:
    # a missing --ca-file was "aggregator did not start: [Errno 2] No such file or directory",
    # after a traceback from each ingest worker and a note blaming MQTT 5
    db = tmp_path / "agg.db"
    not_pem = tmp_path / "ca.key"
    not_pem.write_text("not a certificate\n")
    base = ["aggregator", "run", "--broker", "mqtts://127.0.0.1:1", "--db", f"sqlite:///{db}", "--http", "127.0.0.1:0"]
    for option, path, why in (
        ("--ca-file", tmp_path / "nope.crt", "No such file or directory"),
        ("--ca-file", not_pem, "not a PEM certificate"),
        ("--cert-file", tmp_path / "nope.crt", "No such file or directory"),
    ):
        result = runner.invoke(app, [*base, option, str(path)], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        assert f"{option} {path}" in result.output and why in result.output, result.output
        assert "Traceback" not in result.output and "MQTT 3.1.1" not in result.output
        assert not db.exists(), "nothing may start before the TLS files are known to be good"


def test_an_http_address_in_use_is_named_before_the_broker_is_reached(tmp_path: Path) -> None:
    # the broker came first: a second aggregator on a taken --http signed in under the running
    # one's identity, took its session over, and then said only "[Errno 98] Address already in use"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = f"sqlite:///{tmp_path / 'agg.db'}"
        args = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", f"127.0.0.1:{port}"]
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"--http 127.0.0.1:{port}: Address already in use" in result.output, result.output
    assert "could not connect" not in result.output


def test_an_operator_token_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    base = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    token.chmod(0o644)
    result = runner.invoke(app, [*base, "--operator-token-file", str(token)], env={"S4EDGE_OPERATOR_TOKEN": ""})
    assert f"--operator-token-file {token} is readable by other users (mode 0644)" in result.output, result.output
    assert f"chmod 600 {token}" in result.output
    token.chmod(0o600)
    result = runner.invoke(app, [*base, "--operator-token-file", str(token)], env={"S4EDGE_OPERATOR_TOKEN": ""})
    assert "readable by other users" not in result.output and result.exit_code == 1  # the broker


def test_a_missing_operator_token_file_names_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    args = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--operator-token-file", str(missing)]
    result = runner.invoke(app, args, env={"COLUMNS": "400", "S4EDGE_OPERATOR_TOKEN": ""})
    assert result.exit_code == 2 and f"--operator-token-file: {missing}: cannot read" in result.output, result.output


def test_a_broker_that_is_not_there_is_not_blamed_on_mqtt_5(tmp_path: Path) -> None:
    # the default workers' fallback to one MQTT 3.1.1 ingest followed any failure: a refused
    # connection, a wrong password or a certificate the CA does not sign was noted as the broker
    # lacking MQTT 5, and tried a second time
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    result = runner.invoke(app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db])
    assert result.exit_code == 1 and "could not connect to mqtt://127.0.0.1:1" in result.output, result.output
    assert "MQTT 3.1.1" not in result.output and result.output.count("could not connect") == 1, result.output


def test_the_broker_password_file_must_be_readable_text_and_not_empty(tmp_path: Path) -> None:
    # the broker password went on the command line (seen by anyone running `ps`) or in the
    # environment: `--password-file` keeps it in a file, and a file it cannot use stops it first
    db = tmp_path / "agg.db"
    base = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{db}", "--username", "agg"]
    empty, not_text = tmp_path / "empty", tmp_path / "binary"
    empty.write_text("\n")
    not_text.write_bytes(b"\xff\xfe\x00pw\n")
    for path, why in (
        (tmp_path / "nope", "cannot read: No such file or directory"),
        (tmp_path, "cannot read: Is a directory"),
        (empty, "the file is empty"),
        (not_text, "not UTF-8 text"),
    ):
        result = runner.invoke(app, [*base, "--password-file", str(path)], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        assert f"--password-file: {path}: {why}" in result.output, result.output
        assert not db.exists(), "nothing may start before the password file is known to be good"


def test_the_broker_password_is_given_once_and_for_a_username(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    db = tmp_path / "agg.db"
    base = ["aggregator", "run", "--db", f"sqlite:///{db}", "--password-file", str(secret)]
    env = {"COLUMNS": "400", "S4EDGE_BROKER_PASSWORD": "", "S4EDGE_BROKER_USERNAME": ""}
    both = runner.invoke(
        app, [*base, "--broker", "mqtt://127.0.0.1:1", "--username", "agg", "--password", "x"], env=env
    )
    assert both.exit_code == 2 and "give the broker password once: --password or --password-file" in both.output
    from_env = runner.invoke(
        app, [*base, "--broker", "mqtt://127.0.0.1:1", "--username", "agg"], env={**env, "S4EDGE_BROKER_PASSWORD": "x"}
    )
    assert from_env.exit_code == 2, from_env.output
    assert "S4EDGE_BROKER_PASSWORD or --password-file, not both" in from_env.output
    in_url = runner.invoke(app, [*base, "--broker", "mqtt://agg:hunter2@127.0.0.1:1"], env=env)
    assert in_url.exit_code == 2 and "holds a password too" in in_url.output, in_url.output
    assert "hunter2" not in in_url.output
    nobody = runner.invoke(app, [*base, "--broker", "mqtt://127.0.0.1:1"], env=env)
    assert nobody.exit_code == 2 and "a password is for a username: give --username" in nobody.output, nobody.output
    assert not db.exists()


def test_a_broker_password_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    base = ["aggregator", "run", "--broker", "mqtt://agg@127.0.0.1:1", "--db", db, "--password-file", str(secret)]
    env = {"S4EDGE_BROKER_PASSWORD": ""}
    secret.chmod(0o644)
    result = runner.invoke(app, base, env=env)
    assert f"--password-file {secret} is readable by other users (mode 0644)" in result.output, result.output
    assert f"chmod 600 {secret}" in result.output and result.exit_code == 1  # the broker, not the file
    secret.chmod(0o640)  # the service's group, as the shipped unit's layout has it
    result = runner.invoke(app, base, env=env)
    assert "readable by other users" not in result.output and result.exit_code == 1, result.output
