"""A small filesystem that a test fills up and frees again: a tmpfs mount, so that the
node's outbox runs out of space for real (SQLITE_FULL), not by a mock."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from types import TracebackType


class DiskUnavailable(RuntimeError):
    """No tmpfs can be mounted here (not root, no CAP_SYS_ADMIN, no mount(8))."""


class SmallDisk:
    def __init__(self, mountpoint: Path, size: str = "2m") -> None:
        self.mountpoint = mountpoint
        self.size = size
        self.ballast = mountpoint / "ballast"

    def mount(self) -> SmallDisk:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        command = ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.mountpoint)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            raise DiskUnavailable(f"mount(8): {exc}") from None
        if done.returncode != 0:
            raise DiskUnavailable(done.stderr.strip() or f"mount exited {done.returncode}")
        return self

    def fill(self) -> None:
        """Write ballast until the disk has no byte left."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 16, 1 << 12, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        # lazy: a file still open in a thread that has not noticed yet must not keep it mounted
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=10, check=False)

    def __enter__(self) -> SmallDisk:
        return self.mount()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.unmount()
