"""Private keys are written 0600 and never through a link planted at the temporary path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from s4edge.cloud_sync.fleet.ca import CA_KEY, init_ca, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_key_is_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        init_ca(tmp_path / "fleet")
    finally:
        os.umask(old)
    assert mode(tmp_path / "fleet" / CA_KEY) == 0o600
    assert not (tmp_path / "fleet" / (CA_KEY + ".tmp")).exists()


def test_a_leftover_world_readable_tmp_file_is_not_reused(tmp_path: Path) -> None:
    # Someone opened the readable leftover before the key was written: they must not read the key.
    key = tmp_path / "node.key"
    leftover = tmp_path / "node.key.tmp"
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    with leftover.open("rb") as watcher:
        write_private(key, b"secret")
        assert watcher.read() == b"old"
    assert key.read_bytes() == b"secret" and mode(key) == 0o600


def test_a_symlink_at_the_tmp_path_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "public" / "stolen.key"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    elsewhere.chmod(0o644)
    key = tmp_path / "fleet" / "ca.key"
    key.parent.mkdir()
    (tmp_path / "fleet" / "ca.key.tmp").symlink_to(elsewhere)
    write_private(key, b"secret")
    assert elsewhere.read_bytes() == b""  # the key did not go where the link pointed
    assert not key.is_symlink() and key.read_bytes() == b"secret" and mode(key) == 0o600
