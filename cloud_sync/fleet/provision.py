"""Provisioning: a node's config, credentials and broker entries, made offline on a
technician's laptop from the fleet folder and a board profile.

The node folder (``--out``) is what goes to ``/etc/s4edge/`` on the node: ``node.yaml``,
``ca.crt``, either ``mqtt.password`` or ``node.crt``/``node.key``, and ``command.pub``
when the fleet has a command key. The config names the other files by relative path,
which the node resolves against the config's folder.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from s4edge.cloud_sync.broker_url import BrokerUrlError, broker_endpoint
from s4edge.cloud_sync.fleet.ca import CA_CERT, FleetCA, issue_client_cert, write_private
from s4edge.cloud_sync.fleet.command_key import COMMAND_PUB, command_public_key
from s4edge.cloud_sync.fleet.crl import revoke
from s4edge.cloud_sync.fleet.mosquitto_files import new_password, password_hash
from s4edge.cloud_sync.fleet.registry import Fleet, FleetError, Identity
from s4edge.cloud_sync.messages import NAME_PATTERN
from s4edge.files import replace_file
from s4edge.resources import packaged
from s4edge.shown import hide_userinfo
from s4edge.yaml_text import load_yaml, with_top_level, yaml_problem

BOARDS_ENV = "S4EDGE_BOARDS_DIR"
PASSWORD_FILE = "mqtt.password"  # noqa: S105 - a file name, not a password
CONFIG_FILE = "node.yaml"
# What the command's flags and credentials set in node.yaml; the technician owns the rest.
PROVISIONED = ("node_id", "site", "location", "mqtt")
MQTT_PROVISIONED = ("url", "client_id", "username", "password", "password_file", "ca_file", "cert_file", "key_file")
_UNSET = object()  # a setting a file does not have


def boards_dir() -> Path:
    """``$S4EDGE_BOARDS_DIR``, else the board profiles shipped in the package."""
    env = os.environ.get(BOARDS_ENV)
    return Path(env) if env else packaged("firmware_configs", "boards")


def board_names(folder: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (folder or boards_dir()).glob("*.yaml"))


def load_board(name: str, folder: Path | None = None) -> dict[str, Any]:
    folder = folder or boards_dir()
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(board_names(folder)) or f"none in {folder} (set {BOARDS_ENV})"
        raise FleetError(f"unknown board {name!r}; known boards: {known}")
    try:
        profile = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("node", {}), dict):
        raise FleetError(f"{path}: a board profile is a mapping with board, hardware, inference and node keys")
    return profile


def check_name(what: str, value: str) -> str:
    """Node and site ids become topic levels and broker usernames (messages.NAME_PATTERN)."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise FleetError(f"{what} {value!r}: use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    return value


def check_broker_url(url: str) -> str:
    try:
        endpoint = broker_endpoint(url)
    except BrokerUrlError as exc:
        raise FleetError(f"--broker: {exc}") from None
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise FleetError(
            f"--broker {hide_userinfo(url)!r}: no user or password in the URL (node.yaml is not a secret "
            "file); the node's password is written to its own file, with its permissions"
        )
    if not endpoint.tls:
        raise FleetError(
            f"--broker {hide_userinfo(url)!r}: the fleet speaks TLS only; give mqtts://HOST:PORT "
            "(or wss://HOST:PORT/PATH over WebSocket)"
        )
    return url


@dataclass(frozen=True)
class NodeRequest:
    node_id: str
    site: str
    lat: float
    lon: float
    broker: str
    board: str = "rpi5"
    zone: str | None = None
    client_cert: bool = False
    outbox: Path | None = None  # None: the board profile's (the systemd unit's StateDirectory)


@dataclass(frozen=True)
class Provisioned:
    identity: Identity
    files: list[Path]
    config_path: Path | None = None
    again: bool = False  # node.yaml was there already: the node has one of its own, adapted on site
    changed: tuple[str, ...] = ()  # again: its top-level settings this provisioning changed


def node_config(
    req: NodeRequest, profile: dict[str, Any], credential_files: dict[str, str], verify_key: str | None = None
) -> dict[str, Any]:
    """The node config as plain data; edge.config.parse_config accepts it."""
    location: dict[str, Any] = {"lat": req.lat, "lon": req.lon}
    if req.zone:
        location["zone"] = req.zone
    config: dict[str, Any] = {
        "node_id": req.node_id,
        "site": req.site,
        "location": location,
        "mqtt": {"url": req.broker, "client_id": req.node_id, "username": req.node_id, **credential_files},
    }
    fragment = copy.deepcopy(profile.get("node") or {})
    if verify_key is not None:
        config["commands"] = {**(fragment.get("commands") or {}), "verify_key": verify_key}
    config.update({key: value for key, value in fragment.items() if key not in config})
    if req.outbox is not None:
        config["outbox"] = {**(config.get("outbox") or {}), "path": str(req.outbox)}
    return config


def source_templates(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Camera and I2C sources for the board's hardware, for the technician to adapt.

    They are written commented out: only the technician knows what is wired to the node.
    """
    hardware, inference = profile.get("hardware") or {}, profile.get("inference") or {}
    templates: list[dict[str, Any]] = []
    if camera := hardware.get("camera"):
        backend = {key: inference[key] for key in ("providers", "threads") if key in inference}
        templates.append(
            {
                "type": "vision",
                "name": "cam0",
                "camera": {key: camera[key] for key in ("url", "width", "height") if key in camera},
                "model": {"name": "fastestdet", "backend": backend},
            }
        )
    if "i2c_bus" in hardware:
        templates.append(
            {
                "type": "sensors",
                "bus": f"/dev/i2c-{hardware['i2c_bus']}",
                "sensors": [{"name": "mq2-1", "kind": "mq2", "channel": 0}],
            }
        )
    return templates


def _commented(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines())


def render_node_file(req: NodeRequest, profile: dict[str, Any], config: dict[str, Any]) -> str:
    board = profile.get("board", req.board)
    facts = {"hardware": profile.get("hardware"), "inference": profile.get("inference")}
    return (
        f"# s4edge node {req.site}/{req.node_id} on board {board}, written by `s4edge provision`.\n"
        + _commented(yaml.safe_dump(facts, sort_keys=False))
        + yaml.safe_dump(config, sort_keys=False)
        + (
            ""
            if "sources" in config
            else f"\n# Sources for {board}: uncomment, adapt to what is wired, then run `s4edge doctor -c node.yaml`.\n"
            + _commented(yaml.safe_dump({"sources": source_templates(profile)}, sort_keys=False))
        )
    )


@dataclass(frozen=True)
class EarlierNodeFile:
    """The ``node.yaml`` an earlier provisioning wrote into the node folder, as the technician left it."""

    text: str
    settings: dict[str, Any]


def earlier_node_file(path: Path) -> EarlierNodeFile | None:
    """The node.yaml already at ``path`` (None: none, or an empty one). A file that cannot be read
    is refused before anything is rotated, as writing over it would lose what the technician wrote."""
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        problem = yaml_problem(exc)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        problem = f"cannot be read ({type(exc).__name__})"
    else:
        if data is None:  # an empty file: nothing to keep
            return None
        if isinstance(data, dict):
            return EarlierNodeFile(text, data)
        problem = "not a mapping of settings"
    raise FleetError(
        f"{path}: {problem}. Nothing was changed: fix it (`s4edge agent check -c {path}`), or move it away "
        "to have a fresh one written"
    )


def technician_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """What an earlier ``node.yaml`` holds beyond what provisioning sets (PROVISIONED): the sources
    wired on site, tuned intervals. Provisioning again (a password rotation) keeps them."""
    kept = {key: value for key, value in settings.items() if key not in PROVISIONED}
    if isinstance(settings.get("mqtt"), dict):  # keepalive_s, protocol …: not the URL nor credentials
        kept["mqtt"] = {key: value for key, value in settings["mqtt"].items() if key not in MQTT_PROVISIONED}
    return kept


def _with_settings(config: dict[str, Any], kept: dict[str, Any], outbox: Path | None) -> dict[str, Any]:
    """``config`` with the technician's ``kept`` settings over the board profile's; the command
    key (copied again, or removed) and an ``--outbox`` given to this run are this run's."""
    merged = {**config}
    for key, value in kept.items():
        if key == "mqtt":
            value = {**value, **config["mqtt"]}
        elif key == "commands" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "verify_key"}
            if "verify_key" in (config.get("commands") or {}):
                value["verify_key"] = config["commands"]["verify_key"]
        elif key == "outbox" and isinstance(value, dict) and outbox is not None:
            value = {**value, "path": str(outbox)}
        merged[key] = value
    return merged


def provision_node(req: NodeRequest, ca: FleetCA, fleet: Fleet, out: Path, boards: Path | None = None) -> Provisioned:
    check_name("node id", req.node_id)
    check_name("site", req.site)
    check_broker_url(req.broker)
    profile = load_board(req.board, boards)
    fleet.check_free(req.node_id, "node", req.site)
    path = Path(out) / CONFIG_FILE
    earlier = earlier_node_file(path)
    kept = technician_settings(earlier.settings) if earlier else {}
    hashed, files, credential_files, serial = _credentials(req.node_id, req.client_cert, ca, out, "node")
    _rotate(fleet, ca, Identity(req.node_id, "node", req.site, hashed, req.client_cert, serial))
    verify_key = _copy_command_key(fleet.folder, Path(out))
    if verify_key is not None:
        files.append(verify_key)
    config = node_config(req, profile, credential_files, verify_key.name if verify_key else None)
    config = _with_settings(config, kept, req.outbox)
    identity = fleet.identities[req.node_id]
    if earlier is None:
        replace_file(path, render_node_file(req, profile, config))
        return Provisioned(identity, [path, *files], path)
    # Edited, not written anew: a safe_dump round trip turned the technician's `address: 0x48`
    # into 72 and dropped every comment. Only a file that cannot be edited so is written anew.
    changed = tuple(key for key, value in config.items() if earlier.settings.get(key, _UNSET) != value)
    text = with_top_level(earlier.text, config) or render_node_file(req, profile, config)
    if text != earlier.text:
        replace_file(path, text)
    return Provisioned(identity, [path, *files], path, again=True, changed=changed)


def provision_aggregator(name: str, ca: FleetCA, fleet: Fleet, out: Path, client_cert: bool = False) -> Provisioned:
    check_name("aggregator name", name)
    fleet.check_free(name, "aggregator", None)
    hashed, files, _, serial = _credentials(name, client_cert, ca, out, "aggregator")
    _rotate(fleet, ca, Identity(name, "aggregator", None, hashed, client_cert, serial))
    return Provisioned(fleet.identities[name], files)


def _rotate(fleet: Fleet, ca: FleetCA, identity: Identity) -> None:
    """Add or replace ``identity``; a certificate it replaces is revoked, as it must stop working."""
    previous = fleet.identities.get(identity.name)
    if previous is not None and previous.cert_serial and previous.cert_serial != identity.cert_serial:
        revoke(ca, fleet.folder, [int(previous.cert_serial, 16)])
    fleet.put(identity)


def _retire_workers_from(fleet: Fleet, ca: FleetCA, name: str, workers: int) -> None:
    """Workers of an earlier, larger ``--workers``: left, they would keep the old shared
    password (or their certificates) working after a rotation meant to end it."""
    index = workers
    while (stale := fleet.identities.get(f"{name}-w{index}")) is not None and stale.role == "aggregator":
        if stale.cert_serial:
            revoke(ca, fleet.folder, [int(stale.cert_serial, 16)])
        fleet.remove(stale.name)
        index += 1


def provision_aggregator_workers(
    name: str, ca: FleetCA, fleet: Fleet, out: Path, workers: int, client_cert: bool = False
) -> list[Provisioned]:
    """One identity per ingest worker (``aggregator run --workers``): NAME-w0 … The fleet's broker
    makes a client's username its client id, so workers sharing one identity would take each
    other's session over. With passwords they share one (``aggregator-workers.password``, hashed
    for each on its own; ``aggregator.password`` stays the single identity's), so that
    ``--username NAME-w{worker} --password …`` serves them all; with certificates each has its
    own pair, ``aggregator-w<i>.crt`` and ``.key``."""
    names = [f"{name}-w{index}" for index in range(workers)]
    for worker in names:
        check_name("aggregator name", worker)
        fleet.check_free(worker, "aggregator", None)
    _retire_workers_from(fleet, ca, name, workers)
    if client_cert:
        done = []
        for index, worker in enumerate(names):
            _, files, _, serial = _credentials(worker, True, ca, out, f"aggregator-w{index}")
            _rotate(fleet, ca, Identity(worker, "aggregator", None, None, True, serial))
            done.append(Provisioned(fleet.identities[worker], files))
        return done
    _, files, _, _ = _credentials(name, False, ca, out, "aggregator-workers")  # the CA and one password file
    password = (Path(out) / "aggregator-workers.password").read_text().strip()
    for worker in names:
        _rotate(fleet, ca, Identity(worker, "aggregator", None, password_hash(password), False, None))
    return [Provisioned(fleet.identities[worker], files) for worker in names]


def _copy_command_key(fleet_dir: Path, out: Path) -> Path | None:
    """The fleet's command public key beside the node config (None: the fleet signs nothing)."""
    source, target = command_public_key(fleet_dir), out / COMMAND_PUB
    if source is None:
        target.unlink(missing_ok=True)  # a key left from an earlier provisioning would lock the node out
        return None
    shutil.copyfile(source, target)
    return target


def _credentials(
    name: str, client_cert: bool, ca: FleetCA, out: Path, stem: str
) -> tuple[str | None, list[Path], dict[str, str], str | None]:
    """Write the CA certificate and a password file or a client key pair into ``out``.

    Returns the password's mosquitto hash (None with a certificate), the files, the
    config's references to them, and the certificate's serial (hex; None with a password),
    which ``s4edge fleet revoke`` puts on the CRL."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca.cert_path, out / CA_CERT)
    files = [out / CA_CERT]
    refs = {"ca_file": CA_CERT}
    hashed = serial = None
    secret = out / (PASSWORD_FILE if stem == "node" else f"{stem}.password")
    # Switching between password and certificate leaves no stale credential behind.
    for stale in (secret,) if client_cert else (out / f"{stem}.crt", out / f"{stem}.key"):
        stale.unlink(missing_ok=True)
    if client_cert:
        cert, key = issue_client_cert(ca, name, out, stem)
        serial = format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")
        files += [cert, key]
        refs |= {"cert_file": cert.name, "key_file": key.name}
    else:
        password = new_password()
        write_private(secret, (password + "\n").encode())
        files.append(secret)
        refs["password_file"] = secret.name
        hashed = password_hash(password)
    return hashed, files, refs, serial
