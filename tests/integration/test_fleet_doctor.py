"""``s4edge doctor`` against the fleet's real TLS broker, with a provisioned node's config."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.fleet.ca import init_ca
from s4edge.testing.fleet import Fleet, build_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    built = build_fleet(tmp_path_factory.mktemp("doctor-fleet"))
    yield built
    built.broker.stop()


def broker_check(config: Path) -> dict[str, str]:
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json", "--broker-timeout", "5"])
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["config"]["status"] == "PASS"
    return checks["broker"]


def node_copy(fleet: Fleet, tmp_path: Path) -> Path:
    copy = tmp_path / "node-a"
    shutil.copytree(fleet.node_dir("node-a"), copy)
    return copy


def test_a_provisioned_node_reaches_the_broker_over_tls(fleet: Fleet) -> None:
    check = broker_check(fleet.node_dir("node-a") / "node.yaml")
    assert check["status"] == "PASS", check
    assert "TLS" in check["detail"] and "as node-a" in check["detail"] and "Success" in check["detail"]


def test_a_wrong_password_is_reported_with_the_connack_reason(fleet: Fleet, tmp_path: Path) -> None:
    node = node_copy(fleet, tmp_path)
    (node / "mqtt.password").write_text("stale-password\n")
    check = broker_check(node / "node.yaml")
    assert check["status"] == "FAIL"
    assert "CONNACK" in check["detail"] and ("password" in check["detail"] or "authorized" in check["detail"])
    assert "s4edge provision" in check["hint"]


def test_a_broker_certificate_from_another_ca_is_reported(fleet: Fleet, tmp_path: Path) -> None:
    node = node_copy(fleet, tmp_path)
    shutil.copyfile(init_ca(tmp_path / "other").cert_path, node / "ca.crt")
    check = broker_check(node / "node.yaml")
    assert check["status"] == "FAIL" and "ca_file" in check["hint"]
