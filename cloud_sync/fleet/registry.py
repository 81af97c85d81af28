"""The fleet folder's registry of broker identities (``fleet.json``), from which mosquitto's
``passwords`` and ``acl`` files are rendered whole. Provisioning a node twice replaces its
entry (a password rotation); nothing is appended twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from s4edge.cloud_sync.fleet.ca import write_private
from s4edge.cloud_sync.fleet.mosquitto_files import ACL_HEADER, acl_block, aggregator_topics, node_topics
from s4edge.files import replace_file

REGISTRY = "fleet.json"
PASSWORDS = "passwords"
ACL = "acl"

Role = Literal["node", "aggregator"]


class FleetError(ValueError):
    """A fleet folder problem a technician can fix."""


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    site: str | None = None
    password_hash: str | None = None
    client_cert: bool = False
    cert_serial: str | None = None  # hex serial of the client certificate, for the CRL on revocation

    def topics(self) -> tuple[list[str], list[str]]:
        if self.role == "aggregator":
            return aggregator_topics()
        assert self.site is not None
        return node_topics(self.site, self.name)

    def describe(self) -> str:
        return f"aggregator {self.name}" if self.role == "aggregator" else f"node {self.site}/{self.name}"


def _checked(name: str, identity: Identity) -> Identity:
    """An entry read back from fleet.json: what every later step takes for granted."""
    if identity.name != name or identity.role not in ("node", "aggregator"):
        raise ValueError(f"entry {name!r} names {identity.name!r} with role {identity.role!r}")
    if identity.role == "node" and not isinstance(identity.site, str):
        raise ValueError(f"node {name!r} has no site")
    return identity


class Fleet:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.identities: dict[str, Identity] = {}
        path = self.folder / REGISTRY
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.identities = {name: _checked(name, Identity(**entry)) for name, entry in raw["identities"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise FleetError(f"{path}: not a fleet registry ({exc}); restore it from backup") from None

    @property
    def passwords_path(self) -> Path:
        return self.folder / PASSWORDS

    @property
    def acl_path(self) -> Path:
        return self.folder / ACL

    def check_free(self, name: str, role: Role, site: str | None) -> None:
        """A node cannot silently change site, nor take another identity's name (a broker username)."""
        old = self.identities.get(name)
        if old is not None and (old.role, old.site) != (role, site):
            raise FleetError(
                f"{name!r} is already the {old.describe()}; names are broker usernames and must be "
                f"unique. Run `s4edge fleet revoke {name}` first to move it."
            )

    def put(self, identity: Identity) -> None:
        """Add or replace (rotate) an identity."""
        self.check_free(identity.name, identity.role, identity.site)
        self.identities[identity.name] = identity
        self.save()

    def remove(self, name: str) -> Identity:
        try:
            identity = self.identities.pop(name)
        except KeyError:
            raise FleetError(f"{name!r} is not in {self.folder / REGISTRY}") from None
        self.save()
        return identity

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"identities": {n: asdict(i) for n, i in sorted(self.identities.items())}}
        # The registry holds password hashes: as private as the password file itself.
        write_private(self.folder / REGISTRY, (json.dumps(data, indent=2) + "\n").encode())
        write_private(self.passwords_path, self.render_passwords().encode())
        replace_file(self.acl_path, self.render_acl())

    def render_passwords(self) -> str:
        return "".join(f"{i.name}:{i.password_hash}\n" for _, i in sorted(self.identities.items()) if i.password_hash)

    def render_acl(self) -> str:
        blocks = [ACL_HEADER]
        for _, identity in sorted(self.identities.items()):
            write, read = identity.topics()
            blocks.append(acl_block(identity.name, identity.describe(), write, read))
        return "\n".join(blocks)

    @property
    def uses_client_certs(self) -> bool:
        return any(i.client_cert for i in self.identities.values())


